"""Locking against the local PEP 503 index with the real uv: the chosen variant is what gets locked,
torchvision matches, nothing comes from another index, and the lock works as PEP 751 says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from provision.errors import CheckFailed, ProvisionError
from provision.lock.indexes import Index, read_pip_config
from provision.lock.lockfile import read_lock, set_tool_section, tool_table
from provision.lock.locking import check_lock, lock_profile
from provision.lock.resolve import RequirementSet, Route, resolve
from provision.uv import uv_bin
from tests.cli_helpers import invoke, invoke_json
from tests.lock.conftest import TASKS, write_profile
from tests.servers.pypi_index import sha256

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _packages(path: Path) -> dict[str, dict]:
    return {p["name"]: p for p in tomllib.loads(path.read_text())["packages"]}


def _urls(package: dict) -> list[str]:
    return [w["url"] for w in package.get("wheels", [])]


def test_chosen_variant_is_locked_from_its_index_only(lock_env, fake_index):
    result = lock_profile(
        "tiny-vl",
        env={**os.environ, "PROVISION_CUDA_DRIVER": "550.54.14"},
        torch_index=fake_index.torch_template,
    )
    assert result.plan.variant == "cu124"
    assert result.plan.rewrites[0] == (
        "2.4.0+cu121 -> 2.4.0+cu124: driver 550.54.14 supports CUDA 12.4"
    )
    locked = _packages(result.path)
    assert locked["torch"]["version"] == "2.4.0+cu124"
    assert locked["torchvision"]["version"] == "0.19.0+cu124"
    for name in ("torch", "torchvision"):
        urls = _urls(locked[name])
        assert urls and all(u.startswith(f"{fake_index.url}/files/cu124/") for u in urls), urls
    # the hashes are those of the cu124 index's files, not the decoys' (same version, other bytes)
    hashes = {w["hashes"]["sha256"] for w in locked["torch"]["wheels"]}
    assert sha256(fake_index.torch_file("2.4.0+cu124")) in hashes
    assert sha256(fake_index.files["decoy:torch-2.4.0+cu124-cp311"]) not in hashes
    every_url = [u for p in locked.values() for u in _urls(p)]
    assert not [u for u in every_url if "/decoy/" in u or "find-links" in u]
    # everything else came from the default index
    assert all(u.startswith(f"{fake_index.url}/files/pypi/") for u in _urls(locked["tinylib"]))
    table = tool_table(read_lock(result.path))
    assert table["target"]["variant"] == "cu124" and table["target"]["min_driver"] == "525.60.13"
    assert table["target"]["min_compute_capability"] == "5.0"
    assert table["indexes"]["torch"]["url"] == fake_index.torch_template.format(variant="cu124")
    assert table["indexes"]["default"] == fake_index.simple
    assert table["indexes"]["extra"][0]["url"] == fake_index.decoy
    assert table["indexes"]["find_links"][0]["from"] == "PIP_FIND_LINKS"
    assert table["profile"]["name"] == "tiny-vl" and table["profile"]["task"] == "infer"
    assert table["model"]["repo_id"] == "HuggingFaceTB/SmolVLM-256M-Instruct"
    assert table["fixes"]["apply"] == ["group-beam-search-dtype"]
    assert "smoke" in table and table["tool-version"]


def test_pypi_route_takes_torch_from_the_default_index(lock_env, fake_index):
    # A CUDA 12.2 driver: cu121, which is what PyPI's torch 2.4.0 is built with.
    result = lock_profile("tiny-vl", env={**os.environ, "PROVISION_CUDA_DRIVER": "535.104.05"})
    assert (result.plan.variant, result.plan.index.route) == ("cu121", "pypi")
    locked = _packages(result.path)
    assert locked["torch"]["version"] == "2.4.0" and locked["torchvision"]["version"] == "0.19.0"
    assert all(u.startswith(f"{fake_index.url}/files/pypi/") for u in _urls(locked["torch"]))
    assert "(PyPI's build, cu121)" in result.plan.rewrites[0]


def test_uv_is_given_this_interpreter_instead_of_searching_path(
    lock_env, fake_index, tmp_path, monkeypatch
):
    """uv looks for a python3.X on PATH when not told which to use; through pyenv's shims
    (bash scripts) that was 0.5 s of every lock here. A python3.11 on PATH that records being
    run shows that uv no longer goes looking."""
    shims = tmp_path / "shims"
    shims.mkdir()
    marker = tmp_path / "shim-ran"
    for name in ("python3.11", "python3", "python"):
        shim = shims / name
        shim.write_text(f'#!/bin/sh\necho "$@" >> {marker}\nexec {sys.executable} "$@"\n')
        shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{os.environ['PATH']}")  # uv inherits it
    result = lock_profile("tiny-vl", env=dict(os.environ), torch_index=fake_index.torch_template)
    assert _packages(result.path)["torch"]["version"] == "2.4.0+cpu"
    assert not marker.exists(), marker.read_text()
    assert result.resolution.command[-2:] == ["--python", sys.executable]


def test_cpu_machine_gets_the_cpu_build(lock_env, fake_index):
    result = lock_profile("tiny-vl", torch_index=fake_index.torch_template)
    assert result.plan.variant == "cpu"
    assert _packages(result.path)["torch"]["version"] == "2.4.0+cpu"
    assert "min_driver" not in tool_table(read_lock(result.path))["target"]


def test_lock_round_trips_and_installs(lock_env, fake_index, tmp_path):
    result = lock_profile(
        "tiny-vl",
        env={**os.environ, "PROVISION_CUDA_DRIVER": "550.54.14"},
        torch_index=fake_index.torch_template,
    )
    from packaging.pylock import Pylock

    data = tomllib.loads(result.path.read_text())
    pylock = Pylock.from_dict(data)  # validates against PEP 751
    assert {p.name for p in pylock.packages} >= {"torch", "torchvision", "tinylib", "tinydep"}
    again = Pylock.from_dict(pylock.to_dict())
    assert again.to_dict() == pylock.to_dict()
    assert data["tool"]["provision"]["target"]["variant"] == "cu124"

    uv = uv_bin()
    venv = tmp_path / "venv"
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "NO_COLOR": "1"}
    subprocess.run(
        [uv, "venv", str(venv), "--python", sys.executable],
        check=True,
        env=env,
        capture_output=True,
    )
    python = str(venv / "bin" / "python")
    dry = subprocess.run(
        [uv, "pip", "install", "--dry-run", "-r", str(result.path), "--python", python],
        capture_output=True,
        text=True,
        env=env,
    )
    assert dry.returncode == 0, dry.stderr
    assert "torch==2.4.0+cu124" in dry.stderr + dry.stdout
    sync = subprocess.run(
        [uv, "pip", "sync", str(result.path), "--python", python],
        capture_output=True,
        text=True,
        env=env,
    )
    assert sync.returncode == 0, sync.stderr
    built = subprocess.run(
        [python, "-c", "import torch, torchvision; print(torch.__version__, torch.BUILD)"],
        capture_output=True,
        text=True,
    )
    assert built.stdout.split() == ["2.4.0+cu124", "index-cu124"]


def test_unsatisfiable_names_the_conflict_and_exits_1(lock_env, fake_index):
    proc = invoke("lock", "tiny-vl", "--task", "lora", "--variant", "pypi")
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr
    assert "cannot be satisfied" in err and "tinydep" in err and "torch" in err
    assert "tiny-vl/lora needs tinydep<1" in err
    assert len(err.splitlines()) < 20  # trimmed, not a wall of text
    assert "Traceback" not in err


def test_python_without_wheels_exits_2(lock_env, fake_index):
    proc = invoke("lock", "tiny-vl", "--variant", "pypi", "--python", "3.12")
    assert proc.returncode == 2, proc.stderr
    assert "No wheel of torch" in proc.stderr and "Python 3.12" in proc.stderr
    # outside what the matrix knows: refused before resolving
    proc = invoke("lock", "tiny-vl", "--python", "3.7")
    assert proc.returncode == 2 and "no wheels for Python 3.7" in proc.stderr


def test_index_down_exits_2(lock_env):
    # uv's own retries (3 by default, with back-off) only delay the same message: none here.
    proc = invoke(
        "lock", "tiny-vl", "--driver", "550.54.14", "--torch-index", "http://127.0.0.1:9/{variant}",
        env={"UV_HTTP_RETRIES": "0"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Could not reach" in proc.stderr and "127.0.0.1:9" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_not_an_index_exits_2(lock_env, fake_index):
    proc = invoke(
        "lock",
        "tiny-vl",
        "--driver",
        "550.54.14",
        "--torch-index",
        f"{fake_index.url}/not-an-index",
    )
    assert proc.returncode == 2, proc.stderr
    assert "not a package index" in proc.stderr and "not-an-index" in proc.stderr


def test_malformed_pip_conf_and_unknown_profile_exit_2(lock_env):
    Path(lock_env["env"]["PIP_CONFIG_FILE"]).write_text("this is not ini\n")
    proc = invoke("lock", "tiny-vl")
    assert proc.returncode == 2 and "is malformed" in proc.stderr
    assert lock_env["env"]["PIP_CONFIG_FILE"] in proc.stderr
    proc = invoke("lock", "no-such-model")
    assert proc.returncode == 2 and "Unknown profile 'no-such-model'" in proc.stderr


def test_explain_and_json(lock_env, fake_index):
    proc = invoke(
        "lock",
        "tiny-vl",
        "--driver",
        "550.54.14",
        "--torch-index",
        fake_index.torch_template,
        "--explain",
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for text in (
        "Rule 2: cu124",
        "rewrite: 2.4.0+cu121 -> 2.4.0+cu124: driver 550.54.14 supports CUDA 12.4",
        "PIP_FIND_LINKS",
        "uv pip compile",
    ):
        assert text in out, out
    code, payload = invoke_json("lock", "tiny-vl", "--driver", "535.104.05")
    assert code == 0, payload
    assert payload["variant"] == "cu121" and payload["decision"]["index"]["route"] == "pypi"
    assert payload["indexes"]["default"] == fake_index.simple


def test_relock_keeps_download_results_while_they_hold(lock_env, fake_index):
    common = {"env": {**os.environ, "PROVISION_CUDA_DRIVER": "535.104.05"}}
    first = lock_profile("tiny-vl", **common)
    files = [{"path": "model.safetensors", "size": 3, "sha256": "ab" * 32}]
    set_tool_section(first.path, "model.commit", "c" * 40)
    set_tool_section(first.path, "model.files", files)
    set_tool_section(first.path, "smoke", {"ok": True, "answer": "a cat"})
    set_tool_section(first.path, "env", {"HF_ENDPOINT": "https://hf-mirror.com"})

    again = lock_profile("tiny-vl", **common)
    table = tool_table(read_lock(again.path))
    assert table["model"]["commit"] == "c" * 40 and table["model"]["files"] == files
    assert table["smoke"] == {"ok": True, "answer": "a cat"}  # same packages: still true
    assert table["env"]["HF_ENDPOINT"] == "https://hf-mirror.com"

    # another revision: the downloaded commit and files no longer describe the model
    write_profile(lock_env["profiles"], revision="v2")
    third = lock_profile("tiny-vl", **common)
    table = tool_table(read_lock(third.path))
    assert table["model"]["revision"] == "v2" and "commit" not in table["model"]
    # other packages: the smoke result is about an environment that no longer exists
    fourth = lock_profile(
        "tiny-vl",
        **{"env": {**os.environ, "PROVISION_CUDA_DRIVER": "550.54.14"}},
        torch_index=fake_index.torch_template,
    )
    assert tool_table(read_lock(fourth.path))["smoke"] == {}


def test_check_tells_stale_from_fresh_without_network(lock_env, fake_index):
    lock_profile("tiny-vl", variant="pypi")
    code, payload = invoke_json("lock", "--check", "tiny-vl")
    assert code == 0 and payload[0]["fresh"], payload
    # a comment or a memory figure does not stale the lock ...
    path = lock_env["profiles"] / "tiny-vl.toml"
    path.write_text("# edited\n" + path.read_text())
    assert check_lock("tiny-vl").fresh
    # ... a package pin does
    write_profile(
        lock_env["profiles"], tasks={**TASKS, "infer": TASKS["infer"][:-1] + ["tinylib==2.0"]}
    )
    proc = invoke("lock", "--check", "tiny-vl")
    assert proc.returncode == 1
    assert "tinylib is locked at 1.0, the profile pins 2.0" in proc.stdout
    assert "stale" in proc.stderr


def test_joint_resolution_names_which_set_needs_what(lock_env, fake_index):
    config = read_pip_config()
    route = Route(
        Index("torch", fake_index.torch_template.format(variant="cu124"), "test", explicit=True),
        ("torch", "torchvision"),
        "cu124",
    )
    together = resolve(
        [
            RequirementSet("model-a/infer", ("torch==2.4.0+cu124", "tinylib==1.0")),
            RequirementSet("model-b/infer", ("torchvision==0.19.0+cu124", "tinydep>=1.1")),
        ],
        "3.11",
        config,
        [route],
    )
    assert together.package("torchvision").version == "0.19.0+cu124"
    assert together.package("tinydep").version == "1.2"
    with pytest.raises(CheckFailed) as caught:
        resolve(
            [
                RequirementSet("model-a/infer", ("torch==2.4.0+cu124", "tinylib==1.0")),
                RequirementSet("model-b/lora", ("tinydep<1",)),
            ],
            "3.11",
            config,
            [route],
        )
    message = caught.value.message
    assert "model-b/lora needs tinydep<1" in message and "model-a/infer" in message
    with pytest.raises(CheckFailed, match="model-a/infer needs tinylib==1.0; model-b/x needs"):
        resolve(
            [
                RequirementSet("model-a/infer", ("tinylib==1.0",)),
                RequirementSet("model-b/x", ("tinylib==2.0",)),
            ],
            "3.11",
            config,
        )
    with pytest.raises(ProvisionError):
        resolve([], "3.11", config)
