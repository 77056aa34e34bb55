"""Ctrl-C stops a download at once and keeps the partial file (issue 11, item 5: SIGINT used to
wait for the whole file, then exit 130 without a word)."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys

from tests.cli_helpers import invoke_json
from tests.hub import helpers

SIZE = 8_000_000


def test_sigint_stops_the_transfer_and_keeps_the_partial(hub, tmp_path, hub_env):
    folder = helpers.make_repo(tmp_path / "src" / "big", {"model.safetensors": SIZE})
    hub.add_repo("org/big", folder)
    helpers.write_profile(tmp_path / "profiles", "big", "org/big")
    hub.fault("model.safetensors", throttle=400_000)  # 20 s for the whole file
    proc = subprocess.Popen(
        [sys.executable, "-m", "provision", "download", "big", "--source", hub.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sha = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    partial = tmp_path / "hf" / "hub" / "models--org--big" / "blobs" / f"{sha}.provision-partial"
    helpers.wait_for(lambda: partial.exists() and partial.stat().st_size > 500_000, 60)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    hub.wait_idle()
    assert proc.returncode == 130, err
    assert "Interrupted" in err and "kept" in err, err
    kept = partial.stat().st_size
    # It stopped, rather than finishing the file first.
    assert kept < SIZE and hub.bytes_for("org/big/model.safetensors") < SIZE

    hub.clear_faults()
    hub.reset_counters()
    rc, out = invoke_json("download", "big", "--source", hub.url)
    assert rc == 0, out
    assert hub.bytes_for("org/big/model.safetensors") == SIZE - kept
