"""What a target environment holds, asked of that environment's own Python.

The environment may run another interpreter than provision's, and importing transformers here
would be slow and could pick provision's own copy; so a small stdlib-only script runs there and
reports the installed version and where the file a fix changes lives.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from provision.errors import ProvisionError

# Run with -I (no PYTHONPATH, no user site, no current folder): what the environment itself holds.
_PROBE = r"""
import json, sys
from importlib import metadata, util
name, relative = sys.argv[1], sys.argv[2]
out = {"python": "%d.%d.%d" % sys.version_info[:3], "executable": sys.executable,
       "prefix": sys.prefix, "version": None, "file": None, "root": None}
try:
    out["version"] = metadata.version(name)
except metadata.PackageNotFoundError:
    pass
top = relative.split("/")[0]
spec = util.find_spec(top) if out["version"] else None
if spec is not None and spec.submodule_search_locations:
    root = list(spec.submodule_search_locations)[0]
    import os
    out["root"] = os.path.dirname(os.path.abspath(root))
    out["file"] = os.path.join(out["root"], *relative.split("/"))
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Installed:
    python: Path  # the interpreter asked
    python_version: str
    package: str
    version: str | None  # None: not installed
    root: Path | None  # the folder holding the package (site-packages)
    file: Path | None  # the file the fix changes (may not exist in a given version)


def inspect(python: Path, package: str, relative_file: str) -> Installed:
    """Ask `python` for `package`'s version and the location of `relative_file`."""
    try:
        proc = subprocess.run(
            [str(python), "-I", "-c", _PROBE, package, relative_file],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except OSError as exc:
        raise ProvisionError(
            f"Cannot run {python}: {exc}", "Pass --env or --python with a working interpreter."
        ) from exc
    if proc.returncode != 0:
        raise ProvisionError(
            f"{python} failed while looking for {package}: {proc.stderr.strip()[-400:]}",
            "Pass --env or --python with a working interpreter.",
        )
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return Installed(
        python=python,
        python_version=data["python"],
        package=package,
        version=data["version"],
        root=Path(data["root"]) if data["root"] else None,
        file=Path(data["file"]) if data["file"] else None,
    )
