"""Known library fixes: one module each, plus the apply/revert/status machinery.

Public API (for `provision setup`, docker builds and the CLI):
`apply_fixes(python, fix_ids, lock_file)`, `fix_status(python, fix_ids, lock_file)`,
`revert_fixes(python, fix_ids, lock_file)` -> list[FixResult]; the registry is in registry.py.
"""

from provision.patches.engine import (
    CHANGED,
    NOT_APPLICABLE,
    ORIGINAL,
    PATCHED,
    FixResult,
    apply_fixes,
    fix_status,
    revert_fixes,
)
from provision.patches.registry import all_fixes, get_fix

__all__ = [
    "CHANGED",
    "NOT_APPLICABLE",
    "ORIGINAL",
    "PATCHED",
    "FixResult",
    "all_fixes",
    "apply_fixes",
    "fix_status",
    "get_fix",
    "revert_fixes",
]
