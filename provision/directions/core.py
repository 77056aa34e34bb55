"""Research directions: several model profiles that share one environment, one lock, one cache.

A direction is a TOML file (`directions/<name>.toml`, package data; or a user's own):

    name = "okvqa-vllm-swift"
    description = "OK-VQA eval with vLLM, LoRA with ms-swift"
    python = "3.11"                      # optional: default the members' common Python
    packages = ["datasets==3.6.0"]       # optional: what the direction adds to its members' needs
    [environment]                        # optional
    path = "{data_dir}/envs/direction-okvqa-vllm-swift"   # the default
    shared = true                        # group-writable env and cache (default true)
    group = "research"                   # optional: the Unix group that shares them
    [[members]]
    profile = "qwen2.5-vl-7b"
    tasks = ["infer", "lora"]            # default ["infer"]

Search order: --directions-dir / PROVISION_DIRECTIONS_DIR, then `<data dir>/directions` (shared
by everyone on the machine: `provision direction add/remove` put edited copies of built-ins
there), then the built-ins. Loading validates every key: an unknown key, a wrong type, an unknown
profile or task is one message naming the file, the key and the reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.atomic import atomic_write_text, file_lock
from provision.errors import ProvisionError
from provision.profiles import NAME_RE, TASKS, Profile, load_profile, load_profile_file
from provision.resources import builtin_dir
from provision.schema import BOOL, CHECKED_APART, STR, STRLIST, FileError, validate
from provision.settings import resolve_data_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

DIRECTIONS_ENV = "PROVISION_DIRECTIONS_DIR"
DATA_PLACEHOLDER = "{data_dir}"
_PYTHON_RE = re.compile(r"^3\.\d{1,2}$")
# The torch family comes from the members' profiles, matched to one CUDA variant.
_TORCH_FAMILY = {"torch", "torchvision", "torchaudio"}


class DirectionError(FileError):
    """A direction file that cannot be used: names the file, the key and the reason."""

    kind = "direction"
    example = "provision direction show okvqa-vllm-swift"


# --- the schema, as data (checked by provision.schema.validate, as profiles are) ---------------
MEMBER_SCHEMA = {
    "profile": (STR, True, "a profile name (see `provision profiles`)"),
    "tasks": (STRLIST, False, f"what the direction does with it: {', '.join(TASKS)}"),
    "note": (STR, False, "free text"),
    "repo": (
        STR,
        False,
        "for a profile derived from a repository: the repo id pinned to the commit it was read "
        "at (org/name@commit) or the model folder, so another machine derives the same profile",
    ),
}
ENVIRONMENT_SCHEMA = {
    "path": (STR, False, "where the environment lives; {data_dir} is the data disk"),
    "shared": (BOOL, False, "group-writable environment and cache for everyone on the machine"),
    "group": (STR, False, "the Unix group that shares the environment and the cache"),
}
DIRECTION_SCHEMA: dict[str, Any] = {
    "name": (STR, True, "direction name: lowercase letters, digits, '.', '-', '_'"),
    "description": (STR, True, "what the direction is for"),
    "python": (STR, False, "Python X.Y for the shared environment"),
    "packages": (STRLIST, False, "requirements the direction adds to its members'"),
    "datasets": (
        STRLIST,
        False,
        "datasets `direction setup` fetches and pins: names from provision/data/datasets.toml "
        "(okvqa, foodieqa, milebench) or hub ids (org/name, modelscope:org/name)",
    ),
    "environment": ENVIRONMENT_SCHEMA,
    "members": CHECKED_APART,  # an array of MEMBER_SCHEMA tables, checked in _check_semantics
}


# --- the loaded form ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    profile: str
    tasks: tuple[str, ...]
    note: str | None = None
    repo: str | None = None  # a derived profile's repo id (pinned) or folder

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"profile": self.profile, "tasks": list(self.tasks)}
        if self.note:
            out["note"] = self.note
        if self.repo:
            out["repo"] = self.repo
        return out


@dataclass(frozen=True)
class Direction:
    name: str
    description: str
    path: Path
    builtin: bool
    members: tuple[Member, ...]
    python: str | None
    packages: tuple[str, ...]
    env_path: str | None  # as written (may hold {data_dir}); see env_location()
    shared: bool
    group: str | None
    text: str = field(repr=False, compare=False)
    builtin_only: bool = False  # members are the built-in profiles, whatever a user folder holds
    datasets: tuple[str, ...] = ()  # as written: catalogue names or hub ids (hub.datasets)

    def member(self, profile: str) -> Member | None:
        for m in self.members:
            if m.profile == profile:
                return m
        return None

    @property
    def member_names(self) -> list[str]:
        return [m.profile for m in self.members]

    def profiles(self, profiles_dir: str | os.PathLike[str] | None = None) -> list[Profile]:
        return [
            member_profile(m.profile, profiles_dir, self.builtin_only, m.repo) for m in self.members
        ]

    def content_hash(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def env_location(self, data_dir: str | os.PathLike[str] | None = None) -> Path:
        """The environment folder: [environment] path, else <data dir>/envs/direction-<name>."""
        raw = self.env_path or f"{DATA_PLACEHOLDER}/envs/direction-{self.name}"
        if DATA_PLACEHOLDER in raw:
            raw = raw.replace(DATA_PLACEHOLDER, str(resolve_data_dir(data_dir)))
        return Path(raw).expanduser().absolute()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "path": str(self.path),
            "builtin": self.builtin,
            "python": self.python,
            "packages": list(self.packages),
            "datasets": list(self.datasets),
            "members": [m.to_json() for m in self.members],
            "environment": {
                "path": self.env_path or f"{DATA_PLACEHOLDER}/envs/direction-{self.name}",
                "shared": self.shared,
                "group": self.group,
            },
        }


def member_profile(
    name: str,
    profiles_dir: str | os.PathLike[str] | None = None,
    builtin_only: bool = False,
    repo: str | None = None,
) -> Profile:
    """A member's profile: by the usual search order, or from the built-in folder only; a
    member with a `repo` is the profile derived from it (the metadata cache, else the hub)."""
    if repo is not None and not builtin_only:
        profile = load_profile(repo, profiles_dir)
        if profile.name != name:
            raise ProvisionError(
                f"{repo} gives the profile {profile.name!r}, not {name!r}.",
                f"Set profile = {profile.name!r} for that member, or drop its repo key.",
            )
        return profile
    if not builtin_only:
        return load_profile(name, profiles_dir)
    path = builtin_dir("profiles") / f"{name}.toml"
    if not path.is_file():
        raise ProvisionError(f"Unknown built-in profile '{name}'.")
    return load_profile_file(path, True)


def _req_name(requirement: str) -> str:
    bare = re.split(r"[<>=!~\[;@ (]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", bare).lower()


def _check_semantics(
    data: dict[str, Any],
    path: Path,
    profiles_dir: str | os.PathLike[str] | None,
    builtin_only: bool,
) -> None:
    name = data["name"]
    if not NAME_RE.match(name):
        raise DirectionError(
            path, "name", f"{name!r} must be lowercase letters, digits, '.', '-', '_'"
        )
    if path.suffix == ".toml" and path.stem != name:
        raise DirectionError(path, "name", f"{name!r} must match the file name ({path.stem}.toml)")
    python = data.get("python")
    if python is not None and not _PYTHON_RE.match(python):
        raise DirectionError(path, "python", f"{python!r} is not a Python version like 3.11")
    from packaging.requirements import InvalidRequirement, Requirement

    for i, text in enumerate(data.get("packages", [])):
        try:
            Requirement(text)
        except InvalidRequirement as exc:
            raise DirectionError(
                path, f"packages[{i}]", f"{text!r} is not a requirement ({exc})"
            ) from exc
        if _req_name(text) in _TORCH_FAMILY:
            raise DirectionError(
                path,
                f"packages[{i}]",
                f"{text!r}: the torch family comes from the members' profiles (one CUDA build "
                "for all of them); pin it there",
            )
    from provision.hub.datasets import parse_dataset

    for i, text in enumerate(data.get("datasets", [])):
        try:
            parse_dataset(text)
        except ProvisionError as exc:
            raise DirectionError(path, f"datasets[{i}]", exc.message) from exc
    env = data.get("environment", {})
    raw_path = env.get("path")
    if raw_path is not None and not (
        raw_path.startswith((DATA_PLACEHOLDER, "~", "/")) or Path(raw_path).is_absolute()
    ):
        raise DirectionError(
            path,
            "environment.path",
            f"{raw_path!r} must be absolute, start with ~, or start with {DATA_PLACEHOLDER}",
        )
    members = data.get("members")
    if members is None:
        raise DirectionError(path, "members", "missing (at least one [[members]] table)")
    if not isinstance(members, list) or not members:
        raise DirectionError(path, "members", "must be one or more [[members]] tables")
    seen: set[str] = set()
    for i, member in enumerate(members):
        key = f"members[{i}]"
        validate(member, MEMBER_SCHEMA, path, DirectionError, key + ".")
        profile_name = member["profile"]
        if profile_name in seen:
            raise DirectionError(path, f"{key}.profile", f"{profile_name!r} is listed twice")
        seen.add(profile_name)
        try:
            profile = member_profile(profile_name, profiles_dir, builtin_only, member.get("repo"))
        except ProvisionError as exc:
            raise DirectionError(path, f"{key}.profile", exc.message) from exc
        tasks = member.get("tasks", ["infer"])
        if not tasks:
            raise DirectionError(path, f"{key}.tasks", "must name at least one task")
        for task in tasks:
            if task not in TASKS:
                raise DirectionError(
                    path, f"{key}.tasks", f"{task!r} is not one of {', '.join(TASKS)}"
                )
            if task not in profile.tasks:
                raise DirectionError(
                    path,
                    f"{key}.tasks",
                    f"profile {profile_name} has no task {task!r} (it has "
                    f"{', '.join(profile.tasks)})",
                )
        if len(set(tasks)) != len(tasks):
            raise DirectionError(path, f"{key}.tasks", "names a task twice")


def parse_direction(
    text: str,
    path: Path,
    builtin: bool = False,
    profiles_dir: str | os.PathLike[str] | None = None,
    builtin_only: bool = False,
) -> Direction:
    """A direction from its TOML text; `path` is where it lives (for messages and the name).
    `builtin_only`: its members are the built-in profiles (how committed locks are checked)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DirectionError(path, None, f"is not valid TOML ({exc})") from exc
    validate(data, DIRECTION_SCHEMA, path, DirectionError)
    _check_semantics(data, path, profiles_dir, builtin_only)
    env = data.get("environment", {})
    return Direction(
        name=data["name"],
        description=data["description"],
        path=path,
        builtin=builtin,
        members=tuple(
            Member(m["profile"], tuple(m.get("tasks", ["infer"])), m.get("note"), m.get("repo"))
            for m in data["members"]
        ),
        python=data.get("python"),
        packages=tuple(data.get("packages", [])),
        env_path=env.get("path"),
        shared=env.get("shared", True),
        group=env.get("group"),
        text=text,
        builtin_only=builtin_only,
        datasets=tuple(data.get("datasets", [])),
    )


def load_direction_file(
    path: Path, builtin: bool = False, profiles_dir: str | os.PathLike[str] | None = None
) -> Direction:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DirectionError(path, None, f"cannot be read ({exc.strerror})") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DirectionError(path, None, f"is not UTF-8 text ({exc})") from exc
    return parse_direction(text, path, builtin, profiles_dir)


# --- where directions live ------------------------------------------------------------------------


def shared_directions_dir(data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """`<data dir>/directions`: the machine's own directions, seen by everyone on it."""
    try:
        return resolve_data_dir(data_dir) / "directions"
    except ProvisionError:
        return None


def direction_dirs(
    directions_dir: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> list[tuple[Path, bool]]:
    """Search order, first wins: the user's folder, the machine's shared one, the built-ins."""
    dirs: list[tuple[Path, bool]] = []
    user = directions_dir or os.environ.get(DIRECTIONS_ENV)
    if user:
        user_path = Path(user).expanduser()
        if not user_path.is_dir():
            raise ProvisionError(
                f"Directions folder {user_path} does not exist.",
                f"Pass an existing folder with --directions-dir or {DIRECTIONS_ENV}.",
            )
        dirs.append((user_path, False))
    shared = shared_directions_dir(data_dir)
    if shared is not None and shared.is_dir() and all(shared != d for d, _ in dirs):
        dirs.append((shared, False))
    dirs.append((builtin_dir("directions"), True))
    return dirs


def _direction_files(
    directions_dir: str | os.PathLike[str] | None, data_dir: str | os.PathLike[str] | None = None
) -> dict[str, tuple[Path, bool]]:
    found: dict[str, tuple[Path, bool]] = {}
    for directory, builtin in reversed(direction_dirs(directions_dir, data_dir)):
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.toml")):
            found[path.stem] = (path, builtin)
    return found


def list_directions(
    directions_dir: str | os.PathLike[str] | None = None,
    profiles_dir: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> list[Direction]:
    files = _direction_files(directions_dir, data_dir)
    return [load_direction_file(p, b, profiles_dir) for p, b in sorted(files.values())]


def builtin_directions() -> list[Direction]:
    """Straight from the built-in folder: a user direction of the same name must not stand in.
    Built-ins name built-in profiles only, so user profiles are not searched either."""
    folder = builtin_dir("directions")
    return [
        parse_direction(p.read_text(encoding="utf-8"), p, True, builtin_only=True)
        for p in sorted(folder.glob("*.toml"))
    ]


def load_direction(
    name: str,
    directions_dir: str | os.PathLike[str] | None = None,
    profiles_dir: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> Direction:
    """A direction by name, or by path to a .toml file."""
    if name.endswith(".toml") and Path(name).is_file():
        return load_direction_file(Path(name).absolute(), False, profiles_dir)
    files = _direction_files(directions_dir, data_dir)
    if name in files:
        path, builtin = files[name]
        return load_direction_file(path, builtin, profiles_dir)
    import difflib

    close = difflib.get_close_matches(name, list(files), n=3, cutoff=0.5)
    hint = f"Did you mean: {', '.join(close)}? " if close else ""
    raise ProvisionError(
        f"Unknown direction '{name}'.",
        f"{hint}`provision direction list` lists the {len(files)} directions it knows.",
    )


# --- changing membership (text edits keep the file's comments) ------------------------------------

_HEADER = re.compile(r"^\s*\[")
_MEMBERS_HEADER = re.compile(r"^\s*\[\[\s*members\s*\]\]\s*(#.*)?$")


def _member_blocks(lines: list[str]) -> list[tuple[int, int, str]]:
    """(first line, end line exclusive, profile) of each [[members]] block, with the comment
    lines right above its header counted in (they describe that member)."""
    blocks = []
    for i, line in enumerate(lines):
        if not _MEMBERS_HEADER.match(line):
            continue
        end = i + 1
        while end < len(lines) and not _HEADER.match(lines[end]):
            end += 1
        # comments just before the next header belong to the next block
        while end - 1 > i and lines[end - 1].lstrip().startswith("#"):
            end -= 1
        start = i
        while start > 0 and lines[start - 1].lstrip().startswith("#"):
            start -= 1
        body = tomllib.loads("".join(lines[i + 1 : end]))
        blocks.append((start, end, str(body.get("profile", ""))))
    return blocks


def _toml_list(values: list[str] | tuple[str, ...]) -> str:
    import json

    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def member_ref(
    text: str, profiles_dir: str | os.PathLike[str] | None = None
) -> tuple[str, str | None]:
    """(profile name, repo) a member added as `text` is written with. A name stays as it is; a
    hub repo id or model folder becomes the name of its profile (a built-in's, when the repo is
    a built-in's source), and, for a derived profile, the repo id pinned to the commit its
    metadata was read at (or the folder), so every machine derives the same profile."""
    if NAME_RE.match(text):
        return text, None
    from provision.derive import Ref, parse_ref

    ref = parse_ref(text)
    if ref is None:
        return text, None
    profile = load_profile(text, profiles_dir)
    derived = profile.derived
    if derived is None or profile.builtin:
        return profile.name, None
    if ref.folder is not None:
        return profile.name, str(ref.folder)
    commit = str(derived.get("commit", ""))
    pinned = commit if re.fullmatch(r"[0-9a-f]{40}", commit) else ref.revision
    return profile.name, Ref(ref.repo_id, pinned, ref.source).text


def with_member(
    direction: Direction,
    profile: str,
    tasks: tuple[str, ...] = ("infer",),
    note: str | None = None,
    profiles_dir: str | os.PathLike[str] | None = None,
) -> Direction:
    """The direction with `profile` added (or its tasks extended): a new text, validated.
    `profile` may be a hub repo id or a model folder (see `member_ref`)."""
    import json

    profile, repo = member_ref(profile, profiles_dir)
    lines = direction.text.splitlines(keepends=True)
    existing = direction.member(profile)
    if existing is not None:
        merged = tuple(dict.fromkeys(existing.tasks + tuple(tasks)))
        if merged == existing.tasks:
            raise ProvisionError(
                f"{profile} is already a member of {direction.name} with tasks "
                f"{', '.join(existing.tasks)}.",
                "Nothing to add; `provision direction show` lists the members.",
            )
        start, end, _ = next(b for b in _member_blocks(lines) if b[2] == profile)
        block = lines[start:end]
        new_line = f"tasks = {_toml_list(merged)}\n"
        spots = [i for i, line in enumerate(block) if re.match(r"^\s*tasks\s*=", line)]
        if spots:
            block[spots[0]] = new_line
        else:
            header = next(i for i, line in enumerate(block) if _MEMBERS_HEADER.match(line))
            block.insert(header + 1, new_line)
        lines[start:end] = block
        text = "".join(lines)
        result = _reparse(direction, text, profiles_dir)
        got = result.member(profile)
        if got is None or got.tasks != merged:  # a tasks array spread over lines
            raise ProvisionError(
                f"Could not rewrite the tasks of {profile} in {direction.path}.",
                f"Edit its [[members]] table by hand: tasks = {_toml_list(merged)}.",
            )
        return result
    text = direction.text
    if text and not text.endswith("\n"):
        text += "\n"
    block = f"\n[[members]]\nprofile = {json.dumps(profile)}\ntasks = {_toml_list(tasks)}\n"
    if repo:
        block += f"repo = {json.dumps(repo)}\n"
    if note:
        block += f"note = {json.dumps(note)}\n"
    return _reparse(direction, text + block, profiles_dir)


def without_member(
    direction: Direction, profile: str, profiles_dir: str | os.PathLike[str] | None = None
) -> Direction:
    """The direction with `profile` (and the comments above its table) removed."""
    profile = member_ref(profile, profiles_dir)[0]
    if direction.member(profile) is None:
        raise ProvisionError(
            f"{profile} is not a member of {direction.name}.",
            f"Members: {', '.join(direction.member_names)}.",
        )
    if len(direction.members) == 1:
        raise ProvisionError(
            f"{profile} is the only member of {direction.name}.",
            f"A direction needs at least one member; delete {direction.path} to drop it.",
        )
    lines = direction.text.splitlines(keepends=True)
    start, end, _ = next(b for b in _member_blocks(lines) if b[2] == profile)
    del lines[start:end]
    # one blank line where the block was, not two
    while (
        start > 0
        and start < len(lines)
        and not lines[start].strip()
        and not lines[start - 1].strip()
    ):
        del lines[start]
    return _reparse(direction, "".join(lines), profiles_dir)


def _reparse(
    direction: Direction, text: str, profiles_dir: str | os.PathLike[str] | None
) -> Direction:
    return parse_direction(
        text, direction.path, direction.builtin, profiles_dir, direction.builtin_only
    )


def editable_path(
    direction: Direction,
    directions_dir: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Where an edited direction is written: its own file, unless it is a built-in (those are
    package data): then the user's folder, else the machine's shared one."""
    if not direction.builtin:
        return direction.path
    folder = directions_dir or os.environ.get(DIRECTIONS_ENV) or shared_directions_dir(data_dir)
    if folder is None:
        raise ProvisionError(
            f"No folder to write the edited copy of {direction.name} to.",
            f"Set {DIRECTIONS_ENV} (or PROVISION_DATA_DIR) to a writable folder.",
        )
    return Path(folder).expanduser() / f"{direction.name}.toml"


def write_direction(direction: Direction, path: Path) -> Direction:
    """Write the direction's text to `path` atomically; the result is the direction there."""
    try:
        with file_lock(str(path) + ".lock"):
            atomic_write_text(path, direction.text)
    except OSError as exc:
        raise ProvisionError(
            f"Cannot write {path}: {exc.strerror}.",
            f"Set {DIRECTIONS_ENV} to a folder you can write to.",
        ) from exc
    return dataclasses.replace(direction, path=path, builtin=False)
