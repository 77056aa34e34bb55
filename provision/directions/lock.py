"""One lock for a whole direction: every member's tasks resolved together by uv.

    lock_direction(direction)              # lockfiles/pylock.direction-<name>.toml
    check_direction_lock(direction)        # stale against the direction or a member? (no network)
    lock_builtin_directions()              # the committed locks (PyPI's torch build, PyPI only)

Each member's task becomes a requirement set (`provision.lock.locking.profile_requirements`, the
torch family pinned to one CUDA variant) and the direction's own packages one more; all go to
`provision.lock.resolve.resolve` at once. When they cannot share one environment the failure
names the packages and which member needs what, and suggests a split into groups that can
(each group checked by resolving it, where pins alone cannot tell).

The lock is uv's pylock.toml under a header, followed by `[tool.provision]`: kind = "direction",
[direction] (name, hashes, Python, packages, members), target, indexes, fixes (the union of the
members'), env, and [members.<profile>] with each member's tasks, stacks, fixes and model record;
`provision direction setup` adds each member's download record and smoke result there.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision import __version__
from provision.directions.conflict import (
    DIRECTION_PACKAGES,
    DirectionConflict,
    disagreements,
    member_pairs,
    suggest_split,
)
from provision.directions.core import Direction, builtin_directions
from provision.errors import CheckFailed, ProvisionError
from provision.hardware.driver import DriverFacts, driver_facts
from provision.hardware.machine import Machine
from provision.lock.indexes import IndexConfig, index_config
from provision.lock.lockfile import (
    check_lock_name,
    find_lock_file,
    lock_dir,
    lock_name,
    tool_table,
)
from provision.lock.locking import (
    CheckResult,
    LockAllItem,
    attention_table,
    builtin_lock_dir,
    indexes_table,
    keep_env,
    keep_other_sections,
    keep_patched_files,
    kept_model,
    lock_file_reasons,
    lock_inputs,
    model_table,
    pin_reasons,
    pypi_build_facts,
    target_table,
    write_lock,
)
from provision.lock.resolve import (
    DEFAULT_PLATFORM,
    RequirementSet,
    Resolution,
    Route,
    resolve,
)
from provision.profiles import Profile
from provision.settings import public_env
from provision.torch_select import TorchPlan

KIND = "direction"
_OWN_SECTIONS = (
    "kind",
    "direction",
    "target",
    "indexes",
    "fixes",
    "env",
    "members",
    "tool-version",
    "resolver",
    "attention",
)


def direction_lock_path(name: str, directory: str | os.PathLike[str] | None = None) -> Path:
    """`pylock.direction-<name>.toml` in --lock-dir / PROVISION_LOCK_DIR / ./lockfiles."""
    return lock_dir(directory) / f"pylock.direction-{lock_name(name)}.toml"


def find_direction_lock(name: str, directory: str | os.PathLike[str] | None = None) -> Path:
    """The direction's lock as read: the named folder's, else ./lockfiles, the data disk's
    lockfiles/, the shipped ones (lockfile.lock_candidates); where a new one goes if none is."""
    return find_lock_file(direction_lock_path(name, ".").name, directory)


# --- what a lock is made from ---------------------------------------------------------------------


def direction_inputs(direction: Direction, profiles: Sequence[Profile]) -> dict[str, Any]:
    """What the lock depends on: the direction's Python and packages, and for each member the
    parts of its profile a profile lock is made from (so a memory figure does not stale it)."""
    by_name = {p.name: p for p in profiles}
    return {
        "name": direction.name,
        "python": direction.python,
        "packages": list(direction.packages),
        "members": [
            {
                "profile": m.profile,
                "tasks": list(m.tasks),
                "inputs": [lock_inputs(by_name[m.profile], t) for t in m.tasks],
            }
            for m in direction.members
        ],
    }


def direction_inputs_hash(direction: Direction, profiles: Sequence[Profile]) -> str:
    blob = json.dumps(direction_inputs(direction, profiles), sort_keys=True).encode("utf-8")
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def direction_python(
    direction: Direction, profiles: Sequence[Profile], explicit: str | None = None
) -> str:
    """--python, else the direction's, else the one Python all members' tasks agree on."""
    if explicit or direction.python:
        return str(explicit or direction.python)
    wanted: dict[str, list[str]] = {}
    by_name = {p.name: p for p in profiles}
    for member in direction.members:
        profile = by_name[member.profile]
        for task in member.tasks:
            python = profile.task(task).python or profile.python
            wanted.setdefault(python, []).append(f"{profile.name}/{task}")
    if len(wanted) == 1:
        return next(iter(wanted))
    detail = "; ".join(f"{', '.join(labels)} need Python {py}" for py, labels in wanted.items())
    raise CheckFailed(
        f"The members of {direction.name} want different Pythons: {detail}.",
        f'Set python = "X.Y" in {direction.path} (one Python all of them can run), or pass '
        "--python.",
    )


# --- resolving ------------------------------------------------------------------------------------


@dataclass
class JointInputs:
    """Everything `resolve` gets, per member, plus the torch plan they share."""

    direction: Direction
    profiles: list[Profile]
    python: str
    facts: DriverFacts
    config: IndexConfig
    sets: dict[str, list[RequirementSet]]  # member -> one set per task
    extra: RequirementSet | None
    plan: TorchPlan  # the first member's; the others' differ only in what pins disagree about
    routes: dict[str, list[Route]]  # member -> the route of each task's torch family

    def all_sets(
        self, members: Sequence[str] | None = None, with_extra: bool = True
    ) -> list[RequirementSet]:
        chosen = list(self.sets) if members is None else list(members)
        out = [s for m in chosen for s in self.sets[m]]
        return out + ([self.extra] if self.extra and with_extra else [])

    def labelled_sets(self) -> dict[str, list[RequirementSet]]:
        """The members' sets, and the direction's own packages under DIRECTION_PACKAGES."""
        extra = {DIRECTION_PACKAGES: [self.extra]} if self.extra else {}
        return {**self.sets, **extra}

    def route(self, members: Sequence[str] | None = None) -> Route:
        """One route for the members' torch family: the first one's index, every package any
        of them routes (uv takes one index entry per name)."""
        chosen = list(self.sets) if members is None else list(members)
        routes = [r for m in chosen for r in self.routes[m]]
        packages: list[str] = []
        for route in routes:
            packages += [p for p in route.packages if p not in packages]
        return Route(routes[0].index, tuple(packages), routes[0].local)


def joint_inputs(
    direction: Direction,
    profiles: Sequence[Profile],
    facts: DriverFacts,
    config: IndexConfig,
    python: str | None = None,
    torch_index: str | None = None,
    variant: str | None = None,
) -> JointInputs:
    from provision.lock.locking import profile_requirements

    python = direction_python(direction, profiles, python)
    by_name = {p.name: p for p in profiles}
    sets: dict[str, list[RequirementSet]] = {}
    routes: dict[str, list[Route]] = {}
    plans: list[TorchPlan] = []
    for member in direction.members:
        profile = by_name[member.profile]
        for task in member.tasks:
            try:
                rset, plan, route = profile_requirements(
                    profile, task, facts, python, config, torch_index=torch_index, variant=variant
                )
            except CheckFailed:
                raise
            except ProvisionError as exc:
                raise ProvisionError(
                    f"Member {profile.name} ({task}) of {direction.name}: {exc.message}", exc.hint
                ) from exc
            sets.setdefault(member.profile, []).append(rset)
            routes.setdefault(member.profile, []).append(route)
            plans.append(plan)
    extra = (
        RequirementSet(f"{direction.name}/packages", tuple(direction.packages))
        if direction.packages
        else None
    )
    return JointInputs(
        direction, list(profiles), python, facts, config, sets, extra, plans[0], routes
    )


def _conflict(
    inputs: JointInputs,
    resolver_lines: list[str],
    resolve_group: Callable[[list[str]], bool | None],
) -> DirectionConflict:
    found = disagreements(inputs.labelled_sets())
    pairs = member_pairs(found)
    members = list(inputs.sets)
    notes: list[str] = []
    verdicts: list[bool | None] = []

    def asked(group: list[str]) -> bool | None:
        verdicts.append(resolve_group(group))
        return verdicts[-1]

    split = suggest_split(members, pairs, asked)
    if None in verdicts:
        notes.append(
            "Some groups could not be checked with the resolver (an index did not answer, or "
            "checking was turned off): the split rests on the pins alone."
        )
    return DirectionConflict(inputs.direction.name, found, pairs, split, resolver_lines, notes)


def _resolver_lines(message: str) -> list[str]:
    """uv's explanation as `resolve` trimmed it, without its first line."""
    return [line.strip() for line in message.splitlines()[1:] if line.strip()]


def resolve_joint(
    inputs: JointInputs,
    platform: str = DEFAULT_PLATFORM,
    previous: Path | None = None,
) -> Resolution:
    """Resolve every member's tasks together; on failure raise DirectionConflict. `previous`
    (the direction's earlier lock) gives uv its versions as preferences."""
    found = disagreements(inputs.labelled_sets())
    tried: dict[frozenset[str], bool | None] = {}
    # Packages of the direction's own that disagree with a member are fixed in the direction
    # file, not by a split: the groups are then checked without them.
    with_extra = not any(DIRECTION_PACKAGES in p for p in member_pairs(found))

    def resolve_group(group: list[str]) -> bool | None:
        key = frozenset(group)
        if key not in tried:
            try:
                resolve(
                    inputs.all_sets(group, with_extra),
                    inputs.python,
                    inputs.config,
                    [inputs.route(group)],
                    platform=platform,
                )
                tried[key] = True
            except CheckFailed:
                tried[key] = False
            except ProvisionError:
                tried[key] = None  # an index down: the split rests on the pins alone
        return tried[key]

    if found:  # pins alone show it: no resolver run needed for the verdict
        raise _conflict(inputs, [], resolve_group)
    try:
        return resolve(
            inputs.all_sets(),
            inputs.python,
            inputs.config,
            [inputs.route()],
            platform=platform,
            previous=previous,
            min_cc=inputs.facts.min_cc,
        )
    except CheckFailed as exc:
        tried[frozenset(inputs.sets)] = False
        raise _conflict(inputs, _resolver_lines(exc.message), resolve_group) from exc


# --- the lock file --------------------------------------------------------------------------------


@dataclass
class DirectionLockResult:
    path: Path
    direction: str
    members: list[str]
    python: str
    platform: str
    plan: TorchPlan
    resolution: Resolution
    table: dict[str, Any]
    kept: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"{self.path}: {len(self.resolution.packages)} packages for direction "
            f"{self.direction} ({len(self.members)} members: {', '.join(self.members)}), "
            f"torch {self.plan.torch_version} [{self.plan.variant}], Python {self.python}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "direction": self.direction,
            "members": {
                name: {k: v for k, v in entry.items() if k in ("tasks", "stacks", "fixes")}
                for name, entry in self.table["members"].items()
            },
            "python": self.python,
            "platform": self.platform,
            "torch": self.plan.torch_version,
            "variant": self.plan.variant,
            "fixes": self.table["fixes"]["apply"],
            "packages": len(self.resolution.packages),
            "resolution": self.resolution.to_json(),
            "kept": list(self.kept),
            "seconds": round(self.seconds, 3),
            "summary": self.summary(),
        }


def _table(inputs: JointInputs, resolution: Resolution, platform: str) -> dict[str, Any]:
    direction, by_name = inputs.direction, {p.name: p for p in inputs.profiles}
    fixes = sorted({f for p in inputs.profiles for f in p.fixes})
    members: dict[str, Any] = {}
    for member in direction.members:
        profile = by_name[member.profile]
        members[profile.name] = {
            "tasks": list(member.tasks),
            "stacks": {t: profile.task(t).stack for t in member.tasks},
            "profile_hash": "sha256:" + profile.content_hash(),
            "builtin": profile.builtin,
            "fixes": list(profile.fixes),
            "model": model_table(profile),
        }
    indexes = indexes_table(inputs.plan, inputs.config)
    indexes["torch"]["packages"] = list(inputs.route().packages)
    return {
        "tool-version": __version__,
        "resolver": f"uv {resolution.uv_version}",
        "kind": KIND,
        "direction": {
            "name": direction.name,
            "description": direction.description,
            "hash": "sha256:" + direction.content_hash(),
            "inputs_hash": direction_inputs_hash(direction, inputs.profiles),
            "builtin": direction.builtin,
            "python": inputs.python,
            "packages": list(direction.packages),
            "members": [m.profile for m in direction.members],
        },
        "target": target_table(inputs.plan, inputs.python, platform, inputs.facts),
        "indexes": indexes,
        "fixes": {"apply": fixes},
        "env": public_env(resolution.install_env),
        "members": members,
        **attention_table(resolution),
    }


def _merge_previous(
    table: dict[str, Any],
    old: Mapping[str, Any] | None,
    same_packages: bool,
    profiles: Sequence[Profile],
) -> list[str]:
    """Carry over what setup recorded (per member: model commit and files, smoke result; the
    patched files) where it still describes this lock."""
    if not old:
        return []
    kept: list[str] = []
    old_table = tool_table(old)  # type: ignore[arg-type]
    old_members = old_table.get("members", {})
    by_name = {p.name: p for p in profiles}
    for name, entry in table["members"].items():
        previous = old_members.get(name, {}) if isinstance(old_members, dict) else {}
        model = kept_model(entry["model"], previous.get("model", {}), by_name[name])
        if model:
            entry["model"] = model
            kept.append(f"{name} model (commit and files)")
        if same_packages and previous.get("smoke"):
            entry["smoke"] = previous["smoke"]
            kept.append(f"{name} smoke")
    keep_env(table, old_table, kept)
    if same_packages:
        keep_patched_files(table, old_table, kept)
    keep_other_sections(table, old_table, _OWN_SECTIONS, kept)
    return kept


def _header(direction: Direction) -> str:
    return (
        f"# Generated by provision {__version__} (provision direction lock {direction.name}); "
        "resolved by uv.\n"
        "# One environment for every member of the direction. Do not edit by hand: change the\n"
        "# direction or its members' profiles and lock again; `provision direction lock NAME\n"
        "# --check` tells whether this file is stale; `uv pip sync` installs it as it is.\n"
    )


def write_direction_lock(
    inputs: JointInputs, resolution: Resolution, path: Path, platform: str = DEFAULT_PLATFORM
) -> tuple[dict[str, Any], list[str]]:
    """Write the lock (merging what setup recorded before); returns its table and what was kept."""
    check_lock_name(path)
    table = _table(inputs, resolution, platform)
    kept = write_lock(
        path,
        _header(inputs.direction),
        resolution,
        table,
        lambda new, old, same: _merge_previous(new, old, same, inputs.profiles),
    )
    return table, kept


def prepare_lock(
    direction: Direction,
    machine: Machine | None = None,
    python: str | None = None,
    torch_index: str | None = None,
    *,
    variant: str | None = None,
    facts: DriverFacts | None = None,
    use_pip_config: bool = True,
    indexes: IndexConfig | None = None,
    profiles_dir: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> JointInputs:
    """The joint inputs for this machine (or a planned one): no resolver run yet."""
    profiles = direction.profiles(profiles_dir)
    facts = facts or driver_facts(machine, env=env)
    config = indexes or index_config(use_pip_config, env)
    return joint_inputs(direction, profiles, facts, config, python, torch_index, variant)


def lock_direction(
    direction: Direction,
    machine: Machine | None = None,
    python: str | None = None,
    torch_index: str | None = None,
    output: str | os.PathLike[str] | None = None,
    *,
    variant: str | None = None,
    facts: DriverFacts | None = None,
    use_pip_config: bool = True,
    indexes: IndexConfig | None = None,
    platform: str = DEFAULT_PLATFORM,
    profiles_dir: str | os.PathLike[str] | None = None,
    lock_dir: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    upgrade: bool = False,
) -> DirectionLockResult:
    """Resolve every member's tasks (and the direction's packages) into one lock and write it.

    Options as `provision.lock.locking.lock_profile` (an existing lock gives uv its versions
    as preferences, unless `upgrade`). Raises DirectionConflict (exit 1) naming who needs what,
    with a suggested split, when the members cannot share one environment.
    """
    started = time.perf_counter()
    inputs = prepare_lock(
        direction,
        machine,
        python,
        torch_index,
        variant=variant,
        facts=facts,
        use_pip_config=use_pip_config,
        indexes=indexes,
        profiles_dir=profiles_dir,
        env=env,
    )
    path = Path(output) if output else direction_lock_path(direction.name, lock_dir)
    check_lock_name(path)  # before minutes of resolving, not after
    resolution = resolve_joint(inputs, platform, None if upgrade else path)
    table, kept = write_direction_lock(inputs, resolution, path, platform)
    return DirectionLockResult(
        path=path,
        direction=direction.name,
        members=direction.member_names,
        python=inputs.python,
        platform=platform,
        plan=inputs.plan,
        resolution=resolution,
        table=table,
        kept=kept,
        seconds=time.perf_counter() - started,
    )


# --- staleness ------------------------------------------------------------------------------------


def stale_reasons(direction: Direction, profiles: Sequence[Profile], lock: Path) -> list[str]:
    """Why `lock` no longer is what the direction asks for; [] when it is. Files only."""
    data, reasons = lock_file_reasons(lock)
    if data is None:
        return reasons
    table = tool_table(data)
    if table.get("kind") != KIND:
        return reasons + ['it is not a direction lock (no kind = "direction" in [tool.provision])']
    recorded = table.get("direction", {})
    if recorded.get("name") != direction.name:
        reasons.append(
            f"it was made for direction {recorded.get('name')!r}, not {direction.name!r}"
        )
    old_members = table.get("members", {})
    now = {m.profile: list(m.tasks) for m in direction.members}
    for name in now:
        if name not in old_members:
            reasons.append(f"member {name} was added since the lock was made")
        elif old_members[name].get("tasks") != now[name]:
            reasons.append(
                f"the tasks of {name} changed ({', '.join(old_members[name].get('tasks', []))} "
                f"-> {', '.join(now[name])})"
            )
    for name in old_members:
        if name not in now:
            reasons.append(f"member {name} was removed since the lock was made")
    try:
        want = direction_inputs_hash(direction, profiles)
    except ProvisionError as exc:
        return reasons + [exc.message]
    if recorded.get("inputs_hash") != want and not reasons:
        reasons.append(
            f"what {direction.path.name} or its members' profiles say (packages, Python, model "
            "sources, fixes) changed since the lock was made"
        )
    wanted = [r for p in profiles for m in direction.members if m.profile == p.name
              for t in m.tasks for r in p.task(t).packages]  # fmt: skip
    pinned = [*wanted, *direction.packages]
    for message in pin_reasons(pinned, data, "a member or the direction"):
        if message not in reasons:  # several members may pin the same package
            reasons.append(message)
    return reasons


def check_direction_lock(
    direction: Direction,
    path: str | os.PathLike[str] | None = None,
    profiles_dir: str | os.PathLike[str] | None = None,
    lock_dir: str | os.PathLike[str] | None = None,
) -> CheckResult:
    """Is the direction's lock still what it asks for? Reads files only: no network, no uv."""
    lock = Path(path) if path else find_direction_lock(direction.name, lock_dir)
    reasons = stale_reasons(direction, direction.profiles(profiles_dir), lock)
    return CheckResult(direction.name, KIND, lock, not reasons, reasons)


# --- the built-in directions' committed locks -----------------------------------------------------


def lock_builtin_directions(
    lock_dir: str | os.PathLike[str] | None = None,
    upgrade: bool = False,
) -> list[LockAllItem]:
    """Regenerate the built-in directions' locks as `provision lock --all` does the profiles':
    PyPI's torch build, resolved against PyPI only, so they are real and checkable anywhere."""
    directory = builtin_lock_dir(lock_dir)
    facts = pypi_build_facts()
    items = []
    for direction in builtin_directions():
        path = direction_lock_path(direction.name, directory)
        try:
            result = lock_direction(
                direction,
                variant="pypi",
                facts=facts,
                use_pip_config=False,
                output=path,
                upgrade=upgrade,
            )
        except ProvisionError as exc:
            items.append(LockAllItem(direction.name, KIND, path, False, str(exc)))
            continue
        items.append(LockAllItem(direction.name, KIND, path, True, result.summary()))
    return items


def check_builtin_directions(lock_dir: str | os.PathLike[str] | None = None) -> list[CheckResult]:
    """Every built-in direction has a lock, and none is stale (the hook `provision lock --check`
    calls after the profiles' own)."""
    directory = builtin_lock_dir(lock_dir)
    return [
        check_direction_lock(d, direction_lock_path(d.name, directory))
        for d in builtin_directions()
    ]
