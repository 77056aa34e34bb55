"""A direction on this machine: the fit of every member (`check`) and one shared environment
with every member's weights, the union of their fixes and each member's smoke (`setup`).

Setup is `provision.setup.run_plan` with one Plan for all members: its lock is the direction's
joint lock, its environment lives on the data disk (group-shared unless the direction says
otherwise), its stages are resumable and guarded by the environment's file lock, so two people
running it at once wait for each other and the second finds the work done. Around it: the
shared folders and the symlink probe before anything imports a hub client, and the registry
entry (who set it up, for which direction, how it went).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provision.check import CheckReport, run_check
from provision.directions.core import Direction
from provision.directions.lock import (
    check_direction_lock,
    direction_lock_path,
    lock_direction,
)
from provision.directions.shared import SharedCache, prepare_shared, shared_umask
from provision.env_registry import EnvEntry, current_user, registry_path, try_record_use
from provision.errors import ProvisionError
from provision.hardware.machine import Machine

if TYPE_CHECKING:
    from provision.setup import SetupOptions, SetupResult, StageReport

# --- check ----------------------------------------------------------------------------------------


@dataclass
class MemberFit:
    profile: str
    task: str
    report: CheckReport

    def to_json(self) -> dict[str, Any]:
        fit = self.report.fit
        return {
            "profile": self.profile,
            "task": self.task,
            "verdict": fit.verdict,
            "fits": fit.fits,
            "reason": fit.reason,
            "need_gib_per_gpu": round(fit.estimate.per_gpu / 1024**3, 2),
            "suggestions": [s.to_json() for s in fit.suggestions],
            "fit": fit.to_json(),
        }


@dataclass
class DirectionCheck:
    direction: Direction
    machine: Machine
    members: list[MemberFit]
    disk_need: int  # every member's weights, once each
    disk_free: int | None
    disk_where: str

    @property
    def disk_enough(self) -> bool:
        return self.disk_free is not None and self.disk_free >= self.disk_need * 1.05

    @property
    def ok(self) -> bool:
        fits = all(m.report.fit.fits for m in self.members)
        return fits and (self.machine.planned or self.disk_enough)

    def to_json(self) -> dict[str, Any]:
        return {
            "direction": self.direction.name,
            "machine": self.machine.to_json(),
            "members": [m.to_json() for m in self.members],
            "disk": {
                "where": self.disk_where,
                "need_bytes": self.disk_need,
                "free_bytes": self.disk_free,
                "enough": self.disk_enough,
            },
            "ok": self.ok,
        }


def check_direction(
    direction: Direction,
    machine: Machine | None = None,
    profiles_dir: str | os.PathLike[str] | None = None,
    task: str | None = None,
    batch: int = 1,
    seq: int | None = None,
) -> DirectionCheck:
    """The fit of every member's every task on `machine` (a planned one, or None: this one);
    with `task`, that task for every member, at `batch` and `seq` as `provision check` has them."""
    from provision.fit import FitRequest

    if machine is None:
        from provision.hardware.probe import probe_machine

        machine = probe_machine()
    profiles = direction.profiles(profiles_dir)
    fits = []
    for profile, member in zip(profiles, direction.members, strict=True):
        for each in [task] if task else member.tasks:
            request = FitRequest(task=each, batch=batch, seq=seq)
            report = run_check(str(profile.path), request, machine, profiles_dir)
            fits.append(MemberFit(profile.name, each, report))
    need = sum(p.download_bytes for p in profiles)
    free, where = None, "no data directory found"
    try:
        from provision.hardware.disks import choose_data_dir

        data = choose_data_dir()
        free, where = data.free, f"{data.path} ({data.reason})"
    except ProvisionError as exc:
        where = exc.message
    return DirectionCheck(direction, machine, fits, need, free, where)


# --- setup ----------------------------------------------------------------------------------------


@dataclass
class DirectionSetupResult:
    direction: str
    env: Path
    lock: Path
    setup: SetupResult
    shared: SharedCache
    registry: Path
    entry: EnvEntry | None = None
    activate_files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.setup.ok)

    def to_json(self) -> dict[str, Any]:
        return {
            "direction": self.direction,
            "env": str(self.env),
            "lock": str(self.lock),
            "ok": self.ok,
            "setup": self.setup.to_json(),
            "shared": self.shared.to_json(),
            "registry": str(self.registry),
            "entry": self.entry.to_json() if self.entry else None,
            "activate_files": self.activate_files,
            "notes": self.notes,
        }


@dataclass
class LockOptions:
    """How the direction's lock is made when setup has to (re)make it (as `direction lock`)."""

    python: str | None = None
    torch_index: str | None = None
    variant: str | None = None
    use_pip_config: bool = True


def setup_direction(
    direction: Direction,
    options: SetupOptions,  # its `task` is unused: the members carry theirs
    lock_options: LockOptions | None = None,
    on_stage: Callable[[StageReport], None] | None = None,
) -> DirectionSetupResult:
    """One environment for every member: check, joint lock, env, every member's weights into
    the shared cache, the union of fixes, each member's smoke; recorded in the registry.

    Raises what the failing stage raised (its `setup_result` attribute holds the partial
    result), after marking the registry entry failed.
    """
    from provision.settings import (
        hf_hub_cache,
        hub_environment,
        keep_user_caches,
        resolve_data_dir,
    )
    from provision.setup import Plan, choose_lock, relock_variant, run_plan

    lock_options = lock_options or LockOptions()
    data_dir = resolve_data_dir(options.data_dir)
    options.data_dir = data_dir  # the hub variables and the env default agree on one disk
    env = Path(options.env).expanduser().absolute() if options.env else None
    env = env or direction.env_location(data_dir)
    named = options.from_lock or options.lock_file
    if named:
        lock, previous = Path(named), Path(named)
    else:
        lock, previous = choose_lock(
            direction_lock_path(direction.name, ".").name,
            lambda path: check_direction_lock(direction, path, options.profiles_dir).fresh,
            data_dir,
        )
    lock = Path(lock).expanduser().absolute()
    if env.exists() and not env.is_dir():
        raise ProvisionError(
            f"Environment path {env} is a file, not a folder.",
            "Pass --env with a folder path (it is created if missing), or move the file away.",
        )
    profiles = direction.profiles(options.profiles_dir)
    hub = keep_user_caches(hub_environment(data_dir, "auto"))  # as run_plan does
    registry = registry_path(data_dir)
    user = current_user()

    torch_index = lock_options.torch_index or options.torch_index

    def build() -> tuple[str | None, str]:
        if lock_options.variant is not None:
            return lock_options.variant, ""
        return relock_variant(previous, torch_index)  # the lock's build unless told otherwise

    def relock() -> tuple[str, dict[str, Any]]:
        variant, note = build()
        made = lock_direction(
            direction,
            python=lock_options.python,
            torch_index=torch_index,
            variant=variant,
            use_pip_config=lock_options.use_pip_config,
            output=lock,
            profiles_dir=options.profiles_dir,
        )
        return made.summary() + note, made.to_json()

    def current() -> bool:
        return check_direction_lock(direction, lock, options.profiles_dir).fresh

    plan = Plan(
        name=direction.name,
        members=[(p, t) for p, m in zip(profiles, direction.members, strict=True) for t in m.tasks],
        env=env,
        lock=lock,
        relock=relock,
        lock_is_current=current,
        given_lock=options.from_lock is not None,
        into_lock=options.lock_file is not None and options.from_lock is None,
        member_section="members",
        datasets=direction.datasets if options.datasets else (),
        relock_variant=lambda: build()[0],
    )
    with shared_umask(direction.shared):
        # Folders first: an empty env folder made here carries the group and setgid bit into
        # everything uv puts in it.
        fresh = not env.exists() or (env.is_dir() and not any(env.iterdir()))
        shared = prepare_shared(
            [env.parent, env] if fresh else [env.parent],  # never chmod someone's full folder
            Path(hub["HF_HOME"]),
            Path(hub["MODELSCOPE_CACHE"]),
            direction.shared,
            direction.group,
            hub=hf_hub_cache(hub),  # a HF_HUB_CACHE the user set is where weights go
        )
        extra = {"hf_home": hub["HF_HOME"], "symlinks": shared.symlinks}
        if direction.group:
            extra["group"] = direction.group

        notes: list[str] = []

        def note(status: str) -> EnvEntry | None:
            # The registry never decides the outcome: a damaged one is repaired, an
            # unwritable one skipped, each with a note (a stage's real error stays the error).
            entry, said = try_record_use(
                registry,
                env,
                kind="direction",
                name=direction.name,
                status=status,
                lock=lock,
                members=direction.member_names,
                user=user,
                extra=extra,
            )
            notes.extend(n for n in said if n not in notes)
            return entry

        notes.extend(_other_lock(registry, env, lock, notes))
        note("setting up")
        try:
            result = run_plan(plan, options, on_stage)
        except BaseException as exc:
            partial = getattr(exc, "setup_result", None)
            failed = [s.name for s in getattr(partial, "stages", []) if s.status == "failed"]
            note(f"failed: {failed[0]}" if failed else "failed")
            if isinstance(exc, ProvisionError) and partial is not None:
                exc.setup_result = DirectionSetupResult(  # type: ignore[attr-defined]
                    direction.name, env, lock, partial, shared, registry, notes=notes
                )
            raise
        entry = note("ok")
        activate = _persist_activate(env, hub, shared)
    return DirectionSetupResult(
        direction.name, env, lock, result, shared, registry, entry, activate, notes
    )


def _other_lock(registry: Path, env: Path, lock: Path, notes: list[str] | None = None) -> list[str]:
    """Say so when the shared env was last set up from another lockfile (someone else's
    checkout): this setup brings the env to this lock, which may change it under them."""
    from provision.env_registry import registered

    try:
        entry = next((e for e in registered(registry, notes) if e.path == env), None)
    except ProvisionError:
        return []
    if entry is None or not entry.lock or Path(entry.lock) == lock:
        return []
    by = ", ".join(sorted(entry.users)) or entry.created_by
    return [
        f"{env} was last set up from {entry.lock} (by {by}); this setup uses {lock}. Share one "
        "lockfile (--lock PATH) so the environment does not change under anyone."
    ]


def _persist_activate(env: Path, hub: dict[str, str], shared: SharedCache) -> list[str]:
    """Whoever activates the shared env uses the shared cache (and copies where it has to)."""
    from provision.settings import activate_scripts, write_block

    variables = {k: v for k, v in hub.items() if k != "HF_ENDPOINT"}
    variables.update(shared.env_vars)
    return [str(write_block(path, variables, shell)) for path, shell in activate_scripts(env)]
