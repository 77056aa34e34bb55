"""Inside an image build: apply the profile's library fixes to the image's environment, check them.

Run by the environment's own Python in the `env` stage, with provision's source (not its
dependencies) on PYTHONPATH:

    PYTHONPATH=/opt/provision /opt/venv/bin/python -m provision.docker.image_fixes FIX [FIX...]

The fix engine is provision's own code (provision.patches); it needs only the standard library,
`packaging` and `filelock`, which every environment with transformers already has. Each fix is
applied (idempotent, atomic, with a backup) and then checked with the fix's own test; a fix that
cannot be applied, or whose check fails, fails the build. A fix that does not apply to the
installed version ("not applicable") is reported and passes.

Prints one JSON line: {"ok": bool, "fixes": [...]}. Exit 0 when ok, 1 otherwise.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from provision.errors import ProvisionError
    from provision.patches.engine import NOT_APPLICABLE, PATCHED, apply_fixes

    python = Path(sys.executable)
    try:
        results = apply_fixes(python, argv or None, lock_file=None, verify_fixes=True)
    except ProvisionError as exc:
        print(json.dumps({"ok": False, "error": exc.message, "hint": exc.hint}))
        print(f"provision: a fix could not be applied: {exc}", file=sys.stderr)
        return 1
    report = []
    ok = True
    for result in results:
        passed = result.state == NOT_APPLICABLE or (
            result.state == PATCHED and bool(result.check and result.check.get("ok"))
        )
        ok = ok and passed
        report.append(
            {
                "fix": result.fix,
                "package": f"{result.package} {result.version or '-'}",
                "state": result.state,
                "action": result.action,
                "check": result.check,
                "reason": result.reason,
                "passed": passed,
            }
        )
        verdict = "ok" if passed else "FAILED"
        print(
            f"provision fix {result.fix}: {result.state} ({result.action}), {verdict}",
            file=sys.stderr,
        )
    _stable_bytecode([Path(r.file) for r in results if r.state == PATCHED and r.file])
    print(json.dumps({"ok": ok, "fixes": report}))
    return 0 if ok else 1


def _stable_bytecode(files: list[Path]) -> None:
    """Compile each patched file to bytecode keyed by the source's hash, not its mtime.

    The engine drops the stale .pyc and the check's import writes a timestamped one, which would
    make every build's environment differ by a few bytes and the final image re-copy the whole
    environment layer. A checked-hash .pyc is the same bytes for the same source.
    """
    import importlib.util
    import py_compile

    for source in files:
        cached = Path(importlib.util.cache_from_source(str(source)))
        for stale in cached.parent.glob(source.stem + ".*.pyc"):
            stale.unlink()
        py_compile.compile(
            str(source),
            cfile=str(cached),
            doraise=True,
            invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
        )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
