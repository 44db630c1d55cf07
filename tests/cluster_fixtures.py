"""Session fixtures of the cluster tier: a private Slurm cluster, an installed PREFIX, and Lmod.

Import them into a test module (pytest finds fixtures imported into a module's namespace):

    from cluster_fixtures import slurm_cluster, installed_prefix, lmod  # noqa: F401

slurm_cluster (session) -> tests/infra/cluster.Cluster, started once, stopped by PID at the end
    .env                 environment for sbatch/srun/squeue/sacct/scancel (SLURM_CONF = this cluster)
    .conf                its slurm.conf
    .sbatch(script, *args, options=(), cwd=None, env=None) -> job id (str)
    .wait(jobid, timeout=300) -> final state from sacct: "COMPLETED", "FAILED", "CANCELLED",
                            ...; an array's distinct task states joined by "," ("COMPLETED,FAILED")
    .run(argv, check=True, timeout=60, **subprocess_kwargs) -> CompletedProcess (any client)
    One node (CPUs and memory of this machine, DefMemPerCPU=512), one fake GPU: --gres=gpu:1
    sets CUDA_VISIBLE_DEVICES like a real one, but there is no device behind it.

slurm_two_nodes (session) -> the same, with two nodes (.nodes: their names): two slurmd daemons on
    this machine, each claiming half its CPUs (at least 1) and half its memory, each with one fake
    GPU, both at NodeAddr=127.0.0.1; for `sbatch -N2` and srun across nodes. A second cluster of
    its own (own daemons, ports and accounting), started only by the tests that ask for it, so the
    one-node cluster keeps the whole machine for the others.

installed_prefix (session) -> Installed: `whisper_hpc.install` run into a temporary PREFIX with a
    test site file: model root = the staged models (conftest's model_root), and
    mode "container" when apptainer works and build/images/whisper.sif exists (images linked into
    PREFIX/images), else mode "native" (native_fallback = true: singularity_wrapper runs
    PREFIX/bin/whisper-hpc, a link into this venv).
    .prefix .site_file .mode .model_root .images .messages (what install said)

lmod (session) -> run(snippet, env=None, cwd=None, timeout=600) -> CompletedProcess
    Runs `bash -c` with Lmod initialised and `module use PREFIX/modulefiles`, in a clean
    environment (system PATH only, an empty HOME, its own TMPDIR, LANG=C.UTF-8, SLURM_CONF of
    nothing unless env gives it). Module output (help, messages) arrives on stderr.
    run.base_env is that environment; run.home is the HOME.

Every module importing these gets the same instances (one cluster, one installation per session).
Better still, tests/conftest.py can load them once for all: pytest_plugins = ("cluster_fixtures",).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import ROOT, need

sys.path.insert(0, str(Path(__file__).parent / "infra"))
from cluster import Cluster, missing_programs  # noqa: E402

LMOD_INIT = Path("/usr/share/lmod/lmod/init/bash")
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
IMAGES = ROOT / "build" / "images"
MODULE_VERSION = "0.1.0"


@dataclass
class Installed:
    prefix: Path
    site_file: Path
    mode: str  # "container" or "native"
    model_root: Path
    images: Path
    messages: list[str] = field(default_factory=list)

    @property
    def bin(self) -> Path:
        return self.prefix / "bin"


def apptainer_works() -> bool:
    program = shutil.which("apptainer", path=SYSTEM_PATH)
    if program is None:
        return False
    return subprocess.run([program, "version"], capture_output=True, timeout=60).returncode == 0


def container_mode() -> bool:
    """Real images and a working apptainer: run everything through the container."""
    return (IMAGES / "whisper.sif").is_file() and apptainer_works()


# Each test module that imports a fixture gets its own definition of it, and pytest would build a
# session fixture once per definition: shared() makes them all hand out one instance, closed
# when the last user is done.
_SHARED: dict[str, list] = {}


def shared(name: str, create, close=None):
    entry = _SHARED.get(name)
    if entry is None:
        entry = _SHARED[name] = [create(), 0]
    entry[1] += 1
    try:
        yield entry[0]
    finally:
        entry[1] -= 1
        if entry[1] == 0:
            del _SHARED[name]
            if close is not None:
                close(entry[0])


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    missing = missing_programs()
    need(not missing, f"Slurm/MariaDB/MUNGE not installed ({', '.join(missing)}); run tests/infra/install-cluster.sh")
    yield from shared("slurm_cluster", lambda: Cluster.start(parent=str(tmp_path_factory.getbasetemp())),
                      Cluster.stop)


@pytest.fixture(scope="session")
def slurm_two_nodes(tmp_path_factory):
    missing = missing_programs()
    need(not missing, f"Slurm/MariaDB/MUNGE not installed ({', '.join(missing)}); run tests/infra/install-cluster.sh")
    yield from shared("slurm_two_nodes", lambda: Cluster.start(parent=str(tmp_path_factory.getbasetemp()), nodes=2),
                      Cluster.stop)


def toml_string(value: object) -> str:
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string


def write_site(path: Path, prefix: Path, model_root: Path, native: bool) -> None:
    path.write_text(f"""\
[site]
name = "Test cluster"
support = "the whisper-hpc test suite"
module_version = "{MODULE_VERSION}"

[paths]
prefix = {toml_string(prefix)}
model_root = {toml_string(model_root)}
images = {toml_string(prefix / "images")}

[models]
default = "tiny.en"

[wrapper]
data_areas = ["/home", "/scratch"]
scratch_variables = ["TMPDIR", "SLURM_TMPDIR", "SCRATCH"]
native_fallback = {"true" if native else "false"}
native_command = "whisper-hpc"
apptainer = "apptainer"

[slurm]
gpu_gres = "gpu:1"
max_time = "01:00:00"
array_throttle = 4
cpus_per_task = 2
""", encoding="utf-8")


@pytest.fixture(scope="session")
def installed_prefix(tmp_path_factory, model_root):
    yield from shared("installed_prefix", lambda: install_for_tests(tmp_path_factory, model_root))


def install_for_tests(tmp_path_factory, model_root: Path) -> Installed:
    from whisper_hpc.install import install

    base = tmp_path_factory.mktemp("installed")
    prefix = base / "prefix"
    site_file = base / "site.toml"
    mode = "container" if container_mode() else "native"
    write_site(site_file, prefix, model_root, native=mode == "native")
    messages: list[str] = []
    install(site_file, prefix, IMAGES, venv=Path(sys.prefix), link_images=True, say=messages.append)
    return Installed(prefix, site_file, mode, model_root, prefix / "images", messages)


@pytest.fixture(scope="session")
def lmod(installed_prefix, tmp_path_factory):
    need(LMOD_INIT.is_file(), f"Lmod is not installed ({LMOD_INIT}); run tests/infra/install-cluster.sh")
    yield from shared("lmod", lambda: lmod_runner(installed_prefix, tmp_path_factory))


def lmod_runner(installed_prefix: Installed, tmp_path_factory):
    home = tmp_path_factory.mktemp("lmod-home")
    scratch = tmp_path_factory.mktemp("lmod-tmp")
    base_env = {
        "PATH": SYSTEM_PATH, "HOME": str(home), "USER": "root", "LOGNAME": "root", "LANG": "C.UTF-8",
        "TMPDIR": str(scratch), "SHELL": "/bin/bash", "TERM": "dumb",
    }
    prologue = f"source {LMOD_INIT}\nmodule use {installed_prefix.prefix / 'modulefiles'}\n"

    def run(snippet: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", prologue + snippet], env={**base_env, **(env or {})}, cwd=cwd or home,
                              capture_output=True, text=True, timeout=timeout)

    run.base_env = base_env
    run.home = home
    return run
