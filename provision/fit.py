"""Will the model fit? Peak GPU memory per task from the profile's numbers, the verdict per GPU, and
ranked suggestions when it does not fit.

The estimate adds up what a run actually holds: weights (by dtype or quantisation), KV cache from
the text model's shape (sliding-window and cross-attention layers counted as such), activations
(with or without gradient checkpointing), logits, the vision encoder's peak, LoRA / optimizer /
gradient state, and framework overhead. Coefficients live in provision/data/fit.toml.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

from provision.errors import ProvisionError
from provision.hardware.machine import Machine
from provision.profiles import DTYPE_BYTES, Profile
from provision.resources import data_file
from provision.units import GIB

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TASKS = ("infer", "lora", "qlora", "full")
QUANTS = ("bf16", "fp16", "fp8", "int8", "int4")
# Serving engines pre-allocate memory and reserve KV cache for a whole context.
PAGED_STACKS = ("vllm", "lmdeploy", "sglang")
VERDICTS = ("fits", "tight", "does not fit")


@lru_cache(maxsize=1)
def coefficients() -> dict[str, Any]:
    with data_file("fit.toml").open("rb") as handle:
        return tomllib.load(handle)


@dataclass(frozen=True)
class FitRequest:
    task: str = "infer"
    quant: str | None = None  # infer: bf16 default; lora/full: bf16 base; qlora: int4 base
    batch: int = 1
    seq: int | None = (
        None  # whole sample: text + image tokens (image tokens excluded for cross-attn)
    )
    images: int = 1
    image_tokens: int | None = None  # per image; default from the profile
    gradient_checkpointing: bool = True
    stack: str | None = None  # default: the profile's stack for the task
    zero: int | None = None  # DeepSpeed ZeRO stage for tuning; default from the profile
    lora_rank: int | None = None
    context: int | None = None  # serving engines: tokens of KV reserved (max_model_len)
    train_vision: bool = False

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def validate_request(req: FitRequest) -> None:
    if req.task not in TASKS:
        raise ProvisionError(f"Unknown task '{req.task}'.", f"Use one of: {', '.join(TASKS)}.")
    if req.quant is not None and req.quant not in QUANTS:
        raise ProvisionError(f"Unknown --quant '{req.quant}'.", f"Use one of: {', '.join(QUANTS)}.")
    if req.task in ("lora", "full") and req.quant in ("int8", "int4", "fp8"):
        hint = "Use --task qlora for a 4-bit base, or drop --quant." if req.task == "lora" else ""
        raise ProvisionError(f"--task {req.task} trains on a 16-bit base, not {req.quant}.", hint)
    for name in ("batch", "images", "seq", "image_tokens", "lora_rank", "context"):
        value = getattr(req, name)
        if value is not None and value < (0 if name == "images" else 1):
            raise ProvisionError(f"--{name.replace('_', '-')} {value} is out of range.")
    if req.zero is not None and req.zero not in (0, 1, 2, 3):
        raise ProvisionError(f"--zero {req.zero} must be 0, 1, 2 or 3.")


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

    components: list[Component]
    gpus: int
    strategy: str
    stack: str
    quant: str
    seq: int
    image_tokens: int
    context: int
    memory_fraction: float  # share of a GPU's memory the stack can use

    @property
    def per_gpu(self) -> float:
        return sum(c.bytes for c in self.components)

    def to_json(self) -> dict[str, Any]:
        return {
            "per_gpu_gib": round(self.per_gpu / GIB, 2),
            "gpus": self.gpus,
            "strategy": self.strategy,
            "stack": self.stack,
            "quant": self.quant,
            "seq": self.seq,
            "image_tokens_per_image": self.image_tokens,
            "context": self.context,
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


def weight_bytes(profile: Profile, quant: str) -> float:
    total = profile.params["total"]
    stored = profile.weights["dtype"]
    sixteen = profile.weights["bytes"] if DTYPE_BYTES[stored] == 2 else total * 2
    if quant in ("bf16", "fp16"):
        return float(sixteen)
    linear = language_linear_params(profile)
    per_param = coefficients()["quant"][quant]
    return linear * per_param + (total - linear) * 2.0


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
    return float(
        batch * layers * 2 * text["kv_heads"] * text["head_dim"] * 2 * image_tokens * images
    )


def lora_params(profile: Profile, rank: int) -> int:
    """LoRA on every linear layer of the language model (ms-swift's all-linear)."""
    t = profile.text
    h, i, q, kv = (
        t["hidden"],
        t["intermediate"],
        t["heads"] * t["head_dim"],
        t["kv_heads"] * t["head_dim"],
    )
    per_layer = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h)
    return rank * per_layer * t["layers"]


def vision_patches(profile: Profile, image_tokens: int) -> int:
    return image_tokens * profile.image.get("encoder_tokens_per_image_token", 1)


def vision_peak_bytes(profile: Profile, image_tokens: int, images: int, train: bool) -> float:
    """The vision tower's activations for the images of one sample (run image by image at infer)."""
    image = profile.image
    patches = vision_patches(profile, image_tokens)
    hidden = image.get("encoder_hidden", 1024)
    per_layer = patches * hidden * 2 * coefficients()["activations"]["vision_hidden"]
    layers = image.get("encoder_layers", 24) if train else 1
    dense = patches * patches * image.get("encoder_attention_bytes", 0)
    return per_layer * layers * max(images, 1) + dense


# --- the estimate --------------------------------------------------------------------------------


def default_stack(profile: Profile, task: str) -> str:
    if task in profile.data["tasks"] or (task == "qlora" and "lora" in profile.data["tasks"]):
        return profile.task(task).stack
    return "transformers" if task == "infer" else "peft"


def resolve_request(profile: Profile, req: FitRequest) -> FitRequest:
    """Fill the request's defaults from the profile and the coefficients table."""
    validate_request(req)
    d = coefficients()["defaults"]
    stack = req.stack or default_stack(profile, req.task)
    quant = req.quant or ("int4" if req.task == "qlora" else "bf16")
    image_tokens = req.image_tokens or profile.image["tokens"]
    in_seq = profile.image.get("in_text_sequence", True)
    image_total = image_tokens * req.images if in_seq else 0
    if req.seq is None:
        if req.task == "infer":
            seq = image_total + d["infer_text_tokens"]
        else:
            seq = max(d["train_seq"], image_total + 256)
    else:
        seq = req.seq
    zero = req.zero
    if zero is None:
        zero = profile.task(req.task).zero if req.task in profile.data["tasks"] else 0
    context = req.context or (profile.text["max_context"] if stack in PAGED_STACKS else seq)
    return replace(
        req,
        stack=stack,
        quant=quant,
        image_tokens=image_tokens,
        seq=seq,
        zero=zero,
        lora_rank=req.lora_rank or d["lora_rank"],
        context=context,
    )


def estimate(profile: Profile, req: FitRequest, gpus: int = 1) -> Estimate:
    """Peak memory per GPU when the request runs on `gpus` GPUs."""
    req = resolve_request(profile, req)
    c = coefficients()
    act, ovh = c["activations"], c["overhead"]
    t = profile.text
    gpus = max(gpus, 1)
    assert req.seq is not None and req.image_tokens is not None and req.quant is not None
    seq, batch, images = req.seq, req.batch, req.images
    parts: list[Component] = []
    weights = weight_bytes(profile, req.quant)
    in_seq = profile.image.get("in_text_sequence", True)
    paged = req.stack in PAGED_STACKS
    fraction = c["verdict"]["engine_memory_fraction"] if paged else 1.0

    if req.task == "infer":
        context = req.context or seq
        kv = kv_bytes(profile, context if paged else seq, batch)
        kv += cross_kv_bytes(profile, req.image_tokens, images, batch)
        # Inference shards weights and KV over the GPUs (tensor parallel / device_map="auto").
        strategy = "one GPU" if gpus == 1 else f"weights and KV cache split over {gpus} GPUs"
        parts.append(Component("weights", weights / gpus, f"{req.quant}, {_b(weights)} in all"))
        kv_detail = (
            f"{context} tokens reserved x batch {batch}"
            if paged
            else f"{seq} tokens x batch {batch}"
        )
        parts.append(Component("kv cache", kv / gpus, kv_detail))
        tokens = min(seq * batch, ovh["engine_profile_tokens"]) if paged else seq * batch
        lm_act = (
            tokens
            * (act["infer_hidden"] * t["hidden"] + act["infer_intermediate"] * t["intermediate"])
            * 2
        )
        logits = batch * t["vocab"] * act["infer_logit_bytes"]
        vision = vision_peak_bytes(profile, req.image_tokens, images if not in_seq else 1, False)
        activations = lm_act + logits + vision
        parts.append(
            Component("activations", activations, f"prefill of {tokens} tokens + vision encoder")
        )
    else:
        strategy = _training_strategy(req, gpus)
        shard_weights = gpus if (req.task == "full" and req.zero == 3) else 1
        parts.append(Component("weights", weights / shard_weights, f"{req.quant} base model"))
        if req.task in ("lora", "qlora"):
            n = lora_params(profile, req.lora_rank or 8)
            state = n * c["optimizer"]["lora_bytes_per_param"]
            parts.append(
                Component("lora state", state, f"rank {req.lora_rank}, {n / 1e6:.0f}M params")
            )
        else:
            trainable = profile.params["language"] + (
                profile.params["vision"] if req.train_vision else 0
            )
            per = c["optimizer"]["full_bytes_per_param"]
            shard = gpus if req.zero in (1, 2, 3) else 1
            # ZeRO-1 shards only optimizer states; the 16-bit gradient (2 of the 14 bytes) stays.
            grads = 0.0 if req.zero in (2, 3) else 2.0 * trainable
            state = (
                trainable * per - (0.0 if req.zero in (2, 3) else 2.0 * trainable)
            ) / shard + grads
            parts.append(
                Component(
                    "optimizer+grads",
                    state,
                    f"AdamW mixed precision, {trainable / 1e9:.2f}B trainable",
                )
            )
        tokens = batch * seq
        layer_full = (
            tokens
            * (act["train_hidden"] * t["hidden"] + act["train_intermediate"] * t["intermediate"])
            * 2
        )
        if req.gradient_checkpointing:
            lm_act = tokens * t["hidden"] * 2 * act["checkpoint_hidden"] * t["layers"] + layer_full
            how = "gradient checkpointing"
        else:
            lm_act = layer_full * t["layers"]
            how = "no gradient checkpointing"
        logits = tokens * t["vocab"] * act["train_logit_bytes"]
        vision = vision_peak_bytes(profile, req.image_tokens, images * batch, req.train_vision)
        parts.append(Component("activations", lm_act + vision, f"{tokens} tokens, {how}"))
        parts.append(Component("logits + loss", logits, f"{tokens} tokens x vocab {t['vocab']}"))
    activations_total = sum(p.bytes for p in parts if p.name in ("activations", "logits + loss"))
    overhead = ovh["context_gib"] * GIB + ovh["fragmentation"] * activations_total
    if paged:
        overhead += ovh["engine_gib"] * GIB
    parts.append(Component("overhead", overhead, "CUDA context, workspaces, allocator"))
    return Estimate(
        components=parts,
        gpus=gpus,
        strategy=strategy,
        stack=req.stack or "transformers",
        quant=req.quant,
        seq=seq,
        image_tokens=req.image_tokens,
        context=req.context or seq,
        memory_fraction=fraction,
    )


def _training_strategy(req: FitRequest, gpus: int) -> str:
    if gpus == 1:
        return "one GPU"
    if req.task == "full" and req.zero:
        return f"DeepSpeed ZeRO-{req.zero} over {gpus} GPUs"
    return f"data parallel: a full replica on each of {gpus} GPUs"


def _b(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


# --- the verdict ---------------------------------------------------------------------------------


@dataclass
class GpuVerdict:
    index: int
    name: str
    total: int
    usable: float
    need: float
    verdict: str
    free: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "total_gib": round(self.total / GIB, 2),
            "usable_gib": round(self.usable / GIB, 2),
            "need_gib": round(self.need / GIB, 2),
            "free_gib": None if self.free is None else round(self.free / GIB, 2),
            "verdict": self.verdict,
        }


@dataclass
class Suggestion:
    kind: str
    text: str
    need: float | None = None  # per-GPU need after the change

    def to_json(self) -> dict[str, Any]:
        need = None if self.need is None else round(self.need / GIB, 2)
        return {"kind": self.kind, "text": self.text, "need_gib": need}


@dataclass
class FitResult:
    profile: str
    request: FitRequest
    estimate: Estimate
    gpus: list[GpuVerdict]
    verdict: str
    reason: str
    suggestions: list[Suggestion] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.verdict in ("fits", "tight")

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "request": self.request.to_json(),
            "estimate": self.estimate.to_json(),
            "gpus": [g.to_json() for g in self.gpus],
            "verdict": self.verdict,
            "fits": self.fits,
            "reason": self.reason,
            "suggestions": [s.to_json() for s in self.suggestions],
            "notes": list(self.notes),
        }


def verdict_for(need: float, usable: float) -> str:
    if need <= usable * coefficients()["verdict"]["tight_from"]:
        return "fits"
    if need <= usable:
        return "tight"
    return "does not fit"


def judge(profile: Profile, req: FitRequest, machine: Machine) -> tuple[Estimate, list[GpuVerdict]]:
    est = estimate(profile, req, gpus=max(machine.gpu_count, 1))
    verdicts = []
    for gpu in machine.gpus:
        usable = gpu.memory_total * est.memory_fraction
        verdicts.append(
            GpuVerdict(
                index=gpu.index,
                name=gpu.name,
                total=gpu.memory_total,
                usable=usable,
                need=est.per_gpu,
                verdict=verdict_for(est.per_gpu, usable),
                free=gpu.memory_free,
            )
        )
    return est, verdicts


def _overall(verdicts: list[GpuVerdict]) -> str:
    if not verdicts:
        return "does not fit"
    return max((v.verdict for v in verdicts), key=VERDICTS.index)


def check_fit(
    profile: Profile,
    req: FitRequest,
    machine: Machine,
    siblings: list[Profile] | None = None,
) -> FitResult:
    """The estimate, the verdict per GPU and, when it does not fit, ranked suggestions."""
    resolved = resolve_request(profile, req)
    est, verdicts = judge(profile, resolved, machine)
    verdict = _overall(verdicts)
    notes = []
    if not machine.gpus:
        reason = "no NVIDIA GPU on this machine" if not machine.planned else "no GPU described"
    else:
        worst = max(verdicts, key=lambda v: v.need / v.usable)
        reason = f"needs {_b(worst.need)} per GPU; {worst.name} has {_b(worst.usable)} usable" + (
            f" ({est.memory_fraction:.0%} of {_b(worst.total)})" if est.memory_fraction < 1 else ""
        )
        for v in verdicts:
            if v.free is not None and v.free < v.need <= v.usable:
                notes.append(
                    f"GPU {v.index} has only {_b(v.free)} free now: other processes hold the rest."
                )
        ccs = [g.compute_capability for g in machine.gpus if g.compute_capability]
        if resolved.quant == "bf16" and ccs and min(ccs) < (8, 0):
            notes.append(
                "This GPU has no bf16: run in fp16 (same memory) or expect slow emulation."
            )
    suggestions = (
        [] if verdict == "fits" else suggest(profile, req, resolved, machine, siblings or [])
    )
    return FitResult(
        profile=profile.name,
        request=resolved,
        estimate=est,
        gpus=verdicts,
        verdict=verdict,
        reason=reason,
        suggestions=suggestions,
        notes=notes,
    )


# --- suggestions ---------------------------------------------------------------------------------


def _fits_on(profile: Profile, req: FitRequest, machine: Machine) -> tuple[bool, float]:
    """Whether `req` fits comfortably (not merely tight): what a suggestion must reach."""
    est, verdicts = judge(profile, req, machine)
    return bool(verdicts) and _overall(verdicts) == "fits", est.per_gpu


def _with_count(machine: Machine, count: int) -> Machine:
    template = machine.gpus[0]
    gpus = [replace(template, index=i, memory_free=None) for i in range(count)]
    return replace(machine, gpus=gpus, planned=True)


def suggest(
    profile: Profile,
    asked: FitRequest,
    req: FitRequest,
    machine: Machine,
    siblings: list[Profile],
) -> list[Suggestion]:
    """Changes that make it fit, least disruptive first: smaller batch, context, image tokens,
    sequence, gradient checkpointing, more GPUs of this kind, quantisation / QLoRA, a smaller
    sibling, and catalogue GPUs that would fit.

    `asked` is the request as the user gave it (defaults unfilled, so a change of image tokens
    recomputes the default sequence length); `req` is the same request resolved.
    """
    out: list[Suggestion] = []
    have_gpu = bool(machine.gpus)

    def fits(r: FitRequest, m: Machine = machine) -> tuple[bool, float]:
        return _fits_on(profile, r, m) if m.gpus else (False, 0.0)

    if have_gpu:
        if req.batch > 1:
            for batch in range(req.batch - 1, 0, -1):
                ok, need = fits(replace(asked, batch=batch))
                if ok:
                    out.append(
                        Suggestion("batch", f"--batch {batch} (largest batch that fits)", need)
                    )
                    break
        if req.task == "infer" and req.stack in PAGED_STACKS and req.context:
            best = _largest(lambda n: fits(replace(asked, context=n)), 1024, req.context)
            if best:
                n, need = best
                out.append(
                    Suggestion(
                        "context",
                        f"--context {n}: reserve KV cache for {n} tokens "
                        f"(vLLM --max-model-len {n}, LMDeploy --session-len {n})",
                        need,
                    )
                )
        if req.image_tokens and req.images and req.image_tokens > 64:
            best = _largest(
                lambda n: fits(replace(asked, image_tokens=n)), 64, req.image_tokens - 1
            )
            if best:
                n, need = best
                out.append(
                    Suggestion(
                        "image-tokens", f"--image-tokens {n}{_pixels_hint(profile, n)}", need
                    )
                )
        if req.task != "infer" and req.seq and req.seq > 512:
            best = _largest(lambda n: fits(replace(asked, seq=n)), 512, req.seq - 1)
            if best:
                out.append(Suggestion("seq", f"--seq {best[0]} (shorter samples)", best[1]))
        if req.task != "infer" and not req.gradient_checkpointing:
            ok, need = fits(replace(asked, gradient_checkpointing=True))
            if ok:
                out.append(
                    Suggestion("gradient-checkpointing", "turn on gradient checkpointing", need)
                )
        if req.task == "infer" or (req.task == "full" and req.zero in (3,)):
            for count in range(machine.gpu_count + 1, 17):
                ok, need = fits(asked, _with_count(machine, count))
                if ok:
                    out.append(
                        Suggestion(
                            "gpus", f"{count} x {machine.gpus[0].name} (--gpus {count})", need
                        )
                    )
                    break
        elif req.task == "full":
            for count in range(max(machine.gpu_count, 1) + 1, 17):
                ok, need = fits(replace(asked, zero=3), _with_count(machine, count))
                if ok:
                    out.append(
                        Suggestion(
                            "gpus",
                            f"{count} x {machine.gpus[0].name} with DeepSpeed ZeRO-3"
                            f" (--gpus {count} --zero 3)",
                            need,
                        )
                    )
                    break
        quants = {"infer": ["int8", "int4"], "lora": [], "qlora": [], "full": []}[req.task]
        for quant in quants:
            if QUANTS.index(quant) <= QUANTS.index(req.quant or "bf16"):
                continue
            ok, need = fits(replace(asked, quant=quant))
            if ok:
                out.append(Suggestion("quant", f"--quant {quant} (quantised weights)", need))
                break
        if req.task in ("lora", "full"):
            ok, need = fits(replace(asked, task="qlora", quant=None, stack=None, zero=None))
            if ok:
                out.append(Suggestion("qlora", "--task qlora (LoRA on a 4-bit base model)", need))
        for sibling in siblings:
            ok, need = _fits_on(sibling, asked, machine)
            if ok:
                out.append(
                    Suggestion("model", f"the smaller {sibling.name} ({sibling.title})", need)
                )
                break
    out.extend(_catalogue_suggestions(profile, asked, machine))
    return out


def _largest(test: Any, low: int, high: int) -> tuple[int, float] | None:
    """The largest n in [low, high] for which test(n) fits (fit is monotone in n)."""
    ok, need = test(low)
    if not ok:
        return None
    best = (low, need)
    while low < high:
        mid = (low + high + 1) // 2
        ok, need = test(mid)
        if ok:
            low, best = mid, (mid, need)
        else:
            high = mid - 1
    return best


def _pixels_hint(profile: Profile, tokens: int) -> str:
    # Qwen-VL processors size images by pixels: 28x28 pixels per LLM image token.
    if profile.family.startswith(("qwen2-vl", "qwen2.5-vl")):
        return f" (processor max_pixels={tokens}*28*28)"
    return ""


def _catalogue_suggestions(profile: Profile, req: FitRequest, machine: Machine) -> list[Suggestion]:
    """The smallest catalogue GPU that fits one per process; and for inference, fewer big ones."""
    from provision.hardware.catalogue import catalogue
    from provision.hardware.machine import Gpu

    count = max(machine.gpu_count, 1)
    current = {g.name for g in machine.gpus}
    options = []
    for entry in catalogue():
        if entry.name in current or entry.compute_capability is None:
            continue
        target = Machine(
            gpus=[
                Gpu(
                    index=i,
                    name=entry.name,
                    memory_total=entry.memory_total,
                    compute_capability=entry.compute_capability,
                )
                for i in range(count)
            ],
            planned=True,
        )
        ok, need = _fits_on(profile, req, target)
        if ok:
            options.append((entry.memory_mib, (entry.aliases or (entry.name,))[0], need))
    if not options:
        return []
    options.sort()
    smallest_mem = options[0][0]
    names = [name for mem, name, _ in options if mem == smallest_mem][:3]
    need = options[0][2]
    label = f"{count} x " if count > 1 else ""
    return [
        Suggestion(
            "gpu-model",
            f"a GPU with at least {smallest_mem / 1024:.1f} GiB, e.g. {label}"
            f"{' / '.join(names)} (--gpu '{names[0]}')",
            need,
        )
    ]
