"""GPU truth kit (issue 12 item 7): on a GPU machine, measure what runs really hold next to
provision's estimate of the same runs, and write one JSON file to commit as observations.

What it does, with no network and no weights (torch and transformers installed):
1. reads the machine: NVML (pynvml / nvidia-ml-py, if installed) and `nvidia-smi`, and runs
   `provision check PROFILE --json` on it for each profile;
2. builds each profile's language model at real size with random bf16 weights on the GPU (the
   Llama-shaped decoder of benchmarks/trace_oracle.py's decoder_config: the vision tower is not
   built here, images count as tokens of the sequence; the trace oracle builds the real
   architectures), and for inference (prefill with the KV cache) and one LoRA step
   (rank 8 on every decoder linear, gradient checkpointing, AdamW) records
   torch.cuda.max_memory_allocated, max_memory_reserved and NVML's figure for this process;
   an out-of-memory is recorded as such;
3. writes the JSON (versions, machine, runs: measured next to estimated) and prints a table.

It stops starting new runs when --budget-s is spent (default 780 s: the whole kit fits 15 minutes
on one H100). `--device cpu --tiny` runs the same path on CPU with tiny shapes: the tests do that;
there the allocator figures are null (no CUDA allocator).

    python benchmarks/gpu_truth.py --out benchmarks/results/gpu_truth.json
    python benchmarks/gpu_truth.py --profiles qwen2.5-vl-7b --shapes 1x2048 4x1024
    python benchmarks/gpu_truth.py --device cpu --tiny --out /tmp/truth.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.trace_oracle import (  # noqa: E402
    add_lora,
    checkpointing_on,
    decoder_config,
    estimate_terms,
    text_only,
    versions,
)

GIB = 1024**3
# The shape every profile takes under --tiny (the CPU check): small enough to run in seconds.
TINY_TEXT = {
    "hidden": 64,
    "intermediate": 128,
    "layers": 2,
    "heads": 4,
    "kv_heads": 2,
    "head_dim": 16,
    "vocab": 512,
}


def parse_shapes(values: list[str]) -> list[tuple[int, int]]:
    """'BATCHxTOKENS' strings -> (batch, tokens); ValueError naming the bad one."""
    shapes = []
    for s in values:
        b, _, n = s.partition("x")
        if not (b.isdigit() and n.isdigit() and int(b) > 0 and int(n) > 0):
            raise ValueError(f"--shapes {s!r} is not BATCHxTOKENS, e.g. 1x2048")
        shapes.append((int(b), int(n)))
    return shapes


def nvml_facts(nvml: Any = None) -> dict[str, Any]:
    """Driver and GPUs as NVML reports them; {"error": ...} without NVML or a driver."""
    if nvml is None:
        try:
            import pynvml as nvml  # type: ignore[no-redef]
        except ImportError:
            return {"error": "pynvml (nvidia-ml-py) is not installed"}
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return {"error": f"NVML: {exc}"}
    try:
        gpus = []
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            name = nvml.nvmlDeviceGetName(h)
            mem = nvml.nvmlDeviceGetMemoryInfo(h)
            gpus.append(
                {
                    "index": i,
                    "name": name.decode() if isinstance(name, bytes) else str(name),
                    "total_gib": round(mem.total / GIB, 2),
                    "used_gib": round(mem.used / GIB, 2),
                }
            )
        driver = nvml.nvmlSystemGetDriverVersion()
        return {"driver": driver.decode() if isinstance(driver, bytes) else driver, "gpus": gpus}
    finally:
        nvml.nvmlShutdown()


def nvml_process_bytes(pid: int, nvml: Any = None) -> int | None:
    """What NVML counts for this process on the GPUs (CUDA context included); None without NVML."""
    if nvml is None:
        try:
            import pynvml as nvml  # type: ignore[no-redef]
        except ImportError:
            return None
    try:
        nvml.nvmlInit()
    except Exception:
        return None
    try:
        total = 0
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(h):
                if proc.pid == pid and proc.usedGpuMemory:
                    total += int(proc.usedGpuMemory)
        return total
    finally:
        nvml.nvmlShutdown()


def nvidia_smi() -> dict[str, Any]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"error": "nvidia-smi not found"}
    query = "--query-gpu=name,memory.total,driver_version"
    try:
        out = subprocess.run(
            [exe, query, "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": str(exc)}
    return {"rc": out.returncode, "lines": out.stdout.strip().splitlines()}


def provision_check(profile: str, task: str) -> dict[str, Any]:
    """`provision check PROFILE --task TASK --json` on this machine, as a user runs it."""
    cmd = [sys.executable, "-m", "provision", "--json", "check", profile, "--task", task]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    try:
        data = json.loads(out.stdout)
    except json.JSONDecodeError:
        return {"rc": out.returncode, "error": (out.stderr or out.stdout)[-500:]}
    data = data.get("result", data) if isinstance(data, dict) else data
    fit = data.get("fit", {}) if isinstance(data, dict) else {}
    return {
        "rc": out.returncode,
        "verdict": fit.get("verdict"),
        "need_gib": (fit.get("estimate") or {}).get("per_gpu_gib"),
    }


def measure(text: dict[str, Any], task: str, batch: int, seq: int, device: str) -> dict[str, Any]:
    """Build the decoder with random bf16 weights on `device`, run the task once, and read the
    allocator's peaks (CUDA) and NVML's figure for this process."""
    import torch
    from transformers import LlamaForCausalLM

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result: dict[str, Any] = {"oom": False}
    model = None
    try:
        with torch.device(device):
            previous = torch.get_default_dtype()
            torch.set_default_dtype(torch.bfloat16)
            try:
                model = LlamaForCausalLM(decoder_config(text))
            finally:
                torch.set_default_dtype(previous)
            ids = torch.randint(0, text["vocab"], (batch, seq))
            if task == "infer":
                model.eval()
                with torch.no_grad():
                    model(input_ids=ids, use_cache=True, logits_to_keep=1)
            else:
                add_lora(model, 8)
                model.train()
                checkpointing_on(model)
                trainable = [p for p in model.parameters() if p.requires_grad]
                optim = torch.optim.AdamW(trainable, lr=1e-4)
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                loss.backward()
                optim.step()
                optim.zero_grad()
        if cuda:
            torch.cuda.synchronize()
    except torch.OutOfMemoryError as exc:
        result["oom"] = True
        result["error"] = str(exc).splitlines()[0][:300]
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["allocated_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 6) if cuda else None
    result["reserved_gib"] = round(torch.cuda.max_memory_reserved() / GIB, 6) if cuda else None
    nv = nvml_process_bytes(os.getpid()) if cuda else None
    result["nvml_process_gib"] = None if nv is None else round(nv / GIB, 6)
    del model
    return result


def estimated(profile: Any, task: str, batch: int, seq: int) -> dict[str, float]:
    """Provision's estimate of the same run: the tensor terms (what max_memory_allocated counts)
    and the whole per-GPU figure (what NVML sees)."""
    from provision.memory import FitRequest, estimate

    stack = "transformers" if task == "infer" else "peft"
    terms = estimate_terms(profile, task, batch, seq)
    req = FitRequest(task=task, stack=stack, batch=batch, seq=seq, images=0, zero=0)
    return {
        "tensors_gib": round(sum(terms.values()) / GIB, 6),
        "per_gpu_gib": round(estimate(profile, req).per_gpu / GIB, 6),
    }


def compare_row(run: dict[str, Any]) -> dict[str, float | None]:
    """Errors of the estimate against what was measured: tensors vs max_memory_allocated, the
    whole figure vs NVML's (or the reserved peak where NVML is absent)."""
    m, e = run["measured"], run["estimate"]

    def err(ours: float, real: float | None) -> float | None:
        return None if not real else round((ours - real) / real, 3)

    whole = m.get("nvml_process_gib") or m.get("reserved_gib")
    return {
        "tensors_vs_allocated": err(e["tensors_gib"], m.get("allocated_gib")),
        "per_gpu_vs_process": err(e["per_gpu_gib"], whole),
    }


def table(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| profile | task | batch x tokens | allocated | reserved | NVML | ours (tensors) "
        "| ours (per GPU) | error tensors | error per GPU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def g(v: float | None) -> str:
        return "—" if v is None else f"{v:.2f}"

    def pct(v: float | None) -> str:
        return "—" if v is None else f"{v:+.0%}"

    for r in runs:
        m, e, c = r["measured"], r["estimate"], r["errors"]
        oom = " (OOM)" if m.get("oom") else ""
        lines.append(
            f"| {r['profile']} | {r['task']}{oom} | {r['batch']}x{r['seq']} "
            f"| {g(m['allocated_gib'])} | {g(m['reserved_gib'])} | {g(m['nvml_process_gib'])} "
            f"| {g(e['tensors_gib'])} | {g(e['per_gpu_gib'])} "
            f"| {pct(c['tensors_vs_allocated'])} | {pct(c['per_gpu_vs_process'])} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from provision.profiles import list_profiles, load_profile

    started = time.perf_counter()
    names = args.profiles or [p.name for p in list_profiles()]
    doc: dict[str, Any] = {
        "what": "benchmarks/gpu_truth.py: measured peaks of each profile's decoder with random "
        "bf16 weights, next to provision's estimate of the same run",
        "device": args.device,
        "tiny": args.tiny,
        "versions": versions(),
        "machine": {"nvml": nvml_facts(), "nvidia_smi": nvidia_smi(), "check": {}},
        "runs": [],
        "skipped": [],
    }
    if not args.no_check:
        for name in names:
            doc["machine"]["check"][name] = {t: provision_check(name, t) for t in args.tasks}
    for name in names:
        profile = load_profile(name)
        text = {**profile.text, **(TINY_TEXT if args.tiny else {})}
        probe = text_only(profile, text if args.tiny else None)
        for task in args.tasks:
            for batch, seq in args.shapes:
                key = f"{name} {task} {batch}x{seq}"
                if time.perf_counter() - started > args.budget_s:
                    doc["skipped"].append(f"{key}: --budget-s {args.budget_s} spent")
                    continue
                if seq > text["max_context"]:
                    doc["skipped"].append(f"{key}: longer than the {text['max_context']} context")
                    continue
                row: dict[str, Any] = {"profile": name, "task": task, "batch": batch, "seq": seq}
                row["measured"] = measure(text, task, batch, seq, args.device)
                row["estimate"] = estimated(probe, task, batch, seq)
                row["errors"] = compare_row(row)
                doc["runs"].append(row)
                print(table([row]).splitlines()[-1], flush=True)
    doc["seconds"] = round(time.perf_counter() - started, 1)
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="*", default=None, help="default: every built-in")
    parser.add_argument("--tasks", nargs="*", default=["infer", "lora"], choices=("infer", "lora"))
    parser.add_argument("--shapes", nargs="*", default=["1x2048"], help="BATCHxTOKENS")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (the CPU check)")
    parser.add_argument("--budget-s", type=float, default=780.0, help="stop starting runs after")
    parser.add_argument("--no-check", action="store_true", help="skip `provision check` runs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/gpu_truth.json")
    args = parser.parse_args(argv)
    try:
        args.shapes = parse_shapes(args.shapes)
    except ValueError as exc:
        parser.error(str(exc))
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device here; use --device cpu --tiny to check")
    doc = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(args.out)
    print(table(doc["runs"]))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
