"""The known fixes, by id. Adding a fix: write its module (see group_beam_search_dtype.py) and
name it here; profiles list the ids they need in `fixes = [...]`."""

from __future__ import annotations

from provision.errors import ProvisionError
from provision.patches import group_beam_search_dtype
from provision.patches.base import Fix

FIXES: dict[str, Fix] = {fix.id: fix for fix in (group_beam_search_dtype.FIX,)}


def all_fixes() -> list[Fix]:
    return list(FIXES.values())


def get_fix(fix_id: str) -> Fix:
    try:
        return FIXES[fix_id]
    except KeyError:
        known = ", ".join(sorted(FIXES))
        raise ProvisionError(
            f"Unknown fix {fix_id!r}.", f"Known fixes: {known} (see `provision patch status`)."
        ) from None
