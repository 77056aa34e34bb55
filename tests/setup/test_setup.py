"""`provision setup` end to end on this GPU-less machine: every stage for real (uv, the local hub
with the real huggingface_hub, the fix, a smoke inference of a tiny LLaVA), a rebuild from the
lock elsewhere, a kill during the download, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provision.lock.lockfile import read_lock, recorded_table, tool_table
from provision.uv import uv_bin
from tests.cli_helpers import run_cli, run_envelope, run_json
from tests.envs.helpers import torch_wheel_dir
from tests.setup.conftest import PROFILE, REPO, write_profile

pytestmark = pytest.mark.slow
# The only CPU torch here is the local wheel PIP_FIND_LINKS names: torch comes from that folder.
TORCH = ["--torch-index", str(torch_wheel_dir())]


def freeze(env: Path) -> list[str]:
    out = subprocess.run(
        [uv_bin(), "pip", "freeze", "--python", str(env / "bin" / "python")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(line for line in out.splitlines() if line.strip())


def stages(report: dict) -> dict[str, str]:
    return {s["stage"]: s["status"] for s in report["stages"]}


def test_setup_every_stage_then_rebuild_from_the_lock(setup_world):
    root = setup_world["root"]
    env1 = root / "envs" / "one"
    rc, report = run_json("setup", PROFILE, "--env", str(env1), *TORCH, timeout=1800)
    assert rc == 0, report
    assert stages(report) == {s: "done" for s in stages(report)}
    assert list(stages(report)) == ["check", "lock", "env", "weights", "fixes", "smoke"]
    smoke = report["outputs"]["smoke"]
    assert smoke["ok"] and smoke["answer"].strip()
    fix = report["outputs"]["fixes"][0]
    assert (fix["fix"], fix["state"], fix["action"]) == (
        "group-beam-search-dtype",
        "patched",
        "applied",
    )
    # The mode the fix repairs: group beam search with output_scores in bf16.
    assert smoke["modes"]["group_beam"]["status"] == "ok"

    lock = Path(report["lock_file"])
    data = read_lock(lock)
    torch = next(p for p in data["packages"] if p["name"] == "torch")
    assert torch["version"] == "2.13.0+cpu" and torch["wheels"][0]["hashes"]["sha256"]
    assert all(
        (w.get("hashes") or {}).get("sha256") for p in data["packages"] for w in p.get("wheels", [])
    )
    # What the stages recorded is in this machine's record, seen with the lock; the lock
    # itself keeps what the lock stage wrote (no commit, no smoke: nothing rewritten).
    assert "commit" not in tool_table(data)["model"] and not tool_table(data)["smoke"]
    table = recorded_table(lock)
    assert table["model"]["commit"] == setup_world["commit"]
    assert table["model"]["files"] and all(f["sha256"] for f in table["model"]["files"])
    assert table["smoke"]["ok"] is True
    # The environment's activate script points at the cache the weights went to.
    activate = (env1 / "bin" / "activate").read_text()
    assert f"HF_HOME={root / 'data' / 'huggingface'}" in activate.replace("'", "")

    # Someone else rebuilds exactly from the lock: another env, another data disk.
    env2 = root / "envs" / "two"
    other = {"PROVISION_DATA_DIR": str(root / "data2")}
    rc, rebuilt = run_json(
        "setup", PROFILE, "--from-lock", str(lock), "--env", str(env2), env=other, timeout=1800
    )
    assert rc == 0, rebuilt
    assert freeze(env2) == freeze(env1)
    assert rebuilt["outputs"]["weights"]["commit"] == setup_world["commit"]
    assert (root / "data2" / "huggingface" / "hub" / f"models--{REPO.replace('/', '--')}").is_dir()
    rc, verified = run_json(
        "verify", PROFILE, "--lock", str(lock), env={"HF_HOME": str(root / "data2" / "huggingface")}
    )
    assert rc == 0 and verified["ok"], verified

    # With the hub gone, a re-run finds everything done and says so: nothing needs a network.
    setup_world["hub"].stop()
    rc, again = run_json("setup", PROFILE, "--env", str(env1), *TORCH, timeout=600)
    assert rc == 0, again
    assert stages(again) == {
        "check": "done",
        "lock": "skipped",
        "env": "skipped",
        "weights": "skipped",
        "fixes": "done",  # a cheap check: the file is still the patched one
        "smoke": "skipped",
    }
    assert again["outputs"]["fixes"][0]["action"] == "already-patched"
    # --force redoes the stage named, still offline.
    rc, forced = run_json("setup", PROFILE, "--env", str(env1), "--force", "smoke", timeout=600)
    assert rc == 0 and stages(forced)["smoke"] == "done"
    assert forced["outputs"]["smoke"]["answer"] == smoke["answer"]  # same weights, greedy


def _state(env: Path) -> dict:
    path = env.parent / f".{env.name}.provision-setup.json"
    return json.loads(path.read_text()) if path.exists() else {"stages": {}}


def test_kill_during_the_download_then_resume(setup_world):
    hub, root = setup_world["hub"], setup_world["root"]
    env = root / "envs" / "killed"
    hub.fault("*.safetensors", throttle=20_000)  # ~0.4 MB of weights: 20 s at this rate
    cmd = [sys.executable, "-m", "provision", "setup", PROFILE, "--env", str(env), *TORCH]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 900
    try:
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if _state(env)["stages"].get("env", {}).get("status") == "done":
                partial = hub.bytes_for("*.safetensors")
                if partial > 40_000:
                    break
            assert proc.poll() is None, "setup ended before it could be killed"
        else:
            pytest.fail("the download never started")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    hub.wait_idle()
    sent_before = hub.bytes_for("*.safetensors")
    hub.clear_faults()
    hub.reset_counters()
    rc, report = run_json("setup", PROFILE, "--env", str(env), *TORCH, timeout=1800)
    assert rc == 0, report
    done = stages(report)
    assert done["env"] == "skipped" and done["lock"] == "skipped"
    assert done["weights"] == "done" and done["smoke"] == "done"
    size = next(
        f["size"]
        for f in report["outputs"]["weights"]["files"]
        if f["path"].endswith(".safetensors")
    )
    # Only what the killed run had not received crosses the wire again.
    assert hub.bytes_for("*.safetensors") <= size - sent_before + 64 * 1024


def test_bad_input_one_message_each(setup_world, tmp_path):
    root = setup_world["root"]
    a_file = root / "not-a-folder"
    a_file.write_text("x")
    proc = run_cli("setup", PROFILE, "--env", str(a_file), *TORCH)
    assert proc.returncode == 2 and "is a file, not a folder" in proc.stderr

    proc = run_cli("setup", PROFILE, "--force", "everything", *TORCH)
    assert proc.returncode == 2 and "no such stage" in proc.stderr

    proc = run_cli("setup", PROFILE, "--from-lock", str(root / "pylock.missing.toml"))
    assert proc.returncode == 2 and "no such file" in proc.stderr

    # A lock made for another profile is refused before anything is installed.
    write_profile(root / "profiles", name="other-tiny", repo="tiny-org/other")
    other_lock = root / "pylock.other.toml"
    rc, _ = run_json("lock", "other-tiny", "-o", str(other_lock), *TORCH, timeout=600)
    assert rc == 0
    proc = run_cli("setup", PROFILE, "--from-lock", str(other_lock), "--env", str(root / "e"))
    assert proc.returncode == 2 and "made for profile 'other-tiny'" in proc.stderr
    assert "Traceback" not in proc.stderr

    # A lock for another Python: the env stage says which and how to fix it.
    py_lock = root / "pylock.py312.toml"
    rc, _ = run_json("lock", PROFILE, "-o", str(py_lock), "--python", "3.12", *TORCH, timeout=600)
    if rc == 0:  # torch 2.13.0+cpu exists here only for cp311: 3.12 cannot even be locked
        proc = run_cli("setup", PROFILE, "--from-lock", str(py_lock), "--env", str(root / "p"))
        assert proc.returncode == 2 and "3.12" in proc.stderr
    else:
        proc = run_cli("lock", PROFILE, "-o", str(py_lock), "--python", "3.12", *TORCH)
        assert proc.returncode == 2 and "3.12" in proc.stderr


def test_smoke_failure_stops_setup_with_the_model_s_error(setup_world, tiny_llava_folder, tmp_path):
    hub, root = setup_world["hub"], setup_world["root"]
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in tiny_llava_folder.iterdir():
        if item.is_file():
            (broken / item.name).write_bytes(item.read_bytes())
    config = json.loads((broken / "config.json").read_text())
    config["text_config"]["hidden_size"] = config["text_config"]["hidden_size"] * 2
    (broken / "config.json").write_text(json.dumps(config))
    hub.add_repo("tiny-org/broken-llava", broken)
    write_profile(root / "profiles", name="broken-llava", repo="tiny-org/broken-llava")
    env = root / "envs" / "broken"
    proc = run_cli("setup", "broken-llava", "--env", str(env), *TORCH, timeout=1800)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Smoke inference of broken-llava failed" in proc.stderr
    state = _state(env)["stages"]
    assert state["weights"]["status"] == "done" and state["smoke"]["status"] == "failed"
    assert os.path.isdir(env / "bin")
    # Under --json the failure carries the stage table too: what ran, what was skipped.
    # It is the envelope's result (ok false), the error beside it.
    rc, failed = run_envelope("setup", "broken-llava", "--env", str(env), *TORCH, timeout=1800)
    assert rc == 1 and failed["ok"] is False and failed["command"] == "setup"
    assert "Smoke inference of broken-llava failed" in failed["error"]["message"]
    done = stages(failed["result"])
    assert done["weights"] == "skipped" and done["smoke"] == "failed"


def test_a_hub_cache_the_user_set_is_where_weights_go_and_where_the_smoke_looks(
    setup_world, tmp_path
):
    """HF_HUB_CACHE alone (no HF_HOME) is kept: the download and the smoke agree on it.
    The machine's registry of environments is damaged: the setup still succeeds (issue 11)."""
    root = setup_world["root"]
    cache = tmp_path / "my-hub-cache"
    registry = root / "data" / "envs" / "registry.json"
    registry.parent.mkdir(parents=True, exist_ok=True)
    registry.write_text("not json at all")
    rc, report = run_json(
        "setup", PROFILE, "--env", str(root / "envs" / "own-cache"), *TORCH,
        env={"HF_HUB_CACHE": str(cache)}, timeout=1800,
    )  # fmt: skip
    assert rc == 0, report
    assert stages(report)["smoke"] == "done"
    assert len(report["notes"]) == 1 and "registry.json.damaged-" in report["notes"][0]
    assert json.loads(registry.read_text())["environments"]  # a new registry, with this env
    assert list(cache.glob(f"models--{REPO.replace('/', '--')}/snapshots/*/config.json"))


def test_a_damaged_registry_neither_fails_a_setup_nor_hides_a_stage_s_error(setup_world, tmp_path):
    """The registry of environments is a side record: damaged, it is moved aside with a note;
    it never turns a stage's own error into "registry damaged" (issue 11, item 10)."""
    root = setup_world["root"]
    registry = root / "data" / "envs" / "registry.json"
    registry.parent.mkdir(parents=True, exist_ok=True)
    registry.write_text('{"environments": {"/x": ')  # cut short
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    env = root / "envs" / "no-torch"
    # No torch in that folder and no index: the lock stage fails with uv's own reason.
    proc = run_cli("setup", PROFILE, "--env", str(env), "--torch-index", str(empty), timeout=600)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "torch" in proc.stderr and "damaged" not in proc.stderr
    assert "registry.json.damaged-" in proc.stdout  # the note, under the stage table
    (aside,) = registry.parent.glob("registry.json.damaged-*")
    assert aside.read_text() == '{"environments": {"/x": '
    entry = json.loads(registry.read_text())["environments"][str(env)]
    assert entry["status"] == "failed: lock"
