"""Which device to run on, and, when CUDA is asked for but unusable, exactly why; which GPUs a
job was given, and how its workers and CPU threads are shared among them."""

from __future__ import annotations

import ctypes.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from whisper_hpc.errors import WhisperHpcError


class DeviceError(WhisperHpcError):
    """CUDA was asked for and cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class GpuReport:
    """Everything that decides whether CUDA works here, gathered without importing an engine."""

    visible_devices: str | None  # CUDA_VISIBLE_DEVICES as set (None: unset)
    device_nodes: bool  # /dev/nvidia0 or similar exists
    nvidia_smi: bool
    driver_version: str | None
    driver_cuda: str | None  # highest CUDA version the driver supports
    gpu_names: tuple[str, ...] = ()
    cudnn: str | None = None  # the cuDNN library found, if any


def visible_devices(value: str | None) -> list[int | str] | None:
    """CUDA_VISIBLE_DEVICES as NVML indices and UUIDs; None means every GPU.

    Like CUDA, the list ends at the first entry that is neither: an empty value, -1 or Slurm's
    NoDevFiles means none.
    """
    if value is None:
        return None
    if not value.strip():
        return []
    devices: list[int | str] = []
    for token in (t.strip() for t in value.split(",")):
        if token.isdigit():
            devices.append(int(token))
        elif token.upper().startswith(("GPU-", "MIG-")):
            devices.append(token)
        else:
            break
    return devices


# Where Slurm lists a job's GPUs when CUDA_VISIBLE_DEVICES is not set (the step's list first).
SLURM_GPU_VARIABLES = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS")


def slurm_gpus(environ: Mapping[str, str] = os.environ) -> list[int] | None:
    """The GPU numbers Slurm gave the step (SLURM_STEP_GPUS) or the job (SLURM_JOB_GPUS): "0,1",
    "2,3" or "0-3"; None when neither is set. Like visible_devices, the list ends at the first
    entry that is no number (Slurm's NoDevFiles, an empty value: none)."""
    for name in SLURM_GPU_VARIABLES:
        value = environ.get(name)
        if value is None:
            continue
        numbers: list[int] = []
        for token in (t.strip() for t in value.split(",")):
            first, dash, last = token.partition("-")
            if token.isdigit():
                numbers.append(int(token))
            elif dash and first.isdigit() and last.isdigit() and int(first) <= int(last):
                numbers.extend(range(int(first), int(last) + 1))
            else:
                break
        return numbers
    return None


def job_gpus(environ: Mapping[str, str] = os.environ,
             engine_sees: Callable[[], int] | None = None) -> list[int] | None:
    """The GPUs this job was given, as the engine numbers them (its device_index); None when
    nothing says (no CUDA_VISIBLE_DEVICES, no Slurm GPU list).

    CUDA_VISIBLE_DEVICES=3,5 makes CUDA number them 0 and 1. Slurm's own list, where
    CUDA_VISIBLE_DEVICES is unset, holds the node's GPU numbers: they are CUDA's too on a node
    whose GPUs are all visible, while a node that hides the others (cgroup devices) numbers the
    job's from 0; `engine_sees` (how many GPUs the engine sees, asked only here) tells the two apart.
    """
    visible = visible_devices(environ.get("CUDA_VISIBLE_DEVICES"))
    if visible is not None:
        return list(range(len(visible)))
    listed = slurm_gpus(environ)
    if listed is None:
        return None
    if not listed:
        return []
    seen = engine_sees() if engine_sees is not None else None
    if seen is None or (seen > max(listed) and seen != len(listed)):
        return listed
    return list(range(min(len(listed), seen) if seen else len(listed)))


def worker_gpus(chosen: Sequence[int] | None, workers: int | None, given: Sequence[int] | None) -> list[int]:
    """The GPU (device_index) of each worker: one worker per GPU of `chosen` (--device_index 0,1 or
    cuda:N), else of the job's GPUs (`given`, from job_gpus), else GPU 0; `workers` (--gpu_workers)
    forces their number: fewer take the first GPUs, more share the GPUs round-robin."""
    gpus = list(chosen or given or [0])
    count = workers if workers and workers > 0 else len(gpus)
    return [gpus[i % len(gpus)] for i in range(count)]


def only_gpu(index: int, environ: Mapping[str, str] = os.environ) -> str:
    """The CUDA_VISIBLE_DEVICES that leaves a worker process GPU `index` (as this process numbers
    it) and no other: its entry of CUDA_VISIBLE_DEVICES (a number or a GPU-/MIG- UUID) where
    that is set, else the number itself. The worker then uses device_index 0, whatever its engine
    (openai-whisper always takes the first GPU), and makes no CUDA context on another GPU."""
    visible = visible_devices(environ.get("CUDA_VISIBLE_DEVICES"))
    if visible is not None and 0 <= index < len(visible):
        return str(visible[index])
    return str(index)


def worker_threads(threads: int, workers: int) -> int:
    """Each worker's CPU threads: the run's `threads` divided among its workers, at least one."""
    return max(1, threads // max(1, workers))


def gather_gpu_report() -> GpuReport:
    smi = shutil.which("nvidia-smi")
    names: tuple[str, ...] = ()
    driver = cuda = None
    if smi:
        output = run_quietly([smi])
        driver = first_match(r"Driver Version:\s*([\d.]+)", output)
        cuda = first_match(r"CUDA Version:\s*([\d.]+)", output)
        listing = run_quietly([smi, "--query-gpu=name", "--format=csv,noheader"])
        names = tuple(line.strip() for line in listing.splitlines() if line.strip())
    nodes = any(os.path.exists(f"/dev/nvidia{i}") for i in range(16))
    return GpuReport(
        visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        device_nodes=nodes,
        nvidia_smi=bool(smi),
        driver_version=driver,
        driver_cuda=cuda,
        gpu_names=names,
        cudnn=ctypes.util.find_library("cudnn"),
    )


def run_quietly(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def first_match(pattern: str, text: str) -> str | None:
    found = re.search(pattern, text)
    return found.group(1) if found else None


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


def explain_cuda_unusable(report: GpuReport, engine: str, engine_cuda: str | None, engine_sees: int) -> str:
    """One message that names the first reason CUDA cannot be used, and what to do about it."""
    if engine_cuda is None:
        return (
            f"CUDA requested, but this {engine} build has no CUDA support (a CPU-only install); "
            "use the site's GPU image or a CUDA build, or run with --device cpu"
        )
    visible = report.visible_devices
    if visible is not None and visible.strip() in ("", "NoDevFiles", "-1"):
        return (
            f"CUDA requested, but no GPU is allocated to this job (CUDA_VISIBLE_DEVICES={visible!r}); "
            "request one, e.g. `srun --gres=gpu:1 ...`, or run with --device cpu"
        )
    if not report.device_nodes and not report.nvidia_smi:
        return (
            "CUDA requested, but no NVIDIA GPU is visible (no /dev/nvidia* device, no nvidia-smi); "
            "request a GPU from Slurm (--gres=gpu:1) and run the container with --nv, or use --device cpu"
        )
    if report.driver_cuda and version_tuple(report.driver_cuda) < version_tuple(engine_cuda):
        return (
            f"CUDA requested, but the NVIDIA driver {report.driver_version or '?'} supports CUDA up to "
            f"{report.driver_cuda} while {engine} was built for CUDA {engine_cuda}; ask the admins for a "
            "newer driver or an image built for the older CUDA, or run with --device cpu"
        )
    if report.cudnn is None and engine == "faster-whisper":
        return (
            "CUDA requested, but cuDNN (libcudnn) is not installed or not on LD_LIBRARY_PATH; "
            "faster-whisper needs cuDNN 9 for CUDA 12: use the GPU image or install nvidia-cudnn-cu12"
        )
    if engine_sees == 0:
        return (
            f"CUDA requested, but {engine} sees no usable GPU although one appears to be present "
            f"({', '.join(report.gpu_names) or 'unknown model'}); run `whisper-hpc doctor` and send it to your admins"
        )
    return ""


def engine_cuda_status(backend: str) -> tuple[str | None, int]:
    """(CUDA version the engine was built for or None, number of GPUs it can use)."""
    if backend == "openai-whisper":
        import torch

        built = torch.version.cuda
        return built, torch.cuda.device_count() if built and torch.cuda.is_available() else 0
    import ctranslate2

    # PyPI's CTranslate2 4.x wheels for Linux are built for CUDA 12 with cuDNN 9.
    return "12.0", ctranslate2.get_cuda_device_count()


def resolve_device(requested: str, backend: str) -> str:
    """'auto' picks CUDA only when it really works; 'cuda' that cannot work is a DeviceError."""
    if requested == "cpu":
        return "cpu"
    report = gather_gpu_report()
    quick_no = not report.device_nodes and not report.nvidia_smi
    if requested == "auto" and quick_no:
        return "cpu"
    built, count = engine_cuda_status(backend)
    if count > 0:
        return "cuda"
    if requested == "auto":
        return "cpu"
    raise DeviceError(explain_cuda_unusable(report, backend, built, count))
