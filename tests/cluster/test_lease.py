"""The lease that guards a shared environment across nodes (provision/cluster/lease.py): mutual
exclusion between real processes, stale holders broken, a live one never, a lock that cannot be
taken said so with nothing changed, and a holder that lost its lease told so."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provision.cluster.lease import Lease, LeaseTimeout, lease
from provision.errors import ProvisionError


def _worker(path: str, counter: str, rounds: int) -> None:
    for _ in range(rounds):
        with lease(Path(path), timeout=60, poll=0.01, heartbeat=1):
            value = int(Path(counter).read_text())
            time.sleep(0.002)  # a read-modify-write that loses updates without the lock
            Path(counter).write_text(str(value + 1))


def test_processes_take_turns(tmp_path):
    counter = tmp_path / "counter"
    counter.write_text("0")
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(str(tmp_path / "l.lease"), str(counter), 25))
        for _ in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert counter.read_text() == "75"
    assert not (tmp_path / "l.lease").exists()


def test_a_killed_holder_on_this_host_is_broken_at_once(tmp_path):
    path = tmp_path / "l.lease"
    code = (
        "import time; from pathlib import Path; from provision.cluster.lease import Lease\n"
        f"Lease(Path({str(path)!r}), node='n1', job='7').acquire(); print('held', flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    taken = Lease(path, node="n2", stale_after=3600)  # the heartbeat rule alone would wait an hour
    started = time.monotonic()
    taken.acquire(timeout=10)
    assert time.monotonic() - started < 5
    assert [b["node"] for b in taken.broke] == ["n1"] and taken.broke[0]["job"] == "7"
    taken.release()


def _foreign(path: Path, token: str = "abc123", beat: int = 3) -> None:
    """A lease held from another machine (its pid means nothing here)."""
    path.mkdir()
    owner = {"token": token, "node": "n9", "host": "elsewhere", "pid": 1, "job": "5", "beat": beat}
    (path / "owner.json").write_text(json.dumps(owner))


def test_a_silent_holder_elsewhere_is_broken_after_stale_after(tmp_path):
    path = tmp_path / "l.lease"
    _foreign(path)
    taken = Lease(path, node="n1", stale_after=1.0, poll=0.1)
    started = time.monotonic()
    taken.acquire(timeout=30)
    assert 1.0 <= time.monotonic() - started < 10
    assert taken.broke[0]["node"] == "n9"
    assert (tmp_path / "l.lease.stale-abc123").is_dir()  # the tombstone stays a while
    taken.release()


def test_a_beating_holder_is_never_broken_and_a_timeout_changes_nothing(tmp_path):
    path = tmp_path / "l.lease"
    holder = Lease(path, node="n1", heartbeat=0.2)
    holder.acquire()
    # On another host: only the heartbeat tells whether it is alive.
    data = json.loads((path / "owner.json").read_text())
    with pytest.raises(LeaseTimeout) as err:
        waiter = Lease(path, node="n2", stale_after=1.0, poll=0.1)
        waiter._stale = lambda h, unchanged: unchanged >= waiter.stale_after  # type: ignore[method-assign]
        waiter.acquire(timeout=2.5)
    assert "held by node n1" in err.value.message and "Nothing was changed" in err.value.message
    assert json.loads((path / "owner.json").read_text())["token"] == data["token"]
    assert not holder.lost
    holder.release()
    assert not path.exists()


def test_a_second_breaker_cannot_move_the_new_holder_s_lease(tmp_path):
    path = tmp_path / "l.lease"
    _foreign(path, token="old1")
    stale_view = json.loads((path / "owner.json").read_text())
    first = Lease(path, node="n1")
    assert first._break(stale_view)  # n1 breaks the stale lease...
    first.acquire(timeout=5)  # ...and takes a new one
    late = Lease(path, node="n2")
    assert not late._break(stale_view)  # n2 acted on the same old view: refused
    assert json.loads((path / "owner.json").read_text())["token"] == first.token
    first.release()


def test_a_holder_whose_lease_was_taken_over_is_told(tmp_path):
    path = tmp_path / "l.lease"
    holder = Lease(path, node="n1", heartbeat=0.1)
    holder.acquire()
    os.rename(path, tmp_path / "moved")  # what a waiter does to a holder silent too long
    path.mkdir()
    (path / "owner.json").write_text(json.dumps({"token": "other", "node": "n2"}))
    deadline = time.monotonic() + 5
    while not holder.lost and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(ProvisionError, match="taken over"):
        holder.check()
    holder.release()  # leaves the other holder's lease alone
    assert json.loads((path / "owner.json").read_text())["token"] == "other"


def test_an_unwritable_shared_dir_is_one_message(read_only):
    with pytest.raises(ProvisionError) as err:
        Lease(read_only / "l.lease").acquire(timeout=1)
    assert "Cannot take the lock" in err.value.message and "--shared-dir" in (err.value.hint or "")
