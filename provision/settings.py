"""The environment the hub clients read: where their caches go and which endpoint they talk to.

`huggingface_hub` reads HF_HOME / HF_ENDPOINT once, when it is imported (so does transformers,
through it): set after `import transformers` they silently do nothing. This module computes the
variables from the data disk and the chosen source, prints them as shell code
(`eval "$(provision env)"`), persists them in a marked block of the shell's rc file and of a
virtual environment's activate script, and sets them in-process before those libraries load.
Tokens are never part of it: they stay in the environment or in the hub's own login.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.atomic import atomic_write_bytes, file_lock

BLOCK_BEGIN = "# >>> provision hub environment >>>"
BLOCK_END = "# <<< provision hub environment <<<"
SHELLS = ("bash", "zsh", "fish")
# Names whose values are never printed or written, whatever asks (tokens, passwords): the one
# pattern the env block, the lock's env table and the Docker image's ENV lines all filter with,
# matched as whole words between underscores: HF_TOKEN and OPENAI_API_KEY are secrets,
# TOKENIZERS_PARALLELISM and AUTHOR are not.
SECRET_NAMES = re.compile(
    r"(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|CREDENTIALS?|AUTH)(_|$)", re.IGNORECASE
)
# Variables the hub clients read at import time: what `apply_environment` checks.
IMPORT_TIME = {"HF_HOME", "HF_HUB_CACHE", "HF_ENDPOINT", "HF_HUB_DISABLE_TELEMETRY"}


def public_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` without the names that look like they hold a secret."""
    return {k: v for k, v in env.items() if not SECRET_NAMES.search(k)}


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """`data_dir` as given (with ~ expanded), else the data disk `choose_data_dir` picks."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    from provision.hardware.disks import choose_data_dir

    return choose_data_dir().path


def hub_environment(data_dir: Path | str | None = None, source: Any = "auto") -> dict[str, str]:
    """The hub clients' variables for caches on `data_dir` and weights from `source`.

    `source` is a name (hf, hf-mirror, modelscope, a URL, modelscope:URL, a folder), a
    `provision.hub.sources.Source`, or "auto": keep an HF_ENDPOINT already set (none is added:
    call again with the source `download_profile` chose).
    HF_ENDPOINT is set for HF-compatible sources; MODELSCOPE_ENDPOINT only when not the default.
    """
    from provision.hub.sources import Source, parse_source

    base = resolve_data_dir(data_dir)
    env = {
        "HF_HOME": str(base / "huggingface"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "MODELSCOPE_CACHE": str(base / "modelscope"),
    }
    if isinstance(source, Source):
        chosen: Source | None = source
    elif source == "auto":
        # Nothing chosen yet: keep an endpoint the user set; do not pin the Hub before probing.
        chosen = parse_source(os.environ["HF_ENDPOINT"]) if os.environ.get("HF_ENDPOINT") else None
    else:
        chosen = parse_source(str(source))
    if chosen is not None and chosen.kind == "hf":
        env["HF_ENDPOINT"] = chosen.endpoint
    if chosen is not None and chosen.kind == "modelscope" and not chosen.is_default_modelscope:
        env["MODELSCOPE_ENDPOINT"] = chosen.endpoint
    return public_env(dict(sorted(env.items())))


# Cache locations a user may have set: setup keeps them rather than moving the caches.
USER_CACHE_VARS = ("HF_HOME", "HF_HUB_CACHE", "MODELSCOPE_CACHE")


def keep_user_caches(env: dict[str, str]) -> dict[str, str]:
    """`env` with the cache locations the user already set (HF_HOME, HF_HUB_CACHE,
    MODELSCOPE_CACHE) in place of the data disk's."""
    for key in USER_CACHE_VARS:
        if os.environ.get(key):
            env[key] = os.environ[key]
    return env


def hf_hub_cache(environ: dict[str, str] | None = None) -> Path:
    """Where Hugging Face's cache is: HF_HUB_CACHE, else HF_HOME/hub, else on the data disk."""
    env = os.environ if environ is None else environ
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    return Path(hub_environment(None, "hf")["HF_HOME"]) / "hub"


def modelscope_cache(environ: dict[str, str] | None = None) -> Path:
    """Where ModelScope's cache is: MODELSCOPE_CACHE, else on the data disk."""
    env = os.environ if environ is None else environ
    if env.get("MODELSCOPE_CACHE"):
        return Path(env["MODELSCOPE_CACHE"]).expanduser()
    return Path(hub_environment(None, "hf")["MODELSCOPE_CACHE"])


# --- printing ------------------------------------------------------------------------------------


def detect_shell(environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    name = Path(env.get("SHELL", "bash")).name
    return name if name in SHELLS else "bash"


def _check_shell(shell: str) -> str:
    from provision.errors import ProvisionError

    if shell not in SHELLS:
        raise ProvisionError(f"Unknown shell {shell!r}.", f"Use one of {', '.join(SHELLS)}.")
    return shell


def _fish_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def render_exports(env: dict[str, str], shell: str = "bash") -> str:
    """Shell code that sets `env`: `export K=V` for bash/zsh, `set -gx K V` for fish."""
    _check_shell(shell)
    lines = []
    for key, value in env.items():
        if SECRET_NAMES.search(key):
            continue  # belt and braces: a token never reaches a file or a terminal log
        if shell == "fish":
            lines.append(f"set -gx {key} {_fish_quote(value)}")
        else:
            lines.append(f"export {key}={shlex.quote(value)}")
    return "\n".join(lines) + "\n"


# --- persisting ----------------------------------------------------------------------------------


def rc_file(shell: str, home: Path | None = None) -> Path:
    home = home or Path.home()
    return {
        "bash": home / ".bashrc",
        "zsh": home / ".zshrc",
        "fish": home / ".config" / "fish" / "config.fish",
    }[_check_shell(shell)]


def activate_scripts(venv: Path) -> list[tuple[Path, str]]:
    """A virtual environment's activate scripts and the shell each is written in."""
    bin_dir = venv / "bin"
    found = [(bin_dir / "activate", "bash"), (bin_dir / "activate.fish", "fish")]
    return [(path, shell) for path, shell in found if path.exists()]


def replace_block(text: str, block: str) -> str:
    """`text` with the marked block replaced by `block` (or `block` appended if there is none)."""
    pattern = re.compile(re.escape(BLOCK_BEGIN) + r".*?" + re.escape(BLOCK_END) + r"\n?", re.S)
    new = f"{BLOCK_BEGIN}\n{block}{BLOCK_END}\n"
    if pattern.search(text):
        return pattern.sub(lambda _: new, text, count=1)
    if text and not text.endswith("\n"):
        text += "\n"
    return text + new


def write_block(path: Path, env: dict[str, str], shell: str) -> Path:
    """Write `env` into `path`'s marked block, atomically and under a lock."""
    with file_lock(str(path) + ".provision.lock"):
        # A symlinked rc file (a dotfiles checkout) is written through the link, not replaced by
        # a regular file; bytes that are not UTF-8 (a Latin-1 comment) go back out unchanged.
        target = Path(os.path.realpath(path))
        old = target.read_bytes().decode("utf-8", "surrogateescape") if target.exists() else ""
        new = replace_block(old, render_exports(env, shell))
        atomic_write_bytes(target, new.encode("utf-8", "surrogateescape"))
    return path


@dataclass
class Persisted:
    files: list[Path] = field(default_factory=list)

    def to_json(self) -> list[str]:
        return [str(p) for p in self.files]


def persist_environment(
    env: dict[str, str],
    shell: str = "bash",
    home: Path | None = None,
    venv: Path | None = None,
) -> Persisted:
    """Write `env` into the shell's rc file and into `venv`'s activate scripts (if given)."""
    done = Persisted()
    done.files.append(write_block(rc_file(shell, home), env, shell))
    if venv is not None:
        for script, script_shell in activate_scripts(venv):
            done.files.append(write_block(script, env, script_shell))
    return done


# --- in-process ----------------------------------------------------------------------------------


def apply_environment(env: dict[str, str]) -> list[str]:
    """Set `env` in os.environ; returns warnings for hub libraries already imported too early.

    huggingface_hub copies HF_HOME / HF_ENDPOINT into its constants at import: if it is loaded
    already with other values, the new ones take effect only in a new process.
    An endpoint already set with credentials stays as it is when `env` names the same URL
    without them (what is written down never holds them; this process still needs them).
    """
    from provision.secrets import public

    env = {
        k: v
        for k, v in env.items()
        if not (k.endswith("_ENDPOINT") and os.environ.get(k) and public(os.environ[k]) == v)
    }
    os.environ.update(env)
    warnings = []
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        seen = {
            "HF_HOME": getattr(constants, "HF_HOME", None),
            "HF_ENDPOINT": getattr(constants, "ENDPOINT", None),
        }
        for key, value in seen.items():
            if (
                key in env
                and value is not None
                and os.path.normpath(str(value)) != os.path.normpath(env[key])
            ):
                warnings.append(
                    f"huggingface_hub was imported before {key} was set (it uses {value}); "
                    f"start a new process for {key}={env[key]} to take effect."
                )
    return warnings


# --- AutoDL --------------------------------------------------------------------------------------


def network_turbo() -> Path:
    from provision.hub.sources import source_table

    return Path(source_table()["autodl"]["network_turbo"])


def autodl_notes() -> list[str]:
    """What to tell a user on an AutoDL box: the data disk, and the network accelerator script."""
    from provision.hardware import disks

    if not disks.is_autodl():
        return []
    notes = [f"AutoDL: caches go on the data disk {disks.AUTODL_DATA}, not the small system disk."]
    turbo = network_turbo()
    if turbo.exists():
        notes.append(
            f"AutoDL: `source {turbo}` turns on its network accelerator for huggingface.co "
            "(turn it off with `unset http_proxy https_proxy`); or use --source hf-mirror."
        )
    return notes
