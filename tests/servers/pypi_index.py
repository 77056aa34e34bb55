"""A local PEP 503 package index served over HTTP, holding small fake torch-family wheels.

The layout copies the real ones, so the real uv resolves against it exactly as against PyPI and
download.pytorch.org:

    /simple/<project>/           "PyPI": torch 2.4.0 with no local label (built with cu121),
                                 torchvision 0.19.0, and ordinary packages (transformers 4.44.0,
                                 tinylib, tinydep, einops)
    /whl/<variant>/<project>/    "the PyTorch index": torch 2.4.0+<variant>, torchvision
                                 0.19.0+<variant>
    /decoy/simple/<project>/     another index with a torch 2.4.0+cu124 that must never be chosen
    /files/...                   the wheel files (each link carries #sha256=...)
    /not-an-index/               an HTML page with no links

Every wheel is a real, installable wheel (METADATA, WHEEL, RECORD, one module); the torch family
is tagged cp310/cp311 manylinux_2_28_x86_64 only, so another Python finds no wheel.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import threading
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

TORCH = "2.4.0"
TORCHVISION = "0.19.0"
VARIANTS = ("cu118", "cu121", "cu124", "cpu")
PYTHON_TAGS = ("cp310", "cp311")
PLATFORM = "manylinux_2_28_x86_64"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(
    dest: Path,
    name: str,
    version: str,
    requires: Sequence[str] = (),
    tag: str = "py3-none-any",
    marker: str = "",
) -> Path:
    """Write a minimal valid wheel; `marker` goes into the module so copies differ in hash."""
    dist = name.replace("-", "_")
    filename = f"{dist}-{version}-{tag}.whl"
    info = f"{dist}-{version}.dist-info"
    metadata = "\n".join(
        ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
        + [f"Requires-Dist: {r}" for r in requires]
    )
    wheel = "\n".join(
        ["Wheel-Version: 1.0", "Generator: provision-tests", "Root-Is-Purelib: false"]
        + [f"Tag: {tag}"]
    )
    module = f"__version__ = {version!r}\nBUILD = {marker!r}\n".encode()
    files = {
        f"{dist}/__init__.py": module,
        f"{info}/METADATA": (metadata + "\n").encode(),
        f"{info}/WHEEL": (wheel + "\n").encode(),
    }
    record = [_record_line(path, data) for path, data in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / filename
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in files.items():
            archive.writestr(zipfile.ZipInfo(member, (2024, 1, 1, 0, 0, 0)), data)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class FakeIndex:
    root: Path
    url: str = ""
    files: dict[str, Path] = field(default_factory=dict)  # "torch-2.4.0+cu124-cp311" -> path

    @property
    def simple(self) -> str:
        return f"{self.url}/simple"

    @property
    def torch_template(self) -> str:
        return self.url + "/whl/{variant}"

    @property
    def decoy(self) -> str:
        return f"{self.url}/decoy/simple"

    def torch_file(self, version: str, python_tag: str = "cp311") -> Path:
        return self.files[f"torch-{version}-{python_tag}"]


def _torch_family(dest: Path, local: str, marker: str) -> dict[str, Path]:
    made = {}
    suffix = f"+{local}" if local else ""
    for py in PYTHON_TAGS:
        tag = f"{py}-{py}-{PLATFORM}"
        made[f"torch-{TORCH}{suffix}-{py}"] = build_wheel(
            dest, "torch", TORCH + suffix, ["tinydep>=1"], tag, marker
        )
        made[f"torchvision-{TORCHVISION}{suffix}-{py}"] = build_wheel(
            dest, "torchvision", TORCHVISION + suffix, [f"torch=={TORCH}"], tag, marker
        )
    return made


def _write_project_pages(base: Path, files: Sequence[Path], files_url: str) -> None:
    by_project: dict[str, list[Path]] = {}
    for path in files:
        project = path.name.split("-", 1)[0].replace("_", "-").lower()
        by_project.setdefault(project, []).append(path)
    base.mkdir(parents=True, exist_ok=True)
    root_links = "".join(f'<a href="{p}/">{p}</a>\n' for p in sorted(by_project))
    (base / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{root_links}</body></html>")
    for project, paths in by_project.items():
        links = "".join(
            f'<a href="{files_url}/{p.name.replace("+", "%2B")}#sha256={sha256(p)}">{p.name}</a>\n'
            for p in sorted(paths)
        )
        page = base / project
        page.mkdir(exist_ok=True)
        (page / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>")


def build_tree(root: Path) -> FakeIndex:
    """Build every wheel and page under `root` (the server's URL is filled in when it starts)."""
    index = FakeIndex(root)
    files_dir = root / "files"
    pypi = _torch_family(files_dir / "pypi", "", "pypi-cu121")
    pypi["tinydep"] = build_wheel(files_dir / "pypi", "tinydep", "1.2")
    pypi["tinylib"] = build_wheel(files_dir / "pypi", "tinylib", "1.0", ["tinydep>=1"])
    pypi["transformers"] = build_wheel(files_dir / "pypi", "transformers", "4.44.0", ["tinydep"])
    pypi["einops"] = build_wheel(files_dir / "pypi", "einops", "0.8.1")  # flash-attn's one dep
    index.files.update(pypi)
    _write_project_pages(root / "simple", list(pypi.values()), "/files/pypi")
    for variant in VARIANTS:
        made = _torch_family(files_dir / variant, variant, f"index-{variant}")
        index.files.update(made)
        _write_project_pages(root / "whl" / variant, list(made.values()), f"/files/{variant}")
    decoy = _torch_family(files_dir / "decoy", "cu124", "decoy")
    index.files.update({f"decoy:{k}": v for k, v in decoy.items()})
    _write_project_pages(root / "decoy" / "simple", list(decoy.values()), "/files/decoy")
    (root / "not-an-index").mkdir()
    (root / "not-an-index" / "index.html").write_text("<html><body>Welcome</body></html>")
    return index


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


@contextmanager
def serve(index: FakeIndex) -> Iterator[FakeIndex]:
    """Serve `index.root` on 127.0.0.1 (a free port) while the block runs."""

    def handler(*args: object, **kwargs: object) -> _Handler:
        return _Handler(*args, directory=str(index.root), **kwargs)  # type: ignore[arg-type]

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # type: ignore[arg-type]
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    index.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield index
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":  # python tests/servers/pypi_index.py DIR: look at it by hand
    import sys
    import time

    with serve(build_tree(Path(sys.argv[1]))) as running:
        print(running.simple, running.torch_template)
        time.sleep(3600)
