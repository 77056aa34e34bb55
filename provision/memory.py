"""Peak GPU memory of one run, counted from the profile's numbers.

What a run holds: weights (by dtype or quantisation), KV cache from the text model's shape
(sliding-window and cross-attention layers counted as such), activations (with or without gradient
checkpointing), logits, the vision encoder's peak (including the dense S x S attention masks some
encoders build), LoRA / optimizer / gradient state, DeepSpeed buffers, and framework overhead.
Coefficients live in provision/data/fit.toml, per-stack behaviour in provision/data/stacks.toml.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache
from typing import Any

from provision.choices import ATTENTION, QUANTS, TASKS, TRAIN_VISION, stacks
from provision.errors import ProvisionError
from provision.profiles import DTYPE_BYTES, Profile
from provision.resources import load_table
from provision.units import GIB

DTYPES = ("fp32", "fp16", "bf16")


@cache
def _table(name: str) -> dict[str, Any]:
    return load_table(name)


def coefficients() -> dict[str, Any]:
    return _table("fit.toml")


def vision_family(profile: Profile) -> dict[str, Any]:
    """The family's vision encoder facts (provision/data/vision.toml); {} for an unknown family."""
    return _table("vision.toml")["family"].get(profile.data.get("family", ""), {})


def lmdeploy_backend(profile: Profile, eng: dict[str, Any]) -> str:
    """ "turbomind" for the architectures LMDeploy's TurboMind serves, else "pytorch"
    (lmdeploy/archs.py autoget_backend; the list is stacks.toml's)."""
    return "turbomind" if profile.architecture in eng["turbomind_architectures"] else "pytorch"


def vllm_defaults(eng: dict[str, Any], runner: str, req: FitRequest) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) `vllm serve` takes when not given: V1's depend on
    the card (stacks.toml [stack.vllm.engine.v1_defaults]); V0 takes 256 sequences and batches
    a whole context, at least v0_min_batched_tokens (`req` is resolved: its context is set)."""
    if runner.startswith("V0"):
        return max(req.context or 0, eng["v0_min_batched_tokens"]), eng["max_num_seqs"]
    table = eng["v1_defaults"]
    large = req.card_bytes is None or req.card_bytes >= table["large_card_gib"] * GIB
    chosen = table["large" if large else "small"]
    return chosen["max_num_batched_tokens"], chosen["max_num_seqs"]


def vllm_video_tokens(profile: Profile, context: int, pair_tokens: int) -> int:
    """vLLM's largest dummy video for a model that takes video (vision.toml vllm_video_max_frames:
    Qwen2-VL and Qwen2.5-VL): as many frames of the largest image as fit in the context after one
    image, at most the frame cap, two frames per token group (qwen2_vl.py
    get_num_frames_with_most_features, vLLM 0.8.5). 0 for a model without video."""
    fam = vision_family(profile)
    cap = fam.get("vllm_video_max_frames")
    if not cap:
        return 0
    per_group = fam.get("temporal_patch_size", 1)
    groups = max(1, min((context - pair_tokens) // pair_tokens, cap // per_group))
    return groups * pair_tokens


def vllm_runner(profile: Profile, req: FitRequest | None = None) -> str:
    """Which vLLM runner serves the model: "V0 encoder-decoder" for the families vision.toml marks
    `vllm_profile = "encoder-decoder"` (Mllama); "V0" where the GPUs fall back to the V0 engine
    (`req.vllm_v0`, set by fit.judge from the machine); else "V1"."""
    if vision_family(profile).get("vllm_profile") == "encoder-decoder":
        return "V0 encoder-decoder"
    return "V0" if req is not None and req.vllm_v0 else "V1"


def engine_of(stack: str | None) -> dict[str, Any] | None:
    """The serving engine's start-up facts, for stacks that have them (vLLM, LMDeploy)."""
    return stacks().get(stack or "", {}).get("engine")


def image_tokens_for(profile: Profile, req: FitRequest) -> int | None:
    """Tokens per image (per video with --frames) from --max-pixels / --max-tiles by the family's
    rule; None when the request names neither (the profile's default applies)."""
    fam = vision_family(profile)
    family = profile.data.get("family", profile.name)
    tokens = None
    if req.max_tiles is not None:
        if "tokens_per_tile" not in fam:
            raise ProvisionError(
                f"--max-tiles does not apply to {family}: its images are not cut into tiles.",
                "Use --max-pixels or --image-tokens.",
            )
        cap = fam.get("max_tiles")
        if cap is not None and req.max_tiles > cap:
            raise ProvisionError(f"--max-tiles {req.max_tiles}: {family} takes at most {cap}.")
        thumb = 1 if fam.get("thumbnail") and req.max_tiles > 1 else 0
        tokens = fam["tokens_per_tile"] * (req.max_tiles + thumb)
    if req.max_pixels is not None:
        if "pixels_per_token" not in fam:
            raise ProvisionError(
                f"--max-pixels does not apply to {family}: it has no pixel budget.",
                "Use --max-tiles for tiled models, or --image-tokens.",
            )
        if tokens is not None:
            raise ProvisionError("Give --max-pixels or --max-tiles, not both.")
        tokens = max(req.max_pixels // fam["pixels_per_token"], 4)
    if req.frames is not None:
        step = fam.get("temporal_patch_size", 1)
        per_frame = tokens or _video_frame_tokens(fam, req.frames) or profile.image["tokens"]
        tokens = per_frame * -(-req.frames // step)
    return tokens


def media_text(req: FitRequest, per_item: int | None = None) -> str:
    """What each sample carries, in words: "2 image(s) x 1280 tokens", or with --frames
    "1 video(s) of 64 frames x 24576 tokens"."""
    what = f"video(s) of {req.frames} frames" if req.frames else "image(s)"
    return f"{req.images} {what} x {per_item if per_item is not None else req.image_tokens} tokens"


def _video_frame_tokens(fam: dict[str, Any], frames: int) -> int | None:
    """Tokens per frame (pair) a video gets by the processor's own budget, where the family has
    one (qwen-vl-utils: a per-frame cap, shrunk so the whole video stays under a total)."""
    if "video_pair_max_tokens" not in fam:
        return None
    share = fam["video_total_tokens"] * fam.get("temporal_patch_size", 1) // frames
    return max(min(fam["video_pair_max_tokens"], share), int(fam["video_pair_min_tokens"] * 1.05))


@dataclass(frozen=True)
class FitRequest:
    """One run to size. None means "the default": the profile's or the coefficients table's."""

    task: str = "infer"
    quant: str | None = None  # infer: bf16; lora/full: a bf16 base; qlora: an int4 base
    batch: int = 1
    seq: int | None = None  # tokens per sample, image tokens included when they sit in the text
    images: int = 1
    image_tokens: int | None = None  # per image
    gradient_checkpointing: bool = True
    vision_gradient_checkpointing: bool | None = None  # default: as gradient_checkpointing
    # The vision tower under training: frozen (no gradient reaches it), lora (adapters on its
    # linears) or full. A bool is read as full / frozen (older observation rows).
    train_vision: str = "frozen"
    cpu_offload: bool = False  # DeepSpeed ZeRO offload: optimizer (and ZeRO-3 parameters) in RAM
    stack: str | None = None  # default: the profile's stack for the task
    zero: int | None = None  # DeepSpeed ZeRO stage; default: the profile's
    lora_rank: int | None = None
    context: int | None = None  # serving engines: tokens of KV reserved (max_model_len)
    attention: str = "sdpa"
    memory_fraction: float | None = None  # share of the card the stack may use
    # Serving engines as they start (stacks.toml [stack.*.engine]); None = the engine's default.
    max_num_seqs: int | None = None  # vLLM --max-num-seqs (LMDeploy --max-batch-size)
    enforce_eager: bool = False  # vLLM --enforce-eager: no CUDA graphs
    max_batched_tokens: int | None = None  # vLLM --max-num-batched-tokens
    limit_images: int | None = None  # vLLM --limit-mm-per-prompt image=N
    limit_videos: int | None = None  # vLLM --limit-mm-per-prompt video=M
    cache_max_entry_count: float | None = None  # LMDeploy's KV share of the free memory
    # Resolution settings turned into image tokens by the family's rule (vision.toml).
    max_pixels: int | None = None
    max_tiles: int | None = None
    frames: int | None = None  # video frames per sample
    dtype: str | None = None  # the loaded weights' dtype: fp32 doubles the 16-bit weights
    # The largest image an engine's start-up profiles with: the user's bound, else the model's max.
    largest_image_tokens: int | None = None
    # vLLM runs its V0 engine on these GPUs (below the compute capability V1 needs): set from the
    # machine by fit.judge, not by the user.
    vllm_v0: bool = False
    # The smallest GPU's memory, set by fit.judge: vLLM's V1 defaults depend on it.
    card_bytes: int | None = None

    def __post_init__(self) -> None:
        from provision.bounds import check_bound

        if isinstance(self.train_vision, bool):
            object.__setattr__(self, "train_vision", "full" if self.train_vision else "frozen")

        for name in (
            "batch", "seq", "images", "image_tokens", "context", "zero", "lora_rank",
            "memory_fraction",
        ):  # fmt: skip
            check_bound(name, getattr(self, name))

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def validate_request(req: FitRequest) -> None:
    choices = {
        "task": TASKS,
        "quant": QUANTS,
        "attention": ATTENTION,
        "dtype": DTYPES,
        "train_vision": TRAIN_VISION,
    }
    for name, allowed in choices.items():
        value = getattr(req, name)
        if value is not None and value not in allowed:
            flag = "--task" if name == "task" else f"--{name.replace('_', '-')}"
            label = "Unknown task" if name == "task" else f"Unknown {flag}"
            raise ProvisionError(f"{label} '{value}'.", f"Use one of: {', '.join(allowed)}.")
    if req.stack is not None and req.stack not in stacks():
        raise ProvisionError(
            f"Unknown --stack '{req.stack}'.", f"Use one of: {', '.join(sorted(stacks()))}."
        )
    if req.task in ("lora", "full") and req.quant in ("int8", "int4", "fp8"):
        hint = "Use --task qlora for a 4-bit base, or drop --quant." if req.task == "lora" else ""
        raise ProvisionError(f"--task {req.task} trains on a 16-bit base, not {req.quant}.", hint)
    for name in (
        "batch",
        "images",
        "seq",
        "image_tokens",
        "lora_rank",
        "context",
        "max_num_seqs",
        "max_batched_tokens",
        "max_pixels",
        "max_tiles",
        "frames",
    ):
        value = getattr(req, name)
        if value is not None and value < (0 if name == "images" else 1):
            raise ProvisionError(f"--{name.replace('_', '-')} {value} is out of range.")
    for name in ("limit_images", "limit_videos"):
        value = getattr(req, name)
        if value is not None and value < 0:
            raise ProvisionError(f"--limit-mm {name[6:-1]}={value} is out of range.")
    cme = req.cache_max_entry_count
    if cme is not None and not 0 < cme < 1:
        raise ProvisionError(
            f"--cache-max-entry-count {cme} must be in (0, 1).",
            "It is LMDeploy's share of the memory left after the weights load (default 0.8).",
        )
    if req.zero is not None and req.zero not in (0, 1, 2, 3):
        raise ProvisionError(f"--zero {req.zero} must be 0, 1, 2 or 3.")
    if req.cpu_offload and req.task == "infer":
        raise ProvisionError(
            "--cpu-offload is DeepSpeed's ZeRO offload, a training setting.",
            "Use it with --task lora, qlora or full (and --zero 1, 2 or 3).",
        )
    if req.task == "infer" and req.train_vision != "frozen":
        raise ProvisionError(
            f"--train-vision {req.train_vision} needs a training task.",
            "Use --task lora, qlora or full, or drop --train-vision.",
        )
    if req.memory_fraction is not None and not 0 < req.memory_fraction <= 1:
        raise ProvisionError(f"--memory-fraction {req.memory_fraction} must be in (0, 1].")


@dataclass(frozen=True)
class Component:
    name: str
    bytes: float  # per GPU
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "gib": round(self.bytes / GIB, 2), "detail": self.detail}


@dataclass
class Estimate:
    """Peak memory per GPU for one request spread over `gpus` GPUs."""

    request: FitRequest  # resolved: no None left that matters
    components: list[Component]
    gpus: int
    strategy: str
    memory_fraction: float  # share of a GPU's memory the stack can use
    # A serving engine's start-up, as the verdict needs it: name, the KV bytes per GPU that one
    # request of the context needs, and the engine's own settings as resolved (see _engine()).
    engine: dict[str, Any] | None = None

    @property
    def per_gpu(self) -> float:
        return sum(c.bytes for c in self.components)

    def part(self, name: str) -> float:
        return sum(c.bytes for c in self.components if c.name == name)

    def to_json(self) -> dict[str, Any]:
        return {
            "per_gpu_gib": round(self.per_gpu / GIB, 2),
            "gpus": self.gpus,
            "strategy": self.strategy,
            "memory_fraction": self.memory_fraction,
            "components": [c.to_json() for c in self.components],
            "engine": self.engine,
        }


# --- the model's pieces ------------------------------------------------------------------------


def embedding_params(profile: Profile) -> tuple[int, int]:
    """(input embedding, untied lm_head) parameter counts."""
    text = profile.text
    embed = text["vocab"] * text["hidden"]
    return embed, (0 if text["tie_word_embeddings"] else embed)


def language_linear_params(profile: Profile) -> int:
    """Parameters in the language model's linear layers: what quantisation shrinks."""
    embed, head = embedding_params(profile)
    return max(profile.params["language"] - embed - head, 0)


def loaded_weight_bytes(profile: Profile, req: FitRequest, lora_base: float | None = None) -> float:
    """weight_bytes as the request loads them: `--dtype fp32` (torch_dtype=float32, or a script
    that passes no torch_dtype) holds 4 bytes where the checkpoint has 2; quantised linears stay
    packed."""
    quant = req.quant or "bf16"
    weights = weight_bytes(profile, quant, lora_base)
    if req.dtype != "fp32" or lora_base is not None:
        return weights
    if quant in ("bf16", "fp16"):
        return 2 * weights
    return weights + (profile.params["total"] - language_linear_params(profile)) * 2.0


def loaded_as(req: FitRequest) -> str:
    """How the weights sit on the GPU, in words: the quantisation, or fp32 where --dtype fp32
    loads the 16-bit weights (or the parts a quantisation leaves) at 4 bytes."""
    quant = req.quant or "bf16"
    if req.dtype != "fp32":
        return quant
    return "fp32" if quant in ("bf16", "fp16") else f"{quant} linears, fp32 rest"


def weight_bytes(profile: Profile, quant: str, lora_base_bytes: float | None = None) -> float:
    """Bytes of the weights on the GPU. Quantisation shrinks the language model's linear layers;
    embeddings, lm_head and the vision tower stay 16-bit. A stack may hold the frozen LoRA base at
    another width (`lora_base_bytes`, per language-model parameter)."""
    total = profile.params["total"]
    stored = profile.weights["dtype"]
    sixteen = profile.weights["bytes"] if DTYPE_BYTES[stored] == 2 else total * 2
    if lora_base_bytes is not None:
        language = profile.params["language"]
        return language * lora_base_bytes + (total - language) * 2.0
    if quant in ("bf16", "fp16"):
        return float(sixteen)
    linear = language_linear_params(profile)
    return linear * coefficients()["quant"][quant] + (total - linear) * 2.0


def kv_bytes(profile: Profile, tokens: int, batch: int, sliding_held: int | None = None) -> float:
    """16-bit KV cache for `tokens` per sequence: sliding layers keep at most their window (or
    `sliding_held` tokens, where an engine counts them its own way)."""
    text = profile.text
    per_layer_token = 2 * text["kv_heads"] * text["head_dim"] * 2
    self_layers = text["layers"] - text.get("cross_attention_layers", 0)
    window = text.get("sliding_window", 0)
    global_layers = text.get("global_layers", self_layers) if window else self_layers
    sliding_layers = self_layers - global_layers
    if sliding_held is None:
        sliding_held = min(tokens, window or tokens)
    held = global_layers * tokens + sliding_layers * sliding_held
    return float(batch * per_layer_token * held)


def cross_kv_bytes(profile: Profile, image_tokens: int, images: int, batch: int) -> float:
    """Cross-attention layers (Mllama) keep K/V of the image states instead of text tokens."""
    text = profile.text
    layers = text.get("cross_attention_layers", 0)
    per_token = 2 * text["kv_heads"] * text["head_dim"] * 2
    return float(batch * layers * per_token * image_tokens * images)


def lora_params(profile: Profile, rank: int) -> int:
    """LoRA on every linear layer of the language model (ms-swift's and PEFT's all-linear)."""
    t = profile.text
    h, i = t["hidden"], t["intermediate"]
    q, kv = t["heads"] * t["head_dim"], t["kv_heads"] * t["head_dim"]
    per_layer = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h)
    return rank * per_layer * t["layers"]


def _attention_scores_bytes(heads: int, pairs: float, attention: str) -> float:
    """Transient bytes of one eager attention: bf16 scores, the masked bf16 copy, the fp32
    softmax and its bf16 cast; memory-efficient kernels (sdpa, flash) hold none of these."""
    return heads * pairs * (2 + 2 + 4 + 2) if attention == "eager" else 0.0


def vision_bytes(
    profile: Profile,
    req: FitRequest,
    samples: int,
    train: bool,
    n_images: int | None = None,
    memory_efficient: bool = False,
) -> float:
    """The vision tower's peak for `samples` samples of `req.images` images each (or `n_images`
    images in one encoder batch, as an engine's start-up profile run pushes them).

    How far attention reaches is the family's (vision.toml): per tile (InternVL, SmolVLM), per
    image (Mllama, with its dense per-image mask; LLaVA, Gemma), or over all patches of the batch
    (Qwen2-VL family in transformers: a dense S x S mask, profiles' `encoder_dense_mask`).
    `memory_efficient`: the engine's own kernels (vLLM) build no S x S mask.
    """
    image = profile.image
    fam = vision_family(profile)
    assert req.image_tokens is not None
    per_image = req.image_tokens * image.get("encoder_tokens_per_image_token", 1)
    if n_images is None:
        n_images = max(req.images, 1) * samples
    patches = per_image * n_images
    hidden = image.get("encoder_hidden", 1024)
    layers = image.get("encoder_layers", 24)
    heads = image.get("encoder_heads", 16)
    per_layer = patches * hidden * 2 * coefficients()["activations"]["vision_hidden"]
    checkpointed = req.vision_gradient_checkpointing
    if checkpointed is None:
        checkpointed = req.gradient_checkpointing
    if train and not checkpointed:
        linear = per_layer * layers  # every layer's activations are kept for backward
    elif train:
        linear = patches * hidden * 2 * layers + per_layer
    else:
        linear = per_layer
    if not memory_efficient:
        # Encoders that return every layer's output keep them all until the end (vision.toml
        # hidden_states_kept: Mllama's local transformer in transformers).
        linear += fam.get("hidden_states_kept", 0) * patches * hidden * 2.0
    scope = fam.get("scope", "batch" if image.get("encoder_dense_mask") else "image")
    if image.get("encoder_dense_mask") and not memory_efficient:
        pairs = float(patches) ** 2
        mask = pairs * (2 if req.attention == "eager" else 1)
        attn = mask + (_attention_scores_bytes(heads, pairs, req.attention))
    elif scope == "tile":
        tiles = -(-per_image // fam["tile_patches"]) * n_images
        scores = _attention_scores_bytes(heads, float(fam["tile_patches"]) ** 2, req.attention)
        attn = scores * tiles
    elif scope == "window" and memory_efficient:
        attn = 0.0
    else:
        pairs = float(per_image) ** 2
        attn = _attention_scores_bytes(heads, pairs, req.attention) * n_images
        if fam.get("mask") == "image":  # an additive bf16 mask per image, whatever the kernel
            attn += pairs * 2 * n_images
    if req.attention == "flash_attention_2" and fam.get("mask") != "image":
        attn = 0.0
    return linear + attn


# --- the estimate --------------------------------------------------------------------------------


def default_stack(profile: Profile, task: str) -> str:
    if task in profile.data["tasks"] or (task == "qlora" and "lora" in profile.data["tasks"]):
        return profile.task(task).stack
    return "transformers" if task == "infer" else "peft"


def resolve_request(profile: Profile, req: FitRequest) -> FitRequest:
    """Fill the request's defaults from the profile, the stack and the coefficients table."""
    validate_request(req)
    d = coefficients()["defaults"]
    stack = req.stack or default_stack(profile, req.task)
    info = stacks()[stack]
    quant = req.quant or ("int4" if req.task == "qlora" else "bf16")
    from_setting = image_tokens_for(profile, req)
    stack_tiles = info.get("default_max_tiles")
    fam = vision_family(profile)
    if (
        from_setting is None
        and req.image_tokens is None
        and stack_tiles
        and "tokens_per_tile" in fam
    ):
        # The stack's own default resolution (XTuner: the model's max_dynamic_patch), never
        # above what the family takes (Llama 3.2 Vision: 4 tiles).
        tiles = min(stack_tiles, fam.get("max_tiles", stack_tiles))
        from_setting = image_tokens_for(profile, replace(req, max_tiles=tiles))
    # A resolved request keeps its setting and the tokens it gave, so resolving it again agrees.
    if req.image_tokens is not None and from_setting not in (None, req.image_tokens):
        raise ProvisionError(
            "Give --image-tokens or a resolution setting (--max-pixels, --max-tiles), not both."
        )
    image_tokens = req.image_tokens or from_setting or profile.image["tokens"]
    # An engine's dummy image is the model's largest unless the user bounds the size.
    largest = req.image_tokens or from_setting or profile.image.get("max_tokens", image_tokens)
    in_seq = profile.image.get("in_text_sequence", True)
    image_total = image_tokens * req.images if in_seq else 0
    if req.seq is not None:
        seq = req.seq
    elif req.task == "infer":
        seq = image_total + d["infer_text_tokens"]
    else:
        seq = max(d["train_seq"], image_total + 256)
    zero = req.zero
    if zero is None:
        zero = profile.task(req.task).zero if req.task in profile.data["tasks"] else 0
    if req.cpu_offload and not zero:
        raise ProvisionError(
            "--cpu-offload is DeepSpeed's ZeRO offload: it needs a ZeRO stage.",
            "Add --zero 2 (optimizer state in RAM) or --zero 3 (the parameters too).",
        )
    paged = info["kind"] == "paged"
    # A serving engine started without --max-model-len / --session-len reserves what it reads from
    # config.json, which can be above the context the model card recommends (Qwen2.5-VL: 128000
    # against 32768): the check answers for the engine as it starts.
    engine = info.get("engine", {})
    context = req.context or (engine_max_len(profile, engine) if paged else seq)
    _check_context(profile, req, seq, context, image_total, engine if paged else None)
    fraction = req.memory_fraction or info.get("memory_fraction", 1.0)
    return replace(
        req,
        stack=stack,
        quant=quant,
        image_tokens=image_tokens,
        seq=seq,
        zero=zero,
        lora_rank=req.lora_rank or info.get("default_lora_rank", d["lora_rank"]),
        context=context,
        largest_image_tokens=req.largest_image_tokens or largest,
        memory_fraction=fraction,
    )


def _check_context(
    profile: Profile,
    req: FitRequest,
    seq: int,
    context: int,
    image_total: int,
    engine: dict[str, Any] | None,
) -> None:
    """A sample longer than the model's context is an input error, never a silent "fits"."""
    limit = profile.text["max_context"]
    if seq > limit:
        parts = f" ({media_text(req, image_total // max(req.images, 1))})" * bool(
            image_total and req.seq is None
        )
        fewer = (
            "Use fewer --frames, fewer tokens per frame (--max-pixels)"
            if req.frames
            else "Use fewer --images, fewer tokens per image (--image-tokens, --max-pixels, "
            "--max-tiles)"
        )
        raise ProvisionError(
            f"{seq} tokens per sample{parts} is longer than {profile.name}'s {limit}-token "
            "context.",
            f"{fewer} or --seq {limit} or less.",
        )
    # A paged engine refuses a length above the model's unless its table says otherwise (vLLM
    # does, LMDeploy does not; SGLang, without a table, refuses a context_length above config's).
    if engine is None or not engine.get("refuses_longer_context", True):
        return
    engine_limit = engine_max_len(profile, engine)
    if context > engine_limit:
        raise ProvisionError(
            f"--context {context} is longer than {profile.name}'s {engine_limit}-token context; "
            f"{engine.get('name', req.stack)} refuses a max_model_len above the model's.",
            f"Use --context {engine_limit} or less.",
        )


def _past_card(profile: Profile, context: int) -> str:
    card = profile.text["max_context"]
    return f" (above the model card's {card})" * (context > card)


def engine_max_len(profile: Profile, engine: dict[str, Any]) -> int:
    """The max_model_len (vLLM) or session_len (LMDeploy) the engine takes when given none:
    config.json's, which can be above the model card's (Qwen2.5-VL: 128000 against 32768), scaled
    by the rope factor where the engine does (stacks.toml [stack.*.engine] max_len_*)."""
    t = profile.text
    length = t.get("config_max_len", t["max_context"])
    if (
        engine.get("max_len_rope_scales")
        and "rope_factor" in t
        and t["rope_type"] not in engine.get("max_len_rope_types_unscaled", [])
        and profile.family not in engine.get("max_len_families_unscaled", [])
    ):
        length *= t["rope_factor"]
    return int(length)


def estimate(profile: Profile, req: FitRequest, gpus: int = 1) -> Estimate:
    """Peak memory per GPU when the request runs on `gpus` GPUs."""
    req = resolve_request(profile, req)
    assert req.seq and req.image_tokens and req.quant and req.stack and req.context
    gpus = max(gpus, 1)
    info = stacks()[req.stack]
    engine = None
    if req.task == "infer" and "engine" in info:
        parts, strategy, engine = _engine(profile, req, gpus, info)
    elif req.task == "infer":
        parts, strategy = _inference(profile, req, gpus, info)
    else:
        parts, strategy = _training(profile, req, gpus, info)
    ovh = coefficients()["overhead"]
    transient = sum(p.bytes for p in parts if p.name in ("activations", "logits"))
    if engine is not None and engine["name"] == "vllm":
        transient = 0.0  # vLLM's check takes torch's allocated peak: no allocator rounding
    overhead = ovh["context_gib"] * GIB + ovh["fragmentation"] * transient
    if info["kind"] == "paged" and engine is None:
        overhead += ovh["engine_gib"] * GIB
    parts.append(Component("overhead", overhead, "CUDA context, workspaces, fragmentation"))
    if req.task != "infer":
        parts.append(train_reserve(sum(p.bytes for p in parts if p.name != "overhead")))
    fraction = req.memory_fraction if req.memory_fraction is not None else 1.0
    if engine is not None and engine["name"] == "lmdeploy":
        fraction = 1.0  # LMDeploy sizes its cache from the free memory, not a share of the card
    return Estimate(req, parts, gpus, strategy, fraction, engine)


def train_reserve(live: float) -> Component:
    """What training holds beyond its live tensors: a share of them, capped (fit.toml
    [overhead]), so that it also holds for small models instead of a flat 4 GiB."""
    ovh = coefficients()["overhead"]
    cap = ovh["train_reserve_gib"] * GIB
    reserve = min(cap, ovh["train_reserve_share"] * live)
    return Component(
        "training reserve",
        reserve,
        f"allocator pool and trainer temporaries: {ovh['train_reserve_share']:.0%} of the live "
        f"tensors, at most {ovh['train_reserve_gib']:g} GiB (calibrated, docs/calibration.md)",
    )


def _engine(
    profile: Profile, req: FitRequest, gpus: int, info: dict[str, Any]
) -> tuple[list[Component], str, dict[str, Any]]:
    """A serving engine as it starts (vLLM's profile run, LMDeploy's cache share), then one
    request of `req.context` tokens in the KV cache. Facts and versions: stacks.toml."""
    c = coefficients()
    act, t, eng = c["activations"], profile.text, info["engine"]
    assert req.seq and req.image_tokens and req.quant and req.context
    weights = loaded_weight_bytes(profile, req)
    kv = kv_bytes(profile, req.context, req.batch)
    kv += cross_kv_bytes(profile, req.image_tokens, req.images, req.batch)
    width = act["infer_hidden"] * t["hidden"] + act["infer_intermediate"] * t["intermediate"]
    item_tokens = req.largest_image_tokens or req.image_tokens
    seqs = req.max_num_seqs or eng.get("max_num_seqs", eng.get("max_batch_size", 1))
    limit = req.limit_images if req.limit_images is not None else max(req.images, 1)
    if req.images == 0:
        limit = 0
    out: dict[str, Any] = {"name": eng["name"], "version": eng["version"], "max_num_seqs": seqs}
    parts = [
        Component("weights", weights / gpus, f"{loaded_as(req)}, {weights / GIB:.1f} GiB in all")
    ]
    if eng["name"] == "vllm":
        runner = vllm_runner(profile, req)
        v0 = runner.startswith("V0")
        default_batched, default_seqs = vllm_defaults(eng, runner, req)
        seqs = req.max_num_seqs or default_seqs
        out["max_num_seqs"] = seqs
        batched = req.max_batched_tokens or default_batched
        window = t.get("sliding_window")
        if window and eng.get("sliding_kv_adds_batched"):
            # V1 counts a sliding layer at its window plus the batch; V0's check compares the
            # blocks of a layer with max_model_len, so every layer holds the whole context.
            held = req.context
            if not v0:
                held = min(window - 1 + batched, req.context) + eng["kv_block_tokens"]
            kv = kv_bytes(profile, req.context, req.batch, sliding_held=held)
            kv += cross_kv_bytes(profile, req.image_tokens, req.images, req.batch)
        videos = req.limit_videos if req.limit_videos is not None else 1
        video = vllm_video_tokens(profile, req.context, item_tokens) if videos else 0
        kind, n_videos = "image", 0
        if runner == "V0 encoder-decoder":  # each dummy sequence has its own largest image
            items = seqs * limit
        elif v0:  # model_runner._dummy_run: as many sequences as the batch holds full prompts
            per_prompt = item_tokens * limit + video * videos
            seqs = max(1, min(seqs, batched // per_prompt)) if per_prompt else seqs
            items, n_videos = seqs * limit, seqs * videos if video else 0
            video = vllm_video_tokens(profile, batched // seqs, item_tokens) if n_videos else 0
        elif video > item_tokens:  # V1 profiles the modality whose largest item is largest
            kind, item_tokens, limit = "video", video, videos
        if not v0:  # V1: the encoder budget's worth of the largest item, capped by the decoder's
            budget = max(batched, item_tokens)
            items = min(-(-budget // item_tokens), seqs * limit) if limit else 0
        probe = replace(req, image_tokens=item_tokens)
        vision = vision_bytes(profile, probe, 1, False, n_images=items, memory_efficient=True)
        if n_videos:  # V0 encodes a batch's images, then its videos
            clip = replace(req, image_tokens=video)
            vision = max(vision, vision_bytes(profile, clip, 1, False, n_videos, True))
        cross = 0.0
        if t.get("cross_attention_layers") and items:  # one layer's cross K/V for every image
            cross = 2.0 * t["kv_heads"] * t["head_dim"] * 2 * item_tokens * items / gpus
        lm = batched * width * 2 / gpus
        rows = seqs if v0 else min(seqs, batched)  # V1 samples one row per dummy request
        sampler = rows * t["vocab"] * eng["sampler_bytes_per_logit"]
        graphs = 0.0 if req.enforce_eager else eng["cuda_graph_gib"] * GIB
        if runner == "V0 encoder-decoder":
            # Mllama's encoder and cross-attention run inside the decoder's forward: all at once.
            peak, phase = lm + vision + cross + sampler, "encoder, forward and sampler at once"
        else:
            # profile_run encodes, keeps only the encoder outputs, then runs the decoder, then
            # the sampler: the allocator's peak is the largest phase, not their sum.
            kept = items * item_tokens * t["hidden"] * 2 + n_videos * video * t["hidden"] * 2
            phases = {
                "the encoder": vision,
                "the forward": kept + lm,
                "the sampler": kept + sampler,
            }
            phase = max(phases, key=lambda name: phases[name])
            peak = phases[phase]
            phase = f"peak in {phase}"
            out["profile_phases_bytes"] = phases
        out.update(
            runner=runner,
            max_num_batched_tokens=batched,
            profile_images=items,
            image_tokens_each=item_tokens,
            profile_modality=kind,
            profile_videos=n_videos,
            enforce_eager=req.enforce_eager,
            gpu_memory_utilization=req.memory_fraction,
        )
        parts += [
            Component(
                "kv cache",
                kv / gpus,
                f"one request of max_model_len {req.context}"
                + f" x {req.batch}" * (req.batch > 1)
                + _past_card(profile, req.context),
            ),
            Component(
                "activations",
                peak,
                f"start-up profile run: {batched} tokens, {items} {kind}(s) of {item_tokens} "
                f"tokens through the encoder"
                + f" and {n_videos} video(s) of {video}" * bool(n_videos)
                + f", sampler over {rows} rows x vocab {t['vocab']} ({seqs} seqs; {phase})",
            ),
            Component(
                "cuda graphs",
                graphs,
                "--enforce-eager: none"
                if req.enforce_eager
                else "captured after the KV cache, outside the --memory-fraction share",
            ),
        ]
        out.update(sampler_rows=rows)
    else:  # LMDeploy: the vision model takes `vision_batch` images at a time
        share = req.cache_max_entry_count or eng["cache_max_entry_count"]
        tokens = min(req.seq * req.batch, c["overhead"]["engine_profile_tokens"])
        vision = 0.0
        if limit:
            vision = vision_bytes(profile, req, 1, False, n_images=eng["vision_batch"])
        backend = lmdeploy_backend(profile, eng)
        runtime = 0.0
        if backend == "pytorch":  # kept free for the prefill's logits before the cache share
            runtime = eng["max_prefill_token_num"] * t["vocab"] * eng["runtime_bytes_per_logit"]
        out.update(
            cache_max_entry_count=share,
            session_len=req.context,
            backend=backend,
            runtime_bytes=runtime / gpus,
        )
        parts += [
            Component(
                "kv cache",
                kv / gpus,
                f"session_len {req.context} x batch {req.batch}" + _past_card(profile, req.context),
            ),
            Component(
                "activations",
                tokens * width * 2 / gpus + vision,
                f"prefill of {tokens} tokens + {eng['vision_batch']} image(s) in the vision model",
            ),
            Component("logits", req.batch * t["vocab"] * 4.0, f"{req.batch} rows x vocab"),
        ]
    out["kv_bytes"] = kv / gpus
    out["kv_bytes_per_token"] = kv_bytes(profile, 1, 1) / gpus
    out["weights_bytes"] = weights / gpus
    strategy = "one GPU" if gpus == 1 else f"tensor parallel over {gpus} GPUs"
    return parts, strategy, out


def _inference(
    profile: Profile, req: FitRequest, gpus: int, info: dict[str, Any]
) -> tuple[list[Component], str]:
    c = coefficients()
    act, t = c["activations"], profile.text
    assert req.seq and req.image_tokens and req.quant and req.context
    batch, seq = req.batch, req.seq
    paged = info["kind"] == "paged"
    copies = info.get("infer_weights_copies", 1)  # the stack's own way of loading
    weights = loaded_weight_bytes(profile, req) * copies
    # Inference splits weights and KV over the GPUs (tensor parallel, or device_map="auto").
    strategy = "one GPU" if gpus == 1 else f"weights and KV cache split over {gpus} GPUs"
    kv_tokens = req.context if paged else seq
    kv = kv_bytes(profile, kv_tokens, batch)
    kv += cross_kv_bytes(profile, req.image_tokens, req.images, batch)
    tokens = min(seq * batch, c["overhead"]["engine_profile_tokens"]) if paged else seq * batch
    width = act["infer_hidden"] * t["hidden"] + act["infer_intermediate"] * t["intermediate"]
    lm = tokens * width * 2 + _lm_eager_attention(profile, req, seq) * batch
    logit_rows = seq * batch if (t.get("prefill_logits_all") and not paged) else batch
    logits = logit_rows * t["vocab"] * (2 if logit_rows > batch else act["infer_logit_bytes"])
    vision = vision_bytes(profile, req, batch, train=False) if req.images else 0.0
    parts = [
        Component(
            "weights",
            weights / gpus,
            f"{loaded_as(req)}, {weights / GIB:.1f} GiB in all"
            + (f": the stack loads the model {copies} times ({req.stack})" if copies > 1 else ""),
        ),
        Component(
            "kv cache",
            kv / gpus,
            f"{kv_tokens} tokens {'reserved ' if paged else ''}x batch {batch}",
        ),
        Component("activations", lm + vision, f"prefill of {tokens} tokens + vision encoder"),
        Component("logits", logits, f"{logit_rows} rows x vocab {t['vocab']}"),
    ]
    return parts, strategy


def _lm_eager_attention(profile: Profile, req: FitRequest, seq: int) -> float:
    """Eager attention in the language model materialises heads x seq x seq scores per layer."""
    return _attention_scores_bytes(profile.text["heads"], float(seq) ** 2, req.attention)


def vision_lora_params(profile: Profile, rank: int) -> int:
    """LoRA on every linear of the vision tower's blocks (qkv, proj, fc1, fc2): what
    `--train-vision lora` trains (ms-swift freeze_vit false with LoRA; PEFT target_modules on
    the tower). The MLP width is the profile's encoder_intermediate, else 4 x hidden."""
    image = profile.image
    h = image.get("encoder_hidden", 1024)
    i = image.get("encoder_intermediate", 4 * h)
    per_layer = (h + 3 * h) + (h + h) + (h + i) + (i + h)
    return rank * per_layer * image.get("encoder_layers", 24)


def zero_shards(task: str, zero: int, gpus: int) -> dict[str, int]:
    """Over how many GPUs each training state is split by ZeRO stage (DeepSpeed: stage 1 the
    optimizer states, 2 also the gradients, 3 also the parameters; under LoRA stage 3 splits the
    frozen base as well, since zero.Init partitions every parameter it builds)."""
    n = gpus if gpus > 1 else 1
    return {
        "optimizer": n if zero >= 1 else 1,
        "grads": n if zero >= 2 else 1,
        "weights": n if zero == 3 and task in ("lora", "qlora", "full") else 1,
    }


def _training(
    profile: Profile, req: FitRequest, gpus: int, info: dict[str, Any]
) -> tuple[list[Component], str]:
    c = coefficients()
    act, opt, t = c["activations"], c["optimizer"], profile.text
    z3 = c["zero3"]
    assert req.seq and req.quant
    zero = req.zero or 0
    shards = zero_shards(req.task, zero, gpus)
    lora_base = info.get("lora_base_bytes") if req.task == "lora" else None
    weights = loaded_weight_bytes(profile, req, lora_base)
    offload_params = req.cpu_offload and zero == 3  # ZeRO-3 offload_param: weights in RAM
    held = f"{loaded_as(req)} base model"
    if lora_base is not None:  # the stack's own width for the frozen base, whatever --dtype says
        held = f"{lora_base:g}-byte base model ({req.stack} casts it)"
    host = 0.0  # bytes the offload puts in the node's RAM
    if offload_params:
        host += weights
        parts = [Component("weights", 0.0, f"{held} in RAM (ZeRO-3 offload)")]
    else:
        split = f", ZeRO-3 split over {shards['weights']} GPUs" * (shards["weights"] > 1)
        per_gpu = weights / shards["weights"]
        parts = [Component("weights", per_gpu, f"{held}{split}")]
    if shards["weights"] > 1 or offload_params:
        # ZeRO-3 gathers a module's full parameters to run it: the largest of the embedding
        # and a few prefetched decoder layers (stage3_prefetch_bucket_size, max_live_parameters).
        embed, _ = embedding_params(profile)
        layer = language_linear_params(profile) / t["layers"]
        gathered = min(max(embed, z3["live_layers"] * layer), z3["max_live_parameters"]) * 2.0
        parts.append(
            Component(
                "zero-3 gathered",
                gathered,
                "full parameters of the modules running now (stage3 all-gather)",
            )
        )
    rank = req.lora_rank or coefficients()["defaults"]["lora_rank"]
    trainable_full = profile.params["language"] if req.task == "full" else 0
    if req.train_vision == "full":
        trainable_full += profile.params["vision"]
    n_lora = lora_params(profile, rank) if req.task in ("lora", "qlora") else 0
    if req.train_vision == "lora":
        n_lora += vision_lora_params(profile, rank)
    if n_lora:
        what = "LLM" * (req.task != "full") + " + vision" * (req.train_vision == "lora")
        state = n_lora * opt["lora_bytes_per_param"]
        if req.cpu_offload:  # the fp32 master and Adam moments go to RAM; the gradient stays
            host += n_lora * (opt["lora_bytes_per_param"] - 4)
            state = n_lora * 4.0
        parts.append(
            Component(
                "lora state",
                state,
                f"rank {rank} on the {what.strip(' +')} linears, {n_lora / 1e6:.0f}M params "
                "in fp32 with AdamW" + " (optimizer in RAM)" * req.cpu_offload,
            )
        )
    if trainable_full:
        per = opt["full_bytes_per_param"]
        grads = 2.0 * trainable_full  # the 16-bit gradient, part of `per`
        rest = trainable_full * per - grads  # fp32 master copy and the two Adam moments
        if req.cpu_offload:  # ZeRO-Offload: master, moments and fp32 gradients live in RAM
            host += rest + 4.0 * trainable_full
            state = grads / shards["grads"]
            how = "AdamW in RAM (ZeRO offload); 16-bit gradients on the GPU"
        else:
            state = grads / shards["grads"] + rest / shards["optimizer"]
            how = "AdamW mixed precision"
        parts.append(
            Component("optimizer+grads", state, f"{how}, {trainable_full / 1e9:.2f}B trainable")
        )
    if zero and info.get("zero_bucket_gib"):
        parts.append(
            Component("deepspeed buffers", info["zero_bucket_gib"] * GIB, "gradient buckets")
        )
    tokens = req.batch * req.seq
    width = act["train_hidden"] * t["hidden"] + act["train_intermediate"] * t["intermediate"]
    layer_full = tokens * width * 2 + _lm_eager_attention(profile, req, req.seq) * req.batch
    if req.gradient_checkpointing:
        lm = tokens * t["hidden"] * 2 * act["checkpoint_hidden"] * t["layers"] + layer_full
        how = "gradient checkpointing"
    else:
        lm = layer_full * t["layers"]
        how = "no gradient checkpointing"
    vision = 0.0
    if req.images:
        vision = vision_bytes(profile, req, req.batch, train=req.train_vision != "frozen")
    vckpt = req.vision_gradient_checkpointing
    if vckpt is None:
        vckpt = req.gradient_checkpointing
    tower = "vision tower frozen"
    if req.train_vision != "frozen":
        tower = f"vision tower {req.train_vision}, {'' if vckpt else 'no '}vision checkpointing"
    parts.append(Component("activations", lm + vision, f"{tokens} tokens, {how}; {tower}"))
    parts.append(
        Component(
            "logits",
            tokens * t["vocab"] * act["train_logit_bytes"],
            f"{tokens} tokens x vocab {t['vocab']} through the loss",
        )
    )
    if req.cpu_offload:
        parts.append(
            Component(
                "cpu offload",
                0.0,
                f"{host / GIB:.1f} GiB of the node's RAM (pinned) holds what ZeRO offloads",
            )
        )
    if gpus == 1:
        strategy = "one GPU"
    elif req.task == "full" and zero:
        strategy = f"DeepSpeed ZeRO-{zero} over {gpus} GPUs"
    elif zero:
        strategy = f"data parallel with ZeRO-{zero} over {gpus} GPUs"
    else:
        strategy = f"data parallel: a full replica on each of {gpus} GPUs"
    if req.cpu_offload:
        strategy += ", CPU offload"
    return parts, strategy
