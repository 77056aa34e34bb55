"""`provision profiles add`: a derived profile written, editable, into the user's profile folder.

Apart from the derivation itself because it validates through provision.profiles, which in turn
reaches the derivation for a repo id: kept in one package, the two would import each other."""

from __future__ import annotations

import os
import re
from pathlib import Path

from provision.derive import load_derived, parse_ref
from provision.errors import ProvisionError


def add_profile(
    text: str,
    name: str | None = None,
    profiles_dir: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
    force: bool = False,
) -> Path:
    """Derive (or read from the cache) the profile of `text` and write it, editable, into the
    user's profile folder as NAME.toml (default: the repository's name). Returns the file."""
    from provision.atomic import atomic_write_text
    from provision.profiles import NAME_RE, load_profile_file, user_profiles_dir

    ref = parse_ref(text)
    if ref is None:
        raise ProvisionError(
            f"{text!r} is not a repo id (org/name[@revision], optionally source:org/name) or a "
            "model folder.",
            "e.g. provision profiles add Qwen/Qwen2.5-VL-32B-Instruct",
        )
    source_path = load_derived(ref, offline)
    derived_text = source_path.read_text(encoding="utf-8")
    final = name or source_path.stem
    if not NAME_RE.match(final):
        raise ProvisionError(
            f"Profile name {final!r} must be lowercase letters, digits, '.', '-', '_'.",
            "Pass another --name.",
        )
    folder = user_profiles_dir(profiles_dir)
    target = folder / f"{final}.toml"
    if target.exists() and not force:
        raise ProvisionError(
            f"{target} exists already.", "Pass --force to replace it, or another --name."
        )
    if final != source_path.stem:
        derived_text = re.sub(
            r'^name = ".*"$', f'name = "{final}"', derived_text, count=1, flags=re.MULTILINE
        )
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, derived_text)
    load_profile_file(target)  # what was written loads (names, keys, numbers)
    return target
