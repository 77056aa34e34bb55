"""Child processes that start their own session (so stopping them stops what they started), and
how provision stops them whatever ends its wait: a timeout, Ctrl-C, SIGTERM or SIGHUP.

A child in its own session is out of reach of a signal aimed at provision's process group (a
terminal's Ctrl-C, `timeout`, `kill -- -PGID`, a CI job's cancel, an ssh hang-up): provision must
pass the stop on itself, from a `finally` block that these signals would otherwise skip.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

STOP_GRACE_S = 3.0  # how long a group gets to exit on SIGTERM before SIGKILL


def stop_group(proc: subprocess.Popen[Any], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM `proc`'s group (a chance to free GPU memory, /dev/shm, half-written files), SIGKILL
    what is left after `grace` seconds, and reap `proc`."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        proc.wait()
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader when it ends: a zombie still counts as a group member
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@contextlib.contextmanager
def exit_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM/SIGHUP raise SystemExit, so the caller's `finally` runs."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
