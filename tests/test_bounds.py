"""Numeric inputs beyond what is physical are one exit-2 message, and the batch suggestion is a
bisection (issue 11, item 4: --batch 10^24 searched for minutes, --gpus 10^11 took gigabytes)."""

from __future__ import annotations

import pytest

from provision import fit
from provision.errors import ProvisionError
from provision.fit import check_fit
from provision.hardware.catalogue import target_machine
from provision.memory import FitRequest
from provision.profiles import load_profile
from tests.cli_helpers import run_cli


@pytest.mark.parametrize(
    "args,option",
    [
        (["--batch", "1" + "0" * 24], "--batch"),
        (["--gpus", "100000000000"], "--gpus"),
        (["--seq", "0"], "--seq"),
        (["--context", "9" * 30], "--context"),
        (["--memory-fraction", "7"], "--memory-fraction"),
        (["--zero", "9"], "--zero"),
    ],
)
def test_out_of_range_numbers_are_refused_at_once(args, option):
    base = ["check", "qwen2-vl-2b"] + ([] if "--gpu" in args else ["--gpu", "RTX 4090"])
    # The timeout guards against the old hang; the assertion is the message.
    proc = run_cli(*base, *args, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert option in proc.stderr and "outside" in proc.stderr and "Traceback" not in proc.stderr


def test_bounds_hold_in_the_library_too():
    with pytest.raises(ProvisionError, match="--batch"):
        FitRequest(batch=0)
    with pytest.raises(ProvisionError, match="--gpus"):
        target_machine(gpu="RTX 4090", gpus=10**11)


def test_batch_suggestion_is_a_bisection(monkeypatch):
    calls: list[int] = []
    real = fit._fits_on

    def counting(profile, req, machine):
        calls.append(req.batch)
        return real(profile, req, machine)

    monkeypatch.setattr(fit, "_fits_on", counting)
    profile = load_profile("qwen2.5-vl-7b")
    result = check_fit(profile, FitRequest(task="lora", batch=1 << 20), target_machine(gpu="A100"))
    batch_calls = [b for b in calls if b != 1 << 20]
    assert len(batch_calls) <= 2 * 21, len(batch_calls)  # log2(2^20) steps, not 2^20
    best = next(s for s in result.suggestions if s.kind == "batch")
    n = best.change["batch"]
    assert real(profile, FitRequest(task="lora", batch=n), target_machine(gpu="A100"))[0]
    assert not real(profile, FitRequest(task="lora", batch=n + 1), target_machine(gpu="A100"))[0]
