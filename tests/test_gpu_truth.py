"""benchmarks/gpu_truth.py (issue 12 item 7) on CPU: its argument parsing, the machine facts it
reads (NVML is the one thing mocked: there is no GPU here), the real runs of tiny decoders and the
comparison table it writes. It has not been run on a GPU by these tests."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from benchmarks import gpu_truth
from provision.units import GIB


def test_shapes_parse_and_bad_ones_are_named():
    assert gpu_truth.parse_shapes(["1x2048", "4x1024"]) == [(1, 2048), (4, 1024)]
    for bad in ("2048", "0x10", "ax1", "1x"):
        with pytest.raises(ValueError, match=f"--shapes '{bad}' is not BATCHxTOKENS"):
            gpu_truth.parse_shapes([bad])


def test_cli_rejects_a_bad_shape_and_cuda_without_a_gpu(capsys):
    # As a script (its start-up path) for the bad shape; the CUDA refusal in-process (the
    # script's child would import torch again only to say the same through argparse).
    run = [sys.executable, "benchmarks/gpu_truth.py"]
    bad = subprocess.run([*run, "--shapes", "big"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--shapes 'big' is not BATCHxTOKENS" in bad.stderr
    with pytest.raises(SystemExit) as cuda:
        gpu_truth.main([])
    assert cuda.value.code == 2 and "--device cpu --tiny" in capsys.readouterr().err


class FakeNvml:
    """NVML as pynvml exposes it, with one 80 GiB GPU and this process on it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=80 * GIB, used=20 * GIB)

    def nvmlSystemGetDriverVersion(self):
        return "550.54.15"

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [SimpleNamespace(pid=self.pid, usedGpuMemory=17 * GIB)]


def test_nvml_facts_and_the_process_figure():
    nvml = FakeNvml(pid=4242)
    facts = gpu_truth.nvml_facts(nvml)
    assert facts["driver"] == "550.54.15"
    assert facts["gpus"] == [
        {"index": 0, "name": "NVIDIA H100 80GB HBM3", "total_gib": 80.0, "used_gib": 20.0}
    ]
    assert gpu_truth.nvml_process_bytes(4242, nvml) == 17 * GIB
    assert gpu_truth.nvml_process_bytes(1, nvml) == 0  # another process's memory is not ours


def test_compare_row_and_table():
    run = {
        "profile": "p",
        "task": "lora",
        "batch": 1,
        "seq": 2048,
        "measured": {
            "oom": False,
            "allocated_gib": 10.0,
            "reserved_gib": 12.0,
            "nvml_process_gib": None,
        },
        "estimate": {"tensors_gib": 11.0, "per_gpu_gib": 15.0},
    }
    run["errors"] = gpu_truth.compare_row(run)
    assert run["errors"] == {"tensors_vs_allocated": 0.1, "per_gpu_vs_process": 0.25}
    line = gpu_truth.table([run]).splitlines()[-1]
    assert line == "| p | lora | 1x2048 | 10.00 | 12.00 | — | 11.00 | 15.00 | +10% | +25% |"


def test_tiny_run_on_cpu_writes_the_observations_file(tmp_path):
    out = tmp_path / "truth.json"
    args = ["--device", "cpu", "--tiny", "--profiles", "smolvlm-256m", "--out", str(out)]
    assert gpu_truth.main([*args, "--tasks", "infer", "lora", "--shapes", "2x64"]) == 0
    doc = json.loads(out.read_text())
    assert doc["device"] == "cpu" and doc["tiny"] is True
    assert {"torch", "transformers"} <= set(doc["versions"])
    assert "error" in doc["machine"]["nvml"]  # no driver here, said rather than guessed
    check = doc["machine"]["check"]["smolvlm-256m"]
    assert set(check) == {"infer", "lora"} and all(c["verdict"] for c in check.values())
    runs = {r["task"]: r for r in doc["runs"]}
    assert set(runs) == {"infer", "lora"}
    for r in runs.values():
        assert r["measured"]["oom"] is False and r["measured"]["allocated_gib"] is None
        assert r["estimate"]["tensors_gib"] > 0
        assert r["errors"]["tensors_vs_allocated"] is None  # nothing measured on CPU
    # The LoRA step holds more than the prefill: adapters, their states, the loss.
    assert runs["lora"]["estimate"]["tensors_gib"] > runs["infer"]["estimate"]["tensors_gib"]


def test_budget_stops_starting_runs(tmp_path):
    out = tmp_path / "truth.json"
    args = ["--device", "cpu", "--tiny", "--no-check", "--budget-s", "0", "--out", str(out)]
    assert gpu_truth.main([*args, "--profiles", "smolvlm-256m", "--shapes", "1x32"]) == 0
    doc = json.loads(out.read_text())
    assert doc["runs"] == [] and len(doc["skipped"]) == 2
    assert all("--budget-s 0" in s for s in doc["skipped"])
