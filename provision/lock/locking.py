"""`provision lock`: a profile's task -> a pinned, hashed PEP 751 lock plus [tool.provision].

    lock_profile("qwen2.5-vl-7b", task="infer")   # this machine (or a planning target)
    check_lock(profile, "infer")                   # stale against its profile? (no network)
    lock_builtins()                                # lockfiles/ for every built-in profile

The lock is uv's pylock.toml as uv wrote it (so `uv pip sync` / `uv pip install -r` take it as it
is), under a header saying how to regenerate it, followed by `[tool.provision]`: profile (name,
content hash, task), target (Python, platform, CUDA variant, minimum driver and compute
capability), indexes, model, fixes, env, smoke, tool version. Re-locking keeps what later stages
recorded when it still holds: the model's commit and file hashes while source, repo and revision
are unchanged; smoke results and patched-file hashes while the locked packages are unchanged.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision import __version__, tomlparse
from provision.atomic import atomic_write_text, file_lock
from provision.errors import ProvisionError
from provision.hardware.driver import DriverFacts, driver_facts
from provision.hardware.machine import Machine
from provision.lock.indexes import Index, IndexConfig, index_config
from provision.lock.lockfile import (
    LOCK_DIR_ENV,
    check_lock_name,
    find_lock,
    lock_path,
    tool_table,
)
from provision.lock.resolve import (
    DEFAULT_PLATFORM,
    RequirementSet,
    Resolution,
    Route,
    canonical,
    start_resolve,
)
from provision.profiles import Profile, load_profile, load_profile_file
from provision.resources import builtin_dir
from provision.secrets import redact_text
from provision.torch_select import TorchPlan, cc_text, plan_torch, variant_info
from provision.uv import uv_version

PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s;,]+)")
_OWN_SECTIONS = (
    "profile", "target", "indexes", "model", "fixes", "env", "smoke", "dataset_smoke",
    "tool-version", "attention",
)  # fmt: skip


@dataclass
class LockResult:
    path: Path
    profile: str
    task: str
    python: str
    platform: str
    facts: DriverFacts
    plan: TorchPlan
    indexes: IndexConfig
    resolution: Resolution
    table: dict[str, Any]
    kept: list[str] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return list(self.plan.choice.warnings)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "profile": self.profile,
            "task": self.task,
            "python": self.python,
            "platform": self.platform,
            "torch": self.plan.torch_version,
            "variant": self.plan.variant,
            "rewrites": list(self.plan.rewrites),
            "warnings": self.warnings,
            "driver": self.facts.to_json(),
            "decision": self.plan.to_json(),
            "indexes": self.table["indexes"],
            "target": self.table["target"],
            "resolution": self.resolution.to_json(),
            "kept": list(self.kept),
        }

    def summary(self) -> str:
        return (
            f"{self.path}: {len(self.resolution.packages)} packages for {self.profile} "
            f"({self.task}), torch {self.plan.torch_version} [{self.plan.variant}], "
            f"Python {self.python}"
        )

    def explain(self) -> list[str]:
        """The whole decision, in the order it was taken."""
        lines = decision_lines(self.facts, self.plan, self.table["indexes"])
        lines.append(f"Resolved by: {redact_text(' '.join(self.resolution.command))}")
        lines += [f"  {note}" for note in self.resolution.notes]
        if self.resolution.started_early:
            lines.append(
                "  uv was started as soon as the command line was read, on the input the last "
                "lock with these arguments here gave it: the same input as this one."
            )
        target = self.table["target"]
        lines.append(
            f"Target: Python {target['python']} on {target['platform']}, {target['variant']}"
            + (
                f", driver {target['min_driver']}+ and compute capability "
                f"{target['min_compute_capability']}+"
                if target.get("min_driver")
                else ""
            )
        )
        if self.kept:
            lines.append("Kept from the previous lock: " + ", ".join(self.kept))
        lines.append(self.summary())
        return lines


def decision_lines(facts: DriverFacts, plan: TorchPlan, indexes: Mapping[str, Any]) -> list[str]:
    """What was decided before uv ran: driver, variant, indexes, requirements. `--explain`
    prints these also when the resolution fails, since its error says to run --explain."""
    lines = ["Driver: " + facts.describe()]
    if facts.looked_at:
        lines.append("  looked at: " + ", ".join(facts.looked_at))
    lines.append("Variant choice:")
    lines += [f"  {step}" for step in plan.choice.steps]
    rule = plan.choice.rule
    label = f"rule {rule}" if rule.isdigit() else rule
    lines.append(f"  chosen: {plan.variant} ({label}: {plan.choice.reason})")
    for warning in plan.choice.warnings:
        lines.append(f"  warning: {warning}")
    for rewrite in plan.rewrites:
        lines.append(f"  rewrite: {rewrite}")
    lines.append(
        f"torch family ({', '.join(plan.routed) or 'torch'}) only from "
        f"{Index('t', plan.index.url, '').public_url} [{plan.index.route}]"
    )
    lines.append(f"Other packages: {indexes['default']} ({indexes['default_from']})")
    for extra in indexes["extra"]:
        lines.append(f"  extra index {extra['url']} ({extra['from']})")
    for link in indexes["find_links"]:
        lines.append(f"  find-links {link['location']} ({link['from']})")
    lines.append(f"  index strategy: {indexes['strategy']}")
    lines.append("Requirements: " + ", ".join(plan.requirements))
    return lines


# --- building the [tool.provision] table (profile and direction locks alike) -----------------


def target_table(plan: TorchPlan, python: str, platform: str, facts: DriverFacts) -> dict[str, Any]:
    """[tool.provision.target]: what the lock was resolved for and the machines it runs on."""
    variant = variant_info(plan.variant)
    target: dict[str, Any] = {
        "python": python,
        "platform": platform,
        "variant": plan.variant,
        "torch": plan.torch_version,
        "route": plan.index.route,
        "rule": plan.choice.rule,
        "reason": plan.choice.reason,
    }
    if not variant.is_cpu:
        target.update(
            {
                "cuda": variant.cuda,
                "min_driver": variant.min_driver,
                "full_support_driver": variant.full_driver,
                "min_compute_capability": cc_text(variant.min_cc),
                "max_compute_capability": cc_text(variant.max_cc),
            }
        )
    if facts.driver_version:
        target["planned_for_driver"] = facts.driver_version
    if facts.gpu_names:
        target["planned_for_gpus"] = sorted(set(facts.gpu_names))
    return {k: v for k, v in target.items() if v is not None}


def indexes_table(plan: TorchPlan, config: IndexConfig) -> dict[str, Any]:
    """[tool.provision.indexes]: where each package came from (credentials never included)."""
    data = config.to_json()
    data["torch"] = {
        "url": Index("torch", plan.index.url, "").public_url,
        "route": plan.index.route,
        "format": plan.index.format,
        "packages": list(plan.routed),
    }
    return data


def model_table(profile: Profile) -> dict[str, Any]:
    """A profile's model record before `download` adds the commit and the files' hashes."""
    model: dict[str, Any] = {
        "source": "huggingface",
        "repo_id": profile.hf_repo,
        "revision": profile.revision or "main",
    }
    if profile.modelscope_repo:
        model["modelscope_repo_id"] = profile.modelscope_repo
    return model


def attention_table(resolution: Resolution) -> dict[str, Any]:
    """{"attention": [tool.provision.attention]} when flash-attn was asked for, else {}: the
    release wheel picked for the locked torch, or the fallback and why (provision.attention)."""
    return {"attention": resolution.attention.table()} if resolution.attention else {}


def package_set(data: Mapping[str, Any]) -> set[tuple[str, str]]:
    """A lock's packages as (name, version) pairs, to tell whether a re-lock changed them."""
    return {(canonical(p["name"]), str(p.get("version"))) for p in data.get("packages", [])}


# --- carrying over what later stages recorded, where it still describes the new lock ---------


def kept_model(
    model: dict[str, Any], old_model: Mapping[str, Any], profile: Profile
) -> dict[str, Any] | None:
    """`model` with the previous lock's commit and file hashes, when they are for the same repo
    and revision; None when there is nothing to keep."""
    if (
        old_model
        and old_model.get("repo_id") in {profile.hf_repo, profile.modelscope_repo}
        and old_model.get("revision") == model["revision"]
        and any(k in old_model for k in ("commit", "files"))
    ):
        return {**model, **old_model}
    return None


def keep_env(table: dict[str, Any], old_table: Mapping[str, Any], kept: list[str]) -> None:
    """Variables a later stage recorded that this lock does not set itself (never secrets)."""
    from provision.settings import public_env

    old_env = public_env(old_table.get("env", {}))
    others = {k: v for k, v in old_env.items() if k not in table["env"]}
    if others:
        table["env"] = {**others, **table["env"]}
        kept.append("env (" + ", ".join(sorted(others)) + ")")


def keep_patched_files(
    table: dict[str, Any], old_table: Mapping[str, Any], kept: list[str]
) -> None:
    """The patched files' hashes `patch` recorded (only valid while the packages are unchanged)."""
    extra = {k: v for k, v in old_table.get("fixes", {}).items() if k != "apply"}
    if extra:
        table["fixes"].update(extra)
        kept.append("fixes (patched files)")


def keep_other_sections(
    table: dict[str, Any], old_table: Mapping[str, Any], own: Sequence[str], kept: list[str]
) -> None:
    """Sections other stages own that the lock does not write itself."""
    for key, value in old_table.items():
        if key not in own and key not in table:
            table[key] = value
            kept.append(key)


def _merge_previous(
    table: dict[str, Any], old: Mapping[str, Any] | None, same_packages: bool, profile: Profile
) -> list[str]:
    """Carry over what later stages recorded, where it still describes this lock."""
    if not old:
        return []
    kept: list[str] = []
    old_table = tool_table(old)  # type: ignore[arg-type]
    model = kept_model(table["model"], old_table.get("model", {}), profile)
    if model:
        table["model"] = model
        kept.append("model (commit and files)")
    keep_env(table, old_table, kept)
    if same_packages:
        keep_patched_files(table, old_table, kept)
        # Results of the environment the packages made: gone with other packages. Datasets
        # pinned by `download --dataset` are no one's stage here and stay (keep_other_sections).
        for section in ("smoke", "dataset_smoke"):
            if old_table.get(section):
                table[section] = old_table[section]
                kept.append(section)
    keep_other_sections(table, old_table, _OWN_SECTIONS, kept)
    return kept


def lock_inputs(profile: Profile, task: str) -> dict[str, Any]:
    """The parts of a profile a lock is made from. Its hash decides staleness, so that editing a
    memory figure or a comment in the profile does not stale a lock whose packages still hold."""
    spec = profile.task(task)
    return {
        "name": profile.name,
        "task": task,
        "python": spec.python or profile.python,
        "stack": spec.stack,
        "packages": list(spec.packages),
        "source": {k: v for k, v in profile.data["source"].items() if k != "note"},
        "fixes": list(profile.fixes),
    }


def inputs_hash(profile: Profile, task: str) -> str:
    import hashlib
    import json

    blob = json.dumps(lock_inputs(profile, task), sort_keys=True).encode("utf-8")
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def _header(profile: Profile, task: str) -> str:
    command = f"provision lock {profile.name}" + ("" if task == "infer" else f" --task {task}")
    return (
        f"# Generated by provision {__version__} ({command}); resolved by uv.\n"
        "# Do not edit by hand: change the profile and lock again. `provision lock --check` tells\n"
        "# whether this file is stale; `uv pip sync` installs it as it is.\n"
    )


def read_previous(path: Path) -> dict[str, Any] | None:
    """The lock already at `path`, or None when there is none (or it does not parse)."""
    try:
        return _parse_lock(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return None


def _parse_lock(text: str) -> dict[str, Any] | None:
    try:
        return tomlparse.loads(text)
    except tomlparse.TOMLDecodeError:
        return None


# What a plan is made with before this machine is probed (a forced build, see lock_profile).
NOT_PROBED = DriverFacts(None, None, [], [], "not probed yet", [])

# Where provision's own table starts in a lock it wrote (tomli_w's first header for it).
_TOOL_START = "[tool.provision]\n"


@dataclass
class OldLock:
    """The lock file at a path as it was read while uv ran (issue 17: its reading and parsing
    overlap the resolution). `text` is None when there was no readable file. When the text is
    this lock's header, then uv's part, then `[tool.provision]`, that last part is parsed
    (`tool`, from `tool_at`) and so is uv's part (`body`): a re-lock that uv answers with the
    same text parses neither again. `stamp` tells whether the file changed since (write_lock
    reads it again under the file lock if it did)."""

    path: Path
    text: str | None
    stamp: tuple[int, int, int] | None = None
    tool_at: int = -1
    tool: dict[str, Any] | None = None
    body: tuple[str, dict[str, Any]] | None = None  # uv's part (its text, parsed)

    def current(self) -> bool:
        return self.stamp == _stamp(self.path)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


def read_old_lock(path: Path, header: str) -> OldLock:
    """The lock at `path`, read and split for `previous_lock` (see OldLock)."""
    stamp = _stamp(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return OldLock(path, None, stamp)
    if not text.startswith(header):
        return OldLock(path, text, stamp)
    at = text.find("\n\n" + _TOOL_START, len(header))
    if at < 0:
        return OldLock(path, text, stamp)
    uv_part = text[len(header) : at]
    parsed = _parse_lock(uv_part)
    return OldLock(
        path,
        text,
        stamp,
        at + 2,
        _parse_lock(text[at + 2 :]),
        (uv_part, parsed) if parsed is not None and "tool" not in parsed else None,
    )


def previous_lock(
    path: Path, body: str, packages: set[tuple[str, str]], old: OldLock | None = None
) -> tuple[dict[str, Any] | None, bool]:
    """The lock already at `path` (None when there is none or it does not parse), and whether
    its packages are `packages`, for a new lock that will be `body` + `[tool.provision]`.
    `old`: that file as read earlier (read_old_lock), still current.

    Re-locking usually gives uv's part back byte for byte (uv keeps the previous versions): then
    only the old `[tool.provision]` part is parsed, as a document of its own. That is the same
    data as parsing the whole file: `body` parses alone to the new packages and has no `tool`
    key, and the part after it holds nothing but the `tool` table. Any other file is parsed
    whole (a 27 KB lock takes 5-20 ms to parse here; the issue counted 38 ms of TOML a lock)."""
    if old is not None:
        text = old.text
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            text = None
    if text is None:
        return None, False
    if text.startswith(body + _TOOL_START):
        if old is not None and old.tool_at == len(body):
            tool = old.tool
        else:
            tool = _parse_lock(text[len(body) :])
        if tool is not None and list(tool) == ["tool"]:
            return tool, True
    old_data = _parse_lock(text)
    return old_data, old_data is not None and package_set(old_data) == packages


def write_lock(
    path: Path,
    header: str,
    resolution: Resolution,
    table: dict[str, Any],
    merge: Callable[[dict[str, Any], Mapping[str, Any] | None, bool], list[str]],
    old: OldLock | None = None,
) -> list[str]:
    """Write `header`, uv's lock and `[tool.provision]` = `table` to `path`, atomically and under
    the lock's file lock. `merge(table, previous, same_packages)` first carries over what the
    previous lock there recorded; it returns what it kept, and so does this. `old` is that
    previous lock as read while uv ran; it is read again if the file has changed since."""
    import tomli_w

    # uv's part was parsed in resolve() and has no [tool] table (no key of ours can clash),
    # so appending tomli_w's table keeps the file valid TOML.
    if "tool" in resolution.data:  # pragma: no cover - uv writes none today
        raise ProvisionError("uv's lock already has a [tool] table; cannot add ours.")
    body = header + resolution.text.rstrip("\n") + "\n\n"
    with file_lock(str(path) + ".lock"):
        if old is not None and not old.current():
            old = None
        previous, same_packages = previous_lock(path, body, package_set(resolution.data), old)
        kept = merge(table, previous, same_packages)
        tool = tomli_w.dumps({"tool": {"provision": table}})
        atomic_write_text(path, body + tool)
    return kept


# --- the public entry points -----------------------------------------------------------------


def profile_requirements(
    profile: Profile,
    task: str,
    facts: DriverFacts,
    python: str,
    indexes: IndexConfig,
    torch_index: str | None = None,
    variant: str | None = None,
) -> tuple[RequirementSet, TorchPlan, Route]:
    """One profile's task as an input to `resolve`: its requirements with the torch family pinned
    to the chosen variant, the plan behind that, and the route that keeps the family on its index.

    Several of these resolve together (`resolve([set_a, set_b], python, indexes, [route])`) when
    they share one torch variant; a conflict then names the set (`profile/task`) that needs what.
    """
    plan = plan_torch(
        profile.task(task).packages,
        facts,
        python,
        torch_index,
        variant,
        default_index=indexes.default.url,
    )
    route_index = Index(
        "torch",
        plan.index.url,
        "--torch-index" if torch_index else plan.index.route,
        format=plan.index.format,
        explicit=True,
    )
    route = Route(route_index, tuple(plan.routed), plan.variant if plan.index.local_label else None)
    return RequirementSet(f"{profile.name}/{task}", tuple(plan.requirements)), plan, route


def lock_profile(
    profile: str | Profile,
    task: str = "infer",
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
) -> LockResult:
    """Resolve `profile`'s `task` for a machine and write its lock; return what was decided.

    `machine` is a planning target (provision.hardware.catalogue.target_machine) or None for
    this machine; `facts` skips probing altogether. `variant` forces a build ("cu124", "cpu",
    "pypi" = the one PyPI's wheel is built with). `output` defaults to lock_path(name, task).
    An existing lock there gives uv its versions as preferences, unless `upgrade`.
    """
    prof = profile if isinstance(profile, Profile) else load_profile(profile, profiles_dir)
    spec = prof.task(task)
    python = python or spec.python or prof.python
    config = indexes or index_config(use_pip_config, env)
    # uv starts as soon as its input is known, and the rest of the lock is made while it runs
    # (issue 17). A forced build does not depend on this machine's driver: then the probe (NVML,
    # /proc, nvidia-smi) waits until uv runs; what it finds still goes into the plan and the
    # lock ([tool.provision.target] planned_for_driver / planned_for_gpus, the warnings).
    probe_later = facts is None and variant is not None and not (machine and machine.planned)
    if not probe_later:
        facts = facts or driver_facts(machine, env=env)
    rset, plan, route = profile_requirements(
        prof, task, facts or NOT_PROBED, python, config, torch_index=torch_index, variant=variant
    )
    path = Path(output) if output else lock_path(prof.name, lock_dir, task)
    check_lock_name(path)
    header = _header(prof, task)
    pending = start_resolve(
        [rset], python, config, [route], platform=platform, previous=None if upgrade else path
    )
    with pending:
        if probe_later:
            facts = driver_facts(machine, env=env)
            planned = profile_requirements(
                prof, task, facts, python, config, torch_index=torch_index, variant=variant
            )
            if planned[0] != rset or planned[2] != route:  # pragma: no cover - a forced build
                raise ProvisionError(  # does not depend on the driver (torch_select._asked)
                    "The torch plan changed with this machine's driver under a forced --variant.",
                    "This is a bug in provision; please report it with --explain output.",
                )
            plan = planned[1]
        assert facts is not None
        table: dict[str, Any] = {
            "tool-version": __version__,
            "resolver": f"uv {uv_version()}",
            "profile": {
                "name": prof.name,
                "hash": "sha256:" + prof.content_hash(),
                "inputs_hash": inputs_hash(prof, task),
                "task": task,
                "stack": spec.stack,
                "builtin": prof.builtin,
            },
            "target": target_table(plan, python, platform, facts),
            "indexes": indexes_table(plan, config),
            "model": model_table(prof),
            "fixes": {"apply": list(prof.fixes)},
        }
        old = read_old_lock(path, header)
        import tomli_w  # noqa: F401 - imported while uv runs, used by write_lock

        from provision.settings import public_env

        try:
            resolution = pending.result(facts.min_cc, known=old.body)
        except ProvisionError as exc:
            exc.explain_lines = decision_lines(facts, plan, indexes_table(plan, config))  # type: ignore[attr-defined]
            raise
    table["env"] = public_env(resolution.install_env)
    table["smoke"] = {}
    table.update(attention_table(resolution))
    kept = write_lock(
        path,
        header,
        resolution,
        table,
        lambda new, old, same: _merge_previous(new, old, same, prof),
        old,
    )
    return LockResult(
        path, prof.name, task, python, platform, facts, plan, config, resolution, table, kept
    )


def lock_target(lock: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The [tool.provision.target] table of the lock at `lock`; {} without a readable lock."""
    if lock is None or not Path(lock).is_file():
        return {}
    previous = read_previous(Path(lock))
    return tool_table(previous).get("target", {}) if previous else {}


def kept_variant(lock: str | os.PathLike[str] | None) -> str | None:
    """The torch build a re-lock of `lock` keeps unless told otherwise: "pypi" for a lock of
    PyPI's build, else its recorded variant (cu124, cpu...); None without a readable lock."""
    target = lock_target(lock)
    if target.get("route") == "pypi":
        return "pypi"
    variant = target.get("variant")
    return str(variant) if variant else None


def builtin_lock_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where the built-in profiles' locks live: the flag, PROVISION_LOCK_DIR, else lockfiles/."""
    chosen = explicit or os.environ.get(LOCK_DIR_ENV)
    return Path(chosen).expanduser() if chosen else builtin_dir("lockfiles")


def pypi_build_facts() -> DriverFacts:
    """The driver facts the committed locks are made with: none, PyPI's torch build decides."""
    return DriverFacts(None, None, [], [], "not used: --all locks PyPI's build", [])


def _builtin_profiles(names: Sequence[str] | None = None) -> list[Profile]:
    # Straight from the built-in folder: a user profile of the same name must not stand in.
    found = [load_profile_file(p, True) for p in sorted(builtin_dir("profiles").glob("*.toml"))]
    if names:
        wanted = set(names)
        found = [p for p in found if p.name in wanted]
    return found


@dataclass
class LockAllItem:
    profile: str
    task: str
    path: Path
    ok: bool
    message: str

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "task": self.task,
            "path": str(self.path),
            "ok": self.ok,
            "message": self.message,
        }


def lock_builtins(
    lock_dir: str | os.PathLike[str] | None = None,
    tasks: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    upgrade: bool = False,
) -> list[LockAllItem]:
    """Regenerate the built-in profiles' locks: PyPI's torch build, resolved against PyPI only
    (so the committed files are real, and reproducible anywhere PyPI is reachable)."""
    directory = builtin_lock_dir(lock_dir)
    facts = pypi_build_facts()
    items = []
    for prof in sorted(_builtin_profiles(names), key=lambda p: p.name):
        for task in prof.tasks:
            if tasks and task not in tasks:
                continue
            path = lock_path(prof.name, directory, task)
            try:
                result = lock_profile(
                    prof,
                    task,
                    variant="pypi",
                    facts=facts,
                    use_pip_config=False,
                    output=path,
                    upgrade=upgrade,
                )
            except ProvisionError as exc:
                items.append(LockAllItem(prof.name, task, path, False, str(exc)))
                continue
            items.append(LockAllItem(prof.name, task, path, True, result.summary()))
    return items


# --- staleness -------------------------------------------------------------------------------


@dataclass
class CheckResult:
    profile: str
    task: str
    path: Path
    fresh: bool
    reasons: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "task": self.task,
            "path": str(self.path),
            "fresh": self.fresh,
            "reasons": list(self.reasons),
        }


def check_lock(
    profile: str | Profile,
    task: str = "infer",
    path: str | os.PathLike[str] | None = None,
    profiles_dir: str | os.PathLike[str] | None = None,
    lock_dir: str | os.PathLike[str] | None = None,
) -> CheckResult:
    """Is the lock still what its profile asks for? Reads files only: no network, no uv."""
    prof = profile if isinstance(profile, Profile) else load_profile(profile, profiles_dir)
    lock = Path(path) if path else find_lock(prof.name, lock_dir, task)
    reasons = stale_reasons(prof, task, lock)
    return CheckResult(prof.name, task, lock, not reasons, reasons)


def lock_file_reasons(lock: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """The lock's data (None when it cannot be read) and what is wrong with it as a PEP 751
    lock, whatever it was made for."""
    if not lock.exists():
        return None, [f"{lock} does not exist"]
    from provision.lock.lockfile import _tomllib

    tomllib = _tomllib()
    try:
        data = tomllib.loads(lock.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return None, [f"{lock} is not a readable TOML file ({exc})"]
    reasons = []
    if data.get("lock-version") != "1.0":
        reasons.append(f"lock-version is {data.get('lock-version')!r}, not '1.0' (PEP 751)")
    if not data.get("packages"):
        reasons.append("it locks no packages")
    return data, reasons


def pin_reasons(requirements: Sequence[str], data: Mapping[str, Any], pinned_by: str) -> list[str]:
    """Each `name==version` requirement the lock does not hold at that version (local labels
    such as +cu124 aside); `pinned_by` names who asks for it in the message."""
    from provision.attention import is_flash_attn

    locked = {canonical(p["name"]): str(p.get("version", "")) for p in data.get("packages", [])}
    reasons = []
    attention = tool_table(data).get("attention", {})  # type: ignore[arg-type]
    for requirement in requirements:
        if is_flash_attn(requirement):  # not in uv's packages: the lock picked a release wheel
            reasons += _flash_attn_reasons(requirement, attention, pinned_by)
            continue
        match = PIN.match(requirement)
        if not match:
            continue
        name, version = canonical(match.group(1)), match.group(3)
        have = locked.get(name)
        if have is None:
            reasons.append(f"{name} is not in the lock")
        elif have.split("+", 1)[0] != version.split("+", 1)[0]:
            reasons.append(f"{name} is locked at {have}, {pinned_by} pins {version}")
    return reasons


def _flash_attn_reasons(requirement: str, attention: Any, pinned_by: str) -> list[str]:
    """Why the lock's [tool.provision.attention] does not answer a flash-attn requirement."""
    from provision.attention import requested_versions

    if not isinstance(attention, dict) or not attention.get("implementation"):
        return ["flash-attn is not in the lock (no [tool.provision.attention] table)"]
    try:
        wanted = requested_versions(requirement)
    except ProvisionError as exc:
        return [exc.message]
    have = attention.get("version")
    if have in wanted or (have is None and attention.get("requested") == requirement):
        return []
    match = PIN.match(requirement)
    asks = f"pins {match.group(3)}" if match else f"asks for {requirement}"
    return [f"flash-attn is locked at {have}, {pinned_by} {asks}"]


def stale_reasons(profile: Profile, task: str, lock: Path) -> list[str]:
    data, reasons = lock_file_reasons(lock)
    if data is None:
        return reasons
    table = tool_table(data)
    recorded = table.get("profile", {})
    if recorded.get("name") != profile.name:
        reasons.append(f"it was made for profile {recorded.get('name')!r}, not {profile.name!r}")
    if recorded.get("task") != task:
        reasons.append(f"it was made for task {recorded.get('task')!r}, not {task!r}")
    try:
        want_hash = inputs_hash(profile, task)
    except ProvisionError as exc:
        return reasons + [exc.message]
    if recorded.get("inputs_hash") != want_hash:
        reasons.append(
            f"what {profile.path.name} says about task {task} (packages, Python, model source, "
            f"fixes) changed since the lock was made"
        )
    try:
        wanted = profile.task(task).packages
    except ProvisionError as exc:
        return reasons + [exc.message]
    return reasons + pin_reasons(wanted, data, "the profile")


def check_builtins(lock_dir: str | os.PathLike[str] | None = None) -> list[CheckResult]:
    """Every built-in profile's every task has a lock, and none is stale."""
    directory = builtin_lock_dir(lock_dir)
    results = []
    for prof in sorted(_builtin_profiles(), key=lambda p: p.name):
        for task in prof.tasks:
            results.append(check_lock(prof, task, lock_path(prof.name, directory, task)))
    return results
