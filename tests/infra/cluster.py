"""A private Slurm cluster for one test session: real slurmctld, slurmd, munged, and slurmdbd on
its own MariaDB, so that `sbatch`, `srun`, `squeue`, `scancel` and `sacct` all work.

One node by default, with this machine's CPUs and memory. `Cluster.start(nodes=2)` runs two
slurmd daemons on this one machine (Slurm's multiple-slurmd mode: `slurmd -N NODE` once per node,
each NodeName with its own Port=, `%n` in the slurmd pid, spool and log paths,
`SlurmdParameters=config_overrides`), each node claiming an equal share of the CPUs (at least
one) and of the memory, all at NodeAddr=127.0.0.1: enough for `sbatch -N2` and `srun` across
nodes (torchrun over loopback).

Nothing is shared with the machine or with another session: every daemon gets its own state,
spool and log directories under one temporary directory, its own free TCP port, its own MUNGE
key and socket (slurm.conf `AuthInfo=socket=...`) and its own MariaDB datadir, socket and port.
Client commands find this cluster through `SLURM_CONF` in `Cluster.env`.

    cluster = Cluster.start()          # waits until the node is idle and accounting answers
    two = Cluster.start(nodes=2)       # two fake nodes on this machine: two.nodes == [node0, node1]
    subprocess.run(["srun", "hostname"], env=cluster.env)
    cluster.stop()                     # scancel, then SIGTERM/SIGKILL every daemon by PID; rm -rf

Run `python tests/infra/cluster.py [--nodes N]` for an interactive shell on a fresh cluster.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd")
MARKER = "WHISPER_HPC_TEST_CLUSTER"  # in every daemon's environment, so stray slurmstepds can be found
TERMINAL_STATES = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
    "PREEMPTED", "BOOT_FAIL", "DEADLINE", "REVOKED",
}
PR_SET_PDEATHSIG = 1
# squeue reasons of a pending job that this cluster will never start
NEVER_RUNS = {"PartitionConfig", "BadConstraints", "PartitionNodeLimit", "PartitionTimeLimit", "InvalidAccount",
              "InvalidQOS", "DependencyNeverSatisfied", "ReqNodeNotAvail"}


class ClusterError(Exception):
    """A daemon that would not start; the message quotes the end of its log."""


def missing_programs() -> list[str]:
    """Daemons and tools this module needs that are not installed."""
    wanted = ("munged", "mariadbd", "mariadb-install-db", "mariadb", "slurmdbd", "slurmctld", "slurmd",
              "sbatch", "srun", "sacct", "scontrol")
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin"])
    return [name for name in wanted if shutil.which(name, path=search) is None]


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (held open together, so they cannot repeat)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def die_with_parent() -> None:
    """In a child before exec: get SIGTERM if the test process dies, so no daemon outlives it."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def node_resources() -> dict[str, str]:
    """What `slurmd -C` reports for this machine (CPUs, sockets, cores, memory)."""
    output = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"(\w+)=(\S+)", output.splitlines()[0]))


def node_shares(machine: dict[str, str], nodes: int, headroom_mb: int = 256) -> dict[str, str]:
    """The NodeName resources of each of `nodes` fake nodes on this machine: the machine itself for
    one node; else an equal share of its CPUs (at least 1, as one socket of single-thread cores)
    and of its memory below `headroom_mb`."""
    memory = int(machine.get("RealMemory", "4096")) - headroom_mb
    if nodes == 1:
        return {"CPUs": machine["CPUs"], "Boards": machine.get("Boards", "1"),
                "SocketsPerBoard": machine["SocketsPerBoard"], "CoresPerSocket": machine["CoresPerSocket"],
                "ThreadsPerCore": machine["ThreadsPerCore"], "RealMemory": str(memory)}
    cpus = max(1, int(machine["CPUs"]) // nodes)
    return {"CPUs": str(cpus), "Boards": "1", "SocketsPerBoard": "1", "CoresPerSocket": str(cpus),
            "ThreadsPerCore": "1", "RealMemory": str(max(256, memory // nodes))}


def terminate(process: subprocess.Popen | int, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds; by PID only."""
    pid = process.pid if isinstance(process, subprocess.Popen) else process
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if isinstance(process, subprocess.Popen):
            if process.poll() is not None:
                return
        elif not pid_alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if isinstance(process, subprocess.Popen):
        process.wait(timeout=10)


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def pids_with_marker(value: str) -> list[int]:
    """Processes whose environment carries MARKER=value (the daemons' orphaned slurmstepds)."""
    needle = f"{MARKER}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@dataclass
class Cluster:
    root: Path
    name: str
    node: str                      # the first node (the only one by default)
    ports: dict[str, int]          # slurmctld, slurmdbd, mariadb, slurmd (the first node's), each node's
    env: dict[str, str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    nodes: list[str] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    # ----- life cycle -------------------------------------------------------------------

    @classmethod
    def start(cls, parent: str | None = None, gpus: int = 1, timeout: float = 120.0, nodes: int = 1) -> "Cluster":
        """Write the configuration, start every daemon, and wait until every node is idle.
        `gpus`: fake GPUs per node; `nodes`: slurmd daemons on this machine, sharing its CPUs and memory."""
        if nodes < 1:
            raise ValueError(f"a cluster needs at least one node, not {nodes}")
        root = Path(tempfile.mkdtemp(prefix="whisper-slurm-", dir=parent))
        root.chmod(0o755)  # job steps run as root here, but slurmstepd must traverse to the spool
        numbers = free_ports(3 + nodes)
        ports = dict(zip(("slurmctld", "slurmdbd", "mariadb"), numbers))
        names = [f"wh{port}" for port in numbers[3:]]
        ports.update(zip(names, numbers[3:]), slurmd=numbers[3])  # slurmd: the first node's, as before
        tag = root.name.rsplit("-", 1)[-1].lower()
        cluster = cls(
            root=root,
            name=f"wh{re.sub(r'[^a-z0-9]', '', tag)}"[:20],
            node=names[0],
            ports=ports,
            env={},
            nodes=names,
        )
        cluster.env = cluster.client_environment()
        try:
            cluster.write_configuration(gpus)
            cluster.start_munge()
            cluster.start_mariadb()
            cluster.start_daemon("slurmdbd", ["slurmdbd", "-D"], ready=cluster.accounting_ready)
            cluster.start_daemon("slurmctld", ["slurmctld", "-D", "-i"], ready=cluster.controller_ready)
            for node in names:
                cluster.start_daemon(cluster.slurmd_name(node), ["slurmd", "-D", "-N", node],
                                     ready=lambda node=node: cluster.node_idle(node), timeout=timeout)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def slurmd_name(self, node: str) -> str:
        """The key of a node's slurmd in `processes` (and its log's name): slurmd with one node."""
        return "slurmd" if len(self.nodes) == 1 else f"slurmd-{node}"

    def stop(self) -> None:
        """Cancel every job, stop every daemon by PID (SIGTERM, then SIGKILL), remove the directory."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            self.run(["scancel", "--full", "--quiet", f"--user={os.getuid()}"], check=False)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self.active_jobs():
                time.sleep(0.3)
        slurmds = [self.slurmd_name(node) for node in self.nodes]
        for name in (*slurmds, "slurmctld", "slurmdbd", "mariadbd", "munged"):
            process = self.processes.pop(name, None)
            if process is not None:
                terminate(process)
        for pid in pids_with_marker(str(self.root)):  # slurmstepds that slurmd left behind
            terminate(pid, timeout=5)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- configuration ----------------------------------------------------------------

    def client_environment(self) -> dict[str, str]:
        """The caller's environment minus any Slurm job variables, plus this cluster's SLURM_CONF."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_"))}
        paths = env.get("PATH", "/usr/bin:/bin").split(os.pathsep)
        for extra in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"):
            if extra not in paths:
                paths.append(extra)
        env["PATH"] = os.pathsep.join(paths)
        env["SLURM_CONF"] = str(self.conf)
        return env

    def daemon_environment(self) -> dict[str, str]:
        return {**self.env, MARKER: str(self.root)}

    def write_configuration(self, gpus: int) -> None:
        for sub in ("etc", "state", "spool", "log", "run", "munge", "mysql/data", "mysql/run", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            (self.root / "spool" / node).mkdir()
        (self.root / "tmp").chmod(0o1777)
        share = node_shares(node_resources(), len(self.nodes))  # memory: headroom below what slurmd measures
        resources = " ".join(f"{name}={share[name]}" for name in
                             ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory"))
        socket_path = self.root / "munge" / "munge.socket"
        auth = f"AuthType=auth/munge\nAuthInfo=socket={socket_path}\n"
        gres = f"Gres=gpu:{gpus}" if gpus else ""
        host = socket.gethostname()
        node_lines = "".join(
            f"NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 Port={self.ports[node]} {resources} {gres} "
            "State=UNKNOWN\n" for node in self.nodes)
        several = len(self.nodes) > 1
        kind = f"{len(self.nodes)}-node" if several else "single-node"
        # Several slurmd on one machine: each claims its share (config_overrides), not what it measures.
        overrides = "SlurmdParameters=config_overrides\n" if several else ""
        files = {
            "slurm.conf": f"""\
# A private {kind} test cluster (tests/infra/cluster.py); removed when the session ends.
ClusterName={self.name}
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={self.ports['slurmctld']}
SlurmdPort={self.ports[self.node]}
SlurmUser=root
SlurmdUser=root
{auth}CredType=cred/munge
StateSaveLocation={self.root}/state
SlurmdSpoolDir={self.root}/spool/%n
SlurmctldPidFile={self.root}/run/slurmctld.pid
SlurmdPidFile={self.root}/run/slurmd-%n.pid
SlurmctldLogFile={self.root}/log/slurmctld.log
SlurmdLogFile={self.root}/log/slurmd-%n.log
{overrides}SlurmctldDebug=info
SlurmdDebug=info
TmpFS={self.root}/tmp
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
SchedulerType=sched/backfill
ReturnToService=2
KillWait=5
MinJobAge=600
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={self.ports['slurmdbd']}
# the MUNGE socket for talking to slurmdbd (slurm.conf(5), AccountingStoragePass)
AccountingStoragePass={socket_path}
AccountingStorageTRES=gres/gpu
GresTypes=gpu
{node_lines}PartitionName=debug Nodes={",".join(self.nodes)} Default=YES MaxTime=INFINITE State=UP
""",
            "gres.conf": "".join(f"NodeName={node} Name=gpu File=/dev/null\n" for node in self.nodes) if gpus else "",
            "slurmdbd.conf": f"""\
{auth}DbdHost=localhost
DbdPort={self.ports['slurmdbd']}
SlurmUser=root
PidFile={self.root}/run/slurmdbd.pid
LogFile={self.root}/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.ports['mariadb']}
StorageUser=root
StorageLoc=slurm_acct_db
""",
        }
        for name, text in files.items():
            path = self.root / "etc" / name
            path.write_text(text)
            path.chmod(0o600 if name == "slurmdbd.conf" else 0o644)  # slurmdbd refuses anything else

    # ----- daemons ----------------------------------------------------------------------

    def spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        log = open(self.root / "log" / f"{name}.out", "ab")
        process = subprocess.Popen(
            command, env=self.daemon_environment(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=self.root, start_new_session=True, preexec_fn=die_with_parent,
        )
        log.close()
        self.processes[name] = process
        return process

    def start_daemon(self, name: str, command: list[str], ready, timeout: float = 60.0) -> None:
        process = self.spawn(name, command)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ClusterError(f"{name} exited with {process.returncode}:\n{self.log_tail(name)}")
            if ready():
                return
            time.sleep(0.2)
        raise ClusterError(f"{name} not ready after {timeout:.0f} s:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 25) -> str:
        text = []
        for path in sorted((self.root / "log").glob(f"{name}*")):
            text += [f"== {path.name}"] + path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(text)

    def start_munge(self) -> None:
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        munge = self.root / "munge"
        self.start_daemon("munged", [
            "munged", "--foreground", "--force", f"--socket={munge}/munge.socket", f"--key-file={key}",
            f"--pid-file={munge}/munged.pid", f"--seed-file={munge}/munged.seed",
            f"--log-file={self.root}/log/munged.log",
        ], ready=lambda: (munge / "munge.socket").exists())

    def start_mariadb(self) -> None:
        data, run = self.root / "mysql" / "data", self.root / "mysql" / "run"
        install = subprocess.run(
            ["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            env=self.daemon_environment(), capture_output=True, text=True,
        )
        if install.returncode != 0:
            raise ClusterError(f"mariadb-install-db failed:\n{install.stdout[-2000:]}\n{install.stderr[-2000:]}")
        self.start_daemon("mariadbd", [
            "mariadbd", "--no-defaults", f"--datadir={data}", f"--socket={run}/mysqld.sock",
            f"--port={self.ports['mariadb']}", "--bind-address=127.0.0.1", f"--pid-file={run}/mysqld.pid",
            f"--log-error={self.root}/log/mariadbd.log", "--user=root", "--skip-name-resolve",
            "--skip-log-bin", "--innodb-buffer-pool-size=32M", "--innodb-log-file-size=16M",
            "--max-connections=50", f"--tmpdir={self.root}/tmp",
        ], ready=lambda: self.mysql_ready(run / "mysqld.sock"))
        # slurmdbd connects over TCP as root@127.0.0.1 (name resolution is off).
        self.mysql(run / "mysqld.sock", "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1';"
                   " GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;")

    def mysql(self, sock: Path, sql: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["mariadb", "--no-defaults", f"--socket={sock}", "-uroot", "-e", sql],
                              capture_output=True, text=True, check=check, timeout=30)

    def mysql_ready(self, sock: Path) -> bool:
        return sock.exists() and self.mysql(sock, "SELECT 1", check=False).returncode == 0

    # ----- readiness probes -------------------------------------------------------------

    def accounting_ready(self) -> bool:
        return self.run(["sacctmgr", "-n", "-P", "show", "cluster", "format=cluster"], check=False,
                        timeout=10).returncode == 0

    def controller_ready(self) -> bool:
        return self.run(["scontrol", "ping"], check=False, timeout=10).stdout.count("UP") > 0

    def node_idle(self, node: str | None = None) -> bool:
        state = self.run(["sinfo", "-h", "-N", "-o", "%T", "-n", node or self.node], check=False,
                         timeout=10).stdout.strip()
        return state == "idle"

    # ----- clients ----------------------------------------------------------------------

    def run(self, command: list[str], check: bool = True, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
        """Run a client command (sbatch, srun, squeue, ...) against this cluster."""
        kwargs.setdefault("env", self.env)
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
        if check and result.returncode != 0:
            raise ClusterError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def sbatch(self, script: str | Path, *args: str, options: list[str] | tuple[str, ...] = (),
               cwd: str | Path | None = None, env: dict | None = None) -> str:
        """Submit a batch script; returns the job id (for an array, the array's job id)."""
        result = self.run(["sbatch", "--parsable", *options, str(script), *args], cwd=cwd,
                          env={**self.env, **(env or {})})
        return result.stdout.strip().split(";")[0]

    def active_jobs(self) -> list[str]:
        result = self.run(["squeue", "-h", "-o", "%i"], check=False, timeout=10)
        return result.stdout.split() if result.returncode == 0 else []

    def job_states(self, jobid: str) -> dict[str, str]:
        """State of every job (array tasks included) under jobid, from accounting (sacct)."""
        result = self.run(["sacct", "-n", "-P", "-X", "-j", jobid, "-o", "JobID,State"], check=False, timeout=20)
        states = {}
        for line in result.stdout.splitlines():
            if "|" in line:
                job, state = line.split("|", 1)
                states[job] = state.split()[0] if state else ""  # "CANCELLED by 0" -> CANCELLED
        return states

    def wait(self, jobid: str, timeout: float = 300.0) -> str:
        """Wait until the job (every task, for an array) has ended; its final state from sacct.

        For an array, the states of all tasks are joined (e.g. "COMPLETED" or "COMPLETED,FAILED").
        """
        deadline = time.monotonic() + timeout
        while True:
            queued = self.run(["squeue", "-h", "-j", jobid, "-o", "%i|%T|%r"], check=False, timeout=20)
            hopeless = [line for line in queued.stdout.splitlines() if line.split("|")[-1] in NEVER_RUNS]
            if hopeless:
                raise ClusterError(f"job {jobid} can never run here: {hopeless[0]}")
            states = self.job_states(jobid)
            # A bracketed line is an array's not-yet-started tasks; once cancelled it is final.
            pending_tasks = any(
                re.match(rf"^{re.escape(jobid)}_\[", j) and s == "PENDING" for j, s in states.items())
            if not queued.stdout.strip() and states and not pending_tasks and all(
                    s in TERMINAL_STATES for s in states.values()):
                return ",".join(sorted(set(states.values())))
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {jobid} not finished after {timeout:.0f} s: {states or 'unknown'}")
            time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    """Start a cluster, open a shell on it, stop it when the shell exits."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--nodes", type=int, default=1, help="slurmd daemons on this machine (default 1)")
    cluster = Cluster.start(nodes=parser.parse_args(argv).nodes)
    try:
        print(f"cluster {cluster.name} up ({', '.join(cluster.nodes)}); SLURM_CONF={cluster.conf}; "
              "exit the shell to stop it", file=sys.stderr)
        return subprocess.call([os.environ.get("SHELL", "/bin/bash")], env=cluster.env)
    finally:
        cluster.stop()


if __name__ == "__main__":
    raise SystemExit(main())
