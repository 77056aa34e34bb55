"""Will the model fit? The verdict per GPU from the memory estimate (provision/memory.py), and
ranked suggestions when it does not fit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from provision.hardware.machine import Machine
from provision.memory import (
    QUANTS,
    Estimate,
    FitRequest,
    coefficients,
    engine_of,
    estimate,
    resolve_request,
    stacks,
    vision_family,
    vllm_defaults,
    vllm_runner,
    vllm_video_tokens,
)
from provision.profiles import Profile
from provision.units import GIB

__all__ = ["FitRequest", "FitResult", "check_fit", "judge", "suggest"]
VERDICTS = ("fits", "tight", "does not fit")


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
    engine_error: str | None = None  # what the serving engine would print when it refuses

    def to_json(self) -> dict[str, Any]:
        return {
            "engine_error": self.engine_error,
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
    """One change that makes it fit. `change` says it as data: FitRequest fields, plus `gpus`
    (a count of this machine's GPU), `gpu` (a catalogue name) or `profile` (another model)."""

    kind: str
    text: str
    need: float | None = None  # per-GPU need after the change
    change: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        need = None if self.need is None else round(self.need / GIB, 2)
        return {"kind": self.kind, "text": self.text, "need_gib": need, "change": self.change}


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
    req = replace(req, **machine_facts(machine))
    est = estimate(profile, req, gpus=max(machine.gpu_count, 1))
    verdicts = []
    for gpu in machine.gpus:
        usable = gpu.memory_total * est.memory_fraction
        need, error = est.per_gpu, None
        if est.engine is not None:
            # Memory other processes hold now (this machine only): the engines see it too.
            held = gpu.memory_total - gpu.memory_free if gpu.memory_free is not None else 0
            need, usable, error = engine_check(est, gpu.memory_total, max(held, 0))
            if error is None and not parallel_ok(profile, est.request.stack, machine.gpu_count):
                error = _parallel_refusal(profile, est.request.stack, machine.gpu_count)
        verdict = verdict_for(need, usable)
        if error is not None:
            verdict = "does not fit"
        verdicts.append(
            GpuVerdict(
                index=gpu.index,
                name=gpu.name,
                total=gpu.memory_total,
                usable=usable,
                need=need,
                verdict=verdict,
                free=gpu.memory_free,
                engine_error=error,
            )
        )
    return est, verdicts


def lmdeploy_pool(est: Estimate, total: int) -> float:
    """Bytes LMDeploy's KV cache takes on a card of `total` bytes: its share of what is free
    once the weights and the CUDA context are in, less what the PyTorch engine keeps free for
    the prefill's logits (engine["runtime_bytes"], 0 on TurboMind)."""
    eng = est.engine
    assert eng is not None
    loaded = eng["weights_bytes"] + coefficients()["overhead"]["context_gib"] * GIB
    return eng["cache_max_entry_count"] * max(total - loaded - eng.get("runtime_bytes", 0.0), 0)


def engine_check(est: Estimate, total: int, held: float = 0.0) -> tuple[float, float, str | None]:
    """(need, usable, the engine's refusal or None) on a card of `total` bytes of which other
    processes hold `held`, as the engine itself decides at start-up (stacks.toml: versions and
    the messages quoted)."""
    eng = est.engine
    assert eng is not None
    kv = eng["kv_bytes"]
    non_kv = est.per_gpu - kv
    info = stacks()[est.request.stack or ""]
    if eng["name"] == "lmdeploy":  # it sizes its cache from the memory free now
        total = int(total - held)
        pool = lmdeploy_pool(est, total)
        need = non_kv + pool
        if kv > pool:
            tokens = int(pool // max(eng["kv_bytes_per_token"], 1))
            share = eng["cache_max_entry_count"]
            return (
                non_kv + kv,
                float(total),
                f"LMDeploy's KV cache ({share} x the free memory = {pool / GIB:.2f} GiB) holds "
                f"{tokens} tokens, fewer than --session-len {eng['session_len']} needs "
                f"({kv / GIB:.2f} GiB)",
            )
        return need, float(total), None
    usable = total * est.memory_fraction
    errors = info["errors"]
    # CUDA graphs are captured after the KV cache took its share: they come out of what the share
    # leaves of the card, not out of the share.
    outside = est.part("cuda graphs")
    # 0.8.5 counts every byte in use on the device that is not its own tensors (other processes
    # included) as its non-torch memory, inside the share (gpu_worker.determine_available_memory).
    non_kv += held - outside
    available = usable - non_kv
    if non_kv > total:
        return est.per_gpu + held, usable, errors["profile_oom"]
    if available <= 0:
        return est.per_gpu + held, usable, errors["no_blocks"]
    if kv > available:
        per_token = max(eng["kv_bytes_per_token"], 1)
        text = errors["v0" if eng.get("runner", "").startswith("V0") else "v1"].format(
            max_model_len=est.request.context,
            needed_gib=kv / GIB,
            available_gib=available / GIB,
            kv_tokens=int(available // per_token) // 16 * 16,
        )
        return est.per_gpu + held, usable, text
    if outside > total - usable:  # what the share leaves (vllm#16199: 0.98 of a 24 GB card)
        return est.per_gpu + held, usable, errors["graph_oom"]
    return est.per_gpu + held - outside, usable, None


def machine_facts(machine: Machine) -> dict[str, Any]:
    """What the engines read from the card at start-up: vLLM's V0 fallback and the card's size
    (V1's defaults depend on it)."""
    sizes = [g.memory_total for g in machine.gpus if g.memory_total]
    return {"vllm_v0": vllm_falls_back_to_v0(machine), "card_bytes": min(sizes) if sizes else None}


def vllm_falls_back_to_v0(machine: Machine) -> bool:
    """vLLM's V1 engine needs the compute capability stacks.toml names; below it, V0 runs."""
    floor = tuple(stacks()["vllm"]["engine"]["v1_min_compute_capability"])
    ccs = [g.compute_capability for g in machine.gpus if g.compute_capability]
    return bool(ccs) and min(ccs) < floor


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
    est, verdicts = judge(profile, resolve_request(profile, req), machine)
    resolved = est.request  # resolved, with what the engines read from this machine
    verdict = _overall(verdicts)
    notes = []
    if not machine.gpus:
        reason = "no NVIDIA GPU on this machine" if not machine.planned else "no GPU described"
    else:
        worst = max(verdicts, key=lambda v: v.need / v.usable)
        reason = f"needs {_b(worst.need)} per GPU; {worst.name} has {_b(worst.usable)} usable" + (
            f" ({est.memory_fraction:.0%} of {_b(worst.total)})" if est.memory_fraction < 1 else ""
        )
        refused = next((v for v in verdicts if v.engine_error), None)
        if refused is not None:
            name = est.engine["name"] if est.engine else "the engine"
            reason += f"; {name} would refuse to start: {refused.engine_error}"
        eng = est.engine
        if eng and eng["name"] == "lmdeploy" and not worst.engine_error:
            pool = lmdeploy_pool(est, worst.total)
            if pool > eng["kv_bytes"]:
                runtime = eng.get("runtime_bytes", 0.0)
                kept = (
                    f" and what its PyTorch engine keeps free for the prefill's logits "
                    f"({_b(runtime)}, --max-prefill-token-num)"
                    if runtime
                    else ""
                )
                notes.append(
                    f"LMDeploy takes {eng['cache_max_entry_count']} of the memory left after the "
                    f"weights{kept} for its KV cache (--cache-max-entry-count): {_b(pool)} on "
                    f"{worst.name}, so it holds {_b(worst.need)} in all, not only the "
                    f"{_b(est.per_gpu)} the run itself needs."
                )
        tp_note = tp_problem(profile, resolved.stack, machine.gpu_count)
        if tp_note:
            notes.append(tp_note)
        # An engine's need already counts what other processes hold (engine_check); for the
        # others, memory held elsewhere is what can make a figure that fits fail now.
        for v in verdicts if est.engine is None else ():
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


def with_gpu_count(machine: Machine, count: int) -> Machine:
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
            # Memory grows with the batch: a bisection, not a walk down from the batch asked.
            found = _largest(lambda n: fits(replace(asked, batch=n)), 1, req.batch - 1)
            if found:
                batch, need = found
                out.append(
                    Suggestion(
                        "batch",
                        f"--batch {batch} (largest batch that fits)",
                        need,
                        {"batch": batch},
                    )
                )
        paged = stacks()[req.stack or "transformers"]["kind"] == "paged"
        if req.task == "infer" and paged and req.context:
            best = _largest_round(lambda n: fits(replace(asked, context=n)), 1024, req.context)
            if best:
                n, need = best
                out.append(
                    Suggestion(
                        "context",
                        f"--context {n}: reserve KV cache for {n} tokens "
                        f"(vLLM --max-model-len {n}, LMDeploy --session-len {n})",
                        need,
                        {"context": n},
                    )
                )
        engine = (engine_of(req.stack) or {}).get("name")
        largest = req.largest_image_tokens or req.image_tokens or 0
        if (
            req.task == "infer"
            and engine == "vllm"
            and req.limit_videos != 0
            and req.context
            and vllm_video_tokens(profile, req.context, largest) > largest
        ):
            ok, need = fits(replace(asked, limit_videos=0))
            if ok:
                images = req.limit_images if req.limit_images is not None else max(req.images, 1)
                out.append(
                    Suggestion(
                        "limit-mm",
                        f"--limit-mm image={images},video=0: no video, so vLLM's start-up "
                        "profile run encodes an image, not the largest video the context holds",
                        need,
                        {"limit_videos": 0},
                    )
                )
        if req.task == "infer" and engine == "vllm":
            eng = stacks()["vllm"]["engine"]
            seqs = req.max_num_seqs or vllm_defaults(eng, vllm_runner(profile, req), req)[1]
            for eager in (False, True):
                n = seqs // 2
                while n >= 1:
                    change = {"max_num_seqs": n} | ({"enforce_eager": True} if eager else {})
                    ok, need = fits(replace(asked, **change))
                    if ok:
                        flags = f"--max-num-seqs {n}" + " --enforce-eager" * eager
                        out.append(
                            Suggestion(
                                "max-num-seqs",
                                f"{flags}: fewer dummy requests (and their images) in vLLM's "
                                "start-up profile run",
                                need,
                                change,
                            )
                        )
                        break
                    n //= 2
                if n >= 1:
                    break
        if req.image_tokens and req.images:
            found = _image_suggestion(profile, asked, req, fits)
            if found:
                out.append(found)
        in_text = profile.image.get("in_text_sequence", True)
        shortest = max(512, (req.image_tokens or 0) * req.images * in_text + 128)
        if req.task != "infer" and req.seq and req.seq > shortest:
            best = _largest_round(lambda n: fits(replace(asked, seq=n)), shortest, req.seq - 1)
            if best:
                out.append(
                    Suggestion(
                        "seq", f"--seq {best[0]} (shorter samples)", best[1], {"seq": best[0]}
                    )
                )
        if req.task != "infer" and not req.gradient_checkpointing:
            ok, need = fits(replace(asked, gradient_checkpointing=True))
            if ok:
                out.append(
                    Suggestion(
                        "gradient-checkpointing",
                        "turn on gradient checkpointing",
                        need,
                        {"gradient_checkpointing": True},
                    )
                )
        if req.task != "infer":
            out.extend(_training_suggestions(req, asked, machine, fits))
        if req.task == "infer" or req.zero == 3:  # ZeRO-3 shards the frozen LoRA base too
            first = machine.gpu_count + 1
            if req.task == "infer" and not parallel_ok(profile, req.stack, machine.gpu_count):
                first = 2  # the engine refuses this count: any it accepts, fewer ones included
            for count in range(first, 17):
                if count == machine.gpu_count:
                    continue
                if req.task == "infer" and not valid_tp(profile, req.stack, count):
                    continue  # the engine would refuse this tensor-parallel size
                ok, need = fits(asked, with_gpu_count(machine, count))
                if ok:
                    out.append(
                        Suggestion(
                            "gpus",
                            f"{count} x {machine.gpus[0].name} (--gpus {count})",
                            need,
                            {"gpus": count},
                        )
                    )
                    break
        else:
            for count in range(max(machine.gpu_count, 1) + 1, 17):
                ok, need = fits(replace(asked, zero=3), with_gpu_count(machine, count))
                if ok:
                    out.append(
                        Suggestion(
                            "gpus",
                            f"{count} x {machine.gpus[0].name} with DeepSpeed ZeRO-3"
                            f" (--gpus {count} --zero 3)",
                            need,
                            {"gpus": count, "zero": 3},
                        )
                    )
                    break
        quants = ["int8", "int4"] if req.task == "infer" else []
        for quant in quants:
            if QUANTS.index(quant) <= QUANTS.index(req.quant or "bf16"):
                continue
            ok, need = fits(replace(asked, quant=quant))
            if ok:
                out.append(
                    Suggestion(
                        "quant", f"--quant {quant} (quantised weights)", need, {"quant": quant}
                    )
                )
                break
        if req.task in ("lora", "full"):
            ok, need = fits(replace(asked, task="qlora", quant=None, stack=None, zero=None))
            if ok:
                out.append(
                    Suggestion(
                        "qlora",
                        "--task qlora (LoRA on a 4-bit base model)",
                        need,
                        {"task": "qlora", "quant": None, "stack": None, "zero": None},
                    )
                )
        if not out and req.task == "infer" and engine in ("vllm", "lmdeploy"):
            found = _combined(profile, asked, req, engine, fits)
            if found:
                out.append(found)
        for sibling in siblings:
            ok, need = _fits_on(sibling, asked, machine)
            if ok:
                out.append(
                    Suggestion(
                        "model",
                        f"the smaller {sibling.name} ({sibling.title})",
                        need,
                        {"profile": sibling.name},
                    )
                )
                break
    out.extend(_catalogue_suggestions(profile, asked, machine))
    return out


def _combined(
    profile: Profile,
    asked: FitRequest,
    req: FitRequest,
    engine: str,
    fits: Callable[[FitRequest], tuple[bool, float]],
) -> Suggestion | None:
    """When no single change is enough on this card: the serving levers applied one after
    another (a shorter context, fewer profile sequences, no CUDA graphs, no video, quantised
    weights) until the request fits, as one suggestion with every flag it needs."""
    largest = req.largest_image_tokens or req.image_tokens or 0
    steps: list[tuple[dict[str, Any], str]] = []
    if req.context and req.context > 8192:
        steps.append(({"context": 8192}, "--context 8192"))
    if engine == "vllm":
        eng = stacks()["vllm"]["engine"]
        if (req.max_num_seqs or vllm_defaults(eng, vllm_runner(profile, req), req)[1]) > 8:
            steps.append(({"max_num_seqs": 8}, "--max-num-seqs 8"))
        if not req.enforce_eager:
            steps.append(({"enforce_eager": True}, "--enforce-eager"))
        video = vllm_video_tokens(profile, min(req.context or 0, 8192), largest)
        if req.limit_videos != 0 and video > largest:
            steps.append(({"limit_videos": 0}, "--limit-mm video=0"))
    for quant in ("int8", "int4"):
        if QUANTS.index(quant) > QUANTS.index(req.quant or "bf16"):
            steps.append(({"quant": quant}, f"--quant {quant}"))
    change: dict[str, Any] = {}
    flags: list[str] = []
    for step, flag in steps:
        if "quant" in step:  # the lighter quantisation is replaced, not kept beside
            flags = [f for f in flags if not f.startswith("--quant")]
        change |= step
        flags.append(flag)
        ok, need = fits(replace(asked, **change))
        if ok and len(flags) > 1:
            return Suggestion(
                "combined",
                " ".join(flags) + " (together: no single change is enough on this card)",
                need,
                dict(change),
            )
    return None


def _training_suggestions(
    req: FitRequest, asked: FitRequest, machine: Machine, fits: Any
) -> list[Suggestion]:
    """Training set-ups that save memory without changing the data: vision checkpointing, ZeRO-3
    sharding (the frozen base too, under LoRA) and ZeRO offload."""
    out = []
    vckpt = req.vision_gradient_checkpointing
    if req.train_vision != "frozen" and vckpt is False:
        ok, need = fits(replace(asked, vision_gradient_checkpointing=True))
        if ok:
            change = {"vision_gradient_checkpointing": True}
            out.append(Suggestion("vision-checkpointing", "--vision-checkpointing", need, change))
    zero = req.zero or 0
    if machine.gpu_count > 1 and zero < 3:
        ok, need = fits(replace(asked, zero=3))
        if ok:
            what = "the frozen base too" if req.task != "full" else "weights, gradients, states"
            out.append(
                Suggestion(
                    "zero",
                    f"--zero 3: DeepSpeed shards {what} over the {machine.gpu_count} GPUs",
                    need,
                    {"zero": 3},
                )
            )
    if not req.cpu_offload:
        for stage in sorted({max(zero, 2), 3}):
            ok, need = fits(replace(asked, zero=stage, cpu_offload=True))
            if ok:
                out.append(
                    Suggestion(
                        "cpu-offload",
                        f"--zero {stage} --cpu-offload: optimizer state"
                        + " and parameters" * (stage == 3)
                        + " in RAM (slower steps)",
                        need,
                        {"zero": stage, "cpu_offload": True},
                    )
                )
                break
    return out


def round_down(n: int, low: int = 1) -> int:
    """A value a person would type at or below n: 2^k or 1.5 x 2^k (65536, 98304, 1536), not an
    exact threshold such as 90401; never below `low` (itself a round value)."""
    if n <= low:
        return n
    k = max(n.bit_length() - 1, 0)
    best = 1 << k
    if k >= 1 and (3 << (k - 1)) <= n:
        best = 3 << (k - 1)
    return max(best, low)


def valid_tp(profile: Profile, stack: str | None, count: int) -> bool:
    """Whether the stack's engine accepts `count` GPUs of tensor parallelism for this model: the
    counts it must divide are data (stacks.toml [stack.*.engine] tp_divides)."""
    eng = engine_of(stack)
    if eng is None or count <= 1:
        return True
    return all(profile.text[key] % count == 0 for key in eng.get("tp_divides", ()))


def pp_allowed(profile: Profile, stack: str | None) -> bool:
    """Whether the engine runs this model with pipeline parallelism (vLLM's encoder-decoder
    runner, which serves Mllama, refuses it: stacks.toml pp_refused_runners)."""
    eng = engine_of(stack) or {}
    return vllm_runner(profile) not in eng.get("pp_refused_runners", ())


def parallel_ok(profile: Profile, stack: str | None, count: int) -> bool:
    """Whether the engine starts on `count` GPUs: a tensor-parallel size it accepts, or else
    pipeline parallelism over them."""
    return valid_tp(profile, stack, count) or pp_allowed(profile, stack)


def _parallel_refusal(profile: Profile, stack: str | None, count: int) -> str:
    eng = stacks()[stack or ""]["engine"]
    what = " and ".join(f"{profile.text[k]} {k.replace('_', ' ')}" for k in eng["tp_divides"])
    return (
        f"tensor parallel size {count} does not divide {what}, and pipeline parallelism is "
        f"refused: {eng['pp_refused_error']}"
    )


def tp_problem(profile: Profile, stack: str | None, count: int) -> str | None:
    """A note when the engine would refuse this many GPUs as its tensor-parallel size."""
    if valid_tp(profile, stack, count):
        return None
    eng = stacks()[stack or ""]["engine"]
    what = " and ".join(f"{profile.text[k]} {k.replace('_', ' ')}" for k in eng["tp_divides"])
    nxt = next((n for n in range(count + 1, 65) if valid_tp(profile, stack, n)), None)
    pp = stacks()[stack or ""].get("launch", {}).get("pp")
    alt = f", or {count} GPUs with {pp} {count}" if pp and pp_allowed(profile, stack) else ""
    return (
        f"{eng['name']} refuses tensor parallel size {count}: {profile.name} has {what}, which "
        f"{count} does not divide ({eng['tp_source'].split(':')[0]}). Use {nxt} GPUs{alt}."
    )


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


def _largest_round(test: Any, low: int, high: int) -> tuple[int, float] | None:
    """_largest, rounded down to a value people type (round_down), with that value's need."""
    best = _largest(test, low, high)
    if best is None:
        return None
    n = round_down(best[0], low)
    return n, test(n)[1]


def _image_suggestion(
    profile: Profile, asked: FitRequest, req: FitRequest, fits: Any
) -> Suggestion | None:
    """Fewer image tokens, said with the lever the model's processor has, at a value a person
    would type: fewer tiles (InternVL, SmolVLM, Mllama), a smaller pixel budget (Qwen-VL), or, for
    a model whose images always cost the same (LLaVA-1.5, Gemma 3), fewer images per sample.
    `--image-tokens` itself only where the profile names a processor setting but no family rule."""
    fam = vision_family(profile)
    # A suggestion replaces whatever set the resolution: they cannot be given together.
    clear = {"image_tokens": None, "max_pixels": None, "max_tiles": None}
    if "tokens_per_tile" in fam:
        per_tile = fam["tokens_per_tile"]
        thumb = 1 if fam.get("thumbnail") else 0
        now = req.max_tiles or max(req.image_tokens // per_tile - thumb, 1)
        for n in range(min(now, fam.get("max_tiles", now)) - 1, 0, -1):
            change = clear | {"max_tiles": n}
            ok, need = fits(replace(asked, **change))
            if ok:
                setting = fam.get("max_tiles_setting")
                hint = f" (the processor's {setting})" if setting else ""
                return Suggestion("max-tiles", f"--max-tiles {n}{hint}", need, change)
        return None
    if "pixels_per_token" in fam:
        unit = fam["pixels_per_token"]
        step = fam.get("temporal_patch_size", 1)
        per_frame = req.image_tokens // -(-req.frames // step) if req.frames else req.image_tokens
        if per_frame <= 64:
            return None
        best = _largest_round(
            lambda n: fits(replace(asked, **(clear | {"max_pixels": n * unit}))), 64, per_frame - 1
        )
        if best is None:
            return None
        n, need = best
        side = int(unit**0.5)
        what = "frame" if req.frames else "image"
        text = f"--max-pixels {n * unit} ({n} tokens per {what}: max_pixels={n}*{side}*{side})"
        return Suggestion("max-pixels", text, need, clear | {"max_pixels": n * unit})
    if profile.image.get("tokens_setting") and req.image_tokens > 64:
        best = _largest_round(
            lambda n: fits(replace(asked, **(clear | {"image_tokens": n}))),
            64,
            req.image_tokens - 1,
        )
        if best:
            n, need = best
            return Suggestion(
                "image-tokens",
                f"--image-tokens {n}{_pixels_hint(profile, n)}",
                need,
                clear | {"image_tokens": n},
            )
        return None
    if req.images > 1:
        found = _largest(lambda n: fits(replace(asked, images=n)), 1, req.images - 1)
        if found:
            n, need = found
            return Suggestion(
                "images", f"--images {n} (fewer images per sample)", need, {"images": n}
            )
    return None


def _pixels_hint(profile: Profile, tokens: int) -> str:
    """The processor setting that gives `tokens` per image, where the profile says how."""
    setting = profile.image.get("tokens_setting")
    return f" (processor {setting.format(tokens=tokens)})" if setting else ""


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
            {"gpu": names[0]},
        )
    ]
