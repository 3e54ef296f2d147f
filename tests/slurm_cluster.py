"""A real single-node SLURM cluster for the test suite: started and stopped by the tests.

Debian's ``slurmctld``, ``slurmd`` and ``munge`` (installed by ``make test``), configured in a
temporary directory and started by hand (no systemd here): detached, output to files, stopped
by PID at the end. The node advertises one fake GPU (``gres.conf`` ``File=/dev/null``) so rules
that ask for a GPU schedule and run, on the CPU. No accounting daemon: the Snakemake profile
checks job status with ``squeue``. The facts behind each setting are in the project's shared
notes (slurm-on-one-machine.md).
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

DAEMONS = ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "sinfo", "scontrol")
INSTALL_HINT = ("the SLURM tests need Debian's slurmctld, slurmd, slurm-client and munge: "
                "`make test` installs them (apt-get, as root)")


class ClusterError(RuntimeError):
    pass


def missing_binaries() -> list[str]:
    search = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
    return [name for name in DAEMONS if shutil.which(name, path=search) is None]


def _which(name: str) -> str:
    found = shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if found is None:
        raise ClusterError(f"{name} not found; {INSTALL_HINT}")
    return found


def _mem_mib() -> int:
    with open("/proc/meminfo") as handle:
        total_kib = int(next(line for line in handle if line.startswith("MemTotal")).split()[1])
    return total_kib // 1024 - 1024  # leave ~1 GiB to the system


def _start(command: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as sink:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)


def write_config(root: Path, cpus: int, mem_mib: int, gpus: int) -> Path:
    """slurm.conf + gres.conf for one node named localhost; returns slurm.conf."""
    if gpus not in (0, 1):
        raise ValueError("the test cluster fakes at most one GPU")
    for sub in ("state", "spool", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    conf = root / "slurm.conf"
    conf.write_text(f"""\
ClusterName=capmix
SlurmctldHost=localhost
SlurmUser=slurm
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/log/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
MailProg=/bin/true
ReturnToService=2
MinJobAge=3600
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mib} Gres=gpu:{gpus} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")
    # One fake GPU at most: a gres line needs a File=, and /dev/null stands for one device.
    (root / "gres.conf").write_text(
        "AutoDetect=off\n" + ("NodeName=localhost Name=gpu File=/dev/null\n" if gpus else ""))
    shutil.chown(root / "state", "slurm", "slurm")
    shutil.chown(root / "log", "slurm", "slurm")
    return conf


def _ensure_users() -> None:
    for user in ("munge", "slurm"):
        if subprocess.run(["id", user], capture_output=True).returncode != 0:
            raise ClusterError(f"user {user!r} does not exist; {INSTALL_HINT}")


@contextmanager
def slurm_cluster(root: Path, gpus: int = 1, timeout: float = 60.0) -> Iterator[dict[str, str]]:
    """Start munged, slurmctld and slurmd; yield the environment clients need; stop them."""
    if os.geteuid() != 0:
        raise ClusterError("starting SLURM daemons needs root")
    missing = missing_binaries()
    if missing:
        raise ClusterError(f"missing {', '.join(missing)}; {INSTALL_HINT}")
    _ensure_users()
    root.mkdir(parents=True, exist_ok=True)
    shutil.chown(root, "slurm", "slurm")
    os.chmod(root, 0o755)
    conf = write_config(root, os.cpu_count() or 1, _mem_mib(), gpus)
    # slurmctld runs as `slurm`: every parent of its state directory must let it through
    # (pytest's tmp_path is private to root, for one).
    if subprocess.run(["runuser", "-u", "slurm", "--", "test", "-w", str(root / "state")],
                      capture_output=True).returncode != 0:
        raise ClusterError(f"user slurm cannot write {root / 'state'}: put the cluster in a "
                           "directory every user can traverse (e.g. under /tmp, mode 755)")
    # Clients inside jobs read the default /etc/slurm/slurm.conf: Snakemake's jobstep executor
    # drops SLURM_* variables (SLURM_CONF included) before running a rule, as on a real
    # cluster, where the config is at its default place. Existing files are put back after.
    installed = _install_config(root)
    conf = SYSTEM_CONF_DIR / "slurm.conf"
    env = {**os.environ, "SLURM_CONF": str(conf)}
    processes: list[subprocess.Popen] = []
    try:
        run_munge = Path("/run/munge")
        run_munge.mkdir(parents=True, exist_ok=True)
        shutil.chown(run_munge, "munge", "munge")
        processes.append(_start(["runuser", "-u", "munge", "--", _which("munged"),
                                 "--foreground"], root / "munged.out"))
        _wait(lambda: subprocess.run(f"{_which('munge')} -n | {_which('unmunge')}",
                                     shell=True, capture_output=True).returncode == 0,
              timeout, "munge", root)
        processes.append(_start([_which("slurmctld"), "-D", "-c", "-f", str(conf)],
                                root / "slurmctld.out"))
        processes.append(_start([_which("slurmd"), "-D", "-N", "localhost", "-f", str(conf)],
                                root / "slurmd.out"))

        def node_idle() -> bool:
            shown = subprocess.run([_which("sinfo"), "-h", "-o", "%T"], env=env,
                                   capture_output=True, text=True)
            return shown.returncode == 0 and shown.stdout.strip() == "idle"

        _wait(node_idle, timeout, "the SLURM node (idle)", root)
        yield {"SLURM_CONF": str(conf)}
    finally:
        for proc in reversed(processes):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(processes):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        _restore_config(installed)


SYSTEM_CONF_DIR = Path("/etc/slurm")
CONF_FILES = ("slurm.conf", "gres.conf")


def _install_config(root: Path) -> dict[str, bytes | None]:
    """Copy the test cluster's config to /etc/slurm; return what was there before."""
    SYSTEM_CONF_DIR.mkdir(parents=True, exist_ok=True)
    before: dict[str, bytes | None] = {}
    for name in CONF_FILES:
        target = SYSTEM_CONF_DIR / name
        before[name] = target.read_bytes() if target.is_file() else None
        shutil.copyfile(root / name, target)
    return before


def _restore_config(before: dict[str, bytes | None]) -> None:
    for name, content in before.items():
        target = SYSTEM_CONF_DIR / name
        if content is None:
            target.unlink(missing_ok=True)
        else:
            target.write_bytes(content)


def _wait(ready, timeout: float, what: str, root: Path) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.5)
    logs = "".join(f"\n--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                   for p in sorted(root.glob("*.out")) + sorted((root / "log").glob("*.log")))
    raise ClusterError(f"{what} not ready after {timeout:.0f} s on {socket.gethostname()}"
                       f"{logs}")


def completed_jobs(root: Path) -> list[dict[str, str]]:
    """SLURM's job completion records (jobcomp/filetxt): one dict of key=value per job."""
    path = root / "log" / "jobcomp.txt"
    if not path.is_file():
        return []
    return [dict(item.split("=", 1) for item in line.split() if "=" in item)
            for line in path.read_text().splitlines() if line.strip()]
