"""`provision download --dataset` / `verify --dataset`: a dataset repo through the weights'
downloader, from the local hub's dataset routes (Hugging Face and ModelScope), pinned in a lock."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from provision.errors import ProvisionError
from provision.hub.datasets import (
    dataset_records,
    download_dataset,
    parse_dataset,
    verify_dataset,
)
from tests.cli_helpers import invoke, invoke_json
from tests.hub import helpers

LOCK = "pylock.datasets.toml"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def vqa(hub, hub_env, tmp_path):
    folder = helpers.make_vqa_dataset(
        tmp_path / "src" / "vqa", extra={"data/val-00000-of-00001.parquet": 2_000_000}
    )
    commit = hub.add_repo("org/tiny-vqa", folder, repo_type="dataset")
    return folder, commit


def test_hf_dataset_goes_to_the_dataset_cache_and_is_recorded_and_verified(hub, vqa, tmp_path):
    folder, commit = vqa
    rc, out = invoke_json("download", "--dataset", "org/tiny-vqa")
    assert rc == 0, out
    assert out["repo_type"] == "dataset" and out["commit"] == commit
    snapshot = tmp_path / "hf" / "hub" / "datasets--org--tiny-vqa" / "snapshots" / commit
    assert Path(out["snapshot"]) == snapshot
    for source in folder.rglob("*"):
        if source.is_file():
            assert _sha(snapshot / source.relative_to(folder)) == _sha(source)
    # The dataset routes were asked, never the model ones (the id is no model).
    paths = [r.path for r in hub.requests]
    assert any(p.startswith("/api/datasets/org/tiny-vqa/revision/") for p in paths)
    assert any(p.startswith("/datasets/org/tiny-vqa/resolve/") for p in paths)
    assert not any(p.startswith("/api/models/") for p in paths)

    lock = tmp_path / "locks" / LOCK
    record = dataset_records(lock)["org/tiny-vqa"]
    assert record["commit"] == commit and record["repo_id"] == "org/tiny-vqa"
    assert {f["path"]: f["sha256"] for f in record["files"]} == {
        s.relative_to(folder).as_posix(): _sha(s) for s in folder.rglob("*") if s.is_file()
    }
    rc, checked = invoke_json("verify", "--dataset", "org/tiny-vqa")
    assert rc == 0 and checked["ok"] and checked["files"] == len(record["files"])

    # A flipped byte in the cache is found by verify (exit 1, the file named).
    blob = (snapshot / "data" / "val.jsonl").resolve()
    data = bytearray(blob.read_bytes())
    data[3] ^= 1
    blob.write_bytes(bytes(data))
    rc, checked = invoke_json("verify", "--dataset", "org/tiny-vqa")
    assert rc == 1 and checked["wrong"] == ["data/val.jsonl"]
    human = invoke("verify", "--dataset", "org/tiny-vqa")
    assert "provision download --dataset org/tiny-vqa" in human.stdout


def test_a_flipped_byte_in_transfer_is_refused_and_fetched_again(hub, vqa, tmp_path):
    folder, _ = vqa
    big = "data/val-00000-of-00001.parquet"
    hub.fault(f"*{big}", corrupt=True, times=1)
    result = download_dataset(parse_dataset("org/tiny-vqa"), progress=False)
    assert hub.bytes_for(f"org/tiny-vqa/{big}") == 2 * 2_000_000  # the bad copy, then a good one
    assert _sha(result.snapshot / big) == _sha(folder / big)

    # Bytes that keep arriving wrong: one clear error, nothing placed.
    other = tmp_path / "other"
    hub.fault(f"*{big}", corrupt=True)
    proc = invoke("download", "--dataset", "org/tiny-vqa", env={"HF_HOME": str(other)})
    assert proc.returncode == 2, proc.stderr
    assert "failed its check 3 times" in proc.stderr and "Traceback" not in proc.stderr
    blobs = other / "hub" / "datasets--org--tiny-vqa" / "blobs"
    assert not (blobs / _sha(folder / big)).exists()


def test_a_killed_dataset_download_resumes_with_a_range_request(hub, hub_env, tmp_path):
    folder = helpers.make_vqa_dataset(
        tmp_path / "src" / "big", extra={"data/big.parquet": 12_000_000}
    )
    hub.add_repo("org/big-vqa", folder, repo_type="dataset")
    hub.fault("*data/big.parquet", throttle=3_000_000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "provision", "download", "--dataset", "org/big-vqa"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    blobs = tmp_path / "hf" / "hub" / "datasets--org--big-vqa" / "blobs"
    partial = blobs / (_sha(folder / "data" / "big.parquet") + ".provision-partial")
    helpers.wait_for(lambda: partial.exists() and partial.stat().st_size > 4_000_000, 60)
    proc.kill()  # SIGKILL: nothing is cleaned up
    proc.wait(timeout=10)
    hub.wait_idle()
    kept = partial.stat().st_size
    assert 4_000_000 < kept < 12_000_000

    hub.clear_faults()
    hub.reset_counters()
    rc, out = invoke_json("download", "--dataset", "org/big-vqa")
    assert rc == 0, out
    assert hub.bytes_for("org/big-vqa/data/big.parquet") == 12_000_000 - kept
    resumed = [r.range for r in hub.requests if r.file == "org/big-vqa/data/big.parquet"]
    assert resumed == [f"bytes={kept}-"]
    assert out["bytes_reused"] >= kept and not partial.exists()
    assert _sha(Path(out["snapshot"]) / "data" / "big.parquet") == _sha(
        folder / "data" / "big.parquet"
    )
    assert verify_dataset("org/big-vqa").ok


def test_modelscope_dataset_uses_the_modelscope_dataset_layout(hub, vqa, tmp_path):
    folder, _ = vqa
    hub.fault("*val-00000-of-00001.parquet", cut_after=500_000, times=1)
    rc, out = invoke_json("download", "--dataset", "modelscope:org/tiny-vqa")
    assert rc == 0, out
    snapshot = tmp_path / "ms" / "datasets" / "org--tiny-vqa" / "snapshots" / "master"
    assert Path(out["snapshot"]) == snapshot
    for source in folder.rglob("*"):
        if source.is_file():
            assert _sha(snapshot / source.relative_to(folder)) == _sha(source)
    paths = [r.path for r in hub.requests]
    assert any(p.startswith("/api/v1/datasets/org/tiny-vqa/repo/tree") for p in paths)
    assert any(p.startswith("/api/v1/datasets/org/tiny-vqa/repo?") for p in paths)
    ranges = [r.range for r in hub.requests if (r.file or "").endswith(".parquet")]
    assert ranges == [None, "bytes=500000-"]  # the cut transfer resumed
    assert verify_dataset("org/tiny-vqa").ok
    record = dataset_records(tmp_path / "locks" / LOCK)["org/tiny-vqa"]
    assert record["source"].startswith("modelscope")


def test_the_lock_pins_the_dataset_commit_until_a_revision_is_asked_for(hub, vqa, tmp_path):
    _, commit = vqa
    lock = tmp_path / "locks" / "pylock.mine.toml"
    ref = parse_dataset("org/tiny-vqa")
    download_dataset(ref, lock_file=lock, progress=False)
    newer = helpers.make_vqa_dataset(tmp_path / "src" / "newer", items=helpers.TINY_VQA[:2], seed=3)
    new_commit = hub.add_repo("org/tiny-vqa", newer, repo_type="dataset")  # main moves on
    again = download_dataset(ref, lock_file=lock, progress=False)
    assert again.commit == commit
    moved = download_dataset(ref, revision="main", lock_file=lock, progress=False)
    assert moved.commit == new_commit
    assert dataset_records(lock)["org/tiny-vqa"]["commit"] == new_commit


def test_a_dataset_id_given_as_a_profile_points_at_dataset(hub, vqa):
    proc = invoke("download", "org/tiny-vqa")
    assert proc.returncode == 2
    assert "org/tiny-vqa is a dataset" in proc.stderr
    assert "provision download --dataset org/tiny-vqa" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = invoke("check", "modelscope:org/tiny-vqa")  # ModelScope's dataset route, too
    assert proc.returncode == 2 and "org/tiny-vqa is a dataset" in proc.stderr, proc.stderr
    assert "provision download --dataset modelscope:org/tiny-vqa" in proc.stderr
    proc = invoke("download", "org/nothing-at-all")  # neither: the usual message, with a hint
    assert proc.returncode == 2 and "No repository org/nothing-at-all" in proc.stderr
    assert "--dataset" in proc.stderr


def test_unknown_dataset_and_bad_ids_are_one_message(hub, vqa):
    proc = invoke("download", "--dataset", "org/missing")
    assert proc.returncode == 2 and "No source answered for this dataset" in proc.stderr
    proc = invoke("download", "--dataset", "modelscope:org/missing")
    assert proc.returncode == 2 and "Dataset org/missing was not found" in proc.stderr
    for bad in ("not-an-id", "org/x@../../etc", "../org/x"):
        proc = invoke("download", "--dataset", bad)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, bad
    proc = invoke("download")
    assert proc.returncode == 2 and "--dataset" in proc.stderr
    proc = invoke("download", "--dataset", "org/tiny-vqa", "--source", "modelscope")
    assert proc.returncode == 2 and "names no ModelScope repository" in proc.stderr
    assert "modelscope:ORG/NAME" in proc.stderr


def test_a_dataset_file_name_that_escapes_the_cache_is_refused(hub, vqa, tmp_path):
    evil = helpers.make_vqa_dataset(tmp_path / "src" / "evil")
    hub.add_repo(
        "org/tiny-vqa",
        evil,
        revision="evil",
        extra_files={"../../../../escaped.txt": b"x"},
        repo_type="dataset",
    )
    proc = invoke("download", "--dataset", "org/tiny-vqa", "--revision", "evil")
    assert proc.returncode == 2
    assert "outside the cache" in proc.stderr
    assert not list(tmp_path.rglob("escaped.txt"))


ONE_FILE = '{ path = "data/val.jsonl", size = 1, sha256 = "00" }'


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ('commit = "../../../../tmp/x"\nfiles = [' + ONE_FILE + "]", "not a branch, tag or commit"),
        ("commit = 7\nfiles = [" + ONE_FILE + "]", "commit is not a name"),
        ('commit = "abc"\nfiles = "data/val.jsonl"', "files is not a list of file records"),
        ('commit = "abc"\nfiles = [{ size = 1 }]', "files is not a list of file records"),
    ],
)
def test_a_hostile_lock_record_is_refused_before_any_transfer(hub, vqa, tmp_path, fields, message):
    lock = tmp_path / "locks" / LOCK
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(
        'lock-version = "1.0"\ncreated-by = "provision"\npackages = []\n\n'
        '[tool.provision.datasets."org/tiny-vqa"]\nsource = "hf"\nrepo_id = "org/tiny-vqa"\n'
        f'revision = "main"\n{fields}\n'
    )
    with pytest.raises(ProvisionError, match=message):
        download_dataset(parse_dataset("org/tiny-vqa"), lock_file=lock, progress=False)
    with pytest.raises(ProvisionError, match=message):
        verify_dataset("org/tiny-vqa", lock)
    assert not [r for r in hub.requests if r.file]


def test_a_relock_keeps_pinned_datasets_and_drops_a_dataset_smoke_of_other_packages():
    """A re-lock carries [tool.provision.datasets] over (the pin does not depend on the
    packages) and the dataset smoke's result only while the packages are the same."""
    from provision.lock.locking import _merge_previous
    from provision.profiles import load_profile

    profile = load_profile("qwen2-vl-2b")
    pinned = {"org/tiny-vqa": {"repo_id": "org/tiny-vqa", "commit": "a" * 40, "files": []}}
    scored = {"org/tiny-vqa": {"ok": True, "correct": 3}}
    old = {"tool": {"provision": {"datasets": pinned, "dataset_smoke": scored}}}

    def fresh() -> dict:
        return {"model": {"repo_id": profile.hf_repo, "revision": "main"}, "env": {}, "fixes": {}}

    other = fresh()
    kept = _merge_previous(other, old, False, profile)
    assert other["datasets"] == pinned and "dataset_smoke" not in other
    assert "datasets" in kept and "dataset_smoke" not in kept
    same = fresh()
    _merge_previous(same, old, True, profile)
    assert same["datasets"] == pinned and same["dataset_smoke"] == scored


def test_a_gated_dataset_names_its_dataset_page_and_the_token(hub, vqa, tmp_path):
    folder, _ = vqa
    hub.add_repo("org/gated-vqa", folder, repo_type="dataset", gated=True)
    proc = invoke("download", "--dataset", "org/gated-vqa")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "org/gated-vqa is gated" in proc.stderr and "HF_TOKEN" in proc.stderr
    assert f"{hub.url}/datasets/org/gated-vqa" in proc.stderr  # the dataset's page, not a model's
    hub.grant("hf_granted_token")  # every gated repository lets this token through
    rc, out = invoke_json(
        "download", "--dataset", "org/gated-vqa", env={"HF_TOKEN": "hf_granted_token"}
    )
    assert rc == 0, out
    assert "hf_granted_token" not in (tmp_path / "locks" / LOCK).read_text()
