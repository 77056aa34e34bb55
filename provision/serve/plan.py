"""What `provision serve` runs: the stack's OpenAI server with the fit's limits, in the
provisioned environment, on the verified weights at the lock's commit, offline.

The engine limits are the fit check's launch line (provision/launch.py, flags in
provision/data/stacks.toml); the server's own options (host, port, the model name it lists, its
health route) are provision/data/serve.toml. Nothing secret goes into argv: tokens stay in the
environment the server inherits, and the plan shows only the public variables.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.errors import CheckFailed, ProvisionError
from provision.resources import load_table

STACKS = ("vllm", "lmdeploy", "sglang", "transformers")
SERVER_SCRIPT = Path(__file__).resolve().parent / "server.py"
# Variables that would make the target Python see provision's own packages instead of its own.
LEAKY_VARS = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH")


@functools.lru_cache(maxsize=1)
def servers() -> dict[str, Any]:
    """provision/data/serve.toml [server.*]."""
    return load_table("serve.toml")["server"]


@dataclass
class ServePlan:
    profile: str
    stack: str
    argv: list[str]
    env_vars: dict[str, str]  # what provision sets for the server (public: no secrets)
    environment: Path | None  # the provisioned environment (None: --print without one)
    lock_file: Path | None
    repo_id: str
    commit: str | None
    model_path: str  # the verified snapshot folder, or the repo id when not verified
    verified: bool
    host: str
    port: int
    health: str
    version: str
    source: str
    fit_verdict: str
    notes: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/v1"

    @property
    def health_url(self) -> str:
        return self.base_url.removesuffix("/v1") + self.health

    @property
    def line(self) -> str:
        """The command as one shell line, with the variables provision sets in front."""
        shown = {k: v for k, v in self.env_vars.items() if k.endswith("OFFLINE")}
        return shlex.join([f"{k}={v}" for k, v in shown.items()] + self.argv)

    def shown_env(self) -> dict[str, str]:
        """The variables as they may be shown: a URL's password (HF_ENDPOINT) masked."""
        from provision.secrets import redact_text

        return {k: redact_text(v) for k, v in self.env_vars.items()}

    def curl(self) -> str:
        """A ready-to-paste chat request with an image."""
        image = "data:image/jpeg;base64,@IMAGE@"
        body = {
            "model": self.repo_id,
            "max_tokens": 64,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": image}},
                        {"type": "text", "text": "What is in this picture?"},
                    ],
                }
            ],
        }
        # Inside the single-quoted body, the shell splices in photo.jpg as base64.
        text = json.dumps(body).replace("@IMAGE@", "'\"$(base64 -w0 photo.jpg)\"'")
        return (
            f"curl -s {self.base_url}/chat/completions -H 'Content-Type: application/json' "
            f"-d '{text}'"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "stack": self.stack,
            "argv": self.argv,
            "line": self.line,
            "env": self.shown_env(),
            "environment": str(self.environment) if self.environment else None,
            "lock_file": str(self.lock_file) if self.lock_file else None,
            "repo_id": self.repo_id,
            "commit": self.commit,
            "model_path": self.model_path,
            "verified": self.verified,
            "host": self.host,
            "port": self.port,
            "base_url": self.base_url,
            "health_url": self.health_url,
            "version": self.version,
            "source": self.source,
            "fit": self.fit_verdict,
            "curl": self.curl(),
            "notes": self.notes,
        }


@dataclass
class _Env:
    path: Path | None
    lock: Path | None
    note: str


def _environment(profile: str, env: Path | None, lock: Path | None) -> _Env:
    """The environment that serves `profile`: --env, else the newest registered one that holds
    it (its own setup or a direction's), else the default setup folder. The lock likewise:
    --lock, else the registry's, else the profile's."""
    from provision.env_registry import registered, registry_path
    from provision.lock.lockfile import find_lock
    from provision.setup import default_env

    found = None
    if env is None:
        for entry in registered(registry_path()):
            if profile in entry.members and entry.exists and entry.status == "ok":
                found = entry
                break
    if env is not None:
        where, note = Path(env).expanduser().absolute(), "--env"
    elif found is not None:
        where, note = found.path, f"the registry ({found.kind} {found.name})"
    else:
        where, note = default_env(profile), "the default setup folder"
    if lock is None and found is not None and found.lock:
        lock = Path(found.lock)
    if lock is None:
        lock = find_lock(profile)
    return _Env(where, lock, note)


def _default_stack(profile: Any) -> str:
    """The profile's infer stack where it is a server's; transformers for the stacks that load
    through transformers; a message for a format only its own code loads (original LLaVA)."""
    from provision.smoke.run import NO_SMOKE_BACKEND

    try:
        stack = profile.task("infer").stack or "transformers"
    except ProvisionError:
        return "transformers"
    if stack in NO_SMOKE_BACKEND:
        instead, why = NO_SMOKE_BACKEND[stack]
        raise ProvisionError(
            f"{profile.name} cannot be served: {why}.",
            f"Serve the transformers conversion of the same weights: `provision serve {instead}`.",
        )
    return stack if stack in STACKS else "transformers"


def _fit(
    profile: Any, stack: str, overrides: dict[str, Any], machine: Any, profiles_dir: Any
) -> Any:
    from provision.check import run_check
    from provision.fit import FitRequest

    request = FitRequest(task="infer", stack=stack, **overrides)
    return run_check(profile.name, request, machine, profiles_dir, emit=True, same_machine=True)


def _child_env(verified: bool) -> dict[str, str]:
    """The hub variables (the caches on the data disk, or the ones the user set) and, with the
    weights verified, offline: nothing is fetched at start-up."""
    from provision.settings import hub_environment, keep_user_caches

    env = keep_user_caches(hub_environment(None, "auto"))
    if os.environ.get("HF_ENDPOINT"):  # as set, with any credentials (shown masked)
        env["HF_ENDPOINT"] = os.environ["HF_ENDPOINT"]
    if verified:
        env["HF_HUB_OFFLINE"] = "1"
        env["TRANSFORMERS_OFFLINE"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def process_env(plan: ServePlan) -> dict[str, str]:
    """The server's whole environment: this one (secrets stay here, never in argv) with the
    plan's variables, without those that would mix provision's packages into the target's."""
    env = {k: v for k, v in os.environ.items() if k not in LEAKY_VARS}
    env.update(plan.env_vars)
    return env


def plan_serve(
    name: str,
    *,
    stack: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    env: Path | None = None,
    lock: Path | None = None,
    machine: Any = None,
    overrides: dict[str, Any] | None = None,
    profiles_dir: str | os.PathLike[str] | None = None,
    print_only: bool = False,
) -> ServePlan:
    """The server command for profile (or repo) `name`; raises ProvisionError on bad input, and
    CheckFailed (exit 1) when the stack cannot run here (a GPU engine on a GPU-less machine).

    With `print_only` a missing environment or unverified weights are notes, not errors: the
    command is shown for another machine."""
    from provision.profiles import load_profile

    profile = load_profile(name, profiles_dir)
    if stack is None:
        stack = _default_stack(profile)
    if stack not in STACKS:
        raise ProvisionError(f"Unknown stack {stack!r}.", f"Use one of {', '.join(STACKS)}.")
    server = servers()[stack]
    if "unsupported" in server:
        raise ProvisionError(
            f"--stack {stack}: {server['unsupported']}.", "Serve with --stack vllm or lmdeploy."
        )
    if machine is None:
        from provision.hardware.probe import probe_machine

        machine = probe_machine()
    if port < 1 or port > 65535:
        raise ProvisionError(f"--port {port} is not a TCP port.", "Pass a port from 1 to 65535.")
    notes: list[str] = []
    if stack != "transformers" and machine.gpu_count == 0 and not print_only:
        raise CheckFailed(
            f"{stack} serves on a GPU and this machine has none (NVML sees no GPU).",
            "Serve on the CPU with --stack transformers, or show the command with --print.",
        )

    located = _environment(profile.name, env, lock)
    python = located.path / "bin" / "python" if located.path else None
    if python is None or not python.exists():
        missing = f"No environment for {profile.name} at {located.path} ({located.note})."
        fix = f"Run `provision setup {profile.name}` first, or pass --env PATH."
        if not print_only:
            raise ProvisionError(missing, fix)
        notes.append(f"{missing} {fix}")

    repo_id, commit, model_path, verified = _weights(profile, located.lock, notes, print_only)

    report = _fit(profile, stack, overrides or {}, machine, profiles_dir)
    verdict = report.fit.verdict
    if machine.gpu_count == 0 and stack == "transformers":
        verdict = "on the CPU"  # the GPU memory check has nothing to judge here
        notes.append("no GPU here (NVML sees none): the model is served on the CPU")
    elif report.launch_note:
        notes.append(f"limits from the check: {report.launch_note}")
    argv, version, source = _command(profile, stack, report, model_path, python)
    argv += [server["host"], host, server["port"], str(port), server["served_name"], repo_id]
    return ServePlan(
        profile=profile.name,
        stack=stack,
        argv=argv,
        env_vars=_child_env(verified),
        environment=located.path if python is not None and python.exists() else None,
        lock_file=located.lock if located.lock and located.lock.exists() else None,
        repo_id=repo_id,
        commit=commit,
        model_path=model_path,
        verified=verified,
        host=host,
        port=port,
        health=server["health"],
        version=version,
        source=source,
        fit_verdict=verdict,
        notes=notes,
    )


def _weights(
    profile: Any, lock: Path | None, notes: list[str], print_only: bool
) -> tuple[str, str | None, str, bool]:
    """(repo id, commit, what the server loads, verified): the lock's commit, checked on disk
    (size and the stamp's sha256; a changed file is hashed again) before serving from it."""
    from provision.hub.verify import verify_profile

    problem = None
    try:
        result = verify_profile(profile, lock, hashes=False)
    except ProvisionError as exc:
        problem = exc
    else:
        if result.ok:
            return result.repo_id, result.commit or result.revision, str(result.snapshot), True
        wrong = [f"{c.path} ({c.status})" for c in result.problems]
        problem = ProvisionError(
            f"The weights of {profile.name} at {result.snapshot} are not the lock's: "
            + ", ".join(wrong[:5])
            + (" ..." if len(wrong) > 5 else "")
            + ".",
            f"Run `provision download {profile.name}` to fetch them again.",
        )
    if not print_only:
        raise problem
    notes.append(f"weights not verified here: {problem.message}")
    return profile.hf_repo, profile.revision, profile.hf_repo, False


def _command(
    profile: Any, stack: str, report: Any, model_path: str, python: Path | None
) -> tuple[list[str], str, str]:
    """argv (without host, port and name), the stack version its flags are from, and the
    source of those flags."""
    bin_dir = python.parent if python is not None else None
    if stack == "transformers":
        context = report.fit.request.context
        argv = [str(python or "python"), str(SERVER_SCRIPT), "--model", model_path]
        if context:
            argv += ["--max-model-len", str(context)]
        smoke = profile.smoke or {}
        if smoke.get("model_class"):
            argv += ["--model-class", smoke["model_class"]]
        if profile.trust_remote_code:
            argv.append("--trust-remote-code")
        return argv, "", servers()["transformers"]["source"]
    launch = report.launch
    if launch.placeholders:  # the limits that fit need weights other than the snapshot's
        raise ProvisionError(
            f"{profile.name} does not fit here as served from its own weights: the check's way "
            f"to make it fit is {report.launch_note or 'a quantised build'}.",
            "; ".join(launch.notes) or "Serve on a larger GPU, or with a shorter --context.",
        )
    argv = list(launch.argv)
    # The launch line names the repo; the server loads the verified snapshot folder instead.
    argv[argv.index(profile.hf_repo)] = model_path
    if bin_dir is not None:
        argv[0] = str(bin_dir / argv[0])
    return argv, launch.version, launch.source
