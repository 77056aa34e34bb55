"""benchmarks/gpu_truth.py (issue 12 item 7) on CPU: its argument parsing, the machine facts it
reads (NVML is the one thing mocked, at the pynvml boundary: there is no GPU here), real runs of
tiny configs of each profile's own transformers class (vision tower included) with the family's
image inputs, and the conversion of a measured JSON into observations.toml rows. It has not been
run on a GPU by these tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import tomllib

from benchmarks import gpu_truth, trace_oracle
from provision import calibration
from provision.units import GIB
from tests.test_trace_oracle import KINDS  # one profile per transformers class

# The fast loop runs every class's prefill and one class's LoRA step (a LoRA step of these takes
# 1-7 s on a CPU: Gemma's 262k-token logits, Mllama's four 560 px tiles); the slow test trains
# the other classes.
FAST_LORA = "qwen2-vl-2b"
SLOW_LORA = [f"{n}:lora" for n in KINDS if n != FAST_LORA]


def test_shapes_parse_and_bad_ones_are_named():
    assert gpu_truth.parse_shapes(["1x2048", "4x1024"]) == [(1, 2048), (4, 1024)]
    for bad in ("2048", "0x10", "ax1", "1x"):
        with pytest.raises(ValueError, match=f"--shapes '{bad}' is not BATCHxTOKENS"):
            gpu_truth.parse_shapes([bad])


def test_cli_rejects_bad_input_and_cuda_without_a_gpu(capsys, monkeypatch):
    # As a script (its start-up path) for the bad shape; the rest in-process (the script's
    # child would import torch again only to say the same through argparse).
    run = [sys.executable, "benchmarks/gpu_truth.py"]
    bad = subprocess.run([*run, "--shapes", "big"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--shapes 'big' is not BATCHxTOKENS" in bad.stderr
    # no GPU, as here: on a machine with one, `main([])` would start the whole kit instead
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv, said in [
        ([], "--device cpu --tiny"),
        (["--only", "qwen9-vl"], "--only/--skip: no profile qwen9-vl"),
        (["--skip", "nope:lora"], "--only/--skip: no profile nope"),
        (["--row-limit-s", "0"], "--row-limit-s must be above 0"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            gpu_truth.main(argv)
        assert exit_.value.code == 2 and said in capsys.readouterr().err


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
    # A pid NVML does not list (another process, or a container's pid namespace) is unknown,
    # not zero: a 0 would read as a measurement.
    assert gpu_truth.nvml_process_bytes(1, nvml) is None


def test_compare_row_and_table():
    run = {
        "profile": "p",
        "task": "lora",
        "batch": 1,
        "seq": 2048,
        "measured": {
            "status": "ok",
            "allocated_gib": 10.0,
            "reserved_gib": 12.0,
            "nvml_process_gib": None,
        },
        "estimate": {"tensors_gib": 11.0, "per_gpu_gib": 15.0},
        "check": {"need_gib": 13.2},
        "traced_gib": 9.0,
    }
    run["errors"] = gpu_truth.compare_row(run)
    assert run["errors"] == {
        "tensors_vs_allocated": 0.1,
        "per_gpu_vs_process": 0.25,
        "check_vs_process": 0.1,
        "traced_vs_allocated": -0.1,
    }
    line = gpu_truth.table([run]).splitlines()[-1]
    assert line == "| p | lora | 1x2048 | 10.00 | 12.00 | — | 11.00 | 15.00 | +10% | +25% |"
    run["measured"]["status"] = "oom"
    assert "| lora (oom) |" in gpu_truth.table([run])


def test_rows_run_smallest_model_first():
    rows = gpu_truth.plan(["gemma-3-12b-it", "smolvlm-256m", "qwen2-vl-2b"], ["infer", "lora"],
                          None, tiny=False)  # fmt: skip
    assert [(r[0], r[1]) for r in rows] == [
        ("smolvlm-256m", "infer"),
        ("smolvlm-256m", "lora"),
        ("qwen2-vl-2b", "infer"),
        ("qwen2-vl-2b", "lora"),
        ("gemma-3-12b-it", "infer"),
        ("gemma-3-12b-it", "lora"),
    ]
    assert all(r[2:4] == (1, None) for r in rows)  # batch 1, the estimate's default tokens


def test_lora_adapters_are_made_on_the_models_device():
    """A model built on the GPU gets its adapters there (they were made on the default device,
    the CPU: the first LoRA forward on a GPU would have failed). The meta device stands in."""
    import torch

    cfg = trace_oracle.build_config("qwen2-vl-2b", {}, tiny=True)
    with torch.device("meta"):
        model = trace_oracle.model_class("qwen2-vl-2b")(cfg)
    assert trace_oracle.add_lora(model, 8) > 0
    adapters = [p for n, p in model.named_parameters() if "lora_" in n]
    assert adapters and {p.device.type for p in adapters} == {"meta"}
    assert {p.dtype for p in adapters} == {torch.float32}


def test_each_profiles_image_token_is_an_id_of_its_vocabulary():
    """Real forwards embed the ids (FakeTensorMode never indexed them): llava-v1.5-7b's 32000
    ids held llava-hf's <image> 32000, one past the end. Mllama reads its image by
    cross-attention; its image id lies past the text vocabulary by design (masked from labels)."""
    import torch

    from provision.profiles import load_profile

    for name, arch in trace_oracle.ARCH.items():
        cfg = trace_oracle.build_config(name, load_profile(name).text)
        # Built in bf16 throughout (llava-hf's text_config says float16: an fp16 language
        # model under a bf16 lm_head failed its first real forward).
        assert cfg.get_text_config().dtype == torch.bfloat16 == cfg.dtype, name
        if arch["kind"] != "mllama":
            assert gpu_truth.image_token_id(cfg) < cfg.get_text_config().vocab_size, name


def _tiny_run(tmp_path, monkeypatch, only, *extra):
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(os.getpid()))
    out = tmp_path / "truth.json"
    argv = ["--device", "cpu", "--tiny", "--out", str(out), "--only", *only, *extra]
    assert gpu_truth.main(argv) == 0
    return json.loads(out.read_text())


def _assert_real_rows(doc, expected):
    assert doc["device"] == "cpu" and doc["tiny"] is True
    assert {"torch", "transformers"} <= set(doc["versions"])
    assert doc["machine"]["nvml"]["gpus"][0]["name"] == "NVIDIA H100 80GB HBM3"  # via pynvml
    assert doc["skipped"] == []
    runs = {(r["profile"], r["task"]): r for r in doc["runs"]}
    assert set(runs) == expected
    for (name, task), r in runs.items():
        m = r["measured"]
        assert m["status"] == "ok", (name, task, m.get("error"))
        # The profile's own class, its vision tower built and counted.
        assert m["class"] == trace_oracle.model_class(name).__name__
        assert "Vision" in m["vision_class"]
        assert 0 < m["vision_params"] < m["params"]
        assert m["image_tokens"] >= 1 and m["step_s"] >= 0
        assert (m["trainable"] > 0) is (task == "lora")
        # CPU: no allocator figures, nothing compared, said as null.
        assert m["allocated_gib"] is None and m["reserved_gib"] is None
        assert m["nvml_process_gib"] is None
        assert set(r["errors"].values()) == {None}
        assert r["estimate"]["tensors_gib"] > 0 and r["estimate"]["per_gpu_gib"] > 0
    return runs


def test_tiny_run_builds_each_real_class_and_runs_its_tasks(tmp_path, monkeypatch):
    doc = _tiny_run(tmp_path, monkeypatch, KINDS, "--skip", *SLOW_LORA, "--no-check")
    expected = {(n, "infer") for n in KINDS} | {(FAST_LORA, "lora")}
    runs = _assert_real_rows(doc, expected)
    assert all(r["check"] is None for r in runs.values())
    # Smallest model first, the order the GPU run takes.
    order = [r["profile"] for r in doc["runs"]]
    assert order[0] == "smolvlm-256m" and order[-1] == "gemma-3-12b-it"
    # The LoRA step holds more than the prefill: adapters, their states, the loss.
    lora, infer = runs[FAST_LORA, "lora"]["estimate"], runs[FAST_LORA, "infer"]["estimate"]
    assert lora["tensors_gib"] > infer["tensors_gib"]


@pytest.mark.slow
def test_tiny_lora_steps_of_the_other_classes(tmp_path, monkeypatch):
    doc = _tiny_run(tmp_path, monkeypatch, SLOW_LORA, "--no-check")
    _assert_real_rows(doc, {(s.split(":")[0], "lora") for s in SLOW_LORA})


def test_provision_check_runs_for_the_same_shape(tmp_path, monkeypatch):
    doc = _tiny_run(tmp_path, monkeypatch, ["smolvlm-256m:infer"])
    (row,) = doc["runs"]
    check = row["check"]
    assert check["rc"] in (0, 1) and check["verdict"] and check["need_gib"] > 0
    argv = check["argv"]
    assert argv[:4] == ["provision", "--json", "check", "smolvlm-256m"]
    shape = dict(zip(argv[4::2], argv[5::2], strict=True))
    assert shape["--task"] == "infer" and shape["--stack"] == "transformers"
    assert shape["--seq"] == str(row["seq"]) and shape["--image-tokens"] == "64"


def test_a_failing_row_is_recorded_and_the_next_runs(tmp_path, monkeypatch):
    # 24 tokens cannot hold SmolVLM's image (64): that row fails, said in the row; the next runs.
    doc = _tiny_run(tmp_path, monkeypatch, ["smolvlm-256m:infer", "qwen2-vl-2b:infer"],
                    "--shapes", "1x24", "--no-check")  # fmt: skip
    rows = {r["profile"]: r["measured"] for r in doc["runs"]}
    assert rows["smolvlm-256m"]["status"] == "error"
    assert "cannot hold the image's 64" in rows["smolvlm-256m"]["error"]
    assert rows["qwen2-vl-2b"]["status"] == "ok"  # its 16 image tokens fit


def test_row_limit_and_budget_guards(tmp_path, monkeypatch):
    doc = _tiny_run(tmp_path, monkeypatch, ["smolvlm-256m:lora"], "--row-limit-s", "0.001",
                    "--no-check")  # fmt: skip
    (row,) = doc["runs"]
    assert row["measured"]["status"] == "timeout"
    assert "--row-limit-s 0.001" in row["measured"]["error"]
    doc = _tiny_run(tmp_path, monkeypatch, ["smolvlm-256m"], "--budget-s", "0", "--no-check")
    assert doc["runs"] == [] and len(doc["skipped"]) == 2
    assert all("--budget-s 0 left" in s for s in doc["skipped"])


def _measured_doc() -> dict:
    """A GPU run's JSON as the script writes it (the figures made up: this tests the
    conversion, nothing here is an observation)."""
    row = {
        "profile": "qwen2.5-vl-7b",
        "task": "lora",
        "batch": 1,
        "seq": 2048,
        "measured": {
            "status": "ok",
            "class": "Qwen2_5_VLForConditionalGeneration",
            "params": 8292166656,
            "allocated_gib": 20.5,
            "reserved_gib": 22.0,
            "nvml_process_gib": 22.6,
        },
        "estimate": {"image_tokens": 1024, "tensors_gib": 20.0, "per_gpu_gib": 23.0},
    }
    infer = {**row, "task": "infer", "seq": 1536}
    infer["measured"] = {**row["measured"], "nvml_process_gib": None}
    oom = {**row, "profile": "gemma-3-12b-it", "measured": {"status": "oom", "params": 1}}
    timeout = {**row, "profile": "smolvlm-256m", "measured": {"status": "timeout"}}
    return {
        "device": "cuda",
        "tiny": False,
        "versions": {"torch": "2.8.0", "transformers": "5.25.0"},
        "machine": {"nvml": {"gpus": [{"name": "NVIDIA H100 80GB HBM3"}]}},
        "runs": [row, infer, oom, timeout],
    }


def test_observations_rows_in_the_calibration_schema():
    text = gpu_truth.observations(_measured_doc(), "benchmarks/results/gpu_truth.json")
    rows = tomllib.loads(text)["observation"]
    assert [r["id"] for r in rows] == [
        "qwen2.5-vl-7b/gpu-truth-lora-1x2048",
        "qwen2.5-vl-7b/gpu-truth-infer-1x1536",
        "gemma-3-12b-it/gpu-truth-lora-1x2048",
    ]  # the stopped row measured nothing
    lora, infer, oom = rows
    assert lora["gpu"] == "NVIDIA H100 80GB HBM3" and "gpu_truth.json" in lora["src"]
    assert (lora["vram_gib"], lora["measure"]) == (22.6, "process")
    assert (infer["vram_gib"], infer["measure"]) == (22.0, "reserved")  # NVML absent
    assert lora["stack"] == "peft" and infer["stack"] == "transformers"
    assert lora["lora_rank"] == 8 and lora["gradient_checkpointing"] is True
    assert oom["outcome"] == "oom" and "vram_gib" not in oom
    # Each row goes through the calibration as the table's own rows do.
    for r in rows:
        c = calibration.compare(r)
        assert c.modelled and c.estimate_gib > 0 and c.verdict is not None
    assert calibration.compare(oom).verdict_agrees is not None


def test_observations_refuse_a_cpu_run(tmp_path, capsys):
    doc = {**_measured_doc(), "device": "cpu", "tiny": True}
    path = tmp_path / "truth.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(SystemExit) as exit_:
        gpu_truth.main(["--observations", str(path)])
    assert exit_.value.code == 2
    assert "measured no GPU memory; run it on a GPU" in capsys.readouterr().err
    path.write_text(json.dumps(_measured_doc()))
    assert gpu_truth.main(["--observations", str(path)]) == 0
    assert capsys.readouterr().out.count("[[observation]]") == 3


def test_importing_the_kit_leaves_the_environment_alone():
    """The kit sets HF_HUB_OFFLINE when run as a script; imported by the tests, it must not: a
    later download test in the same process saw HF_HUB_OFFLINE=1 and refused to download."""
    code = (
        "import os, sys; sys.path.insert(0, '.'); import benchmarks.gpu_truth; "
        "print(os.environ.get('HF_HUB_OFFLINE'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "None"
