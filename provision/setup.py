"""`provision setup`: check -> lock -> environment -> weights -> fixes -> smoke, recorded.

Each stage writes its outcome to a state file beside the environment, so a re-run after a failure
or a kill continues where it stopped (a stage that finished with the same inputs is not redone;
`force` redoes the ones named). The lockfile collects what the stages learn: the weights' commit
and hashes, the patched files' hashes, the smoke result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.atomic import atomic_write_text, file_lock
from provision.errors import CheckFailed, ProvisionError
from provision.profiles import Profile, load_profile

STAGES = ("check", "lock", "env", "weights", "fixes", "smoke")


@dataclass
class StageReport:
    name: str
    status: str  # done, skipped (already done with the same inputs), failed, not run
    detail: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.name,
            "status": self.status,
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class SetupOptions:
    task: str = "infer"
    env: Path | None = None  # default: <data dir>/envs/<profile>
    from_lock: Path | None = None
    lock_file: Path | None = None  # --lock: read and record into it (default: see choose_lock)
    source: str = "auto"
    torch_index: str | None = None
    wheelhouse: Path | None = None
    force: tuple[str, ...] = ()
    skip_check: bool = False
    smoke_timeout: float = 1800.0
    profiles_dir: str | None = None
    data_dir: Path | None = None
    datasets: bool = True  # fetch the plan's datasets with the weights (--no-datasets: not)


@dataclass
class SetupResult:
    profile: str
    env: Path
    lock_file: Path
    state_file: Path
    stages: list[StageReport] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)  # each stage's own JSON
    notes: list[str] = field(default_factory=list)  # e.g. a damaged registry, repaired

    @property
    def ok(self) -> bool:
        return all(s.status in ("done", "skipped") for s in self.stages)

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "env": str(self.env),
            "lock_file": str(self.lock_file),
            "state_file": str(self.state_file),
            "ok": self.ok,
            "stages": [s.to_json() for s in self.stages],
            "outputs": self.outputs,
            "notes": self.notes,
        }


# --- the state file ------------------------------------------------------------------------------


class SetupState:
    """Which stages finished, with the fingerprint of their inputs; written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.data: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.data = {"stages": {}}

    def done(self, stage: str, fingerprint: str) -> bool:
        entry = self.data["stages"].get(stage, {})
        return entry.get("status") == "done" and entry.get("fingerprint") == fingerprint

    def mark(self, stage: str, status: str, fingerprint: str = "", detail: str = "") -> None:
        self.data["stages"][stage] = {
            "status": status,
            "fingerprint": fingerprint,
            "detail": detail,
            "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        atomic_write_text(self.path, json.dumps(self.data, indent=2) + "\n")


def state_path(env: Path) -> Path:
    return env.parent / f".{env.name}.provision-setup.json"


def _digest(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _packages_digest(lock_file: Path) -> str:
    """The lock's package set only: recording results in [tool] must not count as a change."""
    from provision.lock.lockfile import read_lock

    data = read_lock(lock_file)
    return _digest(data.get("packages", []), data.get("requires-python"))


# --- the stages ----------------------------------------------------------------------------------


def default_env(name: str, data_dir: Path | None = None) -> Path:
    from provision.settings import resolve_data_dir

    return resolve_data_dir(data_dir) / "envs" / name


@dataclass
class Plan:
    """What one setup makes: one environment from one lock for one or more member profiles.

    A profile's setup has one member; a research direction's has several that share the env,
    the lock (resolved jointly by `relock`) and the weights cache.
    """

    name: str
    members: list[tuple[Profile, str]]  # (profile, task)
    env: Path
    lock: Path
    relock: Callable[[], tuple[str, dict[str, Any]]]  # makes the lock: (summary, json)
    lock_is_current: Callable[[], bool]
    given_lock: bool = False  # --from-lock: use as is
    into_lock: bool = False  # --lock FILE: record into it (else this machine's record)
    # Several members share the lock: each one's model and smoke records go under
    # [tool.provision.<member_section>.<profile>] instead of [tool.provision.model/smoke].
    member_section: str | None = None
    # Datasets fetched with the weights and pinned in [tool.provision.datasets] (a direction's
    # `datasets`): catalogue names or hub ids, see provision.hub.datasets.
    datasets: tuple[str, ...] = ()
    # The torch build `relock` makes ("pypi", "cu124", "cpu"...; None: the machine decides), for
    # the check stage to say what a GPU-less machine gets before the lock is made.
    relock_variant: Callable[[], str | None] = lambda: None


@dataclass
class DryRun:
    """What `setup --dry-run` would do with the lock, without doing it."""

    profile: str
    task: str
    env: Path
    lock: Path
    lock_action: str  # "use" (fresh, or given) or "relock"
    relock_from: Path | None
    variant: str | None  # the torch build a re-lock keeps (None: the machine decides)
    records: str  # where the stages' records go

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "task": self.task,
            "env": str(self.env),
            "lock": str(self.lock),
            "lock_action": self.lock_action,
            "relock_from": str(self.relock_from) if self.relock_from else None,
            "variant": self.variant,
            "records": self.records,
        }

    def lines(self) -> list[str]:
        if self.lock_action == "use":
            what = f"Lock: {self.lock} (used as it is)"
        else:
            start = f", starting from {self.relock_from}" if self.relock_from else ""
            build = f", keeping torch build {self.variant}" if self.variant else ""
            what = f"Lock: re-lock into {self.lock}{start}{build}"
        return [
            f"setup {self.profile} ({self.task}) would make {self.env}",
            what,
            f"Records (weights, fixes, smoke): {self.records}",
        ]


def dry_run(profile_name: str, options: SetupOptions) -> DryRun:
    """Which lock `run_setup` would use or make, and where it would record; nothing is run."""
    plan, previous = _profile_plan(profile_name, options)
    from provision.lock.lockfile import record_file

    fresh = plan.given_lock or plan.lock_is_current()
    variant = None if fresh else relock_variant(previous, options.torch_index)[0]
    if plan.into_lock or not plan.lock.exists():
        records = f"into {plan.lock}"
    else:
        records = f"this machine's record {record_file(plan.lock, options.data_dir)}"
    return DryRun(
        plan.name,
        options.task,
        plan.env,
        plan.lock,
        "use" if fresh else "relock",
        None if fresh else previous,
        variant,
        records,
    )


def run_setup(
    profile_name: str,
    options: SetupOptions,
    on_stage: Callable[[StageReport], None] | None = None,
) -> SetupResult:
    """Set up one profile; see `run_plan`."""
    plan, _previous = _profile_plan(profile_name, options)
    profile = plan.members[0][0]
    try:
        result = run_plan(plan, options, on_stage)
    except ProvisionError as exc:
        partial = getattr(exc, "setup_result", None)
        if partial is not None:  # stages ran: the environment exists (or half of it)
            failed = next((s.name for s in partial.stages if s.status == "failed"), "")
            _register(options, partial, profile.name, f"failed: {failed}")
        raise
    _register(options, result, profile.name, "ok")
    return result


def _profile_plan(profile_name: str, options: SetupOptions) -> tuple[Plan, Path | None]:
    """The plan for one profile and the lock a re-lock would start from."""
    from provision.lock.lockfile import lock_path

    profile = load_profile(profile_name, options.profiles_dir)
    env = options.env or default_env(profile.name, options.data_dir)
    named = options.from_lock or options.lock_file
    if named:
        lock, previous = Path(named), Path(named)
    else:

        def fresh(path: Path) -> bool:
            from provision.lock.locking import check_lock

            return check_lock(profile, options.task, path).fresh

        lock, previous = choose_lock(
            lock_path(profile.name, ".", options.task).name, fresh, options.data_dir
        )
    lock = Path(lock).expanduser().absolute()

    def relock() -> tuple[str, dict[str, Any]]:
        from provision.lock.locking import lock_profile

        variant, note = relock_variant(previous, options.torch_index)
        locked = lock_profile(
            profile,
            options.task,
            output=lock,
            torch_index=options.torch_index,
            variant=variant,
            profiles_dir=options.profiles_dir,
        )
        return locked.summary() + note, locked.to_json()

    def current() -> bool:
        from provision.lock.locking import check_lock

        return lock.exists() and check_lock(profile, options.task, lock).fresh

    plan = Plan(
        name=profile.name,
        members=[(profile, options.task)],
        env=Path(env),
        lock=lock,
        relock=relock,
        lock_is_current=current,
        given_lock=options.from_lock is not None,
        into_lock=options.lock_file is not None and options.from_lock is None,
        relock_variant=lambda: relock_variant(previous, options.torch_index)[0],
    )
    return plan, previous


def _made_build_note(variant: str | None) -> str:
    """The check stage's note on a GPU-less machine for a lock the lock stage is about to make
    with `variant` (Plan.relock_variant)."""
    if variant is None:
        return "the lock is made for this machine"
    if variant == "cpu":
        return "the lock is made for a CPU build: the environment is for CPU use"
    build = (
        "PyPI's torch build (CUDA)" if variant == "pypi" else f"a CUDA build of torch ({variant})"
    )
    return (
        f"the lock is made with {build}: it installs as locked, and the model runs on the CPU "
        "until a GPU is there"
    )


def choose_lock(
    file_name: str, fresh: Callable[[Path], bool], data_dir: Path | None = None
) -> tuple[Path, Path | None]:
    """(the lock setup uses, the lock a re-lock starts from) when the user named none.

    The first fresh lock where locks are looked for (lockfile.lock_candidates: ./lockfiles, the
    data disk's, the shipped ones) is used as it is. When none is fresh, setup re-locks into the
    user's own folder (PROVISION_LOCK_DIR, else `<data dir>/lockfiles`), never over a committed
    or shipped lock, keeping the first existing lock's variant (`relock_variant`).
    """
    from provision.lock.lockfile import explicit_lock_dir, lock_candidates, user_lock_dir

    found = [path for path in lock_candidates(file_name) if path.is_file()]
    for path in found:
        if fresh(path):
            return path, path
    folder = explicit_lock_dir() or user_lock_dir(data_dir)
    return folder / file_name, (found[0] if found else None)


def relock_variant(previous: Path | None, torch_index: str | None) -> tuple[str | None, str]:
    """The variant a re-lock keeps and the note saying so: the previous lock's, unless
    --torch-index asks for another build (then the machine decides, as a first lock does)."""
    from provision.lock.locking import kept_variant

    if torch_index is not None:
        return None, ""
    variant = kept_variant(previous)
    if variant is None:
        return None, ""
    return variant, (
        f" (kept {previous.name}'s torch build {variant}; --torch-index picks another)"
        if previous is not None
        else ""
    )


def _register(options: SetupOptions, result: SetupResult, name: str, status: str) -> None:
    """The machine's registry of environments (shared with research directions): which exist,
    what made them, who set them up. The registry never decides the setup's outcome: a damaged
    one is repaired and an unwritable one skipped, each with a note on the result."""
    from provision.env_registry import registry_path, try_record_use

    _entry, notes = try_record_use(
        registry_path(options.data_dir),
        result.env,
        kind="profile",
        name=name,
        status=status,
        lock=result.lock_file,
        members=[name],
    )
    result.notes.extend(notes)


def run_plan(
    plan: Plan,
    options: SetupOptions,
    on_stage: Callable[[StageReport], None] | None = None,
) -> SetupResult:
    """Run the stages in order; stop at the first that fails (its error is raised after the
    state and the partial result are saved, so the caller can print both)."""
    for name in options.force:
        if name not in STAGES:
            raise ProvisionError(f"--force {name}: no such stage.", f"Stages: {', '.join(STAGES)}.")
    env = plan.env.expanduser().absolute()
    if env.exists() and not env.is_dir():
        raise ProvisionError(
            f"Environment path {env} is a file, not a folder.",
            "Pass --env with a folder path (it is created if missing), or move the file away.",
        )
    if plan.given_lock and not plan.lock.is_file():
        raise ProvisionError(f"--from-lock {plan.lock}: no such file.")
    plan.env = env
    result = SetupResult(plan.name, env, plan.lock, state_path(env))
    env.parent.mkdir(parents=True, exist_ok=True)
    # One setup per environment at a time: a second one waits, then finds the stages done.
    with file_lock(env.parent / f".{env.name}.setup-lock"):
        state = SetupState(result.state_file)
        _Runner(plan, options, state, result, on_stage).run_all()
    return result


class _Runner:
    def __init__(
        self,
        plan: Plan,
        options: SetupOptions,
        state: SetupState,
        result: SetupResult,
        on_stage: Callable[[StageReport], None] | None,
    ) -> None:
        self.plan, self.options = plan, options
        self.env, self.lock = plan.env, plan.lock
        self.state, self.result, self.on_stage = state, result, on_stage
        self.python: Path | None = None
        self.hub_env: dict[str, str] = {}
        self.error: BaseException | None = None

    def run_all(self) -> None:
        steps = {
            "check": self.check,
            "lock": self.lock_stage,
            "env": self.env_stage,
            "weights": self.weights,
            "fixes": self.fixes,
            "smoke": self.smoke,
        }
        failed = None
        for name in STAGES:
            if failed is not None:
                self._report(StageReport(name, "not run", f"stopped at {failed}"))
                continue
            started = time.monotonic()
            try:
                status, detail = steps[name]()
            except (ProvisionError, KeyboardInterrupt) as exc:
                message = exc.message if isinstance(exc, ProvisionError) else "interrupted"
                self.state.mark(name, "failed", detail=message)
                self._report(StageReport(name, "failed", message, time.monotonic() - started))
                failed = name
                if isinstance(exc, KeyboardInterrupt):
                    raise
                self.error = exc
                continue
            self._report(StageReport(name, status, detail, time.monotonic() - started))
        if self.error is not None:
            # The CLI prints the summary table of what ran before the message.
            self.error.setup_result = self.result  # type: ignore[attr-defined]
            raise self.error

    def _report(self, report: StageReport) -> None:
        self.result.stages.append(report)
        if self.on_stage:
            self.on_stage(report)

    def _skip(self, stage: str, fingerprint: str) -> bool:
        return stage not in self.options.force and self.state.done(stage, fingerprint)

    @property
    def _single(self) -> bool:
        return len(self._profiles()) == 1

    def _profiles(self) -> list[Profile]:
        """Each member profile once: a direction's member may come with several tasks."""
        return list({profile.name: profile for profile, _task in self.plan.members}.values())

    def _record_under(self, profile: Profile) -> tuple[str, ...]:
        section = self.plan.member_section
        return (section, profile.name) if section else ()

    def _per_member(self, stage: str, outputs: dict[str, Any]) -> None:
        """One profile's output under its stage; several under the stage, by profile name."""
        if self._single:
            self.result.outputs[stage] = next(iter(outputs.values()))
        else:
            self.result.outputs[stage] = outputs

    # -- check --
    def check(self) -> tuple[str, str]:
        if self.options.skip_check:
            return "skipped", "--skip-check"
        from provision.check import run_check
        from provision.fit import FitRequest

        details, outputs = [], {}
        for profile, task in self.plan.members:
            report = run_check(profile.name, FitRequest(task=task), None, self.options.profiles_dir)
            tasks = [t for p, t in self.plan.members if p.name == profile.name]
            key = profile.name if len(tasks) == 1 else f"{profile.name}/{task}"
            outputs[key] = report.to_json()
            machine, fit = report.machine, report.fit
            if not machine.gpus:
                details.append(f"{profile.name}: no NVIDIA GPU here; {self._build_note()}")
            elif not fit.fits:
                first = fit.suggestions[0].text if fit.suggestions else ""
                raise CheckFailed(
                    f"{profile.name} ({task}) does not fit: {fit.reason}.",
                    (f"Try: {first}. " if first else "")
                    + "`provision check` shows the numbers; --skip-check goes on anyway.",
                )
            else:
                details.append(f"{profile.name}: {fit.verdict}, {fit.reason}")
            disk = report.disk
            if not disk.enough and disk.data_dir is not None:
                raise CheckFailed(
                    f"Not enough disk for {profile.name}'s weights: {disk.note} has "
                    f"{disk.data_dir.free / 1024**3:.1f} GiB free, "
                    f"{disk.need / 1024**3:.1f} GiB needed.",
                    "Set PROVISION_DATA_DIR to a bigger disk, or free space.",
                )
        self._per_member("check", outputs)
        detail = "; ".join(details)
        self.state.mark("check", "done", detail=detail)
        return "done", detail

    def _build_note(self) -> str:
        """What a machine without a GPU gets from the lock: a CUDA build of torch installs from
        a CUDA lock (and runs on the CPU); only a CPU lock makes a CPU environment. When the
        lock stage will (re)make the lock, the build it makes: the one kept from the previous
        lock or asked for, not the one of a stale or missing file."""
        from provision.lock.locking import lock_target

        fresh = self.plan.given_lock or (
            "lock" not in self.options.force and self.plan.lock_is_current()
        )
        if not fresh:
            return _made_build_note(self.plan.relock_variant())
        variant = lock_target(self.lock).get("variant")
        if not variant:
            return "the lock is made for this machine"
        if variant == "cpu":
            return "the lock is a CPU build: the environment is for CPU use"
        return (
            f"the lock's torch is a CUDA build ({variant}): it installs as locked, and the "
            "model runs on the CPU until a GPU is there"
        )

    # -- lock --
    def lock_stage(self) -> tuple[str, str]:
        from provision.lock.lockfile import read_lock, tool_table

        if self.plan.given_lock:
            table = tool_table(read_lock(self.lock))
            named = table.get("profile", {}).get("name")
            if self._single and named and named != self.plan.name:
                raise ProvisionError(
                    f"{self.lock} was made for profile '{named}', not '{self.plan.name}'.",
                    f"Run `provision setup {named} --from-lock {self.lock}`.",
                )
            self.state.mark("lock", "done", detail="given")
            return "done", f"using {self.lock} as given"
        if "lock" not in self.options.force and self.plan.lock_is_current():
            self.state.mark("lock", "done", detail="current")
            return "skipped", f"{self.lock.name} is current"
        summary, output = self.plan.relock()
        self.result.outputs["lock"] = output
        self.state.mark("lock", "done", detail=summary)
        return "done", summary

    # -- env --
    def env_stage(self) -> tuple[str, str]:
        from provision.envs import ensure_env, env_python

        fingerprint = _digest(_packages_digest(self.lock), str(self.options.wheelhouse))
        if self._skip("env", fingerprint) and (self.env / "pyvenv.cfg").exists():
            self.python = env_python(self.env)
            return "skipped", f"{self.env} was made from this lock"
        made = ensure_env(self.env, self.lock, self.options.wheelhouse)
        self.python = made.python
        self.result.outputs["env"] = made.to_json()
        if made.attention.get("action") in ("installed", "fallback"):
            self._record_attention(made.attention)
        self.state.mark("env", "done", fingerprint, made.message)
        return "done", made.message

    def _record_attention(self, attention: dict[str, Any]) -> None:
        """What the env got for the lock's flash-attn (its wheel, or sdpa and why), under
        [tool.provision.attention.installed] of the record (or the lock named with --lock)."""
        from provision.lock.lockfile import record

        installed = {k: v for k, v in attention.items() if k != "note"}

        def change(data: dict[str, Any]) -> None:
            table = data.setdefault("tool", {}).setdefault("provision", {})
            table.setdefault("attention", {})["installed"] = installed

        record(self.lock, change, into_lock=self.plan.into_lock)

    # -- weights --
    def _hub_environment(self, source: Any = None) -> dict[str, str]:
        """The hub variables for this run: caches on the data disk unless the user already
        points HF_HOME / MODELSCOPE_CACHE somewhere; set before any hub client is imported."""
        if not self.hub_env or source is not None:
            from provision.settings import apply_environment, hub_environment, keep_user_caches

            env = keep_user_caches(
                hub_environment(self.options.data_dir, source or self.options.source)
            )
            apply_environment(env)
            self.hub_env = env
        return self.hub_env

    def _weights_fingerprint(self) -> str | None:
        """What the lock pins for every member (commit and file hashes) and where the cache is;
        None while some member's files are not recorded yet."""
        from provision.hub.download import model_record
        from provision.settings import hf_hub_cache, modelscope_cache

        pins = []
        for profile in self._profiles():
            record = model_record(self.lock, self._record_under(profile))
            if not record or not record.get("files"):
                return None
            files = sorted((f["path"], f["sha256"]) for f in record["files"])
            pins.append((record["repo_id"], record.get("commit"), files))
        return _digest(pins, str(hf_hub_cache()), str(modelscope_cache()))

    def _weights_in_cache(self, hashes: bool) -> bool:
        """Every member's recorded files are in the cache (with `hashes`: their sha256 too)."""
        from provision.hub.verify import verify_profile

        return all(
            verify_profile(
                profile, self.lock, record_under=self._record_under(profile), hashes=hashes
            ).ok
            for profile in self._profiles()
        )

    def weights(self) -> tuple[str, str]:
        status, detail = self._weights()
        if self.plan.datasets:
            detail = f"{detail}; datasets: {self._datasets()}"
        return status, detail

    def _datasets(self) -> str:
        """Each dataset the plan lists: checked in the cache against the lock's record (size and
        placement stamp), else fetched and recorded as weights are."""
        from provision.hub.datasets import (
            dataset_record,
            download_dataset,
            parse_dataset,
            verify_dataset,
        )
        from provision.hub.errors import AccessRefused

        self._hub_environment()
        details, outputs = [], {}
        for text in self.plan.datasets:
            ref = parse_dataset(text)
            found = dataset_record(self.lock, ref.key)
            force = "weights" in self.options.force
            if found and found[1].get("files") and not force:
                with contextlib.suppress(ProvisionError):
                    if verify_dataset(ref.key, self.lock, hashes=False).ok:
                        details.append(f"{ref.key} in the cache")
                        continue
            try:
                got = download_dataset(
                    ref,
                    None if self.options.source == "auto" else self.options.source,
                    lock_file=self.lock,
                    into_lock=self.plan.into_lock,
                    rehash=force,
                )
            except AccessRefused as exc:
                # A gated evaluation set (FoodieQA) must not stop the environment: said, and
                # tried again by the next setup.
                outputs[ref.key] = {"fetched": False, "error": exc.message, "hint": exc.hint}
                details.append(f"{ref.key} NOT fetched: {exc.message} {exc.hint or ''}".strip())
                continue
            except ProvisionError as exc:
                raise ProvisionError(
                    f"Dataset {ref.key}: {exc.message}",
                    (exc.hint + " " if exc.hint else "")
                    + "The weights are in place; --no-datasets sets up without the datasets.",
                ) from exc
            outputs[ref.key] = got.to_json()
            details.append(
                f"{got.repo_id}@{(got.commit or got.revision)[:12]}: {len(got.files)} files, "
                f"{got.bytes_fetched / 1024**2:.1f} MiB fetched"
            )
        if outputs:
            self.result.outputs["datasets"] = outputs
        return "; ".join(details)

    def _weights(self) -> tuple[str, str]:
        from provision.hub.download import download_profile

        self._hub_environment()
        pinned = self._weights_fingerprint()
        if pinned and "weights" not in self.options.force:
            # Finished before with these pins: the files were hashed when placed, so present at
            # the right size is enough. Never fetched here but pinned and all in the cache (an
            # air-gapped machine, a shared cache): hash them against the lock. Neither needs a
            # network.
            if self.state.done("weights", pinned) and self._weights_in_cache(hashes=False):
                return "skipped", "the pinned files are in the cache (downloaded earlier)"
            if self._weights_in_cache(hashes=True):
                self.state.mark("weights", "done", pinned, "in the cache, verified")
                return "done", "every pinned file already in the cache, sha256 verified"
        details, outputs = [], {}
        for profile in self._profiles():
            got = download_profile(
                profile,
                self.options.source,
                lock_file=self.lock,
                record_under=self._record_under(profile),
                into_lock=self.plan.into_lock,
                rehash="weights" in self.options.force,  # --force weights: hash every file
            )
            outputs[profile.name] = got.to_json()
            details.append(
                f"{got.repo_id}@{(got.commit or got.revision)[:12]} from {got.source.name}: "
                f"{len(got.files)} files, {got.bytes_fetched / 1024**2:.1f} MiB fetched, "
                f"{got.bytes_reused / 1024**2:.1f} MiB already there"
            )
        self._per_member("weights", outputs)
        # The environment's activate scripts point at the same cache and endpoint.
        from provision.settings import activate_scripts, write_block

        hub = self._hub_environment(got.source)
        for script, shell in activate_scripts(self.env):
            write_block(script, hub, shell)
        detail = "; ".join(details)
        self.state.mark("weights", "done", self._weights_fingerprint() or "", detail)
        return "done", detail

    # -- fixes --
    def fixes(self) -> tuple[str, str]:
        from provision.patches.engine import apply_fixes

        wanted = sorted({fix for profile, _ in self.plan.members for fix in profile.fixes})
        if not wanted:
            self.state.mark("fixes", "done", detail="none listed")
            return "done", "the profiles list no fixes"
        assert self.python is not None
        results = apply_fixes(self.python, wanted, self.lock, into_lock=self.plan.into_lock)
        self.result.outputs["fixes"] = [r.to_json() for r in results]
        detail = "; ".join(f"{r.fix}: {r.state}" for r in results)
        self.state.mark("fixes", "done", detail=detail)
        return "done", detail

    # -- smoke --
    def smoke(self) -> tuple[str, str]:
        from provision.smoke.run import run_smoke

        assert self.python is not None
        # The smoke proves this env, these weights and these fixes: redone when one changed.
        stages = self.state.data["stages"]
        fingerprint = _digest(
            _packages_digest(self.lock),
            self._weights_fingerprint(),
            stages.get("fixes", {}).get("detail"),
            [p.name for p in self._profiles()],
        )
        if self._skip("smoke", fingerprint):
            return "skipped", "passed before with this environment, weights and fixes"
        hub = self._hub_environment()
        from provision.settings import hf_hub_cache

        details, outputs, failures = [], {}, []
        for profile in self._profiles():
            outcome = run_smoke(
                profile,
                self.python,
                Path(hub["HF_HOME"]),
                hub_cache=hf_hub_cache(hub),  # where the weights stage put them
                lock_file=self.lock,
                timeout=self.options.smoke_timeout,
                record_under=self._record_under(profile),
                into_lock=self.plan.into_lock,
            )
            outputs[profile.name] = outcome.to_json()
            if outcome.ok:
                details.append(f"{profile.name}: {outcome.summary}; answer {outcome.answer!r}")
            else:
                failures.append((profile.name, outcome))
        self._per_member("smoke", outputs)
        if failures:
            name, outcome = failures[0]
            raise CheckFailed(
                f"Smoke inference of {name} failed: {outcome.summary}", outcome.next_step
            )
        detail = "; ".join(details)
        self.state.mark("smoke", "done", fingerprint, detail)
        return "done", detail
