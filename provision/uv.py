"""uv's one home in provision: which binary runs, with what environment, and the flags every call
shares. Locking (lock/resolve.py), environments (envs.py) and the lock reader all come here.

- The binary is the `uv` package's own (the version pyproject.toml pins), never whatever is on
  PATH: the behaviour tested is the behaviour shipped.
- Every call: no interpreter downloads (a missing Python is one message, not seconds of retries),
  no progress bars or colours in output that provision parses.
- A resolution (`scrub=True`) also drops the UV_* variables through which uv would take indexes
  or settings provision did not choose, so a stray uv.toml or UV_INDEX_URL cannot add an index
  behind the lock's back.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from functools import lru_cache

# Variables through which uv would take indexes or settings we did not choose.
SCRUBBED = re.compile(
    r"^UV_(INDEX|INDEX_URL|EXTRA_INDEX_URL|DEFAULT_INDEX|FIND_LINKS|NO_INDEX|INDEX_STRATEGY|"
    r"CONFIG_FILE|NO_CONFIG|PRERELEASE|EXCLUDE_NEWER|TORCH_BACKEND|CONSTRAINT|OVERRIDE|"
    r"BUILD_CONSTRAINT|NO_BUILD|NO_BINARY|INDEX_[A-Z0-9_]+_(USERNAME|PASSWORD))$"
)
# Set for every uv call.
ALWAYS = {"UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1", "NO_COLOR": "1"}
# pylock support is a preview feature in uv 0.13; naming it silences the warning on every call.
PYLOCK = ("--preview-features", "pylock")
# What installs a lock exactly: hashes required, anything else removed.
SYNC_ARGS = ("pip", "sync", *PYLOCK, "--require-hashes")


def uv_bin() -> str:
    """The uv binary shipped in the `uv` package (the version provision is tested with)."""
    from uv import find_uv_bin

    return str(find_uv_bin())


@lru_cache(maxsize=1)
def uv_version() -> str:
    """The version of the `uv` package whose binary resolves (asked once per run, then cached).

    Read from the name of its dist-info folder beside the package: importlib.metadata would
    scan every distribution on sys.path for it, 20-100 ms of each `provision lock` here."""
    from pathlib import Path  # not before uv starts (provision/lock/early.py)

    import uv

    site = Path(uv.__file__).resolve().parent.parent
    found = [p.name[3 : -len(".dist-info")] for p in site.glob("uv-*.dist-info")]
    if len(found) == 1:
        return found[0]
    from importlib.metadata import version  # several or none beside it: ask the slow way

    return version("uv")


def uv_env(
    base: Mapping[str, str] | None = None,
    extra: Mapping[str, str] | None = None,
    *,
    scrub: bool = False,
) -> dict[str, str]:
    """The environment a uv call runs with: `base` (os.environ), less the index and settings
    variables when `scrub`, plus provision's fixed settings, plus `extra`."""
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items() if not (scrub and SCRUBBED.match(k))}
    env.pop("FORCE_COLOR", None)
    env.update(ALWAYS)
    env.update(extra or {})
    return env


def run_uv(
    args: list[str], timeout: float = 3600, extra_env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `uv ARGS` to completion, output captured as text."""
    return subprocess.run(
        [uv_bin(), *args],
        capture_output=True,
        text=True,
        env=uv_env(extra=extra_env),
        timeout=timeout,
    )
