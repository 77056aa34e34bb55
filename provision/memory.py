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

from provision.errors import ProvisionError
from provision.profiles import DTYPE_BYTES, Profile
from provision.resources import load_table
from provision.units import GIB

TASKS = ("infer", "lora", "qlora", "full")
QUANTS = ("bf16", "fp16", "fp8", "int8", "int4")
ATTENTION = ("sdpa", "flash_attention_2", "eager")


@cache
def _table(name: str) -> dict[str, Any]:
    return load_table(name)


def coefficients() -> dict[str, Any]:
    return _table("fit.toml")


def stacks() -> dict[str, dict[str, Any]]:
    return _table("stacks.toml")["stack"]


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
    train_vision: bool = False
    stack: str | None = None  # default: the profile's stack for the task
    zero: int | None = None  # DeepSpeed ZeRO stage; default: the profile's
    lora_rank: int | None = None
    context: int | None = None  # serving engines: tokens of KV reserved (max_model_len)
    attention: str = "sdpa"
    memory_fraction: float | None = None  # share of the card the stack may use

    def __post_init__(self) -> None:
        from provision.bounds import check_bound

        for name in (
            "batch", "seq", "images", "image_tokens", "context", "zero", "lora_rank",
            "memory_fraction",
        ):  # fmt: skip
            check_bound(name, getattr(self, name))

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def validate_request(req: FitRequest) -> None:
    choices = {"task": TASKS, "quant": QUANTS, "attention": ATTENTION}
    for name, allowed in choices.items():
        value = getattr(req, name)
        if value is not None and value not in allowed:
            flag = "--task" if name == "task" else f"--{name}"
            label = "Unknown task" if name == "task" else f"Unknown {flag}"
            raise ProvisionError(f"{label} '{value}'.", f"Use one of: {', '.join(allowed)}.")
    if req.stack is not None and req.stack not in stacks():
        raise ProvisionError(
            f"Unknown --stack '{req.stack}'.", f"Use one of: {', '.join(sorted(stacks()))}."
        )
    if req.task in ("lora", "full") and req.quant in ("int8", "int4", "fp8"):
        hint = "Use --task qlora for a 4-bit base, or drop --quant." if req.task == "lora" else ""
        raise ProvisionError(f"--task {req.task} trains on a 16-bit base, not {req.quant}.", hint)
    for name in ("batch", "images", "seq", "image_tokens", "lora_rank", "context"):
        value = getattr(req, name)
        if value is not None and value < (0 if name == "images" else 1):
            raise ProvisionError(f"--{name.replace('_', '-')} {value} is out of range.")
    if req.zero is not None and req.zero not in (0, 1, 2, 3):
        raise ProvisionError(f"--zero {req.zero} must be 0, 1, 2 or 3.")
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


def kv_bytes(profile: Profile, tokens: int, batch: int) -> float:
    """16-bit KV cache for `tokens` per sequence: sliding layers keep at most their window."""
    text = profile.text
    per_layer_token = 2 * text["kv_heads"] * text["head_dim"] * 2
    self_layers = text["layers"] - text.get("cross_attention_layers", 0)
    window = text.get("sliding_window", 0)
    global_layers = text.get("global_layers", self_layers) if window else self_layers
    sliding_layers = self_layers - global_layers
    held = global_layers * tokens + sliding_layers * min(tokens, window or tokens)
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


def vision_bytes(profile: Profile, req: FitRequest, samples: int, train: bool) -> float:
    """The vision tower's peak for `samples` samples of `req.images` images each.

    Encoders with a dense mask (Qwen2-VL family) attend over all patches of the batch at once:
    an S x S mask (bool with sdpa, bf16 with eager) plus, with eager, per-head S x S scores.
    """
    image = profile.image
    assert req.image_tokens is not None
    per_image = req.image_tokens * image.get("encoder_tokens_per_image_token", 1)
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
    if image.get("encoder_dense_mask"):
        pairs = float(patches) ** 2
        mask = pairs * (2 if req.attention == "eager" else 1)
        attn = mask + (_attention_scores_bytes(heads, pairs, req.attention))
    else:
        attn = _attention_scores_bytes(heads, float(per_image) ** 2, req.attention) * n_images
    if req.attention == "flash_attention_2":
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
    image_tokens = req.image_tokens or profile.image["tokens"]
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
    paged = info["kind"] == "paged"
    context = req.context or (profile.text["max_context"] if paged else seq)
    fraction = req.memory_fraction or info.get("memory_fraction", 1.0)
    return replace(
        req,
        stack=stack,
        quant=quant,
        image_tokens=image_tokens,
        seq=seq,
        zero=zero,
        lora_rank=req.lora_rank or d["lora_rank"],
        context=context,
        memory_fraction=fraction,
    )


def estimate(profile: Profile, req: FitRequest, gpus: int = 1) -> Estimate:
    """Peak memory per GPU when the request runs on `gpus` GPUs."""
    req = resolve_request(profile, req)
    assert req.seq and req.image_tokens and req.quant and req.stack and req.context
    gpus = max(gpus, 1)
    info = stacks()[req.stack]
    if req.task == "infer":
        parts, strategy = _inference(profile, req, gpus, info)
    else:
        parts, strategy = _training(profile, req, gpus, info)
    ovh = coefficients()["overhead"]
    transient = sum(p.bytes for p in parts if p.name in ("activations", "logits"))
    overhead = ovh["context_gib"] * GIB + ovh["fragmentation"] * transient
    if info["kind"] == "paged":
        overhead += ovh["engine_gib"] * GIB
    parts.append(Component("overhead", overhead, "CUDA context, workspaces, fragmentation"))
    if req.task != "infer":
        parts.append(
            Component(
                "training reserve",
                ovh["train_reserve_gib"] * GIB,
                "allocator pool and trainer temporaries (calibrated, see README)",
            )
        )
    fraction = req.memory_fraction if req.memory_fraction is not None else 1.0
    return Estimate(req, parts, gpus, strategy, fraction)


def _inference(
    profile: Profile, req: FitRequest, gpus: int, info: dict[str, Any]
) -> tuple[list[Component], str]:
    c = coefficients()
    act, t = c["activations"], profile.text
    assert req.seq and req.image_tokens and req.quant and req.context
    batch, seq = req.batch, req.seq
    paged = info["kind"] == "paged"
    weights = weight_bytes(profile, req.quant)
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
        Component("weights", weights / gpus, f"{req.quant}, {weights / GIB:.1f} GiB in all"),
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


def _training(
    profile: Profile, req: FitRequest, gpus: int, info: dict[str, Any]
) -> tuple[list[Component], str]:
    c = coefficients()
    act, opt, t = c["activations"], c["optimizer"], profile.text
    assert req.seq and req.quant
    zero = req.zero or 0
    lora_base = info.get("lora_base_bytes") if req.task == "lora" else None
    weights = weight_bytes(profile, req.quant, lora_base)
    shard_weights = gpus if (req.task == "full" and zero == 3) else 1
    parts = [Component("weights", weights / shard_weights, f"{req.quant} base model")]
    if req.task in ("lora", "qlora"):
        n = lora_params(profile, req.lora_rank or 8)
        parts.append(
            Component(
                "lora state",
                n * opt["lora_bytes_per_param"],
                f"rank {req.lora_rank}, {n / 1e6:.0f}M params in fp32 with AdamW",
            )
        )
    else:
        trainable = profile.params["language"]
        if req.train_vision:
            trainable += profile.params["vision"]
        per = opt["full_bytes_per_param"]
        grads = 2.0 * trainable  # the 16-bit gradient, part of `per`
        # ZeRO-1 shards optimizer states, ZeRO-2 also gradients, ZeRO-3 also the weights.
        if zero == 0 or gpus == 1:
            state = trainable * per
        elif zero == 1:
            state = grads + (trainable * per - grads) / gpus
        else:
            state = trainable * per / gpus
        parts.append(
            Component(
                "optimizer+grads", state, f"AdamW mixed precision, {trainable / 1e9:.2f}B trainable"
            )
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
    vision = vision_bytes(profile, req, req.batch, train=req.train_vision) if req.images else 0.0
    parts.append(Component("activations", lm + vision, f"{tokens} tokens, {how}"))
    parts.append(
        Component(
            "logits",
            tokens * t["vocab"] * act["train_logit_bytes"],
            f"{tokens} tokens x vocab {t['vocab']} through the loss",
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
    return parts, strategy
