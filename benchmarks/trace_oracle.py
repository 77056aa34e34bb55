"""The trace oracle (issue 12 item 6): count the bytes a forward (and a training step) really holds,
without a GPU and without weights, and set them next to the estimate's tensor terms.

Each profile's language model is built at real size from its [text] shape as a Llama-shaped
decoder (transformers' LlamaForCausalLM: RMSNorm, q/k/v/o, gated MLP, RoPE, GQA, untied or tied
lm_head; the families' own decoders differ in biases and norms, not in what a layer keeps) under
torch's FakeTensorMode: tensors carry shapes and dtypes but no memory, so a 7B model traces on a
laptop. torch.distributed._tools.mem_tracker.MemTracker counts the live bytes by kind (parameters,
gradients, activations, temporaries, optimizer states) and gives the peak.

Tasks traced:
- infer: the prefill of `seq` tokens (batch `batch`) under no_grad with the KV cache built; the
  logits of every position when the family's generate keeps them (profiles' prefill_logits_all),
  else of the last one.
- lora: two steps of LoRA (rank 8 on every linear of the decoder, fp32 adapters that take an
  fp32 copy of their input, as PEFT's Linear.forward does with autocast_adapter_dtype) with
  gradient checkpointing, the loss over all positions, backward and AdamW's step; the second step
  is the steady one, with AdamW's states already made.
- full: the same with every weight trained (bf16 weights, fp32 AdamW states on top: torch's
  AdamW keeps its states in the parameter's dtype, so a bf16 trace holds 2 x 2 bytes per
  parameter, where mixed-precision trainers keep fp32 master weights and moments: the comparison
  adds that difference back, see `compare`).

The vision tower is not traced here (each family's tower takes its own input format); the
comparison is for the language model, images counted as tokens of the sequence.

    python benchmarks/trace_oracle.py             # print the table for the grid
    python benchmarks/trace_oracle.py --write     # and merge the rows into
                                                  # benchmarks/results/trace_oracle.json
    python benchmarks/trace_oracle.py --profiles qwen2.5-vl-7b --tasks infer --shapes 1x2048
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "trace_oracle.json"
TASKS = ("infer", "lora", "full")
GIB = 1024**3


def decoder_config(text: dict[str, Any]) -> Any:
    """A LlamaConfig with the profile's text shape."""
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        vocab_size=text["vocab"],
        hidden_size=text["hidden"],
        intermediate_size=text["intermediate"],
        num_hidden_layers=text["layers"],
        num_attention_heads=text["heads"],
        num_key_value_heads=text["kv_heads"],
        head_dim=text["head_dim"],
        max_position_embeddings=max(text.get("max_context", 4096), 4096),
        tie_word_embeddings=bool(text.get("tie_word_embeddings", False)),
    )
    cfg._attn_implementation = "sdpa"
    return cfg


def _lora_class() -> Any:
    import torch
    from torch import nn

    class _LoraLinear(nn.Module):
        """PEFT's LoRA Linear as it runs: the frozen base, and fp32 adapters fed an fp32 copy of
        the input (peft tuners/lora/layer.py Linear.forward casts x to lora_A's dtype)."""

        def __init__(self, base: nn.Linear, rank: int) -> None:
            super().__init__()
            self.base = base
            self.lora_A = nn.Linear(base.in_features, rank, bias=False, dtype=torch.float32)
            self.lora_B = nn.Linear(rank, base.out_features, bias=False, dtype=torch.float32)

        def forward(self, x: Any) -> Any:
            out = self.base(x)
            return out + self.lora_B(self.lora_A(x.to(torch.float32))).to(out.dtype)

    return _LoraLinear


def checkpointing_on(model: Any) -> None:
    """Gradient checkpointing, non-reentrant, by the name the installed transformers has
    (activation_checkpointing_enable from 5.x, gradient_checkpointing_enable before)."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    enable = enable or model.gradient_checkpointing_enable
    enable({"use_reentrant": False})


def add_lora(model: Any, rank: int) -> None:
    """LoRA on every linear of the decoder layers (all-linear, lm_head excluded); base frozen."""
    from torch import nn

    lora = _lora_class()
    for p in model.parameters():
        p.requires_grad_(False)
    targets = [
        (parent, name, child)
        for layer in model.model.layers
        for parent in layer.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear)
    ]
    for parent, name, child in targets:
        setattr(parent, name, lora(child, rank))


def _tracker_class(base: Any) -> Any:
    class _Tracker(base):  # type: ignore[misc, valid-type]
        """MemTracker installs a gradient hook on every parameter of a module it enters, which
        torch refuses for a frozen one (the LoRA base): only modules whose parameters all train
        get the hooks; a trainable adapter's own Linear is such a module."""

        def _track_module_params_and_buffers(self, module: Any, install_grad_hooks: bool = True):
            trains = all(p.requires_grad for p in module.parameters())
            return super()._track_module_params_and_buffers(module, install_grad_hooks and trains)

        def _update_peak_stats(self, peak_state: Any) -> None:
            """Only the whole-run peak, which is all the oracle reads: MemTracker also walks
            every module it has seen on every allocation for per-module peaks, which makes a
            real-size LoRA step (hundreds of modules) take tens of minutes on a CPU."""
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap["Total"]:
                    self._peak_mem[dev] = snap["Total"]
                    self._peak_mem_snap[dev] = dict(snap)

    return _Tracker


def trace(
    text: dict[str, Any],
    task: str,
    batch: int,
    seq: int,
    rank: int = 8,
    checkpointing: bool = True,
) -> dict[str, Any]:
    """Peak live bytes of one run of the profile's decoder under FakeTensorMode, by kind at the
    peak, plus the parameter count."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker
    from transformers import LlamaForCausalLM

    if task not in TASKS:
        raise ValueError(f"task {task!r}: one of {', '.join(TASKS)}")
    cfg = decoder_config(text)
    started = time.perf_counter()
    with FakeTensorMode():
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            model = LlamaForCausalLM(cfg)
        finally:
            torch.set_default_dtype(previous)
        params = sum(p.numel() for p in model.parameters())
        ids = torch.randint(0, text["vocab"], (batch, seq))
        optim = None
        if task == "lora":
            add_lora(model, rank)
        if task != "infer":
            model.train()
            if checkpointing:
                checkpointing_on(model)
                model.config.use_cache = False
            trainable = [p for p in model.parameters() if p.requires_grad]
            optim = torch.optim.AdamW(trainable, lr=1e-4, foreach=False)
        tracker = _tracker_class(MemTracker)()
        tracker.track_external(model, *([optim] if optim else []))
        with tracker:
            if task == "infer":
                keep = 0 if text.get("prefill_logits_all") else 1
                with torch.no_grad():
                    model(input_ids=ids, use_cache=True, logits_to_keep=keep)
            else:  # two steps: AdamW makes its states in the first, the second is steady
                for step in range(2):
                    if step:
                        tracker.reset_mod_stats()  # per-module stats; the peak stays
                    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                    loss.backward()
                    optim.step()  # type: ignore[union-attr]
                    optim.zero_grad()  # type: ignore[union-attr]
        snap = tracker.get_tracker_snapshot("peak")
    dev = next(iter(snap.values()))
    kinds = {str(getattr(k, "value", k)).lower(): int(v) for k, v in dev.items()}
    return {
        "peak": int(dev.get("Total", 0)),
        "by_kind": {k: v for k, v in kinds.items() if k != "total"},
        "params": int(params),
        "seconds": round(time.perf_counter() - started, 1),
    }


def text_only(profile: Any, text: dict[str, Any] | None = None, params: int | None = None) -> Any:
    """The profile as a language model alone (no vision tower), optionally with another text
    shape (tiny configs in tests) and the parameter count the trace built."""
    from provision.memory import embedding_params

    data = dict(profile.data)
    data["text"] = {**profile.text, **(text or {})}
    probe = replace(profile, data=data)
    if params is None:
        t = data["text"]
        embed, head = embedding_params(probe)
        q, kv = t["heads"] * t["head_dim"], t["kv_heads"] * t["head_dim"]
        per_layer = t["hidden"] * (2 * q + 2 * kv) + 3 * t["hidden"] * t["intermediate"]
        params = embed + head + t["layers"] * (per_layer + 2 * t["hidden"]) + t["hidden"]
    data["params"] = {**profile.params, "total": params, "language": params, "vision": 0}
    data["weights"] = {**profile.weights, "dtype": "bfloat16", "bytes": 2 * params}
    return replace(profile, data=data)


def estimate_terms(profile: Any, task: str, batch: int, seq: int) -> dict[str, float]:
    """The estimate's tensor terms for the same run: everything but the CUDA context /
    fragmentation overhead and the training reserve, which a trace cannot see."""
    from provision.memory import FitRequest, estimate

    stack = "transformers" if task == "infer" else "peft"
    req = FitRequest(task=task, stack=stack, batch=batch, seq=seq, images=0, zero=0)
    est = estimate(profile, req)
    skip = ("overhead", "training reserve", "deepspeed buffers", "cpu offload")
    return {c.name: c.bytes for c in est.components if c.name not in skip}


def compare(profile: Any, task: str, batch: int, seq: int, traced: dict[str, Any]) -> dict:
    """One row: traced peak and estimate, both with and without the weights."""
    probe = text_only(profile, params=traced["params"])
    terms = estimate_terms(probe, task, batch, seq)
    ours = sum(terms.values())
    peak = traced["peak"]
    if task == "full":
        # The trace's AdamW keeps bf16 states on bf16 weights (4 B/param); mixed precision keeps
        # an fp32 master copy and two fp32 moments (12 B/param): add the difference back.
        peak += 8 * traced["params"]
    weights = traced["by_kind"].get("parameter", 0)
    return {
        "profile": profile.name,
        "task": task,
        "batch": batch,
        "seq": seq,
        "traced_peak": peak,
        "traced_raw_peak": traced["peak"],  # before the mixed-precision correction (full)
        "params": traced["params"],
        "estimate": int(ours),
        "traced_beyond_weights": peak - weights,
        "estimate_beyond_weights": int(ours - terms.get("weights", 0)),
        "error": round((ours - peak) / peak, 3),
        "traced_by_kind": {k: v for k, v in traced["by_kind"].items() if v},
        "estimate_terms": {k: int(v) for k, v in terms.items()},
        "trace_seconds": traced["seconds"],
    }


def run_grid(
    profiles: list[str], tasks: list[str], shapes: list[tuple[int, int]]
) -> list[dict[str, Any]]:
    from provision.profiles import load_profile

    rows = []
    for name in profiles:
        profile = load_profile(name)
        for task in tasks:
            for batch, seq in shapes:
                if seq > profile.text["max_context"]:
                    continue
                traced = trace(profile.text, task, batch, seq)
                rows.append(compare(profile, task, batch, seq, traced))
                print(_row(rows[-1]), flush=True)
    return rows


def _row(r: dict[str, Any]) -> str:
    g = {k: r[k] / GIB for k in ("traced_peak", "estimate")}
    b = {k: r[k] / GIB for k in ("traced_beyond_weights", "estimate_beyond_weights")}
    return (
        f"| {r['profile']} | {r['task']} | {r['batch']}x{r['seq']} | {g['traced_peak']:.2f} "
        f"| {g['estimate']:.2f} | {r['error']:+.0%} | {b['traced_beyond_weights']:.2f} "
        f"| {b['estimate_beyond_weights']:.2f} |"
    )


def table(rows: list[dict[str, Any]]) -> str:
    return "\n".join([HEADER, *(_row(r) for r in rows)])


HEADER = (
    "| profile | task | batch x tokens | traced peak GiB | estimate GiB | error "
    "| traced beyond weights | estimate beyond weights |\n|---|---|---|---|---|---|---|---|"
)


def versions() -> dict[str, str]:
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    from provision.profiles import list_profiles

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="*", default=None, help="default: every built-in")
    parser.add_argument("--tasks", nargs="*", default=["infer", "lora"], choices=TASKS)
    parser.add_argument(
        "--shapes", nargs="*", default=["1x2048", "4x1024"], help="BATCHxTOKENS, e.g. 1x2048"
    )
    parser.add_argument("--write", action="store_true", help=f"write {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    shapes = []
    for s in args.shapes:
        b, _, n = s.partition("x")
        if not (b.isdigit() and n.isdigit()):
            parser.error(f"--shapes {s!r} is not BATCHxTOKENS, e.g. 1x2048")
        shapes.append((int(b), int(n)))
    names = args.profiles or [p.name for p in list_profiles()]
    print(HEADER)
    rows = run_grid(names, args.tasks, shapes)
    if args.write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        # Rows of earlier runs stay unless this run traced the same profile, task and shape.
        key = ("profile", "task", "batch", "seq")
        done = {tuple(r[k] for k in key) for r in rows}
        kept = []
        if RESULTS.exists():
            old = json.loads(RESULTS.read_text())["rows"]
            kept = [r for r in old if tuple(r[k] for k in key) not in done]
        doc = {
            "what": "FakeTensorMode + MemTracker peaks of each profile's decoder (benchmarks/"
            "trace_oracle.py) next to provision's estimate of the same run",
            "versions": versions(),
            "rows": kept + rows,
        }
        tmp = RESULTS.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        tmp.replace(RESULTS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
