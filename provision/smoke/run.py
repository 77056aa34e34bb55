"""Run the smoke inference in a target environment and record what it showed.

`run_smoke` writes a request, runs `runner.py` with the environment's own Python (which imports
nothing of provision), reads the report back, attaches the next step to each failure (from
provision/data/smoke_failures.toml) and records the result in the lock's [tool.provision.smoke].
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from provision.errors import ProvisionError
from provision.procs import exit_on_signals, stop_group
from provision.profiles import Profile
from provision.smoke.hints import hint_for

PACKAGE_DIR = Path(__file__).resolve().parent
RUNNER = PACKAGE_DIR / "runner.py"
IMAGE = PACKAGE_DIR / "assets" / "cat.jpg"
DEFAULT_TIMEOUT = 1800.0  # a 7B model on a CPU-only box is slow; a GPU smoke takes a minute
DEFAULT_MAX_NEW_TOKENS = 32
MODES = ("greedy", "group_beam")
SERVING_STACKS = ("lmdeploy", "vllm")
# Variables that would make the target Python see provision's own packages instead of its own.
LEAKY_VARS = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH")


@dataclass
class ModeOutcome:
    """One decoding mode: status "ok", "failed" or "not_applicable" (with the reason)."""

    name: str
    status: str
    answer: str | None = None
    new_tokens: int | None = None
    latency_s: float | None = None
    tokens_per_s: float | None = None
    peak_memory_bytes: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    error: dict[str, Any] | None = None
    fix: str | None = None
    next_step: str | None = None
    token_ids: list[int] = field(default_factory=list)
    scores_dtype: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "answer": self.answer,
            "new_tokens": self.new_tokens,
            "latency_s": self.latency_s,
            "tokens_per_s": self.tokens_per_s,
            "peak_memory_bytes": self.peak_memory_bytes,
            "settings": self.settings,
            "reason": self.reason,
            "error": self.error,
            "fix": self.fix,
            "next_step": self.next_step,
            "token_ids": self.token_ids,
            "scores_dtype": self.scores_dtype,
        }

    def record(self) -> dict[str, Any]:
        """What goes into the lock: outcome and numbers, no token ids, no traceback."""
        skip = ("token_ids", "error", "next_step")  # next steps name local paths
        out = {k: v for k, v in self.to_json().items() if k not in skip}
        if self.error:
            out["error"] = f"{self.error.get('type')}: {_first_line(self.error.get('message'))}"
        return out


@dataclass
class SmokeResult:
    profile: str
    repo_id: str
    revision: str | None
    location: str  # "hf-cache", "modelscope-cache" or "folder" (a profile derived from one)
    python: Path
    ok: bool
    answer: str | None
    backend: str | None
    backend_reason: str | None
    device: str | None
    device_name: str | None
    model_class: str | None
    dtype: str | None
    param_bytes: int | None
    import_seconds: float | None
    load_seconds: float | None
    latency_s: float | None
    tokens_per_s: float | None
    peak_memory_bytes: int | None
    peak_memory_kind: str | None
    modes: dict[str, ModeOutcome]
    error: dict[str, Any] | None
    next_step: str | None
    needs_fixes: list[str]
    versions: dict[str, str]
    prompt: str
    wall_seconds: float
    at: str
    lock_file: Path | None = None
    log_tail: str = ""
    not_recorded: str | None = None  # why the result was not recorded for lock_file

    @property
    def summary(self) -> str:
        """One line: what worked, what failed, what to do."""
        if self.error:
            return f"failed at {self.error.get('stage')}: {self.error.get('type')}"
        parts = []
        for name, mode in self.modes.items():
            if mode.status == "ok":
                parts.append(f"{name} ok")
            elif mode.status == "not_applicable":
                parts.append(f"{name} not applicable")
            else:
                err = (mode.error or {}).get("type", "error")
                need = f": needs fix {mode.fix}" if mode.fix else ""
                parts.append(f"{name} failed ({err}){need}")
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "ok": self.ok,
            "summary": self.summary,
            "answer": self.answer,
            "repo_id": self.repo_id,
            "revision": self.revision,
            "location": self.location,
            "python": str(self.python),
            "backend": self.backend,
            "backend_reason": self.backend_reason,
            "device": self.device,
            "device_name": self.device_name,
            "model_class": self.model_class,
            "dtype": self.dtype,
            "param_bytes": self.param_bytes,
            "import_seconds": self.import_seconds,
            "load_seconds": self.load_seconds,
            "latency_s": self.latency_s,
            "tokens_per_s": self.tokens_per_s,
            "peak_memory_bytes": self.peak_memory_bytes,
            "peak_memory_kind": self.peak_memory_kind,
            "modes": {name: mode.to_json() for name, mode in self.modes.items()},
            "error": self.error,
            "next_step": self.next_step,
            "needs_fixes": self.needs_fixes,
            "versions": self.versions,
            "prompt": self.prompt,
            "wall_seconds": self.wall_seconds,
            "at": self.at,
            "lock_file": str(self.lock_file) if self.lock_file else None,
            "not_recorded": self.not_recorded,
            "log_tail": self.log_tail,
        }

    def record(self) -> dict[str, Any]:
        """`[tool.provision.smoke]`: portable (no local paths, no tracebacks), nothing secret."""
        out: dict[str, Any] = {
            k: v
            for k, v in self.to_json().items()
            if k
            not in (
                "python",
                "lock_file",
                "not_recorded",
                "log_tail",
                "modes",
                "error",
                "profile",
                "next_step",
            )
        }
        out["modes"] = {name: mode.record() for name, mode in self.modes.items()}
        if self.error:
            out["error"] = {
                "stage": self.error.get("stage"),
                "type": self.error.get("type"),
                "message": _first_line(self.error.get("message"), 500),
            }
        return _drop_none(out)


def _first_line(text: str | None, limit: int = 300) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return (lines[0] if lines else "")[:limit]


def _drop_none(value: Any) -> Any:
    """TOML has no null: leave absent what is unknown."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value if v is not None]
    return value


# --- where the weights are -----------------------------------------------------------------------


def _locate(
    profile: Profile,
    lock_file: Path | None,
    hf_home: Path | None,
    record_under: Sequence[str] = (),
) -> tuple[dict[str, Any], str]:
    """The request's model fields (repo_id, revision or path) and where they come from.

    A lock that records the weights pins them: the smoke loads the very commit `download` fetched
    (from the ModelScope cache when that is where they went). Otherwise the profile's repo and
    revision, from the Hugging Face cache.
    """
    record = None
    if lock_file is not None and Path(lock_file).exists():
        from provision.hub.download import model_record

        record = model_record(Path(lock_file), record_under)
        # A direction's lock serves several models: only this profile's record pins its weights.
        if record and record.get("repo_id") not in (profile.hf_repo, profile.modelscope_repo):
            record = None
    if record and str(record.get("source", "")).startswith("modelscope"):
        from provision.hub.cache import ModelScopeCache
        from provision.settings import modelscope_cache

        revision = record.get("revision") or "master"
        path = ModelScopeCache(modelscope_cache(), record["repo_id"]).snapshot(revision)
        return {"repo_id": record["repo_id"], "revision": revision, "path": str(path)}, (
            "modelscope-cache"
        )
    if record and record.get("source") != "local":
        revision = record.get("commit") or record.get("revision")
        return {"repo_id": record["repo_id"], "revision": revision, "path": None}, "hf-cache"
    if profile.local_folder is not None:  # derived from a folder: its weights are there
        return {"repo_id": profile.hf_repo, "revision": None, "path": str(profile.local_folder)}, (
            "folder"
        )
    return {"repo_id": profile.hf_repo, "revision": profile.revision, "path": None}, "hf-cache"


# Stacks whose own code the smoke runner cannot drive. The original LLaVA code (llava-torch)
# loads its checkpoint with its own builder and fetches the CLIP tower at load time; the smoke
# loads through transformers, which does not read that format. Value: the profile to smoke
# instead (same weights, transformers format) and why.
NO_SMOKE_BACKEND = {
    "llava": (
        "llava-1.5-7b-hf",
        "the original LLaVA format (stack llava) needs the LLaVA code's own loader, and that "
        "loader fetches the CLIP tower (openai/clip-vit-large-patch14-336) at load time, "
        "outside the pinned download",
    )
}


def _infer_stack(profile: Profile) -> str | None:
    """The stack of the profile's infer task; None when it has no infer task."""
    try:
        return profile.task("infer").stack
    except ProvisionError:
        return None


def _refuse_without_backend(profile: Profile) -> None:
    stack = _infer_stack(profile)
    if stack in NO_SMOKE_BACKEND:
        instead, why = NO_SMOKE_BACKEND[stack]
        raise ProvisionError(
            f"{profile.name} has no smoke backend: {why}.",
            f"Smoke the transformers conversion of the same weights: `provision smoke {instead}`.",
        )


def _backend(profile: Profile) -> str:
    stack = _infer_stack(profile)
    return stack if stack in SERVING_STACKS else "transformers"


def _child_env(hf_home: Path | None, hub_cache: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LEAKY_VARS}
    if hf_home is not None:
        env["HF_HOME"] = str(hf_home)
        # Said outright: a stale HF_HUB_CACHE would win over HF_HOME.
        env["HF_HUB_CACHE"] = str(hub_cache or Path(hf_home) / "hub")
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _check_python(python: Path) -> Path:
    from provision.envs import python_for

    return python_for(python=python)


def _run_group(
    command: list[str], log: Any, env: dict[str, str], cwd: str, timeout: float | None
) -> int | None:
    """Run the runner in its own process group; whatever ends the wait, stop the whole group.

    A backend may start processes of its own (vLLM's engine core, torch.compile workers):
    stopping only the runner would leave them running and holding GPU memory. Its own session
    also takes it out of the terminal's Ctrl-C and a `kill -- -PGID` aimed at provision, so
    provision turns SIGTERM and SIGHUP into an exit that stops the group first.
    Returns the exit code, or None when the time ran out.
    """
    proc = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,  # nothing in the caller's folder shadows the env's packages
        start_new_session=True,
    )
    try:
        with exit_on_signals():
            return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    finally:
        # Timeout, Ctrl-C, SIGTERM, or a runner that ended but left workers behind.
        stop_group(proc)


def run_smoke(
    profile: Profile,
    python: Path,
    hf_home: Path | None = None,
    lock_file: Path | None = None,
    device: str = "auto",
    timeout: float = DEFAULT_TIMEOUT,
    backend: str | None = None,
    modes: tuple[str, ...] = MODES,
    max_new_tokens: int | None = None,
    target: str | None = None,
    record_under: Sequence[str] | None = None,
    hub_cache: Path | None = None,
    into_lock: bool = False,
) -> SmokeResult:
    """Run the profile's smoke inference with `python` (the target environment's interpreter).

    Loads the model by repo id from the HF cache at `hub_cache` (default `hf_home`/hub; with no
    `hf_home`, HF_HOME / HF_HUB_CACHE as set) with HF_HUB_OFFLINE=1, asks the profile's question
    about the bundled image with greedy decoding and, where the installed transformers has it,
    group beam search with output_scores.
    A failure is a result (ok False, the model's own error, the next step), not an exception;
    bad input (no such interpreter) raises ProvisionError. With `lock_file` the result is
    recorded in its [tool.provision.smoke] (`[tool.provision.<record_under...>.smoke]`, and the
    weights read from the model record there, for one member of a direction's shared lock).
    `target` is how the user named the environment (e.g. "--env /root/envs/x"), used in
    next-step commands. The record goes into the lock only with `into_lock`, else into this
    machine's record (lockfile.record); a smoke from an environment whose packages are not the
    lock's is not recorded at all (`not_recorded` says why).
    """
    python = _check_python(python)
    _refuse_without_backend(profile)
    if record_under is None:
        from provision.lock.lockfile import member_path

        record_under = member_path(lock_file, profile.name) if lock_file is not None else ()
    model, location = _locate(profile, lock_file, hf_home, record_under)
    smoke = profile.smoke
    request = {
        **model,
        "prompt": smoke["prompt"],
        "max_new_tokens": max_new_tokens or smoke.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS),
        "model_class": smoke.get("model_class"),
        "trust_remote_code": profile.trust_remote_code,
        "image": str(IMAGE),
        "backend": backend or _backend(profile),
        "device": device,
        "modes": list(modes),
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="provision-smoke-") as tmp:
        request_file = Path(tmp) / "request.json"
        out_file = Path(tmp) / "result.json"
        log_file = Path(tmp) / "runner.log"
        request_file.write_text(json.dumps(request), encoding="utf-8")
        command = [str(python), str(RUNNER), "--request", str(request_file), "--out", str(out_file)]
        report: dict[str, Any] | None = None
        with open(log_file, "wb") as log:
            code = _run_group(command, log, _child_env(hf_home, hub_cache), tmp, timeout)
        log_tail = log_file.read_bytes()[-4000:].decode("utf-8", "replace")
        if out_file.exists():
            report = json.loads(out_file.read_text(encoding="utf-8"))
    wall = time.perf_counter() - started
    if report is None:
        report = _no_report(code, timeout, log_tail)
    context = {
        "profile": profile.name,
        "target": target or f"--python {python}",
        "hf_home": str(hf_home) if hf_home else os.environ.get("HF_HOME", "HF_HOME"),
        "device": report.get("device") or device,
        "torch": report.get("versions", {}).get("torch", "?"),
        "transformers": report.get("versions", {}).get("transformers", "?"),
        "timeout": timeout,
    }
    result = _result(profile, python, model, location, request, report, context, wall, log_tail)
    if lock_file is not None:
        result.lock_file = Path(lock_file)
        result.not_recorded = not_the_locks_env(Path(lock_file), result.versions)
        if result.not_recorded is None:
            record_smoke(Path(lock_file), profile.name, result.record(), record_under, into_lock)
    return result


def not_the_locks_env(lock_file: Path, versions: dict[str, str]) -> str | None:
    """Why a smoke that saw `versions` (package -> version, from the environment) is not a
    result for `lock_file`, or None when every package it saw is at the locked version."""
    if not lock_file.exists():
        return None
    from provision.lock.reader import lock_info

    try:
        info = lock_info(lock_file)
    except ProvisionError:
        return None  # not a full lock yet (an empty one a stage created): nothing to compare
    differ = []
    for name, have in sorted(versions.items()):
        locked = info.version_of(name)
        if locked and have and locked.split("+", 1)[0] != str(have).split("+", 1)[0]:
            differ.append(f"{name} {have} (locked {locked})")
    if not differ:
        return None
    return (
        f"not recorded for {lock_file.name}: the environment is not the lock's ("
        + ", ".join(differ)
        + ")"
    )


def record_smoke(
    lock_file: Path,
    profile_name: str,
    record: dict[str, Any],
    record_under: Sequence[str] = (),
    into_lock: bool = False,
) -> Path:
    """`[tool.provision.smoke]` = the record; in a research direction's lock (whose profile
    section names the direction, not this model) `[tool.provision.smoke.<profile>]`, so each
    member's result stays; with `record_under`, `[tool.provision.<record_under...>.smoke]`.
    Into the lock with `into_lock`, else this machine's record; returns the file written."""
    from provision.lock.lockfile import record as record_into

    def change(data: dict[str, Any]) -> None:
        table = data.setdefault("tool", {}).setdefault("provision", {})
        if record_under:
            for part in record_under:
                table = table.setdefault(part, {})
            table["smoke"] = record
            return
        owner = table.get("profile", {}).get("name")
        if owner and owner != profile_name:
            smoke = table.get("smoke")
            if not isinstance(smoke, dict) or "ok" in smoke:  # absent, or a single-model result
                smoke = {}
            smoke[profile_name] = record
            table["smoke"] = smoke
        else:
            table["smoke"] = record

    return record_into(lock_file, change, into_lock=into_lock)


def _no_report(code: int | None, timeout: float, log_tail: str) -> dict[str, Any]:
    if code is None:
        error = {
            "stage": "run",
            "type": "SmokeTimeout",
            "message": f"the smoke did not finish within {timeout:g} s and was stopped",
        }
    else:
        lines = [line for line in log_tail.strip().splitlines() if line.strip()]
        error = {
            "stage": "run",
            "type": "RunnerCrashed",
            "message": f"the environment's Python exited with {code} before reporting: "
            + (lines[-1] if lines else "(no output)"),
        }
    return {"ok": False, "error": error, "modes": {}, "versions": {}}


def _result(
    profile: Profile,
    python: Path,
    model: dict[str, Any],
    location: str,
    request: dict[str, Any],
    report: dict[str, Any],
    context: dict[str, Any],
    wall: float,
    log_tail: str,
) -> SmokeResult:
    modes: dict[str, ModeOutcome] = {}
    needs: list[str] = []
    first_step = None
    for name, raw in (report.get("modes") or {}).items():
        mode = ModeOutcome(
            name=name,
            status=raw.get("status", "failed"),
            answer=raw.get("answer"),
            new_tokens=raw.get("new_tokens"),
            latency_s=raw.get("latency_s"),
            tokens_per_s=raw.get("tokens_per_s"),
            peak_memory_bytes=raw.get("peak_memory_bytes"),
            settings=raw.get("settings") or {},
            reason=raw.get("reason"),
            error=raw.get("error"),
            token_ids=raw.get("token_ids") or [],
            scores_dtype=raw.get("scores_dtype"),
        )
        if mode.status == "failed" and mode.error:
            hint = hint_for(mode.error, context)
            mode.fix, mode.next_step = hint.fix, hint.next_step
            first_step = first_step or hint.next_step
            if hint.fix and hint.fix not in needs:
                needs.append(hint.fix)
        modes[name] = mode
    error = report.get("error")
    next_step = hint_for(error, context).next_step if error else first_step
    return SmokeResult(
        profile=profile.name,
        repo_id=model["repo_id"],
        revision=model.get("revision"),
        location=location,
        python=python,
        ok=bool(report.get("ok")) and not error,
        answer=report.get("answer"),
        backend=report.get("backend"),
        backend_reason=report.get("backend_reason"),
        device=report.get("device"),
        device_name=report.get("device_name"),
        model_class=report.get("model_class"),
        dtype=report.get("dtype"),
        param_bytes=report.get("param_bytes"),
        import_seconds=report.get("import_seconds"),
        load_seconds=report.get("load_seconds"),
        latency_s=report.get("latency_s"),
        tokens_per_s=report.get("tokens_per_s"),
        peak_memory_bytes=report.get("peak_memory_bytes"),
        peak_memory_kind=report.get("peak_memory_kind"),
        modes=modes,
        error=error,
        next_step=next_step,
        needs_fixes=needs,
        versions=report.get("versions") or {},
        prompt=request["prompt"],
        wall_seconds=round(wall, 3),
        at=datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        log_tail=log_tail,
    )
