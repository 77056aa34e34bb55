"""provision.atomic.file_lock: flock(2) without the filelock package (issue 17: its import was
40-200 ms of every command that writes). It must exclude other processes and other threads."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from provision.atomic import file_lock

HOLD = """
import sys, time
from provision.atomic import file_lock
with file_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_another_process_holding_it_makes_us_wait(tmp_path: Path) -> None:
    lock = tmp_path / "sub" / "x.lock"  # its folder is created
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock), "1.5"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(TimeoutError, match="x.lock"), file_lock(lock, timeout=0.2):
            pass
        started = time.monotonic()
        with file_lock(lock):  # waits for the holder to finish
            waited = time.monotonic() - started
        assert waited > 0.3
    finally:
        holder.wait(timeout=30)
    assert lock.exists()


def test_threads_of_one_process_exclude_each_other(tmp_path: Path) -> None:
    lock = tmp_path / "t.lock"
    inside = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def first() -> None:
        with file_lock(lock):
            order.append("first in")
            inside.set()
            release.wait(10)
            order.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    assert inside.wait(10)
    with pytest.raises(TimeoutError), file_lock(lock, timeout=0.1):
        pass
    release.set()
    with file_lock(lock, timeout=10):
        order.append("second in")
    thread.join()
    assert order == ["first in", "first out", "second in"]


def test_the_lock_is_released_when_the_block_raises(tmp_path: Path) -> None:
    lock = tmp_path / "r.lock"
    with pytest.raises(ValueError), file_lock(lock):
        raise ValueError("inside")
    with file_lock(lock, timeout=0):
        pass
