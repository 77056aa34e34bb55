"""Research directions: several models in one environment.

- core.py: the direction files (schema, search path, edits).
- lock.py: one joint lock for all members; conflict.py: why a joint resolution failed.
- membership.py: adding and removing members (edit, relock, write both).
- setup.py: checking and setting up a direction's environment.
- shared.py: group sharing of environments and caches, and symlink support.

The environment registry (which environments exist, who uses them) is provision/env_registry.py:
per-profile setup records into it too, without importing anything from here.
"""

from provision.directions.core import (
    DATA_PLACEHOLDER,
    DIRECTIONS_ENV,
    Direction,
    DirectionError,
    Member,
    builtin_directions,
    direction_dirs,
    editable_path,
    list_directions,
    load_direction,
    load_direction_file,
    member_profile,
    parse_direction,
    shared_directions_dir,
    with_member,
    without_member,
    write_direction,
)

__all__ = [
    "DATA_PLACEHOLDER",
    "DIRECTIONS_ENV",
    "Direction",
    "DirectionError",
    "Member",
    "builtin_directions",
    "direction_dirs",
    "editable_path",
    "list_directions",
    "load_direction",
    "load_direction_file",
    "member_profile",
    "parse_direction",
    "shared_directions_dir",
    "with_member",
    "without_member",
    "write_direction",
]
