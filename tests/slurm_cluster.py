"""A real one-node Slurm cluster for tests: munged, slurmctld and slurmd on 127.0.0.1.

:func:`local_cluster` installs Debian's ``slurm-wlm`` and ``munge`` when they are missing (as
root, with apt-get), writes a minimal ``slurm.conf`` in a scratch folder (16 CPUs declared, so
array tasks share the real cores), starts the three daemons in the foreground as child
processes, waits until the node is idle, and yields the environment clients need (``SLURM_CONF``).
Every daemon it started is stopped by its PID afterwards. :class:`Unavailable` says why a machine
cannot run it (no root, no apt-get, the install failed), for a clear skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("slurmctld", "slurmd", "munged")


class Unavailable(Exception):
    """This machine cannot run a local Slurm (the message says why)."""


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")


def ensure_installed() -> None:
    """Install slurm-wlm and munge with apt-get unless present. Raises Unavailable."""
    if all(_which(name) for name in (*DAEMONS, "sbatch", "squeue", "sinfo")):
        return
    if os.geteuid() != 0:
        raise Unavailable("slurm-wlm is not installed and installing it needs root")
    apt = _which("apt-get")
    if apt is None:
        raise Unavailable("slurm-wlm is not installed and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "-q", *PACKAGES]
    done = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run([apt, "update", "-q"], env=env, capture_output=True, check=False)
        done = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise Unavailable(f"apt-get install {' '.join(PACKAGES)} failed: {done.stderr[-500:]}")


def _conf(scratch: Path, node: str) -> str:
    return f"""ClusterName=local
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={scratch}/state
SlurmdSpoolDir={scratch}/spool
SlurmctldPidFile={scratch}/slurmctld.pid
SlurmdPidFile={scratch}/slurmd.pid
SlurmctldLogFile={scratch}/slurmctld.log
SlurmdLogFile={scratch}/slurmd.log
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SchedulerParameters=sched_interval=1
SlurmdParameters=config_overrides
NodeName={node} NodeAddr=127.0.0.1 CPUs=16 RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def local_cluster(scratch: Path) -> Iterator[dict[str, str]]:
    """A running one-node cluster; yields the environment for sbatch/squeue/sinfo."""
    ensure_installed()
    node = socket.gethostname().split(".")[0]
    for folder in ("state", "spool"):
        (scratch / folder).mkdir(parents=True, exist_ok=True)
    conf = scratch / "slurm.conf"
    conf.write_text(_conf(scratch, node))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    # munged at its default socket, where slurmctld, slurmd and the clients look for it.
    run_dir = Path("/run/munge")
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(run_dir, "munge", "munge")
    socket_path = run_dir / "munge.socket.2"
    started: list[subprocess.Popen[bytes]] = []
    try:
        munged = subprocess.Popen(
            [
                *("setpriv", "--reuid=munge", "--regid=munge", "--init-groups"),
                _which("munged") or "munged",
                "--foreground",
                "--force",  # a socket left by a killed munged is replaced
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(munged)
        _wait(lambda: socket_path.exists(), "munged to open its socket", munged)
        for daemon in ("slurmctld", "slurmd"):
            process = subprocess.Popen(
                [_which(daemon) or daemon, "-D", "-f", str(conf)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            started.append(process)
        _wait(lambda: _node_state(env) == "idle", "the Slurm node to be idle", *started)
        yield env
    finally:
        for process in reversed(started):
            _stop(process)


def _node_state(env: dict[str, str]) -> str:
    done = subprocess.run(
        ["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, check=False
    )
    return done.stdout.strip()


def _wait(ready: object, what: str, *processes: subprocess.Popen[bytes]) -> None:
    assert callable(ready)
    deadline = time.monotonic() + 60
    while not ready():
        for process in processes:
            if process.poll() is not None:
                raise Unavailable(f"{process.args[0]} exited ({process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise Unavailable(f"timed out waiting for {what}")
        time.sleep(0.2)


def wait_for_job(job_id: str, env: dict[str, str], timeout: float = 600) -> None:
    """Poll squeue until job ``job_id`` (all its array tasks) has left the queue."""
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(
            ["squeue", "-h", "-j", job_id], env=env, capture_output=True, text=True, check=False
        )
        if done.returncode == 0 and not done.stdout.strip():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"Slurm job {job_id} still queued after {timeout:.0f} s")
        time.sleep(0.5)
