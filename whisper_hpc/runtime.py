"""Process set-up that must happen before any engine is imported: offline, caches, threads."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

OFFLINE_VARIABLES = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "DO_NOT_TRACK": "1",
    "PYANNOTE_METRICS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
}

# Each cache a library may write, relative to the per-run temporary directory.
CACHE_VARIABLES = {
    "XDG_CACHE_HOME": "cache",
    "HF_HOME": "cache/huggingface",
    "TORCH_HOME": "cache/torch",
    "NUMBA_CACHE_DIR": "cache/numba",
    "MPLCONFIGDIR": "cache/matplotlib",
    "TRITON_CACHE_DIR": "cache/triton",
    "TORCHINDUCTOR_CACHE_DIR": "cache/torchinductor",
    "CUDA_CACHE_PATH": "cache/nv",  # the CUDA driver's JIT cache, else ~/.nv/ComputeCache
}
# What libraries put in "the" temporary directory (onnxruntime's .ses files, for one) goes in too.
TEMP_DIRECTORY = "tmp"
# singularity_wrapper leaves this in the per-job folder it makes: the program removes that folder at its end.
WRAPPER_REMOVE_MARKER = ".remove-when-done"

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "CT2_INTER_THREADS",
)


def make_offline(environ: dict[str, str] | None = None) -> None:
    """Forbid every library we load from reaching a hub or a telemetry host."""
    env = os.environ if environ is None else environ
    env.update(OFFLINE_VARIABLES)


def available_cpus() -> int:
    """CPUs this process may use: Slurm's allocation, capped at the affinity mask (a hostile or
    mistaken SLURM_CPUS_PER_TASK=99999 gets the CPUs that are really there)."""
    try:
        usable = max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        usable = max(1, os.cpu_count() or 1)
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if slurm.isdigit() and int(slurm) > 0:
        return min(int(slurm), usable)
    return usable


def pin_threads(threads: int, environ: dict[str, str] | None = None) -> None:
    """Make every BLAS / OpenMP pool use `threads`, so a shared node is not oversubscribed."""
    env = os.environ if environ is None else environ
    for name in THREAD_VARIABLES:
        env[name] = "1" if name == "CT2_INTER_THREADS" else str(threads)
    # OpenMP threads sleep instead of spinning while they wait: with another job on the node, both
    # engines ran 1.5x to 2x faster, and no slower on an idle one (docs/benchmarks.rst).
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@contextmanager
def threads_for_children(threads: int) -> Iterator[None]:
    """pin_threads for the processes started inside (they inherit the environment), then as before:
    a spawned child's OpenMP reads its thread count once, while it imports, before its code runs."""
    saved = {name: os.environ.get(name) for name in (*THREAD_VARIABLES, "OMP_WAIT_POLICY")}
    pin_threads(threads)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class RunDirectory:
    """A per-run writable temporary directory holding every cache; removed on exit."""

    def __init__(self, parent: str | None = None) -> None:
        base = parent or os.environ.get("WHISPER_HPC_TMPDIR") or os.environ.get("TMPDIR") or None
        self.path = Path(tempfile.mkdtemp(prefix="whisper-hpc-", dir=base))

    def point_caches_here(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        for name, relative in CACHE_VARIABLES.items():
            target = self.path / relative
            target.mkdir(parents=True, exist_ok=True)
            env[name] = str(target)
        temporary = self.path / TEMP_DIRECTORY
        temporary.mkdir(exist_ok=True)
        env["TMPDIR"] = str(temporary)
        if environ is None:
            tempfile.tempdir = env["TMPDIR"]  # tempfile read TMPDIR once already, when it made this directory

    def cleanup(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> "RunDirectory":
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


_current_run: RunDirectory | None = None


def wrapper_job_folder() -> Path | None:
    """The per-job folder singularity_wrapper made for this process, if it asked for its removal
    (its marker is there, and the folder is this user's own, private, and no symbolic link)."""
    named = os.environ.get("WHISPER_HPC_TMPDIR")
    if not named:
        return None
    folder = Path(named)
    try:
        info = folder.lstat()
        marked = (folder / WRAPPER_REMOVE_MARKER).is_file()
    except OSError:
        return None
    private = stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077
    return folder if marked and private else None


def start_run() -> RunDirectory:
    """Create this process's run directory, point every cache into it, remove it at exit (and the
    wrapper's per-job folder around it, when the wrapper asked for that)."""
    global _current_run
    if _current_run is None:
        _current_run = RunDirectory()
        _current_run.point_caches_here()
        atexit.register(_current_run.cleanup)
        job_folder = wrapper_job_folder()
        if job_folder is not None:
            atexit.register(shutil.rmtree, job_folder, ignore_errors=True)
    return _current_run


def run_scratch() -> Path:
    """A writable directory for this run's scratch files (gone when the process ends)."""
    return start_run().path


M_ARENA_MAX = -8  # glibc's mallopt parameter for the number of arenas


@functools.lru_cache(maxsize=None)
def glibc():
    """The C library when it is glibc (its malloc_trim and mallopt), else None."""
    try:
        import ctypes

        library = ctypes.CDLL("libc.so.6")
        library.malloc_trim, library.mallopt  # noqa: B018 - both exist only in glibc
        return library
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Hand memory freed by the last window back to the system (glibc keeps it otherwise, and the
    peak then creeps up window after window); a no-op where there is no glibc."""
    library = glibc()
    if library is not None:
        library.malloc_trim(0)


def one_malloc_arena() -> None:
    """Make every thread allocate from glibc's one main arena, unless MALLOC_ARENA_MAX says
    otherwise. In an arena of its own, what the decoding thread frees is not reused by the
    engine's thread, and the peak on long files varied from run to run; in one arena it stays
    flat, at no cost in speed (docs/benchmarks.rst). Before the run's threads start."""
    library = glibc()
    if library is not None and "MALLOC_ARENA_MAX" not in os.environ:
        library.mallopt(M_ARENA_MAX, 1)
