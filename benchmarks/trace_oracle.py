"""The trace oracle (issue 12 item 6): count the bytes a forward (and a training step) really holds,
without a GPU and without weights, and set them next to the estimate's tensor terms.

Each profile's own architecture (Qwen2-VL, Qwen2.5-VL, Gemma 3, Mllama, LLaVA, Idefics3 for
SmolVLM, InternVL), vision tower and projector included, is built at real size from its hub
config (tests/fixtures/hub-configs, see ARCH for which config each profile takes and what is
derived) under torch's FakeTensorMode: tensors carry shapes and dtypes but no memory, so a 12B
model traces on a laptop. torch.distributed._tools.mem_tracker.MemTracker counts the live bytes
by kind (parameters, gradients, activations, temporaries, optimizer states) and gives the peak.

The inputs are the profile's default image (one per sample) at the size provision's estimate
assumes, in the family's own input format: Qwen's flattened patches with image_grid_thw,
Gemma's 896 px image, LLaVA's 336 px image, Mllama's 4 tiles of 560 px with aspect-ratio ids and
a cross-attention mask, SmolVLM's 13 crops of 512 px, InternVL's 7 tiles of 448 px; the text
holds the image tokens where the family puts them in the sequence.

The token ids, grids and masks are real integer tensors inside the fake mode (IndexMode): the
families compute positions, windows and scatter masks from them with data-dependent ops
(Qwen2.5-VL's get_vision_window_index takes `index_padded[index_padded != -100]`, a nonzero whose
size plain FakeTensorMode cannot know; Idefics3 drops all-zero crops with a boolean index), so
integer tensors are computed for real, as the index bookkeeping they are, while every floating
point tensor (weights, activations, logits) stays fake.

Tasks traced:
- infer: the prefill of `seq` tokens (batch `batch`, one image per sample) under no_grad with
  the KV cache built; the logits of every position when the family's generate keeps them
  (profiles' prefill_logits_all), else of the last one. The vision tower alone is traced too
  (its peak beyond its weights is the estimate's vision term).
- lora: two steps of LoRA (rank 8 on every linear of the decoder layers, the vision tower and
  projector frozen, fp32 adapters that take an fp32 copy of their input, as PEFT's Linear.forward
  does with autocast_adapter_dtype) with gradient checkpointing, the loss over all positions,
  backward and AdamW's step; the second step is the steady one, with AdamW's states made.
- full: the same with every language-model weight trained (bf16 weights, fp32 AdamW states on
  top: torch's AdamW keeps its states in the parameter's dtype, so a bf16 trace holds 2 x 2
  bytes per parameter, where mixed-precision trainers keep fp32 master weights and moments: the
  comparison adds that difference back, see `compare`).

    python benchmarks/trace_oracle.py             # print the table for the grid
    python benchmarks/trace_oracle.py --write     # and merge the rows into
                                                  # benchmarks/results/trace_oracle.json
    python benchmarks/trace_oracle.py --profiles qwen2.5-vl-7b --tasks infer --shapes 1x2048
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "trace_oracle.json"
CONFIGS = ROOT / "tests" / "fixtures" / "hub-configs"
TASKS = ("infer", "lora", "full")
GIB = 1024**3

# Which hub config (tests/fixtures/hub-configs/<folder>/config.json, each with its SOURCE.md)
# builds which profile, and what had to be derived where no config of the profile's own repo is
# stored: the profile's [text] shape (from models.json, its source noted in the profile) over a
# sibling's config of the same family.
ARCH: dict[str, dict[str, Any]] = {
    "qwen2-vl-2b": {"kind": "qwen2-vl", "config": "Qwen--Qwen2-VL-2B-Instruct"},
    "qwen2.5-vl-3b": {"kind": "qwen2.5-vl", "config": "Qwen--Qwen2.5-VL-3B-Instruct"},
    "qwen2.5-vl-7b": {"kind": "qwen2.5-vl", "config": "Qwen--Qwen2.5-VL-7B-Instruct"},
    "gemma-3-12b-it": {
        "kind": "gemma-3",
        "config": "google--gemma-3-4b-it",
        "derived": "no gemma-3-12b-it config is stored: gemma-3-4b-it's (the same SigLIP tower "
        "and projector) with the profile's 12B text shape (48 layers, 3840 wide, window 1024 "
        "on 5 of every 6 layers)",
    },
    "llama-3.2-11b-vision": {
        "kind": "mllama",
        "config": "meta-llama--Llama-3.2-11B-Vision-Instruct",
    },
    "llava-1.5-7b-hf": {"kind": "llava", "config": "llava-hf--llava-1.5-7b-hf"},
    "llava-v1.5-7b": {
        "kind": "llava",
        "config": "llava-hf--llava-1.5-7b-hf",
        "derived": "liuhaotian's repo is the original LlavaLlamaForCausalLM (no transformers "
        "class): the hf-format equivalent, llava-hf/llava-1.5-7b-hf, with the profile's vocab "
        "(32000; llava-hf pads it to 32064) and id 31999 for <image> (llava-hf's 32000 lies past "
        "32000 ids; the original marks images with -200, no id)",
    },
    "smolvlm-256m": {"kind": "idefics3", "config": "HuggingFaceTB--SmolVLM-256M-Instruct"},
    "internvl2-1b": {
        "kind": "internvl",
        "config": "OpenGVLab--InternVL2-1B",
        "derived": "the repo is trust_remote_code InternVLChatModel: the hf-format equivalent "
        "(transformers' InternVLForConditionalGeneration, as the -hf checkpoints use) from its "
        "vision_config and llm_config (Qwen2); tie_word_embeddings as the profile (false, the "
        "later hub revision)",
    },
    "internvl2-2b": {
        "kind": "internvl",
        "config": "OpenGVLab--InternVL2-2B",
        "derived": "trust_remote_code InternVLChatModel with an InternLM2 decoder, which "
        "transformers has no class for: InternVLForConditionalGeneration with a Llama decoder of "
        "the llm_config's shape (InternLM2 is Llama-shaped: RMSNorm, GQA, gated MLP; its wqkv is "
        "q/k/v fused, the same bytes)",
    },
    "internvl2-8b": {
        "kind": "internvl",
        "config": "OpenGVLab--InternVL2-2B",
        "derived": "no InternVL2-8B config is stored: InternVL2-2B's (the same InternViT-300M "
        "tower) with the profile's InternLM2-7B text shape as a Llama decoder (see internvl2-2b)",
    },
}


def text_shape(text: dict[str, Any]) -> dict[str, Any]:
    """The profile's `[text]` shape under transformers' config names."""
    return {
        "hidden_size": text["hidden"],
        "intermediate_size": text["intermediate"],
        "num_hidden_layers": text["layers"],
        "num_attention_heads": text["heads"],
        "num_key_value_heads": text["kv_heads"],
        "vocab_size": text["vocab"],
    }


def hub_config(name: str, text: dict[str, Any]) -> dict[str, Any]:
    """The profile's config as transformers' own class reads it (a dict), from the stored hub
    config and the profile's text shape where ARCH says it is derived."""
    arch = ARCH[name]
    raw = json.loads((CONFIGS / arch["config"] / "config.json").read_text())
    kind = arch["kind"]
    if kind == "gemma-3":
        t = raw["text_config"]
        t.update(text_shape(text), head_dim=text["head_dim"], sliding_window=text["sliding_window"])
        t.pop("layer_types", None)  # rebuilt from sliding_window_pattern for the new depth
    elif kind == "llava":
        raw["text_config"]["vocab_size"] = text["vocab"]
        raw["vocab_size"] = text["vocab"]
        # llava-hf's <image> is id 32000 of its padded 32064; in the original's 32000 ids the
        # last one stands for it (the original swaps its -200 marker for features, no id).
        raw["image_token_index"] = min(raw["image_token_index"], text["vocab"] - 1)
    elif kind == "internvl":
        llm, vit = raw["llm_config"], raw["vision_config"]
        if llm["model_type"] == "qwen2":
            tc = {k: llm[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                      "num_attention_heads", "num_key_value_heads", "vocab_size",
                                      "rope_theta", "max_position_embeddings")}  # fmt: skip
            tc["model_type"] = "qwen2"
        else:  # InternLM2 as a Llama decoder of the profile's shape
            tc = {"model_type": "llama", "max_position_embeddings": text["max_context"]}
        tc.update(
            text_shape(text), tie_word_embeddings=bool(text.get("tie_word_embeddings", False))
        )
        vc = {
            "model_type": "internvl_vision",
            "hidden_size": vit["hidden_size"],
            "intermediate_size": vit["intermediate_size"],
            "num_hidden_layers": vit["num_hidden_layers"],
            "num_attention_heads": vit["num_attention_heads"],
            "image_size": [vit["image_size"]] * 2,
            "patch_size": [vit["patch_size"]] * 2,
            "attention_bias": vit.get("qkv_bias", True),
            "use_qk_norm": vit.get("qk_normalization", False),
            "norm_type": vit.get("norm_type", "layer_norm"),
            "layer_norm_eps": vit.get("layer_norm_eps", 1e-6),
            "hidden_act": vit.get("hidden_act", "gelu"),
        }
        raw = {
            "model_type": "internvl",
            "text_config": tc,
            "vision_config": vc,
            "downsample_ratio": raw["downsample_ratio"],
            "vision_feature_layer": raw.get("select_layer", -1),
            "vision_feature_select_strategy": "default",
            "projector_hidden_act": "gelu",
            "image_token_id": tc["vocab_size"] - 1,
            "tie_word_embeddings": tc["tie_word_embeddings"],
        }
    return raw


def shrink(raw: dict[str, Any], kind: str) -> dict[str, Any]:
    """A tiny model of the same class (tests): narrow and shallow, same input format and image
    sizes, so every code path of the real architecture runs in seconds."""
    raw = json.loads(json.dumps(raw))
    text = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32}  # fmt: skip
    if kind in ("qwen2-vl", "qwen2.5-vl"):
        raw.update(text, hidden_size=256, num_attention_heads=2, num_key_value_heads=1)
        raw.pop("head_dim", None)  # mrope_section [16, 24, 24] needs head_dim 128
        v = raw["vision_config"]
        v.update(depth=4, num_heads=2)
        if kind == "qwen2-vl":
            v.update(embed_dim=64, hidden_size=256)
        else:
            v.update(hidden_size=64, intermediate_size=128, out_hidden_size=256)
            v["fullatt_block_indexes"] = [1, 3]
        return raw
    t, v = raw.setdefault("text_config", {}), raw["vision_config"]
    t.update(text)
    if kind == "mllama":
        t.update(num_hidden_layers=3, cross_attention_layers=[1])
        v.update(hidden_size=64, intermediate_size=128, num_hidden_layers=3, attention_heads=2,
                 num_global_layers=2, intermediate_layers_indices=[0, 2],
                 vision_output_dim=64 * 3)  # fmt: skip
    else:
        v.update(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=2)
    if kind == "gemma-3":
        t.update(head_dim=32, sliding_window=64)
        t["sliding_window_pattern"] = 2
    if kind == "idefics3":  # SmolVLM's text_config is a Llama's; its vocab is top-level
        raw["text_config"] = {**t, "model_type": "llama", "vocab_size": raw["vocab_size"]}
    return raw


def build_config(name: str, text: dict[str, Any], tiny: bool = False) -> Any:
    """The transformers config object for the profile's class (sdpa attention everywhere)."""
    import torch
    import transformers

    kind = ARCH[name]["kind"]
    raw = hub_config(name, text)
    if tiny:
        raw = shrink(raw, kind)
    cls = {
        "qwen2-vl": transformers.Qwen2VLConfig,
        "qwen2.5-vl": transformers.Qwen2_5_VLConfig,
        "gemma-3": transformers.Gemma3Config,
        "mllama": transformers.MllamaConfig,
        "llava": transformers.LlavaConfig,
        "idefics3": transformers.Idefics3Config,
        "internvl": transformers.InternVLConfig,
    }[kind]
    raw = {k: v for k, v in raw.items() if k not in ("architectures", "auto_map", "model_type")}
    cfg = cls(**raw)
    for sub in (cfg, *(getattr(cfg, n, None) for n in ("text_config", "vision_config"))):
        if sub is not None:
            sub._attn_implementation = "sdpa"
            # bf16 everywhere, as the models are built: llava-hf's text_config says float16,
            # which from_config would give the language model under a bf16 lm_head.
            sub.dtype = torch.bfloat16
    return cfg


def model_class(name: str) -> Any:
    import transformers

    return getattr(
        transformers,
        {
            "qwen2-vl": "Qwen2VLForConditionalGeneration",
            "qwen2.5-vl": "Qwen2_5_VLForConditionalGeneration",
            "gemma-3": "Gemma3ForConditionalGeneration",
            "mllama": "MllamaForConditionalGeneration",
            "llava": "LlavaForConditionalGeneration",
            "idefics3": "Idefics3ForConditionalGeneration",
            "internvl": "InternVLForConditionalGeneration",
        }[ARCH[name]["kind"]],
    )


def _grid(tokens: int, merge: int = 2) -> tuple[int, int]:
    """Patch rows x columns of an image of `tokens` LLM tokens (merge x merge patches each), as
    near square as the merge allows: Qwen's smart_resize keeps the aspect, this keeps the count."""
    cells = tokens
    rows = int(math.isqrt(cells))
    while cells % rows:
        rows -= 1
    return rows * merge, cells // rows * merge


def image_inputs(name: str, cfg: Any, batch: int, seq: int, image_tokens: int) -> dict[str, Any]:
    """Real inputs for `batch` samples of `seq` tokens, one image each, in the family's format:
    integer tensors real (token ids with the image tokens, grids, masks), pixel tensors as
    (shape, dtype) to be made fake inside the mode."""
    import torch

    kind = ARCH[name]["kind"]
    out: dict[str, Any] = {}
    pixels: dict[str, tuple[tuple[int, ...], Any]] = {}
    if kind in ("qwen2-vl", "qwen2.5-vl"):
        v = cfg.vision_config
        merge = v.spatial_merge_size
        h, w = _grid(image_tokens, merge)
        per = v.in_chans * v.temporal_patch_size * v.patch_size**2
        pixels["pixel_values"] = ((batch * h * w, per), torch.bfloat16)
        out["image_grid_thw"] = torch.tensor([[1, h, w]] * batch)
        token, n_image = cfg.image_token_id, h * w // merge**2
    elif kind == "gemma-3":
        side = cfg.vision_config.image_size
        pixels["pixel_values"] = ((batch, 3, side, side), torch.bfloat16)
        token, n_image = cfg.image_token_index, cfg.mm_tokens_per_image
    elif kind == "llava":
        side = cfg.vision_config.image_size
        pixels["pixel_values"] = ((batch, 3, side, side), torch.bfloat16)
        n_image = (side // cfg.vision_config.patch_size) ** 2
        token = cfg.image_token_index
    elif kind == "mllama":
        v = cfg.vision_config
        tiles, side = v.max_num_tiles, v.image_size
        pixels["pixel_values"] = ((batch, 1, tiles, 3, side, side), torch.bfloat16)
        ratios = [tuple(r) for r in v.supported_aspect_ratios]
        out["aspect_ratio_ids"] = torch.full((batch, 1), ratios.index((2, 2)) + 1)
        out["aspect_ratio_mask"] = torch.ones(batch, 1, tiles, dtype=torch.long)
        out["cross_attention_mask"] = torch.ones(batch, seq, 1, tiles, dtype=torch.long)
        token, n_image = cfg.image_token_index, 1  # the image is read by cross-attention
    elif kind == "idefics3":
        side = cfg.vision_config.image_size
        per_crop = (side // cfg.vision_config.patch_size) ** 2 // cfg.scale_factor**2
        crops = image_tokens // per_crop
        pixels["pixel_values"] = ((batch, crops, 3, side, side), torch.bfloat16)
        out["pixel_attention_mask"] = torch.ones(batch, crops, side, side, dtype=torch.bool)
        token, n_image = cfg.image_token_id, crops * per_crop
    elif kind == "internvl":
        side = cfg.vision_config.image_size[0]
        per_tile = int((side // cfg.vision_config.patch_size[0]) ** 2 * cfg.downsample_ratio**2)
        tiles = image_tokens // per_tile
        pixels["pixel_values"] = ((batch * tiles, 3, side, side), torch.bfloat16)
        token, n_image = cfg.image_token_id, tiles * per_tile
    else:  # pragma: no cover - ARCH names every kind above
        raise ValueError(kind)
    if n_image + 8 > seq:
        raise ValueError(f"{name}: {seq} tokens cannot hold the image's {n_image}")
    ids = torch.full((batch, seq), 100, dtype=torch.long)
    ids[:, 4 : 4 + n_image] = token
    out["input_ids"] = ids
    if kind in ("qwen2-vl", "qwen2.5-vl"):  # the processor's: 1 marks an image token (M-RoPE)
        out["mm_token_type_ids"] = (ids == token).to(torch.int32)
    out["_pixels"] = pixels
    out["_image_tokens"] = n_image
    return out


def _index_mode() -> Any:
    """FakeTensorMode in which integer and boolean tensors are real constants (computed, up to
    2^28 elements) and floating-point ones stay fake: the index bookkeeping of the vision towers
    (windows, grids, scatter masks) is data-dependent, the memory is in the float tensors."""
    import torch
    from torch._subclasses import fake_tensor as ft
    from torch.utils._mode_utils import no_dispatch
    from torch.utils._pytree import tree_leaves, tree_map

    limit = 1 << 28
    ft.CONSTANT_NUMEL_LIMIT = limit  # a module global: how large a constant may be

    def index_like(t: Any) -> bool:
        return t.numel() <= limit and not (t.is_floating_point() or t.is_complex())

    class IndexMode(ft.FakeTensorMode):
        def dispatch(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            tensors = [a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
            if isinstance(func, torch._ops.OpOverload) and func.namespace == "aten":
                convert = self.fake_tensor_converter.from_real_tensor
                lifted = func in self.lift_fns and len(tensors) == 1
                if lifted and not self.is_our_fake(tensors[0]) and index_like(tensors[0]):
                    with no_dispatch():
                        real = tensors[0].clone()
                    return convert(self, real, make_constant=True)
                seeded = torch.Tag.nondeterministic_seeded in func.tags
                consts = [
                    t for t in tensors if self.is_our_fake(t) and t.constant is not None
                ]  # fmt: skip
                if tensors and not seeded and len(consts) == len(tensors):
                    # Every input is known (views included, which FakeTensorMode's own constant
                    # propagation skips): compute it, a constant while it stays small.
                    swap = {id(t): t.constant for t in consts}
                    real_args, real_kwargs = tree_map(
                        lambda a: swap.get(id(a), a), (args, kwargs)
                    )  # fmt: skip
                    with no_dispatch(), torch._C._PreserveDispatchKeyGuard():
                        # Views reach here inside FakeTensorMode's kernel invocation, which
                        # sends every op to the Meta key: the real values need the CPU one.
                        torch._C._set_meta_in_tls_dispatch_include(False)
                        out = func(*real_args, **real_kwargs)
                    outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
                    if all(t.numel() <= limit for t in outs):
                        # A view is cloned: the converter would give a view of a known base
                        # a meta constant (the values are what matter here, not the alias).
                        return tree_map(
                            lambda t: (
                                convert(self, t.clone() if t._is_view() else t, make_constant=True)
                                if isinstance(t, torch.Tensor)
                                else t
                            ),
                            out,
                        )
                if not tensors and not seeded and "device" in kwargs:  # a factory: arange, full
                    with no_dispatch():
                        probe = func(*args, **{**kwargs, "device": "meta"})
                    if isinstance(probe, torch.Tensor) and index_like(probe):
                        with no_dispatch():
                            real = func(*args, **{**kwargs, "device": "cpu"})
                        return convert(self, real, make_constant=True)
            return super().dispatch(func, types, args, kwargs)

    return IndexMode()


def _lora_class() -> Any:
    import torch
    from torch import nn

    class _LoraLinear(nn.Module):
        """PEFT's LoRA Linear as it runs: the frozen base, and fp32 adapters fed an fp32 copy of
        the input (peft tuners/lora/layer.py Linear.forward casts x to lora_A's dtype)."""

        def __init__(self, base: nn.Linear, rank: int) -> None:
            super().__init__()
            self.base = base
            # On the base's device: a model built on the GPU gets its adapters there too.
            at = {"dtype": torch.float32, "device": base.weight.device}
            self.lora_A = nn.Linear(base.in_features, rank, bias=False, **at)
            self.lora_B = nn.Linear(rank, base.out_features, bias=False, **at)

        def forward(self, x: Any) -> Any:
            out = self.base(x)
            return out + self.lora_B(self.lora_A(x.to(torch.float32))).to(out.dtype)

    return _LoraLinear


def checkpointing_on(model: Any) -> None:
    """Gradient checkpointing, non-reentrant, by the name the installed transformers has
    (activation_checkpointing_enable from 5.x, gradient_checkpointing_enable before)."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    enable = enable or model.gradient_checkpointing_enable
    enable({"use_reentrant": False})


def decoder_layers(model: Any) -> Any:
    """The language model's decoder layers: LlamaForCausalLM's model.layers, a VLM's
    language_model.layers (get_decoder names it in transformers 5.x)."""
    return model.get_decoder().layers


def add_lora(model: Any, rank: int) -> int:
    """LoRA on every linear of the decoder layers (all-linear, lm_head, projector and vision
    tower excluded: ms-swift's default with freeze_vit); every base weight frozen. Returns the
    adapters' parameter count."""
    from torch import nn

    lora = _lora_class()
    for p in model.parameters():
        p.requires_grad_(False)
    targets = [
        (parent, name, child)
        for layer in decoder_layers(model)
        for parent in layer.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear)
    ]
    for parent, name, child in targets:
        setattr(parent, name, lora(child, rank))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _tracker_class(base: Any) -> Any:
    class _Tracker(base):  # type: ignore[misc, valid-type]
        """MemTracker installs a gradient hook on every parameter of a module it enters, which
        torch refuses for a frozen one (the LoRA base): only modules whose parameters all train
        get the hooks; a trainable adapter's own Linear is such a module."""

        def _track_module_params_and_buffers(self, module: Any, install_grad_hooks: bool = True):
            trains = all(p.requires_grad for p in module.parameters())
            return super()._track_module_params_and_buffers(module, install_grad_hooks and trains)

        def _update_peak_stats(self, peak_state: Any) -> None:
            """Only the whole-run peak, which is all the oracle reads: MemTracker also walks
            every module it has seen on every allocation for per-module peaks, which makes a
            real-size LoRA step (hundreds of modules) take tens of minutes on a CPU."""
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap["Total"]:
                    self._peak_mem[dev] = snap["Total"]
                    self._peak_mem_snap[dev] = dict(snap)

    return _Tracker


def _peak(tracker: Any) -> dict[str, Any]:
    snap = tracker.get_tracker_snapshot("peak")
    dev = next(iter(snap.values()))
    kinds = {str(getattr(k, "value", k)).lower(): int(v) for k, v in dev.items()}
    return {"peak": int(dev.get("Total", 0)), "by_kind": {k: v for k, v in kinds.items() if v}}


def _vision_call(name: str, model: Any, inputs: dict[str, Any]) -> Any:
    """The vision tower and projector alone, on the sample's image inputs."""
    kind = ARCH[name]["kind"]
    inner = model.model
    if kind == "mllama":
        return inner.vision_model(
            pixel_values=inputs["pixel_values"],
            aspect_ratio_ids=inputs["aspect_ratio_ids"],
            aspect_ratio_mask=inputs["aspect_ratio_mask"],
        )
    keys = {
        "qwen2-vl": ("pixel_values", "image_grid_thw"),
        "qwen2.5-vl": ("pixel_values", "image_grid_thw"),
        "idefics3": ("pixel_values", "pixel_attention_mask"),
    }.get(kind, ("pixel_values",))
    return inner.get_image_features(**{k: inputs[k] for k in keys})


def vision_params(model: Any) -> int:
    """Parameters of the vision tower and the projector (what the estimate's `vision` counts)."""
    skip = ("language_model", "text_model", "lm_head")
    return sum(
        p.numel()
        for n, p in model.named_parameters()
        if not any(part in n.split(".") for part in skip)
        and "embed_tokens" not in n  # Mllama's decoder keeps its embedding outside language_model
    )


def trace(
    name: str,
    text: dict[str, Any],
    task: str,
    batch: int,
    seq: int,
    image_tokens: int,
    rank: int = 8,
    checkpointing: bool = True,
    tiny: bool = False,
) -> dict[str, Any]:
    """Peak live bytes of one run of the profile's own architecture under FakeTensorMode, by kind
    at the peak, with the parameter counts and (infer) the vision tower's own peak."""
    import torch
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    from torch.distributed._tools.mem_tracker import MemTracker
    from transformers.initialization import no_init_weights

    if task not in TASKS:
        raise ValueError(f"task {task!r}: one of {', '.join(TASKS)}")
    cfg = build_config(name, text, tiny)
    real = image_inputs(name, cfg, batch, seq, image_tokens)
    pixels = real.pop("_pixels")
    n_image = real.pop("_image_tokens")
    # Made before the mode: a tensor made inside it is fake, and a fake constant is no constant.
    pixels = {k: torch.ones(shape, dtype=dtype) for k, (shape, dtype) in pixels.items()}
    started = time.perf_counter()
    mode = _index_mode()
    tracker_cls = _tracker_class(MemTracker)
    with mode:
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            with no_init_weights():  # random init draws values a fake tensor does not have
                model = model_class(name)(cfg)
            model.tie_weights()  # no_init_weights skips the tying too: tied lm_heads share
        finally:
            torch.set_default_dtype(previous)
        params = sum(p.numel() for p in model.parameters())
        vision = vision_params(model)
        if "mm_token_type_ids" in real:
            # Qwen2-VL's get_rope_index builds torch.tensor() from a list of 0-dim tensors, which
            # reads their data outside the dispatcher (a fake tensor has none): the 3-D position
            # ids are computed by the model's own get_rope_index, from config and ids only, on
            # the real integer inputs outside the mode, and passed in as the processor's path.
            with unset_fake_temporarily():
                real["position_ids"] = model.model.get_rope_index(
                    real["input_ids"],
                    mm_token_type_ids=real["mm_token_type_ids"],
                    image_grid_thw=real["image_grid_thw"],
                )[0]
        inputs = {
            k: mode.fake_tensor_converter.from_real_tensor(mode, v, make_constant=True)
            for k, v in real.items()
        }
        # Pixels are real constants too (a few MB): Idefics3 tests crops for all-zero padding.
        for key, real_pixels in pixels.items():
            inputs[key] = mode.fake_tensor_converter.from_real_tensor(
                mode, real_pixels, make_constant=True
            )
        optim = None
        trainable = 0
        if task == "lora":
            trainable = add_lora(model, rank)
        elif task == "full":  # the language model trains (embeddings, decoder, lm_head)
            for p in model.parameters():
                p.requires_grad_(False)
            for p in [*model.get_decoder().parameters(), model.lm_head.weight]:
                p.requires_grad_(True)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        vision_peak = None
        if task == "infer":
            tracker = tracker_cls()
            tracker.track_external(model)
            with tracker, torch.no_grad():
                _vision_call(name, model, inputs)
            vision_peak = _peak(tracker)
        else:
            model.train()
            if checkpointing:
                checkpointing_on(model)
                model.config.use_cache = False
            params_to_train = [p for p in model.parameters() if p.requires_grad]
            optim = torch.optim.AdamW(params_to_train, lr=1e-4, foreach=False)
        tracker = tracker_cls()
        tracker.track_external(model, *([optim] if optim else []))
        with tracker:
            if task == "infer":
                keep = 0 if text.get("prefill_logits_all") else 1
                with torch.no_grad():
                    model(**inputs, use_cache=True, logits_to_keep=keep)
            else:  # two steps: AdamW makes its states in the first, the second is steady
                for step in range(2):
                    if step:
                        tracker.reset_mod_stats()  # per-module stats; the peak stays
                    out = model(**inputs, labels=inputs["input_ids"], use_cache=False)
                    out.loss.backward()
                    optim.step()  # type: ignore[union-attr]
                    optim.zero_grad()  # type: ignore[union-attr]
        whole = _peak(tracker)
    return {
        **whole,
        "params": int(params),
        "vision_params": int(vision),
        "trainable": int(trainable),
        "image_tokens": int(n_image),
        "vision": vision_peak,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _shape_from_config(cfg: Any, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The [text] and [image] encoder shape of the built config, in the profile's keys: the
    estimate reads these, so tiny configs are estimated from their own shape."""
    kind = ARCH[name]["kind"]
    t = cfg.get_text_config()
    heads = t.num_attention_heads
    text: dict[str, Any] = {
        "hidden": t.hidden_size,
        "intermediate": t.intermediate_size,
        "layers": t.num_hidden_layers,
        "heads": heads,
        "kv_heads": t.num_key_value_heads,
        "head_dim": getattr(t, "head_dim", None) or t.hidden_size // heads,
        "vocab": t.vocab_size,
    }
    if kind == "mllama":
        text["cross_attention_layers"] = len(t.cross_attention_layers)
    if kind == "gemma-3":
        text["sliding_window"] = t.sliding_window
        text["global_layers"] = sum(x == "full_attention" for x in t.layer_types)
    v = cfg.vision_config
    if kind == "qwen2-vl":
        image = {
            "encoder_hidden": v.embed_dim,
            "encoder_layers": v.depth,
            "encoder_heads": v.num_heads,
        }
    elif kind == "qwen2.5-vl":
        image = {
            "encoder_hidden": v.hidden_size,
            "encoder_layers": v.depth,
            "encoder_heads": v.num_heads,
        }
    elif kind == "mllama":
        image = {
            "encoder_hidden": v.hidden_size,
            "encoder_layers": v.num_hidden_layers + v.num_global_layers,
            "encoder_heads": v.attention_heads,
        }
    else:
        image = {
            "encoder_hidden": v.hidden_size,
            "encoder_layers": v.num_hidden_layers,
            "encoder_heads": v.num_attention_heads,
        }
    return text, image


def probe_profile(profile: Any, cfg: Any, traced: dict[str, Any]) -> Any:
    """The profile with the traced build's shape and parameter counts (bf16 weights), so the
    estimate and the trace describe the same model; at real size the shape is the profile's."""
    text, image = _shape_from_config(cfg, profile.name)
    data = dict(profile.data)
    data["text"] = {**profile.text, **text}
    data["image"] = {**profile.image, **image}
    vision = traced["vision_params"]
    data["params"] = {
        **profile.params,
        "total": traced["params"],
        "language": traced["params"] - vision,
        "vision": vision,
    }
    data["weights"] = {**profile.weights, "dtype": "bfloat16", "bytes": 2 * traced["params"]}
    return replace(profile, data=data)


SKIP = ("overhead", "training reserve", "deepspeed buffers", "cpu offload")
# The stack a traced run is: plain transformers for inference, PEFT for the rest.
STACK = {"infer": "transformers", "lora": "peft", "qlora": "peft", "full": "peft"}


def estimate_run(
    profile: Any, task: str, batch: int, seq: int, images: int = 0, image_tokens: int | None = None
) -> Any:
    """provision's estimate of the traced run (one GPU, no ZeRO)."""
    from provision.memory import FitRequest, estimate

    req = FitRequest(
        task=task, stack=STACK[task], batch=batch, seq=seq, images=images,
        image_tokens=image_tokens, zero=0,
    )  # fmt: skip
    return estimate(profile, req)


def tensor_terms(est: Any) -> dict[str, float]:
    """An estimate's tensor terms: everything but the CUDA context / fragmentation overhead and
    the training reserve, which a trace cannot see."""
    return {c.name: c.bytes for c in est.components if c.name not in SKIP}


def estimate_terms(
    profile: Any, task: str, batch: int, seq: int, images: int = 0, image_tokens: int | None = None
) -> dict[str, float]:
    """The estimate's tensor terms for the same run."""
    return tensor_terms(estimate_run(profile, task, batch, seq, images, image_tokens))


def estimate_vision(profile: Any, task: str, batch: int, seq: int, image_tokens: int) -> float:
    """The estimate's vision-tower term for the same run (part of its activations)."""
    from provision.memory import FitRequest, resolve_request, vision_bytes

    req = FitRequest(
        task=task, stack=STACK[task], batch=batch, seq=seq, image_tokens=image_tokens, zero=0
    )
    return vision_bytes(profile, resolve_request(profile, req), batch, train=False)


def estimate_image_tokens(profile: Any, traced: dict[str, Any]) -> int:
    """Image tokens per image as the estimate counts them: the tokens the tower's output puts
    into the text (Mllama's cross-attention reads the profile's tiles x patches instead)."""
    if ARCH[profile.name]["kind"] == "mllama":
        return int(profile.image["tokens"])
    return int(traced["image_tokens"])


def compare(
    profile: Any, cfg: Any, task: str, batch: int, seq: int, traced: dict[str, Any]
) -> dict[str, Any]:
    """One row: traced peak and estimate, both with and without the weights, and the vision
    tower's own peak (infer) beside the estimate's vision term."""
    probe = probe_profile(profile, cfg, traced)
    tokens = estimate_image_tokens(profile, traced)
    terms = estimate_terms(probe, task, batch, seq, images=1, image_tokens=tokens)
    ours = sum(terms.values())
    peak = traced["peak"]
    if task == "full":
        # The trace's AdamW keeps bf16 states on bf16 weights (4 B/param); mixed precision keeps
        # an fp32 master copy and two fp32 moments (12 B/param): add the difference back.
        peak += 8 * traced["trainable"]
    weights = traced["by_kind"].get("parameter", 0)
    row = {
        "profile": profile.name,
        "task": task,
        "batch": batch,
        "seq": seq,
        "image_tokens": traced["image_tokens"],
        "traced_peak": peak,
        "traced_raw_peak": traced["peak"],  # before the mixed-precision correction (full)
        "params": traced["params"],
        "vision_params": traced["vision_params"],
        "trainable": traced["trainable"],
        "estimate": int(ours),
        "traced_beyond_weights": peak - weights,
        "estimate_beyond_weights": int(ours - terms.get("weights", 0)),
        "error": round((ours - peak) / peak, 3),
        "traced_by_kind": traced["by_kind"],
        "estimate_terms": {k: int(v) for k, v in terms.items()},
        "trace_seconds": traced["seconds"],
    }
    if traced.get("vision"):
        v = traced["vision"]
        row["traced_vision"] = v["peak"] - v["by_kind"].get("parameter", 0)
        row["traced_vision_by_kind"] = v["by_kind"]
        row["estimate_vision"] = int(estimate_vision(probe, task, batch, seq, tokens))
    return row


def default_seq(profile: Any, task: str, image_tokens: int) -> int:
    """The estimate's default tokens per sample with one image (fit.toml [defaults])."""
    from provision.memory import coefficients

    d = coefficients()["defaults"]
    in_text = image_tokens if profile.image.get("in_text_sequence", True) else 0
    return (
        in_text + d["infer_text_tokens"] if task == "infer" else max(d["train_seq"], in_text + 256)
    )


def run_grid(profiles: list[str], tasks: list[str], batches: list[int]) -> list[dict[str, Any]]:
    """Each profile x task x batch at the estimate's default tokens for one image per sample."""
    from provision.profiles import load_profile

    rows = []
    for name in profiles:
        profile = load_profile(name)
        for task in tasks:
            for batch in batches:
                seq = default_seq(profile, task, profile.image["tokens"])
                traced = trace(name, profile.text, task, batch, seq, profile.image["tokens"])
                cfg = build_config(name, profile.text)
                rows.append(compare(profile, cfg, task, batch, seq, traced))
                print(_row(rows[-1]), flush=True)
    return rows


def reestimate(row: dict[str, Any]) -> dict[str, Any]:
    """A recorded row with today's estimate beside its trace (after a change to the estimate;
    the traced figures are kept as they were)."""
    from provision.profiles import load_profile

    profile = load_profile(row["profile"])
    traced = {
        "peak": row["traced_raw_peak"],
        "by_kind": row["traced_by_kind"],
        "params": row["params"],
        "vision_params": row["vision_params"],
        "trainable": row["trainable"],
        "image_tokens": row["image_tokens"],
        "seconds": row["trace_seconds"],
        "vision": None,
    }
    if "traced_vision_by_kind" in row:
        kinds = row["traced_vision_by_kind"]
        traced["vision"] = {"peak": kinds["total"], "by_kind": kinds}
    cfg = build_config(row["profile"], profile.text)
    return compare(profile, cfg, row["task"], row["batch"], row["seq"], traced)


def _gib(v: float | None) -> str:
    return "" if v is None else f"{v / GIB:.2f}"


def _row(r: dict[str, Any]) -> str:
    return (
        f"| {r['profile']} | {r['task']} | {r['batch']}x{r['seq']} | {_gib(r['traced_peak'])} "
        f"| {_gib(r['estimate'])} | {r['error']:+.0%} | {_gib(r['traced_beyond_weights'])} "
        f"| {_gib(r['estimate_beyond_weights'])} | {_gib(r.get('traced_vision'))} "
        f"| {_gib(r.get('estimate_vision'))} |"
    )


HEADER = (
    "| profile | task | batch x tokens | traced peak GiB | estimate GiB | error "
    "| traced beyond weights | estimate beyond weights | traced vision tower | estimate vision "
    "|\n|---|---|---|---|---|---|---|---|---|---|"
)


def table(rows: list[dict[str, Any]]) -> str:
    return "\n".join([HEADER, *(_row(r) for r in rows)])


def versions() -> dict[str, str]:
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    from provision.profiles import list_profiles

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="*", default=None, help="default: every built-in")
    parser.add_argument("--tasks", nargs="*", default=["infer", "lora"], choices=TASKS)
    parser.add_argument("--batches", nargs="*", type=int, default=[1], help="samples per step")
    parser.add_argument("--write", action="store_true", help=f"write {RESULTS.relative_to(ROOT)}")
    parser.add_argument("--table", action="store_true", help="print the recorded rows' table")
    parser.add_argument(
        "--reestimate", action="store_true", help="recompute the recorded rows' estimate columns"
    )
    args = parser.parse_args(argv)
    if args.reestimate:
        doc = json.loads(RESULTS.read_text())
        doc["rows"] = [reestimate(r) for r in doc["rows"]]
        write_results(doc)
        print(table(doc["rows"]))
        return 0
    if args.table:
        print(table(json.loads(RESULTS.read_text())["rows"]))
        return 0
    names = args.profiles or [p.name for p in list_profiles()]
    unknown = sorted(set(names) - set(ARCH))
    if unknown:
        parser.error(f"no architecture for {', '.join(unknown)}: add it to ARCH")
    print(HEADER)
    rows = run_grid(names, args.tasks, args.batches)
    if args.write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        # Rows of earlier runs stay unless this run traced the same profile, task and shape,
        # and only if they were traced the same way (the real architecture).
        key = ("profile", "task", "batch", "seq")
        done = {tuple(r[k] for k in key) for r in rows}
        kept = []
        if RESULTS.exists():
            old = json.loads(RESULTS.read_text())
            if old.get("architecture") == "real":
                kept = [r for r in old["rows"] if tuple(r[k] for k in key) not in done]
        doc = {
            "what": "FakeTensorMode + MemTracker peaks of each profile's own architecture, "
            "vision tower included (benchmarks/trace_oracle.py), next to provision's estimate "
            "of the same run",
            "architecture": "real",
            "derived": {n: a["derived"] for n, a in ARCH.items() if "derived" in a},
            "versions": versions(),
            "rows": kept + rows,
        }
        write_results(doc)
    return 0


def write_results(doc: dict[str, Any], out: Path = RESULTS) -> None:
    """`doc` as indented JSON at `out`, whole or not at all (written beside it, then moved)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(out)


if __name__ == "__main__":
    raise SystemExit(main())
