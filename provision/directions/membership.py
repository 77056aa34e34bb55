"""`provision direction add|remove`: change who is in a direction, and lock it again.

The new membership is resolved before the direction file changes: a member that cannot share
the environment is refused with the conflict (who needs what, and a split), and the file stays
as it was. The file is edited as text (comments stay), under a file lock, so two people adding
members at once both land. A built-in direction is package data: the edited copy goes to the
user's directions folder or the machine's shared one and takes the built-in's place there.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.atomic import file_lock
from provision.directions.core import (
    editable_path,
    load_direction,
    member_ref,
    with_member,
    without_member,
    write_direction,
)
from provision.directions.lock import DirectionLockResult, lock_direction


@dataclass
class MembershipChange:
    direction: str
    action: str  # "add" or "remove"
    profile: str
    tasks: list[str]
    path: Path  # the direction file written
    members: dict[str, list[str]]  # profile -> tasks, after the change
    lock: DirectionLockResult | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "direction": self.direction,
            "action": self.action,
            "profile": self.profile,
            "tasks": self.tasks,
            "path": str(self.path),
            "members": self.members,
            "lock": self.lock.to_json() if self.lock else None,
            "notes": self.notes,
        }


def change_membership(
    name: str,
    action: str,
    profile: str,
    tasks: tuple[str, ...] = ("infer",),
    note: str | None = None,
    *,
    relock: bool = True,
    directions_dir: str | os.PathLike[str] | None = None,
    profiles_dir: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    lock_kwargs: dict[str, Any] | None = None,
) -> MembershipChange:
    """Add `profile` (with `tasks`; an existing member gains them) or remove it, then re-lock
    with `lock_kwargs` (as `lock_direction` takes them) unless `relock` is false."""
    if action not in ("add", "remove"):
        raise ValueError(action)
    first = load_direction(name, directions_dir, profiles_dir, data_dir)
    target = editable_path(first, directions_dir, data_dir)
    notes = []
    with file_lock(str(target) + ".edit-lock"):
        # Read again under the lock: another add may have written the file meanwhile.
        direction = load_direction(name, directions_dir, profiles_dir, data_dir)
        if action == "add":
            changed = with_member(direction, profile, tuple(tasks), note, profiles_dir)
        else:
            changed = without_member(direction, profile, profiles_dir)
        if direction.builtin:
            notes.append(
                f"{direction.name} is built in: the edited copy is {target}, which takes its "
                "place from now on"
            )
        changed = dataclasses.replace(changed, path=target, builtin=False)
        locked = None
        if relock:
            kwargs = relock_kwargs(direction, lock_kwargs or {}, data_dir, notes)
            locked = lock_direction(changed, profiles_dir=profiles_dir, **kwargs)
        written = write_direction(changed, target)
    resolved = member_ref(profile, profiles_dir)[0]  # a repo id or folder: its profile's name
    member = written.member(resolved)
    return MembershipChange(
        direction=written.name,
        action=action,
        profile=resolved,
        tasks=list(member.tasks) if member else list(tasks),
        path=target,
        members={m.profile: list(m.tasks) for m in written.members},
        lock=locked,
        notes=notes,
    )


def relock_kwargs(
    direction: Any,
    lock_kwargs: dict[str, Any],
    data_dir: str | os.PathLike[str] | None,
    notes: list[str],
) -> dict[str, Any]:
    """`lock_kwargs` for re-locking after a membership change: the lock's torch build kept
    unless --variant, --torch-index or a planning target (--gpu...) says otherwise, and a lock
    that is shipped (or committed) never written over: the edited direction's lock then goes to
    the user's own folder (PROVISION_LOCK_DIR, else `<data dir>/lockfiles`)."""
    from provision.directions.lock import find_direction_lock
    from provision.lock.lockfile import explicit_lock_dir, is_shipped, user_lock_dir
    from provision.setup import relock_variant

    kwargs = dict(lock_kwargs)
    previous = find_direction_lock(direction.name, kwargs.get("lock_dir"))
    told = kwargs.get("variant") or kwargs.get("torch_index") or kwargs.get("machine")
    if not told and previous.is_file():
        variant, note = relock_variant(previous, None)
        if variant:
            kwargs["variant"] = variant
            notes.append(note.strip(" ()"))
    if explicit_lock_dir(kwargs.get("lock_dir")) is None and (
        is_shipped(previous) or direction.builtin
    ):
        kwargs["lock_dir"] = str(user_lock_dir(data_dir))
        notes.append(f"the re-lock goes to {kwargs['lock_dir']}; the shipped lock stays as it is")
    return kwargs
