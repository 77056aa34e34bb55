"""GPU truth kit (issue 12 item 7): on a GPU machine, measure what runs of each profile's own
architecture really hold next to provision's estimate of the same runs, and write one JSON file
to commit as observations.

    python benchmarks/gpu_truth.py        # the one command: every profile, ~15 min on one H100

What it does, with no network and no weights (torch and transformers installed; nvidia-ml-py
for NVML's figures, optional):
1. reads the machine: NVML (pynvml) and `nvidia-smi`;
2. for each profile, smallest first, and each task (infer, then lora), builds the profile's real
   transformers class (Qwen2-VL, Qwen2.5-VL, Gemma 3, Mllama, LLaVA, Idefics3 for SmolVLM,
   InternVL: benchmarks/trace_oracle.py's ARCH, build_config and model_class, the same
   substitutions) at real size on the GPU with random bf16 weights (built without the init
   kernels, then filled with normal(0, 0.02) on the device: a 12B model builds in seconds), gives
   it the profile's default image in the family's input format (trace_oracle.image_inputs), and
   runs
   - infer: the prefill of the estimate's default tokens with the KV cache (logits of the last
     position, or of all where the profile's generate keeps them); the estimate models no decode;
   - lora: two steps of LoRA rank 8 on every linear of the decoder layers (trace_oracle.add_lora:
     PEFT's fp32 adapters fed an fp32 copy of the input), vision tower and projector frozen,
     gradient checkpointing, the loss over the text positions (image tokens masked), AdamW:
     what provision's estimate assumes for the peft stack; the second step is the steady one;
   and records torch.cuda.max_memory_allocated, max_memory_reserved (peaks reset before each
   run) and NVML's used memory for this process right after it, next to provision's estimate of
   the same run (`provision check --json` with the same task, stack, batch, tokens and image
   tokens, and the library's tensor terms for the built parameter counts) and, where
   benchmarks/results/trace_oracle.json has the same row, the trace oracle's peak;
3. writes the JSON after every row (versions, machine, rows) and prints a table.

Guards for the 15 minutes: rows run smallest model first; before each row the time it will take
is predicted (build + steps, from the rows done so far) and a row that would overrun --budget-s
is skipped, named; a row that runs past --row-limit-s is stopped and recorded as such; an
out-of-memory is recorded and the next row runs. --only / --skip pick profiles (or
profile:task). `--observations FILE` turns a measured JSON into rows of
provision/data/observations.toml (printed, to review and paste). `--device cpu --tiny` runs the
same path on CPU with tiny configs of the same classes: the tests do that; there the allocator
figures are null (no CUDA allocator).

    python benchmarks/gpu_truth.py --only qwen2.5-vl-7b --shapes 1x2048 2x2048
    python benchmarks/gpu_truth.py --observations benchmarks/results/gpu_truth.json
    python benchmarks/gpu_truth.py --device cpu --tiny --out /tmp/truth.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# No network on the GPU machine, and none needed: configs come from tests/fixtures/hub-configs.
# Set before the hub client is imported, and only when run as a script: imported (by the tests),
# it must not change the importing process's environment.
if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.trace_oracle import (  # noqa: E402
    ARCH,
    RESULTS,
    STACK,
    add_lora,
    build_config,
    checkpointing_on,
    default_seq,
    estimate_image_tokens,
    estimate_run,
    image_inputs,
    model_class,
    probe_profile,
    tensor_terms,
    versions,
    vision_params,
    write_results,
)
from provision.profiles import list_profiles, load_profile  # noqa: E402

GIB = 1024**3
OUT = ROOT / "benchmarks" / "results" / "gpu_truth.json"
TASKS = ("infer", "lora")
LORA_RANK = 8
# Under --tiny (the CPU check) one image of few tokens: Qwen 8 x 8 patches, one InternVL tile,
# one SmolVLM crop (the other families' image sizes are fixed by their config), and 32 text
# tokens beside it, so the real vocabularies' logits stay small on a CPU.
TINY_IMAGE_TOKENS = {"qwen2-vl": 16, "qwen2.5-vl": 16, "internvl": 256, "idefics3": 64}
TINY_TEXT_TOKENS = 32
# Before any row has run: seconds per billion parameters to build, and the step's FLOP/s.
PRIOR = {"cuda": (1.0, 1e14), "cpu": (2.0, 2e10)}


class RowTimeout(Exception):
    """A row ran past --row-limit-s."""


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
    """What NVML counts for this process on the GPUs (CUDA context included); None without NVML
    or where NVML does not list this pid (a container's own pid namespace): not a zero."""
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
        total, seen = 0, False
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(h):
                if proc.pid == pid and proc.usedGpuMemory is not None:
                    total += int(proc.usedGpuMemory)
                    seen = True
        return total if seen else None
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


def provision_check(
    profile: str, task: str, batch: int, seq: int, image_tokens: int
) -> dict[str, Any]:
    """`provision check --json` on this machine for the same run, as a user types it."""
    cmd = [sys.executable, "-m", "provision", "--json", "check", profile, "--task", task,
           "--stack", STACK[task], "--batch", str(batch), "--seq", str(seq), "--images", "1",
           "--image-tokens", str(image_tokens), "--zero", "0"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    try:
        data = json.loads(out.stdout)
    except json.JSONDecodeError:
        return {"rc": out.returncode, "error": (out.stderr or out.stdout)[-500:]}
    data = data.get("result", data) if isinstance(data, dict) else data
    fit = (data.get("fit") if isinstance(data, dict) else None) or {}
    return {
        "rc": out.returncode,
        "argv": ["provision", *cmd[3:]],
        "verdict": fit.get("verdict"),
        "need_gib": (fit.get("estimate") or {}).get("per_gpu_gib"),
    }


def plan(
    names: list[str], tasks: list[str], shapes: list[tuple[int, int]] | None, tiny: bool
) -> list[tuple[str, str, int, int | None, int]]:
    """The rows to run, smallest model first (infer before lora): (profile, task, batch, seq or
    None for the estimate's default, image tokens)."""
    rows = []
    for name in names:
        profile = load_profile(name)
        kind = ARCH[name]["kind"]
        tokens = TINY_IMAGE_TOKENS.get(kind, profile.image["tokens"]) if tiny else None
        tokens = tokens or int(profile.image["tokens"])
        for t, task in enumerate(tasks):
            for batch, seq in shapes or [(1, 0)]:
                size = int(profile.params["total"])
                rows.append((size, t, name, task, batch, seq or None, tokens))
    return [r[2:] for r in sorted(rows)]


def _signal_timeout(signum: int, frame: Any) -> None:
    raise RowTimeout


def _fill_random(model: Any) -> None:
    """Random bf16 weights on the device: normal(0, 0.02) in place (the model was built without
    the init kernels, its floats are whatever the allocator held)."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.normal_(0.0, 0.02)


def build(name: str, text: dict[str, Any], tiny: bool, device: str) -> tuple[Any, Any]:
    """The profile's own class with random bf16 weights on `device`, and its config."""
    import torch

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x keeps it in modeling_utils
        from transformers.modeling_utils import no_init_weights

    cfg = build_config(name, text, tiny)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device), no_init_weights():
            model = model_class(name)(cfg)
    finally:
        torch.set_default_dtype(previous)
    model.tie_weights()  # no_init_weights skips the tying too: tied lm_heads share
    _fill_random(model)
    return model, cfg


def make_inputs(
    name: str, cfg: Any, batch: int, seq: int, image_tokens: int, device: str
) -> tuple[dict[str, Any], int]:
    """trace_oracle.image_inputs made real on `device`: random pixels in the family's format."""
    import torch

    real = image_inputs(name, cfg, batch, seq, image_tokens)
    pixels = real.pop("_pixels")
    n_image = real.pop("_image_tokens")
    inputs = {k: v.to(device) for k, v in real.items()}
    for key, (shape, dtype) in pixels.items():
        inputs[key] = torch.rand(shape, dtype=dtype, device=device) + 0.01  # no all-zero crop
    return inputs, n_image


def run_task(
    model: Any, inputs: dict[str, Any], task: str, text: dict[str, Any], image_token: int
) -> None:
    """One inference prefill, or two LoRA steps (AdamW's states made in the first)."""
    import torch

    if task == "infer":
        model.eval()
        keep = 0 if text.get("prefill_logits_all") else 1
        with torch.no_grad():
            model(**inputs, use_cache=True, logits_to_keep=keep)
        return
    add_lora(model, LORA_RANK)
    model.train()
    checkpointing_on(model)
    model.config.use_cache = False
    trainable = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(trainable, lr=1e-4, foreach=False)
    # The loss over the text positions: image tokens are no targets (-100, as the families'
    # collators mask them; Mllama's image id lies past its text vocabulary).
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == image_token, -100)
    for _ in range(2):
        out = model(**inputs, labels=labels, use_cache=False)
        out.loss.backward()
        optim.step()
        optim.zero_grad()


def _gib(v: float | None) -> float | None:
    return None if v is None else round(v / GIB, 4)


def image_token_id(cfg: Any) -> int:
    """The id the family's config gives its image placeholder token."""
    for attr in ("image_token_id", "image_token_index"):
        if getattr(cfg, attr, None) is not None:
            return int(getattr(cfg, attr))
    raise AttributeError(f"{type(cfg).__name__} names no image token")


def count_params(name: str) -> int:
    """Parameters of the tiny build (on the meta device: no memory, no time)."""
    import torch

    with torch.device("meta"):
        model = model_class(name)(build_config(name, load_profile(name).text, tiny=True))
    return sum(p.numel() for p in model.parameters())


def vision_tower(model: Any) -> Any:
    """The built model's vision tower, by the name its family gives it."""
    for attr in ("vision_tower", "visual", "vision_model"):
        if hasattr(model.model, attr):
            return getattr(model.model, attr)
    raise AttributeError(f"{type(model).__name__} has no vision tower")


def measure(
    name: str,
    task: str,
    batch: int,
    seq: int,
    image_tokens: int,
    device: str,
    tiny: bool,
    limit_s: float,
) -> dict[str, Any]:
    """Build, run and measure one row; free everything before returning."""
    import torch

    profile = load_profile(name)
    cuda = device.startswith("cuda")
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    row: dict[str, Any] = {"status": "ok"}
    model = inputs = None
    old = signal.signal(signal.SIGALRM, _signal_timeout)
    signal.setitimer(signal.ITIMER_REAL, limit_s)
    started = time.perf_counter()
    try:
        model, cfg = build(name, profile.text, tiny, device)
        row["class"] = type(model).__name__
        row["vision_class"] = type(vision_tower(model)).__name__
        row["params"] = sum(p.numel() for p in model.parameters())
        row["vision_params"] = vision_params(model)
        inputs, n_image = make_inputs(name, cfg, batch, seq, image_tokens, device)
        row["image_tokens"] = n_image
        if cuda:
            torch.cuda.synchronize()
        row["build_s"] = round(time.perf_counter() - started, 2)
        run_task(model, inputs, task, profile.text, image_token_id(cfg))
        if cuda:
            torch.cuda.synchronize()
        row["step_s"] = round(time.perf_counter() - started - row["build_s"], 2)
        trains = task != "infer"
        row["trainable"] = sum(p.numel() for p in model.parameters() if trains and p.requires_grad)
    except getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError) as exc:
        row["status"] = "oom"
        row["error"] = str(exc).splitlines()[0][:300]
    except RowTimeout:
        row["status"] = "timeout"
        row["error"] = f"stopped after --row-limit-s {limit_s:g}"
    except Exception as exc:  # a family's own failure: said in the row, the next row runs
        row["status"] = "error"
        row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    row["seconds"] = round(time.perf_counter() - started, 2)
    row["allocated_gib"] = _gib(torch.cuda.max_memory_allocated()) if cuda else None
    row["reserved_gib"] = _gib(torch.cuda.max_memory_reserved()) if cuda else None
    # NVML's figure now, before anything is freed: the caching allocator keeps its peak pool.
    row["nvml_process_gib"] = _gib(nvml_process_bytes(os.getpid())) if cuda else None
    row["cfg"] = cfg if "class" in row else None
    del model, inputs
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return row


def estimated(
    name: str, cfg: Any, task: str, batch: int, seq: int, measured: dict[str, Any]
) -> dict[str, Any]:
    """Provision's estimate of the run built: the profile with the build's shape and parameter
    counts (trace_oracle.probe_profile), its tensor terms (what max_memory_allocated counts) and
    its whole per-GPU figure (what NVML counts)."""
    profile = load_profile(name)
    probe = probe_profile(profile, cfg, measured)
    tokens = estimate_image_tokens(profile, measured)
    est = estimate_run(probe, task, batch, seq, images=1, image_tokens=tokens)
    return {
        "image_tokens": tokens,
        "tensors_gib": _gib(sum(tensor_terms(est).values())),
        "per_gpu_gib": _gib(est.per_gpu),
    }


def traced_peaks() -> dict[tuple[str, str, int, int], float]:
    """The trace oracle's recorded peaks (GiB) by profile, task, batch and tokens."""
    if not RESULTS.exists():
        return {}
    rows = json.loads(RESULTS.read_text()).get("rows", [])
    return {(r["profile"], r["task"], r["batch"], r["seq"]): r["traced_peak"] / GIB for r in rows}


def compare_row(run: dict[str, Any]) -> dict[str, float | None]:
    """Errors against what was measured: the estimate's tensors vs max_memory_allocated, its
    whole figure vs NVML's (or the reserved peak where NVML is absent), `provision check`'s
    figure likewise, and the trace oracle's peak vs max_memory_allocated."""
    m, e = run["measured"], run["estimate"]

    def err(ours: float | None, real: float | None) -> float | None:
        return None if not real or ours is None else round((ours - real) / real, 3)

    whole = m.get("nvml_process_gib") or m.get("reserved_gib")
    return {
        "tensors_vs_allocated": err(e["tensors_gib"], m.get("allocated_gib")),
        "per_gpu_vs_process": err(e["per_gpu_gib"], whole),
        "check_vs_process": err((run.get("check") or {}).get("need_gib"), whole),
        "traced_vs_allocated": err(run.get("traced_gib"), m.get("allocated_gib")),
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
        status = "" if m.get("status", "ok") == "ok" else f" ({m['status']})"
        lines.append(
            f"| {r['profile']} | {r['task']}{status} | {r['batch']}x{r['seq']} "
            f"| {g(m['allocated_gib'])} | {g(m['reserved_gib'])} | {g(m['nvml_process_gib'])} "
            f"| {g(e['tensors_gib'])} | {g(e['per_gpu_gib'])} "
            f"| {pct(c['tensors_vs_allocated'])} | {pct(c['per_gpu_vs_process'])} |"
        )
    return "\n".join(lines)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _picked(name: str, task: str, patterns: list[str] | None) -> bool:
    return any(p in (name, f"{name}:{task}") for p in patterns or [])


def step_flops(params: float, batch: int, seq: int, task: str) -> float:
    """What the row computes: 2 FLOP per parameter per token forward; a LoRA step adds the
    checkpointed forward again and the backward to the inputs (6), twice."""
    return 2 * params * batch * seq * (1 if task == "infer" else 2 * 3)


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = args.started
    names = [p.name for p in list_profiles() if p.name in ARCH]
    dev = "cuda" if args.device.startswith("cuda") else "cpu"
    build_rate, flops_rate = PRIOR[dev]
    best_rate = done_gparams = done_build_s = 0.0
    doc: dict[str, Any] = {
        "what": "benchmarks/gpu_truth.py: measured peaks of each profile's own architecture "
        "(vision tower included) with random bf16 weights and the default image, next to "
        "provision's estimate of the same run",
        "device": args.device,
        "tiny": args.tiny,
        "versions": versions(),
        "machine": {"nvml": nvml_facts(), "nvidia_smi": nvidia_smi()},
        "derived": {n: a["derived"] for n, a in ARCH.items() if "derived" in a},
        "runs": [],
        "skipped": [],
    }
    traced = traced_peaks() if not args.tiny else {}
    todo = [
        r for r in plan(names, args.tasks, args.shapes, args.tiny)
        if (args.only is None or _picked(r[0], r[1], args.only))
        and not _picked(r[0], r[1], args.skip)
    ]  # fmt: skip
    _log(f"{len(todo)} rows on {args.device}, budget {args.budget_s:g} s; JSON: {args.out}")
    for i, (name, task, batch, seq, tokens) in enumerate(todo, 1):
        profile = load_profile(name)
        if seq is None:
            seq = (tokens if profile.image.get("in_text_sequence", True) else 0) + TINY_TEXT_TOKENS
            if not args.tiny:
                seq = default_seq(profile, task, tokens)
        key = f"{name} {task} {batch}x{seq}"
        gparams = (count_params(name) if args.tiny else profile.params["total"]) / 1e9
        expect = build_rate * gparams + step_flops(gparams * 1e9, batch, seq, task) / flops_rate
        spent = time.perf_counter() - started
        if spent + expect > args.budget_s:
            doc["skipped"].append(
                f"{key}: ~{expect:.0f} s expected, {max(args.budget_s - spent, 0):.0f} s of "
                f"--budget-s {args.budget_s:g} left"
            )
            _log(f"{i}/{len(todo)} {key}: skipped ({doc['skipped'][-1]})")
            continue
        # A row may run past the budget by a minute at most (the kit's 15 minutes hold).
        limit = min(args.row_limit_s, args.budget_s - spent + 60)
        _log(f"{i}/{len(todo)} {key}: expect ~{expect:.0f} s (stopped after {limit:.0f} s)")
        m = measure(name, task, batch, seq, tokens, args.device, args.tiny, limit)
        cfg = m.pop("cfg")
        row: dict[str, Any] = {"profile": name, "task": task, "batch": batch, "seq": seq}
        row["measured"] = m
        if args.no_check:
            row["check"] = None
        else:
            row["check"] = provision_check(name, task, batch, seq, tokens)
        if cfg is not None and "image_tokens" in m:  # built, and its inputs made
            row["estimate"] = estimated(name, cfg, task, batch, seq, m)
        else:
            row["estimate"] = {"image_tokens": None, "tensors_gib": None, "per_gpu_gib": None}
        peak = traced.get((name, task, batch, seq))
        row["traced_gib"] = None if peak is None else round(peak, 4)
        row["errors"] = compare_row(row)
        doc["runs"].append(row)
        if "step_s" in m:  # what the next rows' predictions learn from
            done_gparams += m["params"] / 1e9
            done_build_s += m["build_s"]
            build_rate = max(done_build_s / done_gparams, 0.01)
            # The best throughput seen: small rows are overhead, not the big rows' rate.
            rate = step_flops(m["params"], batch, seq, task) / max(m["step_s"], 1e-3)
            best_rate = flops_rate = max(best_rate, rate)
        doc["seconds"] = round(time.perf_counter() - started, 1)
        write_results(doc, args.out)
        _log(f"{i}/{len(todo)} {key}: {m['status']} in {m['seconds']:.1f} s  "
             + table([row]).splitlines()[-1])  # fmt: skip
    doc["seconds"] = round(time.perf_counter() - started, 1)
    return doc


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v), ensure_ascii=False)  # a TOML basic string is JSON's


def observations(doc: dict[str, Any], source: str) -> str:
    """The measured rows of a gpu_truth JSON as [[observation]] rows of
    provision/data/observations.toml (its schema: measure "process" where NVML saw this process,
    else "reserved"; the three figures in vram_raw). ValueError for a CPU or --tiny run, which
    measured nothing that calibrates."""
    if doc.get("tiny") or not str(doc.get("device", "")).startswith("cuda"):
        raise ValueError(f"{source}: a --tiny or CPU run measured no GPU memory; run it on a GPU")
    gpus = (doc.get("machine", {}).get("nvml") or {}).get("gpus") or []
    smi = (doc.get("machine", {}).get("nvidia_smi") or {}).get("lines") or []
    gpu = gpus[0]["name"] if gpus else (smi[0].split(",")[0].strip() if smi else None)
    if not gpu:
        raise ValueError(f"{source}: names no GPU (neither NVML nor nvidia-smi answered)")
    v = doc.get("versions", {})
    blocks = []
    for r in doc.get("runs", []):
        m = r["measured"]
        if m.get("status") not in ("ok", "oom"):
            continue
        process, reserved = m.get("nvml_process_gib"), m.get("reserved_gib")
        figure, measure_kind = (process, "process") if process else (reserved, "reserved")
        what = "prefill with the KV cache" if r["task"] == "infer" else "2 LoRA steps"
        obs: dict[str, Any] = {
            "id": f"{r['profile']}/gpu-truth-{r['task']}-{r['batch']}x{r['seq']}",
            "profile": r["profile"],
            "what": f"gpu_truth {what}, random bf16 weights, one default image, on {gpu}",
            "src": f"benchmarks/gpu_truth.py run on {gpu}: {source} (torch "
            f"{v.get('torch')}, transformers {v.get('transformers')})",
            "kind": "measured",
            "task": r["task"],
            "stack": STACK[r["task"]],
            "quant": "bf16",
            "gpu": gpu,
            "gpus": 1,
            "batch": r["batch"],
            "seq": r["seq"],
            "images": 1,
        }
        if r["estimate"].get("image_tokens"):
            obs["image_tokens"] = r["estimate"]["image_tokens"]
        if r["task"] == "lora":
            obs.update(gradient_checkpointing=True, train_vision="frozen", lora_rank=LORA_RANK)
        obs.update(zero=0, attention="sdpa")
        if m["status"] == "ok" and figure:
            obs["vram_gib"] = round(figure, 3)
            obs["measure"] = measure_kind
        obs["vram_raw"] = (
            f"max_memory_allocated {m.get('allocated_gib')} GiB, max_memory_reserved "
            f"{reserved} GiB, NVML process {process} GiB"
        )
        obs["outcome"] = "fits" if m["status"] == "ok" else "oom"
        obs["assumptions"] = (
            f"{m.get('class')} built from the repo's hub config (trace_oracle ARCH), "
            f"{m.get('params')} parameters; peaks reset before the run"
        )
        blocks.append(
            "[[observation]]\n" + "".join(f"{k} = {_toml_value(x)}\n" for k, x in obs.items())
        )
    return "\n".join(blocks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="profiles (or profile:task)")
    parser.add_argument("--skip", nargs="*", default=None, help="profiles (or profile:task)")
    parser.add_argument("--tasks", nargs="*", default=list(TASKS), choices=TASKS)
    parser.add_argument(
        "--shapes", nargs="*", default=None,
        help="BATCHxTOKENS (default: 1 x the estimate's default tokens for one image)",
    )  # fmt: skip
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny configs (the CPU check)")
    parser.add_argument("--budget-s", type=float, default=780.0, help="no row starts past it")
    parser.add_argument("--row-limit-s", type=float, default=240.0, help="a row is stopped after")
    parser.add_argument("--no-check", action="store_true", help="skip `provision check` runs")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--observations", type=Path, metavar="JSON",
        help="print a measured JSON's rows as observations.toml rows, and exit",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.started = time.perf_counter()  # the budget counts from here, imports included
    if args.row_limit_s <= 0 or args.budget_s < 0:
        parser.error("--row-limit-s must be above 0 and --budget-s at least 0 (seconds)")
    if args.observations is not None:
        try:
            doc = json.loads(args.observations.read_text())
            print(observations(doc, str(args.observations)))
        except (OSError, ValueError, KeyError) as exc:
            parser.error(f"--observations: {exc}")
        return 0
    try:
        args.shapes = None if args.shapes is None else parse_shapes(args.shapes)
    except ValueError as exc:
        parser.error(str(exc))

    known = {p.name for p in list_profiles()} & set(ARCH)
    unknown = sorted({p.split(":")[0] for p in (args.only or []) + (args.skip or [])} - known)
    if unknown:
        parser.error(f"--only/--skip: no profile {', '.join(unknown)} (one of {sorted(known)})")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device here; use --device cpu --tiny to check")
    args.out = args.out.resolve()
    doc = run(args)
    write_results(doc, args.out)
    print(table(doc["runs"]))
    for s in doc["skipped"]:
        print(f"skipped: {s}")
    _log(f"wrote {args.out} ({len(doc['runs'])} rows in {doc['seconds']} s); to commit, then: "
         f"python benchmarks/gpu_truth.py --observations {args.out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
