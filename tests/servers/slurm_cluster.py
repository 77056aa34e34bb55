"""A real one-host Slurm cluster for the tests: munged, slurmctld and two slurmd (n1, n2).

The project's own version of ../shared/reference/slurm/one-host-slurm.sh (Debian bookworm's
slurm-wlm 22.05 and munge 0.5.15; see that folder's NOTES.md for the pitfalls this follows):

- Debian's build allows several slurmd per host (MULTIPLE_SLURMD), each `slurmd -D -N NAME` with
  its own Port=, spool dir and pid file (`%n` in slurm.conf).
- No cgroups here: proctrack/linuxproc and task/none.
- No systemd: /run/munge must be made before munged starts; munged runs as user munge.
- No TTY: every daemon runs under setsid with stdin from /dev/null.
- Job records vanish after MinJobAge: a poller treats "Invalid job id" as finished.

Differences from the reference script, so tests never touch the machine's own Slurm set-up:
the configuration lives in this cluster's folder and is named by SLURM_CONF (every Slurm command
and daemon reads it), the ports are free ones picked at start, and only the daemons started here
are stopped, by their process ids. A munged that already answers is used, not restarted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = {"slurmctld": "/usr/sbin/slurmctld", "slurmd": "/usr/sbin/slurmd"}
MUNGED = "/usr/sbin/munged"


class SlurmError(RuntimeError):
    pass


def _free_ports(count: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def _alive(pid: int) -> bool:
    """Running and not a zombie (`kill -0` succeeds on a zombie; NOTES.md item 6)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return not any(
        line.startswith("State:") and "Z" in line.split()[1] for line in status.splitlines()
    )


def _munge_works() -> bool:
    if not shutil.which("munge") or not shutil.which("unmunge"):
        return False
    cred = subprocess.run(["munge", "-n"], capture_output=True, stdin=subprocess.DEVNULL)
    if cred.returncode != 0:
        return False
    back = subprocess.run(["unmunge"], input=cred.stdout, capture_output=True)
    return back.returncode == 0


class SlurmCluster:
    """`with SlurmCluster(folder) as cluster:` -> cluster.env (SLURM_CONF) for Slurm commands."""

    def __init__(self, root: Path, nodes: tuple[str, ...] = ("n1", "n2")) -> None:
        self.root = Path(root)
        self.nodes = nodes
        self.conf = self.root / "slurm.conf"
        self.pids: dict[str, int] = {}
        self._procs: list[subprocess.Popen] = []
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    # -- start ------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> SlurmCluster:
        if os.geteuid() != 0:
            raise SlurmError("the one-host Slurm cluster needs root (CI runs as root)")
        for name, path in {**DAEMONS, "munged": MUNGED}.items():
            if not Path(path).exists():
                raise SlurmError(f"{name} is missing: apt-get install -y slurm-wlm munge")
        self.root.mkdir(parents=True, exist_ok=True)
        self._munge()
        self._write_conf()
        self._spawn("slurmctld", [DAEMONS["slurmctld"], "-D", "-f", str(self.conf)])
        self._wait(lambda: "UP" in self.run("scontrol", "ping", check=False).stdout, timeout)
        for node in self.nodes:
            (self.root / f"d-{node}").mkdir(exist_ok=True)
            self._spawn(f"slurmd-{node}", [DAEMONS["slurmd"], "-D", "-N", node])

        def idle() -> bool:
            out = self.run("sinfo", "-h", "-N", "-t", "idle", "-o", "%N", check=False).stdout
            return set(self.nodes) <= set(out.split())

        self._wait(idle, timeout)
        return self

    def _munge(self) -> None:
        if _munge_works():
            return
        key = Path("/etc/munge/munge.key")
        if not key.exists() or key.stat().st_size == 0:  # Debian's postinst normally makes it
            key.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["/usr/sbin/mungekey", "--create", "--force"], check=True)
            shutil.chown(key, "munge", "munge")
            key.chmod(0o400)
        # Normally made by systemd-tmpfiles; munged refuses to start without it.
        for folder in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
            subprocess.run(
                ["install", "-d", "-o", "munge", "-g", "munge", "-m", "0755", folder], check=True
            )
        pidfile = Path("/run/munge/munged.pid")
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()
        subprocess.run(
            ["runuser", "-u", "munge", "--", MUNGED], check=True, stdin=subprocess.DEVNULL
        )  # daemonizes itself and writes its pid file
        self._wait(lambda: pidfile.exists() and pidfile.read_text().strip() != "", 10)
        self.pids["munged"] = int(pidfile.read_text().strip())
        self._wait(_munge_works, 10)

    def _write_conf(self) -> None:
        host = socket.gethostname().split(".")[0]
        ctld_port, *node_ports = _free_ports(1 + len(self.nodes))
        mem_kib = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemAvailable:")
        )
        # RealMemory above what slurmd detects drains the node.
        mem = max(100, int(mem_kib / 1024 * 0.8 / len(self.nodes)))
        cpus = os.cpu_count() or 1
        r = self.root
        lines = [
            "# written by tests/servers/slurm_cluster.py",
            "ClusterName=provision-tests",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            "SlurmUser=root",
            "AuthType=auth/munge",
            "MpiDefault=none",
            "MailProg=/bin/true",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "ReturnToService=2",
            # A cancelled job's processes get SIGTERM, then SIGKILL this many seconds later.
            "KillWait=10",
            f"StateSaveLocation={r / 'ctld'}",
            f"SlurmdSpoolDir={r / 'd-%n'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={r / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'slurmd-%n.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
        ]
        for node, port in zip(self.nodes, node_ports, strict=True):
            lines.append(
                f"NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} "
                f"CPUs={cpus} RealMemory={mem} State=UNKNOWN"
            )
        lines.append("PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
        (r / "ctld").mkdir(exist_ok=True)
        self.conf.write_text("\n".join(lines) + "\n")

    def _spawn(self, name: str, argv: list[str]) -> None:
        out = open(self.root / f"{name}.out", "wb")  # noqa: SIM115 - the daemon keeps it
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,  # setsid: no TTY, its own session
        )
        out.close()
        self._procs.append(proc)
        self.pids[name] = proc.pid

    def _wait(self, ready, timeout: float) -> None:  # noqa: ANN001
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            dead = [p for p in self._procs if p.poll() is not None]
            if dead:
                break
            time.sleep(0.2)
        raise SlurmError(f"the one-host Slurm cluster did not come up:\n{self.logs()}")

    def logs(self, lines: int = 20) -> str:
        parts = []
        for path in sorted(self.root.glob("*.out")) + sorted(self.root.glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    # -- use --------------------------------------------------------------------------------
    def run(
        self, *argv: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            env=self.env,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise SlurmError(f"{' '.join(argv)}: rc {proc.returncode}\n{proc.stderr}")
        return proc

    def job_state(self, job_id: str) -> str:
        """PENDING, RUNNING, COMPLETED...; GONE once the record has aged out."""
        proc = self.run("scontrol", "show", "job", job_id, check=False)
        if proc.returncode != 0 and "Invalid job id" in proc.stderr:
            return "GONE"
        for word in proc.stdout.split():
            if word.startswith("JobState="):
                return word.split("=", 1)[1]
        return "UNKNOWN"

    def wait_gone(self, job_id: str, timeout: float = 120) -> str:
        """Wait until the job has ended (and its processes with it); its last state."""
        deadline = time.monotonic() + timeout
        state = self.job_state(job_id)
        while time.monotonic() < deadline:
            state = self.job_state(job_id)
            ended = state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "GONE")
            if ended and not self.run("squeue", "-h", "-j", job_id, check=False).stdout.strip():
                return state
            time.sleep(0.5)
        raise SlurmError(f"job {job_id} still {state} after {timeout} s")

    # -- stop -------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop the slurmd(s), then slurmctld, then munged if it was started here; by pid."""
        order = [k for k in self.pids if k.startswith("slurmd-")] + ["slurmctld", "munged"]
        for name in order:
            pid = self.pids.pop(name, None)
            if pid is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 15)
            deadline = time.monotonic() + 5
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
        for proc in self._procs:
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)

    def __enter__(self) -> SlurmCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
