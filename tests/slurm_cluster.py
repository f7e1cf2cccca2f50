"""A real single-node Slurm for the test session (pytest fixture ``slurm``).

Follows /work/shared/notes/local-slurm.md: munged, then slurmctld + slurmd started by hand
with a slurm.conf in a fresh private folder (fresh StateSaveLocation, so job ids restart at
1 and nothing leaks between runs), polled with ``sinfo`` until the node is idle. When
Slurm is not installed and we are root with apt-get (CI: Debian 12 as root), the packages
are installed first (about a minute); otherwise the tests are skipped with the reason.

Use it from a test module with ``from slurm_cluster import slurm  # noqa: F401`` (the
tests folder is on sys.path) and take ``slurm`` as an argument. While the fixture is up,
``os.environ["SLURM_CONF"]`` points at the private slurm.conf, so ``sbatch`` run by the
code under test, and the jobs it submits (``--export=ALL``), talk to this cluster.
Teardown cancels what is still queued and kills the daemons by the PIDs in their pid
files, never by name.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
SBIN = Path("/usr/sbin")
MUNGE_RUN = Path("/run/munge")
MUNGE_PIDFILE = MUNGE_RUN / "munged.pid"
INSTALL_TIMEOUT_S = 900
START_TIMEOUT_S = 60


@dataclass
class SlurmCluster:
    """What a test needs: the private config and the environment to run Slurm tools in."""

    folder: Path
    conf: Path
    env: dict[str, str]
    node: str

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a Slurm client command (squeue, scancel, ...) against this cluster."""
        return subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, check=check, timeout=60)

    def queued(self) -> list[dict[str, str]]:
        """Every job still in the queue, one entry per array task: id, array job, task, state, reason."""
        out = self.run("squeue", "-h", "--array", "-o", "%i|%F|%K|%T|%r").stdout
        keys = ("id", "array_job", "task", "state", "reason")
        return [dict(zip(keys, line.split("|"))) for line in out.splitlines() if line.strip()]

    def wait_until(self, done: Callable[[list[dict[str, str]]], bool], timeout: float, what: str) -> None:
        """Poll the queue (``sacct`` is unavailable without accounting) until ``done(queue)``."""
        deadline = time.monotonic() + timeout
        while True:
            queue = self.queued()
            if done(queue):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; queue: {queue}\n{self.log_tail()}")
            time.sleep(0.5)

    def wait_gone(self, job_ids: list[str], timeout: float = 120) -> None:
        """Wait until none of ``job_ids`` (plain or array job ids) is queued or running."""
        ids = {str(j) for j in job_ids}
        self.wait_until(lambda q: not any(j["array_job"] in ids or j["id"] in ids for j in q), timeout, f"jobs {sorted(ids)} to leave the queue")

    def log_tail(self, lines: int = 30) -> str:
        """The end of the daemons' logs, for failure messages."""
        parts = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = self.folder / "log" / name
            if path.is_file():
                parts.append(f"--- {path} (tail)\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(parts)


def installed() -> bool:
    return bool(shutil.which("sbatch")) and all((SBIN / d).is_file() for d in ("slurmctld", "slurmd", "munged"))


def install_reason() -> str | None:
    """Install Slurm with apt-get when we may; the reason to skip when it is missing and we may not."""
    if installed():
        return None
    if os.geteuid() != 0:
        return "Slurm is not installed (no sbatch/slurmctld/slurmd/munged) and installing it needs root"
    if not shutil.which("apt-get"):
        return "Slurm is not installed and there is no apt-get to install it with"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]):
        try:
            # policy-rc.d may deny starting the services during install: expected, we start them by hand.
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return f"'{' '.join(cmd)}' took more than {INSTALL_TIMEOUT_S}s"
        if proc.returncode != 0:
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
            return f"'{' '.join(cmd)}' failed (exit {proc.returncode}): {tail}"
    return None if installed() else f"apt-get installed {' '.join(PACKAGES)} but sbatch/slurmctld/slurmd/munged are still missing"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def stop_pidfile(pidfile: Path, timeout: float = 15) -> None:
    """SIGTERM the daemon named by ``pidfile``, SIGKILL it if it lingers."""
    pid = read_pid(pidfile)
    if pid is None or not alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)


def munge_works() -> bool:
    try:
        cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        if cred.returncode != 0:
            return False
        return subprocess.run(["unmunge"], input=cred.stdout, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def start_munge() -> bool:
    """Start munged unless one already answers; True when we started it (and must stop it)."""
    if munge_works():
        return False
    subprocess.run(["install", "-d", "-o", "munge", "-g", "munge", "-m", "0755", str(MUNGE_RUN)], check=True)
    proc = subprocess.run(["runuser", "-u", "munge", "--", str(SBIN / "munged")], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"munged failed to start: {proc.stderr.strip()}")
    deadline = time.monotonic() + 10
    while not munge_works():
        if time.monotonic() > deadline:
            raise RuntimeError("munged started but 'munge -n | unmunge' still fails")
        time.sleep(0.1)
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def write_conf(folder: Path, node: str) -> Path:
    """The notes' minimal slurm.conf, all state in ``folder``; private ports so a leftover cluster cannot interfere."""
    for sub in ("state", "spool", "log"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    cpus = min(2, os.cpu_count() or 1)
    ctld_port, slurmd_port = free_port(), free_port()
    text = f"""\
ClusterName=ci
SlurmctldHost={node}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/log/slurmctld.log
SlurmdLogFile={folder}/log/slurmd.log
NodeName={node} CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
    conf = folder / "slurm.conf"
    conf.write_text(text)
    return conf


def wait_idle(cluster: SlurmCluster) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    state = ""
    while time.monotonic() < deadline:
        proc = cluster.run("sinfo", "-h", "-o", "%t", check=False)
        state = proc.stdout.strip()
        if state == "idle":
            return
        time.sleep(0.2)
    raise RuntimeError(f"the Slurm node did not become idle in {START_TIMEOUT_S}s (sinfo: {state!r})\n{cluster.log_tail()}")


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A running single-node Slurm; skips the test when Slurm cannot be installed here."""
    reason = install_reason()
    if reason:
        pytest.skip(f"no local Slurm: {reason}")
    if os.geteuid() != 0:
        pytest.skip("no local Slurm: starting slurmctld/slurmd as configured (SlurmUser=root) needs root")
    # A short path: slurmd puts unix sockets (limit ~108 bytes) under SlurmdSpoolDir.
    folder = tmp_path_factory.mktemp("slurm")
    if len(str(folder)) > 60:
        folder = Path(__import__("tempfile").mkdtemp(prefix="reid-slurm-"))
    node = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()
    conf = write_conf(folder, node)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = SlurmCluster(folder=folder, conf=conf, env=env, node=node)
    old_conf = os.environ.get("SLURM_CONF")
    started_munge = False
    try:
        started_munge = start_munge()
        for daemon in ("slurmctld", "slurmd"):
            proc = subprocess.run([str(SBIN / daemon)], env=env, capture_output=True, text=True, timeout=60)
            if proc.returncode != 0:
                raise RuntimeError(f"{daemon} failed to start (exit {proc.returncode}): {proc.stderr.strip()}\n{cluster.log_tail()}")
        wait_idle(cluster)
        os.environ["SLURM_CONF"] = str(conf)
        yield cluster
    finally:
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
        ctld = read_pid(folder / "slurmctld.pid")
        if ctld is not None and alive(ctld):
            try:  # leave no job steps behind on the node
                left = [j["id"] for j in cluster.queued()]
                if left:
                    cluster.run("scancel", *left, check=False)
            except (subprocess.SubprocessError, OSError):
                pass
        stop_pidfile(folder / "slurmd.pid")
        stop_pidfile(folder / "slurmctld.pid")
        if started_munge:
            stop_pidfile(MUNGE_PIDFILE)
