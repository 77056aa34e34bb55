"""The TOML parser for text provision or uv wrote: uv's lock output, a previous lock, the tables
in provision/data.

`tomli`'s wheels are compiled (mypyc): it parses a 27 KB lock 3-4x faster than the standard
library's `tomllib`, which is the same parser in pure Python. Where tomli is not installed this is
`tomllib` (tomli on Python 3.10). Text a person wrote (profiles, directions) stays with `tomllib`:
tomli 2.4+ also reads TOML 1.1, and a profile must not parse on one install and fail on another.
"""

from __future__ import annotations

try:
    import tomli as toml
except ImportError:  # pragma: no cover - a dependency; Python 3.10 always has it
    import tomllib as toml  # type: ignore[no-redef]

loads = toml.loads
load = toml.load
TOMLDecodeError = toml.TOMLDecodeError

__all__ = ["TOMLDecodeError", "load", "loads"]
