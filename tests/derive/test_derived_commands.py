"""Nothing is second class (issue 13 item 6): lock, download, setup, smoke, docker and direction
add on a derived profile, named by its hub repo id (`org/name`) or by a model folder, as on a
built-in one.

A tiny real LLaVA (built by this session's transformers) is published on the local hub. The lock
resolves the derived profile's own package set (the family table's pins) with the real uv against
a local index that holds a small installable wheel for each of those requirements
(tests/derive/index.py): PyPI is not reachable from the tests and torch 2.6 has no CPU wheel here.
The smoke runs the real model in this test interpreter (torch 2.13 CPU, transformers 5)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from provision.lock.lockfile import read_lock, tool_table
from tests.cli_helpers import run_cli, run_envelope, run_json
from tests.derive.index import build_index_for
from tests.servers.pypi_index import FakeIndex, serve

REPO = "tiny-org/tiny-llava-derived"
NAME = "tiny-llava-derived"  # the profile name derived from the repo's name


@pytest.fixture
def published(derive_env, derive_hub, tiny_llava) -> str:
    """The tiny LLaVA on the hub as REPO; its commit."""
    return derive_hub.add_repo(REPO, tiny_llava)


@pytest.fixture
def index_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., FakeIndex]]:
    """index_for(*profile_refs) -> a served index with every infer requirement of those
    profiles; pip's configuration (for provision and uv) points at it and nowhere else."""
    from provision.profiles import load_profile

    servers = []

    def make(*refs: str) -> FakeIndex:
        requirements = sorted({r for ref in refs for r in load_profile(ref).task("infer").packages})
        root = tmp_path / f"index-{len(servers)}"
        context = serve(build_index_for(root, requirements))
        index = context.__enter__()
        servers.append(context)
        pip_conf = tmp_path / "pip.conf"
        pip_conf.write_text(f"[global]\nindex-url = {index.simple}\n")
        monkeypatch.setenv("PIP_CONFIG_FILE", str(pip_conf))
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "no-xdg"))
        for key in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "VIRTUAL_ENV"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.delenv("PROVISION_CUDA_DRIVER", raising=False)
        return index

    yield make
    for context in reversed(servers):
        context.__exit__(None, None, None)


def test_lock_and_docker_take_the_repo_id(published, index_for, tmp_path) -> None:
    index = index_for(REPO)
    lock = tmp_path / "locks" / f"pylock.{NAME}.toml"
    rc, locked = run_json("lock", REPO, "--torch-index", index.torch_template, timeout=300)
    assert rc == 0, locked
    assert locked["profile"] == NAME and Path(locked["path"]) == lock
    table = tool_table(read_lock(lock))
    assert table["profile"]["name"] == NAME and table["profile"]["builtin"] is False
    # the weights the lock pins are the commit the metadata was read at
    assert table["model"]["repo_id"] == REPO and table["model"]["revision"] == published
    names = {p["name"] for p in read_lock(lock)["packages"]}
    assert {"torch", "transformers", "vllm"} <= names  # the family's infer stack, resolved
    proc = run_cli("lock", REPO, "--check")
    assert proc.returncode == 0 and "fresh" in proc.stdout, proc.stdout + proc.stderr

    # docker by repo id: the profile's lock, the Dockerfile named after the profile
    out = tmp_path / "docker"
    rc, rendered = run_json("docker", REPO, "--out", str(out))
    assert rc == 0, rendered
    dockerfile = out / f"{NAME}.Dockerfile"
    assert Path(rendered["dockerfile"]) == dockerfile
    text = dockerfile.read_text()
    assert f"io.provision.model={json.dumps(REPO + '@' + published)}" in text
    assert f"io.provision.profile={json.dumps(NAME)}" in text
    # the same file by profile name, and with the lock named explicitly
    rc, again = run_json("docker", REPO, "--lock", str(lock), "--out", str(tmp_path / "d2"))
    assert rc == 0, again
    assert (tmp_path / "d2" / f"{NAME}.Dockerfile").read_text() == text


def test_download_and_smoke_by_repo_id(published, derive_hub) -> None:
    rc, got = run_json("download", REPO)
    assert rc == 0, got
    assert got["commit"] == published and got["profile"] == NAME
    rc, smoke = run_json("smoke", REPO, "--python", sys.executable, timeout=600)
    assert rc == 0, smoke
    assert smoke["ok"] and smoke["answer"].strip()
    assert (smoke["repo_id"], smoke["revision"]) == (REPO, published)
    assert smoke["location"] == "hf-cache"


def test_a_folder_profile_downloads_and_smokes_from_its_folder(
    derive_env, tiny_llava, tmp_path
) -> None:
    """A profile derived from a folder has no hub behind it: download takes the folder (no
    --source needed) and the smoke loads the model from it."""
    import shutil

    folder = tmp_path / "my-finetune"
    shutil.copytree(tiny_llava, folder)
    rc, got = run_json("download", str(folder))
    assert rc == 0, got
    assert got["profile"] == "my-finetune" and got["kind"] == "local"
    assert {f["path"] for f in got["files"]} >= {"config.json", "model.safetensors"}
    rc, smoke = run_json("smoke", str(folder), "--python", sys.executable, timeout=600)
    assert rc == 0, smoke
    assert smoke["ok"] and smoke["location"] == "folder"


def test_setup_by_repo_id_runs_every_stage_on_the_derived_profile(
    published, index_for, tmp_path
) -> None:
    """check, lock (the derived package set), env (installed from that lock by uv), weights
    (the derived commit), fixes (the family's); the smoke then runs in that env, where torch is
    the index's stand-in wheel, and fails at its import: the one stage a real torch is for."""
    index = index_for(REPO)
    rc, doc = run_envelope("setup", REPO, "--torch-index", index.torch_template, timeout=900)
    report = doc["result"]  # a failed setup's stages are the envelope's result
    stages = {s["stage"]: s["status"] for s in report["stages"]}
    assert stages == {
        "check": "done",
        "lock": "done",
        "env": "done",
        "weights": "done",
        "fixes": "done",
        "smoke": "failed",
    }, report
    assert rc == 1 and "failed at import" in doc["error"]["message"]
    assert report["profile"] == NAME
    assert Path(report["env"]) == tmp_path / "data" / "envs" / NAME
    assert report["outputs"]["weights"]["commit"] == published
    assert report["outputs"]["check"]["profile_origin"].startswith(f"derived from {REPO} at ")
    assert Path(report["lock_file"]).name == f"pylock.{NAME}.toml"


def test_direction_add_records_the_profile_and_its_pinned_repo(
    published, derive_hub, tiny_llava, index_for, tmp_path, monkeypatch
) -> None:
    derive_hub.add_repo("tiny-org/tiny-llava-other", tiny_llava)
    directions = tmp_path / "directions"
    directions.mkdir()
    monkeypatch.setenv("PROVISION_DIRECTIONS_DIR", str(directions))
    path = directions / "team.toml"
    path.write_text('name = "team"\ndescription = "two tiny models"\n')
    # a direction's first member may be a repo id too
    path.write_text(
        path.read_text()
        + '[[members]]\nprofile = "tiny-llava-other"\nrepo = "tiny-org/tiny-llava-other"\n'
    )
    index = index_for(REPO, "tiny-org/tiny-llava-other")
    rc, added = run_json(
        "direction", "add", "team", REPO, "--torch-index", index.torch_template, timeout=300
    )
    assert rc == 0, added
    assert added["profile"] == NAME
    assert added["members"] == {"tiny-llava-other": ["infer"], NAME: ["infer"]}
    text = path.read_text()
    assert f'profile = "{NAME}"' in text and f'repo = "{REPO}@{published}"' in text
    lock = read_lock(Path(added["lock"]["path"]))
    member = tool_table(lock)["members"][NAME]
    assert member["model"]["repo_id"] == REPO and member["model"]["revision"] == published

    # Another machine (an empty metadata cache) derives the member from its pinned commit.
    monkeypatch.setenv("PROVISION_METADATA_CACHE", str(tmp_path / "elsewhere"))
    derive_hub.reset_counters()
    rc, shown = run_json("direction", "show", "team")
    assert rc == 0, shown
    assert any(published in r.path for r in derive_hub.requests)
    rc, removed = run_json("direction", "remove", "team", REPO, "--no-lock")
    assert rc == 0, removed
    assert removed["profile"] == NAME and NAME not in path.read_text()


def test_a_member_whose_repo_gives_another_profile_is_one_message(
    published, tmp_path, monkeypatch
) -> None:
    directions = tmp_path / "directions"
    directions.mkdir()
    monkeypatch.setenv("PROVISION_DIRECTIONS_DIR", str(directions))
    (directions / "bad.toml").write_text(
        f'name = "bad"\ndescription = "d"\n[[members]]\nprofile = "qwen2-vl-2b"\nrepo = "{REPO}"\n'
    )
    proc = run_cli("direction", "show", "bad")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"gives the profile '{NAME}'" in proc.stderr and "Traceback" not in proc.stderr
    assert os.fspath(directions / "bad.toml") in proc.stderr
