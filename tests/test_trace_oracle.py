"""The trace oracle (issue 12 item 6): torch's FakeTensorMode and MemTracker count what a forward
and a training step of a decoder really hold, without memory or weights; the estimate's tensor
terms are held to those counts, on tiny configs here (traced in the test) and on the real-size
grid benchmarks/trace_oracle.py recorded (read from its JSON, no torch needed)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from benchmarks import trace_oracle
from provision.profiles import load_profile

TINY = {
    "hidden": 256,
    "intermediate": 688,
    "layers": 2,
    "heads": 4,
    "kv_heads": 2,
    "head_dim": 64,
    "vocab": 1024,
}
QWEN7 = load_profile("qwen2.5-vl-7b")  # generate keeps every position's logits (prefill_logits_all)
LLAVA = load_profile("llava-v1.5-7b")  # keeps the last one


def _tiny(profile):
    text = {**profile.text, **TINY}
    return replace(profile, data={**profile.data, "text": text}), text


def test_trace_counts_the_weights_the_formula_counts():
    probe, text = _tiny(LLAVA)
    traced = trace_oracle.trace(text, "infer", 1, 128)
    assert traced["by_kind"]["parameter"] == 2 * traced["params"]  # bf16
    # text_only's parameter count from the shape is the model's own.
    counted = trace_oracle.text_only(probe).params["language"]
    assert counted == traced["params"]
    assert traced["peak"] > traced["by_kind"]["parameter"]


@pytest.mark.parametrize(
    ("profile", "task", "batch", "seq"),
    [
        (QWEN7, "infer", 1, 256),
        (QWEN7, "infer", 2, 512),
        (LLAVA, "infer", 2, 512),
        (LLAVA, "lora", 1, 256),
        (LLAVA, "lora", 2, 512),
        (LLAVA, "full", 1, 256),
        (LLAVA, "full", 2, 512),
    ],
    ids=lambda v: getattr(v, "name", v),
)
def test_estimate_holds_to_the_trace_on_tiny_configs(profile, task, batch, seq):
    probe, text = _tiny(profile)
    row = trace_oracle.compare(probe, task, batch, seq, trace_oracle.trace(text, task, batch, seq))
    assert abs(row["error"]) <= 0.25, row
    # The terms beyond the weights (KV, activations, logits, trainer state) carry the error.
    beyond = row["estimate_beyond_weights"] / row["traced_beyond_weights"] - 1
    assert abs(beyond) <= 0.35, row


def test_prefill_logits_rule_is_what_the_trace_sees():
    """Qwen2.5-VL's forward has no logits_to_keep: the prefill holds every position's logits,
    which the trace shows as more than LLaVA's at the same shape."""
    vocab = 32768  # large enough for the logits to make the peak, as at real size
    text_q = {**QWEN7.text, **TINY, "vocab": vocab}
    text_l = {**LLAVA.text, **TINY, "vocab": vocab}
    all_pos = trace_oracle.trace(text_q, "infer", 2, 512)["peak"]
    last = trace_oracle.trace(text_l, "infer", 2, 512)["peak"]
    assert all_pos - last >= 2 * 512 * vocab * 2 * 0.9  # bf16 logits of every position


RECORDED = json.loads(trace_oracle.RESULTS.read_text())


def test_recorded_traces_name_their_versions_and_cover_every_profile():
    assert {"torch", "transformers"} <= set(RECORDED["versions"])
    names = {r["profile"] for r in RECORDED["rows"]}
    from provision.profiles import list_profiles

    assert {p.name for p in list_profiles()} <= names
    assert {r["task"] for r in RECORDED["rows"]} == {"infer", "lora"}


@pytest.mark.parametrize(
    "row",
    RECORDED["rows"],
    ids=[f"{r['profile']}-{r['task']}-{r['batch']}x{r['seq']}" for r in RECORDED["rows"]],
)
def test_estimate_holds_to_the_recorded_real_size_traces(row):
    """Today's estimate against the traced peak recorded at real size: a formula change that
    moves the estimate away from what the tensors hold fails here."""
    profile = load_profile(row["profile"])
    traced = {
        # Rows of the first infer run predate these two keys: there the peak is the raw one and
        # the parameters are all bf16.
        "peak": row.get("traced_raw_peak", row["traced_peak"]),
        "by_kind": row["traced_by_kind"],
        "params": row.get("params", row["traced_by_kind"]["parameter"] // 2),
        "seconds": row["trace_seconds"],
    }
    now = trace_oracle.compare(profile, row["task"], row["batch"], row["seq"], traced)
    assert now["traced_peak"] == row["traced_peak"]
    assert abs(now["error"]) <= 0.15, now
