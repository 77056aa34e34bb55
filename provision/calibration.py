"""The fit estimate against public observations (provision/data/observations.toml).

Each observation is turned into the request and the card it describes; we compute our estimate and
verdict for exactly that setup and compare. `python -m provision.calibration` prints the table
docs/calibration.md carries (`python -m provision.cli.reference --write` puts it there);
tests/test_calibration.py holds the estimate to the observations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from provision.fit import judge, verdict_for
from provision.hardware.catalogue import lookup
from provision.hardware.machine import Gpu, Machine
from provision.memory import FitRequest, coefficients, stacks, weight_bytes
from provision.profiles import load_profile
from provision.resources import load_table
from provision.units import GIB

AIM = 0.15  # issue 2: estimates within 15% of each observation
# Keys of an observation that map one to one onto FitRequest fields.
_REQUEST_KEYS = (
    "batch",
    "seq",
    "images",
    "image_tokens",
    "gradient_checkpointing",
    "vision_gradient_checkpointing",
    "train_vision",
    "zero",
    "lora_rank",
    "context",
    "attention",
    "memory_fraction",
    "max_num_seqs",
    "enforce_eager",
    "max_batched_tokens",
    "limit_images",
    "limit_videos",
    "cache_max_entry_count",
    "max_pixels",
    "max_tiles",
)  # `frames` stays descriptive: those rows give image_tokens per video already


@dataclass
class Comparison:
    id: str
    profile: str
    what: str
    kind: str
    observed_gib: float | None
    outcome: str | None
    estimate_gib: float | None
    verdict: str | None  # ours, on the observation's card
    modelled: bool
    note: str
    known_miss: str | None = None
    bound: str | None = None  # "upper": the figure is a claim of "under X"

    @property
    def error(self) -> float | None:
        if self.observed_gib is None or self.estimate_gib is None or self.bound:
            return None
        return (self.estimate_gib - self.observed_gib) / self.observed_gib

    @property
    def within_aim(self) -> bool | None:
        """Estimate within 15% of the figure (under it, for an upper bound), verdict agreeing."""
        checks = []
        if self.error is not None:
            checks.append(abs(self.error) <= AIM)
        if self.bound == "upper" and self.estimate_gib is not None:
            checks.append(self.estimate_gib <= (self.observed_gib or 0))
        if self.verdict_agrees is not None:
            checks.append(self.verdict_agrees)
        return all(checks) if checks else None

    @property
    def verdict_agrees(self) -> bool | None:
        if self.outcome is None or self.verdict is None:
            return None
        if self.outcome == "oom":
            return self.verdict == "does not fit"
        return self.verdict in ("fits", "tight")

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "observed_gib": self.observed_gib,
            "outcome": self.outcome,
            "estimate_gib": self.estimate_gib,
            "verdict": self.verdict,
            "error": None if self.error is None else round(self.error, 3),
            "verdict_agrees": self.verdict_agrees,
            "within_aim": self.within_aim,
            "modelled": self.modelled,
            "known_miss": self.known_miss,
        }


def observations() -> list[dict[str, Any]]:
    return load_table("observations.toml")["observation"]


def _machine(obs: dict[str, Any]) -> Machine:
    count = obs.get("gpus", 1)
    if "gpu" in obs:
        entry = lookup(obs["gpu"])
        total, cc, name = entry.memory_total, entry.compute_capability, entry.name
    elif "gpu_mem_gib" in obs:
        total, cc, name = int(obs["gpu_mem_gib"] * GIB), None, f"{obs['gpu_mem_gib']} GiB card"
    else:
        total, cc, name = 80 * GIB, None, "unnamed card"  # only the memory figure is compared
    gpus = [
        Gpu(index=i, name=name, memory_total=total, compute_capability=cc) for i in range(count)
    ]
    return Machine(gpus=gpus, planned=True, source="observation")


def compare(obs: dict[str, Any]) -> Comparison:
    profile = load_profile(obs["profile"])
    base = {
        "id": obs["id"],
        "profile": obs["profile"],
        "what": obs["what"],
        "kind": obs["kind"],
        "observed_gib": obs.get("vram_gib"),
        "outcome": obs.get("outcome"),
        "known_miss": obs.get("known_miss"),
        "bound": obs.get("bound"),
    }
    stack = obs.get("stack", "transformers")
    if stack not in stacks() and stack != "none":
        return Comparison(**base, estimate_gib=None, verdict=None, modelled=False, note=stack)
    quant = obs.get("quant", "bf16")
    if obs["task"] == "weights":
        weights = weight_bytes(profile, quant) / GIB
        return Comparison(**base, estimate_gib=weights, verdict=None, modelled=True, note="weights")
    fields = {key: obs[key] for key in _REQUEST_KEYS if key in obs}
    if stack == "none":  # a calculator's figure: weights + KV for its context + overhead
        stack = "transformers"
        fields.setdefault("seq", obs.get("context"))
    request = FitRequest(task=obs["task"], quant=quant, stack=stack, **fields)
    machine = _machine(obs)
    est, gpu_verdicts = judge(profile, request, machine)
    need = est.per_gpu
    note = ""
    if obs.get("measure") in ("allocated", "reserved"):
        # The figure leaves out the CUDA context that our process-level estimate includes.
        need -= coefficients()["overhead"]["context_gib"] * GIB
    copies = obs.get("weights_copies", 1)
    if copies > 1:  # the setup loads the model more than once (e.g. LLaVA's README demo)
        need += (copies - 1) * est.part("weights")
        note = f"{copies} copies of the weights"
    verdict = None  # without a named card only the figure can be compared
    if "gpu" in obs or "gpu_mem_gib" in obs:
        verdict = verdict_for(need, machine.gpus[0].memory_total * est.memory_fraction)
        if est.engine is not None:  # the engine's own start-up decides (fit.engine_check)
            verdict = gpu_verdicts[0].verdict
    return Comparison(**base, estimate_gib=need / GIB, verdict=verdict, modelled=True, note=note)


def compare_all() -> list[Comparison]:
    return [compare(obs) for obs in observations()]


def table() -> str:
    """docs/calibration.md's table: observation, estimate, error, verdicts, why a row misses."""
    rows = [
        "| observation | kind | observed | ours | error | outcome | our verdict | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in compare_all():
        observed = "—" if c.observed_gib is None else f"{c.observed_gib:.1f} GiB"
        if c.bound == "upper" and c.observed_gib is not None:
            observed = f"under {c.observed_gib:.2f} GiB"
        ours = "not modelled" if c.estimate_gib is None else f"{c.estimate_gib:.1f} GiB"
        error = "—" if c.error is None else f"{c.error:+.0%}"
        note = c.known_miss or ("" if c.modelled else f"stack {c.note} is not modelled")
        rows.append(
            f"| `{c.id}`: {c.what} | {c.kind} | {observed} | {ours} | {error} "
            f"| {c.outcome or '—'} | {c.verdict or '—'} | {note} |"
        )
    return "\n".join(rows)


def summary() -> dict[str, Any]:
    rows = compare_all()
    errors = [abs(c.error) for c in rows if c.error is not None]
    verdicts = [c.verdict_agrees for c in rows if c.verdict_agrees is not None]
    return {
        "observations": len(rows),
        "with_a_figure": len(errors),
        "within_15_percent": sum(e <= AIM for e in errors),
        "median_abs_error": sorted(errors)[len(errors) // 2] if errors else None,
        "with_a_verdict": len(verdicts),
        "verdicts_agree": sum(verdicts),
    }


if __name__ == "__main__":
    print(table())
    print()
    print(summary())
