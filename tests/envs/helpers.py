"""Building blocks for environment tests: real wheels made on the spot, PEP 751 locks written by
hand or resolved by uv, and the local torch wheel folder the machine provides."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import zipfile
from pathlib import Path

import tomli_w

from provision.uv import uv_bin


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_wheel(
    folder: Path, name: str, version: str, tag: str = "py3-none-any", body: str | None = None
) -> Path:
    """A real, installable wheel of a one-module package `name` (its module says its version)."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = name.replace("-", "_")
    wheel = folder / f"{dist}-{version}-{tag}.whl"
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{dist}.py": body if body is not None else f"VERSION = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: provision-tests\nRoot-Is-Purelib: "
        f"true\nTag: {tag}\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = "\n".join(record) + "\n"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


def write_pylock(
    path: Path,
    wheels: list[tuple[str, str, Path]],
    url_base: str | None = None,
    requires_python: str = ">=3.10",
) -> Path:
    """A PEP 751 lock naming each (name, version, wheel file) with its sha256.

    With `url_base` the entries are URLs (`url_base/<file>`), as a lock made against an index is;
    otherwise absolute paths.
    """
    packages = []
    for name, version, wheel in wheels:
        entry = {"hashes": {"sha256": sha256_file(wheel)}, "size": wheel.stat().st_size}
        if url_base:
            entry["url"] = f"{url_base.rstrip('/')}/{wheel.name}"
        else:
            entry["path"] = str(wheel)
        packages.append({"name": name, "version": version, "wheels": [entry]})
    data = {
        "lock-version": "1.0",
        "created-by": "provision-tests",
        "requires-python": requires_python,
        "packages": packages,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def compile_lock(
    requirements: list[str],
    folder: Path,
    python: str = "3.11",
    platform: str | None = None,
    find_links: list[str] | tuple[str, ...] = (),
) -> Path:
    """Resolve `requirements` with uv into `folder/pylock.toml` (hashes on), as `provision lock`
    does; PyPI must be reachable."""
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "requirements.in"
    source.write_text("\n".join(requirements) + "\n", encoding="utf-8")
    out = folder / "pylock.toml"
    cmd = [uv_bin(), "pip", "compile", "--quiet", "--format", "pylock.toml", "--generate-hashes"]
    cmd += ["--python-version", python, "-o", str(out), str(source)]
    if platform:
        cmd += ["--python-platform", platform]
    for link in find_links:
        cmd += ["--find-links", link]
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"uv pip compile failed:\n{proc.stderr[-3000:]}"
    return out


def torch_wheel_dir() -> Path:
    """The local folder with the CPU torch wheel, named by PIP_FIND_LINKS (see DESIGN.md)."""
    for item in os.environ.get("PIP_FIND_LINKS", "").split():
        folder = Path(item.removeprefix("file://"))
        if folder.is_dir() and any(folder.glob("torch-*.whl")):
            return folder
    raise AssertionError(
        "No torch wheel in the folders PIP_FIND_LINKS names; these tests need the CPU torch wheel "
        "(torch-2.13.0+cpu, cp311) that this machine's PIP_FIND_LINKS points at."
    )


def run_in(
    python: Path, code: str, timeout: float = 900, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `code` with an environment's Python, writing bytecode beside the sources as a user's
    import would (this machine sets PYTHONDONTWRITEBYTECODE; other tests set a cache prefix)."""
    drop = ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")
    env = {**{k: v for k, v in os.environ.items() if k not in drop}, **(env or {})}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, env=env, timeout=timeout
    )
