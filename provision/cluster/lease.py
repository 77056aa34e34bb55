"""A lock that holds on a shared file system (NFS included) without lockd: a lease directory.

Why not fcntl/flock (what `provision.atomic.file_lock` uses on one machine): on NFSv3 those go
through the lock manager (lockd/statd); a client mounted with `nolock`, or a server without lockd,
either fails them (ENOLCK) or keeps them local to one client, where two nodes both "hold" the lock.
What is atomic on every NFS version and on local file systems is the server's `mkdir`: exactly one
client creates the directory, the others get EEXIST. So:

- take: `mkdir LEASE` ; on success write LEASE/owner.json (node, host, pid, job, a random token).
- hold: a thread rewrites owner.json every `heartbeat` seconds with a beat counter + 1.
- wait: another node reads owner.json; the lease is stale when its holder is a dead process on
  this same host, or when the beat has not changed for `stale_after` seconds of the waiter's
  own clock (no clocks are compared between machines, so clock skew does not matter).
- break a stale lease: `rename(LEASE, LEASE.stale-<holder's token>)`, atomic on NFS. Two waiters
  breaking the same stale lease race to the same name: the second rename fails (the tombstone is
  a non-empty directory), so it can never move a fresh lease someone else took in between.
- release: rename to LEASE.released-<token>, then remove it.
- a lease that cannot be taken within `timeout` raises LeaseTimeout naming the holder; nothing is
  changed. A holder whose lease was broken (it stopped beating for `stale_after`) sees `lost` and
  stops at its next stage rather than carry on unprotected.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.atomic import atomic_write_text
from provision.errors import ProvisionError

OWNER = "owner.json"


class LeaseTimeout(ProvisionError):
    """The lease could not be taken in time; nothing was changed."""

    code = "lease_timeout"


def _pid_alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    state = next((line.split()[1] for line in status.splitlines() if line.startswith("State:")), "")
    return state != "Z"


@dataclass
class Lease:
    path: Path
    node: str = field(default_factory=lambda: socket.gethostname())
    job: str = ""
    heartbeat: float = 5.0
    stale_after: float = 60.0
    poll: float = 0.5
    token: str = field(default_factory=lambda: secrets.token_hex(8))
    held: bool = False
    lost: bool = False
    waited: float = 0.0
    broke: list[dict[str, Any]] = field(default_factory=list)  # stale holders this one removed
    last_holder: dict[str, Any] | None = None  # the last holder seen while waiting
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _beat: int = 0

    # -- taking -------------------------------------------------------------------------------
    def acquire(self, timeout: float = 3600.0) -> None:
        self.path = Path(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ProvisionError(
                f"Cannot make {self.path.parent} for the lock: {exc.strerror}.",
                "--shared-dir must be a folder every node can write.",
            ) from exc
        started = time.monotonic()
        seen: tuple[str, float] | None = None  # (owner.json text, when it last changed)
        while True:
            try:
                os.mkdir(self.path)
            except FileExistsError:
                pass
            except OSError as exc:
                raise ProvisionError(
                    f"Cannot take the lock {self.path}: {exc.strerror}.",
                    "--shared-dir must be a folder every node can write.",
                ) from exc
            else:
                self._own()
                self.waited = time.monotonic() - started
                return
            text = self._read_owner_text()
            now = time.monotonic()
            if seen is None or seen[0] != text:
                seen = (text, now)
            holder = self._parse(text)
            self.last_holder = holder
            if self._stale(holder, now - seen[1]) and self._break(holder):
                seen = None
                continue
            if now - started >= timeout:
                raise LeaseTimeout(
                    f"Waited {timeout:.0f} s for the lock {self.path}: {describe(holder)}. "
                    "Nothing was changed.",
                    "Wait for that job to end, or if it is gone and its node unreachable, "
                    f"remove {self.path} (it is broken by itself {self.stale_after:.0f} s after "
                    "its holder stops).",
                )
            time.sleep(self.poll)

    def _own(self) -> None:
        self.held, self.lost, self._beat = True, False, 0
        self._write_owner()
        self._stop.clear()
        self._thread = threading.Thread(target=self._beating, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def _owner(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "node": self.node,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "job": self.job,
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "beat": self._beat,
        }

    def _write_owner(self) -> None:
        atomic_write_text(self.path / OWNER, json.dumps(self._owner()) + "\n")

    def _beating(self) -> None:
        while not self._stop.wait(self.heartbeat):
            if self._parse(self._read_owner_text()).get("token") != self.token:
                self.lost = True  # broken by a waiter: this holder went quiet for too long
                return
            self._beat += 1
            try:
                self._write_owner()
            except OSError:
                self.lost = True
                return

    # -- waiting ------------------------------------------------------------------------------
    def _read_owner_text(self) -> str:
        try:
            return (self.path / OWNER).read_text()
        except OSError:
            return ""

    @staticmethod
    def _parse(text: str) -> dict[str, Any]:
        try:
            data = json.loads(text)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def _stale(self, holder: dict[str, Any], unchanged_for: float) -> bool:
        pid = holder.get("pid")
        here = holder.get("host") == socket.gethostname()
        if here and isinstance(pid, int) and not _pid_alive(pid):
            return True  # its process is gone from this very machine: no need to wait
        # No owner file (a holder killed between mkdir and writing it) counts the same way.
        return unchanged_for >= self.stale_after

    def _break(self, holder: dict[str, Any]) -> bool:
        """Move the stale lease aside under a name only that lease can have: its holder's token,
        or (no owner file) the directory's inode, which cannot be reused while the tombstone
        exists. True when this call moved it."""
        token = str(holder.get("token") or "")
        if not token.isalnum():
            try:
                token = f"ino{os.stat(self.path).st_ino}"
            except OSError:
                return False
        tomb = self.path.with_name(f"{self.path.name}.stale-{token}")
        try:
            os.rename(self.path, tomb)
        except OSError:
            return False  # someone else broke it first (or it was released): look again
        self.broke.append(holder)
        # Tombstones are kept a while so a late second breaker's rename fails; old ones go.
        for old in self.path.parent.glob(f"{self.path.name}.stale-*"):
            with contextlib.suppress(OSError):
                if time.time() - old.stat().st_mtime > 3600:
                    shutil.rmtree(old, ignore_errors=True)
        return True

    # -- letting go ---------------------------------------------------------------------------
    def release(self) -> None:
        if not self.held:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat + 5)
        self.held = False
        if self._parse(self._read_owner_text()).get("token") != self.token:
            self.lost = True
            return  # not ours any more: leave whatever is there alone
        gone = self.path.with_name(f"{self.path.name}.released-{self.token}")
        with contextlib.suppress(OSError):
            os.rename(self.path, gone)
            shutil.rmtree(gone, ignore_errors=True)

    def check(self) -> None:
        """Raise if the lease was broken under this holder (it stopped beating for too long)."""
        if self.lost:
            raise ProvisionError(
                f"The lock {self.path} was taken over while this node held it "
                f"(no heartbeat for {self.stale_after:.0f} s).",
                "Re-run the job; the stages done so far are kept.",
            )


def describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "held, and its holder has not written its name yet"
    job = f"job {holder['job']}, " if holder.get("job") else ""
    return (
        f"held by node {holder.get('node', '?')} ({job}pid {holder.get('pid', '?')} "
        f"on {holder.get('host', '?')}) since {holder.get('since', '?')}"
    )


@contextlib.contextmanager
def lease(path: Path, timeout: float = 3600.0, **kwargs: Any) -> Iterator[Lease]:
    taken = Lease(Path(path), **kwargs)
    taken.acquire(timeout)
    try:
        yield taken
    finally:
        taken.release()
