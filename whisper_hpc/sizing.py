"""Job sizing, one home: Slurm's time and memory syntax, the workload model, one rounding rule.

The batch planner, the install (module help, example job scripts) and the Open OnDemand app
all size jobs here. Measured on this project's 2-core x86-64 test machine (docs/batch.rst):
peak RSS of a whole `whisper-hpc` run and the real-time factor of tiny.en and base. Every
other model is EXTRAPOLATED from those two points by parameter count, and the GPU figures
are guesses (no GPU here): both are labelled below, and every number is overridable.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from whisper_hpc.model_store import OPENAI_CHECKPOINT

# Parameters (millions) of the published Whisper checkpoints.
MODEL_PARAMETERS_M = {
    "tiny": 39, "base": 74, "small": 244, "medium": 769,
    "large": 1550, "large-v1": 1550, "large-v2": 1550, "large-v3": 1550,
    "large-v3-turbo": 809, "turbo": 809,
    "distil-small.en": 166, "distil-medium.en": 394, "distil-large-v2": 756, "distil-large-v3": 756,
}
UNKNOWN_MODEL_PARAMETERS_M = 1550  # assume the largest: a job that asks too much still runs
SMALLEST_COUNTED_M = 10  # fewer weights than this are a placeholder, not a Whisper (tiny has 39 M)
BYTES_PER_WEIGHT = {"float32": 4, "float16": 2, "bfloat16": 2, "int16": 2, "int8": 1}

# Peak RSS (MB) = intercept + slope * parameters (M): the line through tiny.en (39 M) and base (74 M),
# measured here (MB): faster-whisper int8 266 / 327, float32 375 / 623 (the float16 weights are
# converted at load, so both copies count), openai-whisper float32 674 / 952. Larger models are
# extrapolated along the line. float16 (GPU) host memory is a guess.
MEMORY_FIT_MB = {
    ("faster-whisper", "int8"): (198.0, 1.74),
    ("faster-whisper", "float32"): (98.0, 7.09),
    ("faster-whisper", "float16"): (250.0, 2.50),
    ("openai-whisper", "float32"): (364.0, 7.94),
    ("openai-whisper", "float16"): (364.0, 7.94),  # loads float32 on the host, then moves to the GPU
}
# Each file transcribed at once beside the first (lanes.py: a CTranslate2 replica sharing the
# weights) adds its working buffers: +87 MB (tiny.en) and +90 MB (base) measured here, peak RSS of
# 12 clips with 2 lanes against 1; larger models are extrapolated along the line.
LANE_MEMORY_FIT_MB = (83.7, 0.086)
DIARIZATION_MEMORY_MB = 1500  # pyannote pipeline peak, measured at 1.3 GB on real weights
# Diarization holds a whole recording's waveform in memory: 16 kHz float32, 64000 bytes a second.
WAVEFORM_BYTES_PER_SECOND = 16000 * 4
MEMORY_SAFETY = 1.5
MEMORY_FLOOR_MB = 1024
MEMORY_STEP_MB = 256

# Real-time factor on 2 CPU threads, faster-whisper int8: 0.061 (tiny.en), 0.100 (base), measured;
# rtf = 0.061 * (params / 39) ** 0.77 passes through both and is extrapolated beyond.
RTF_REFERENCE = (39.0, 0.061, 0.77)
RTF_REFERENCE_THREADS = 2
BACKEND_RTF_FACTOR = {"faster-whisper": 1.0, "openai-whisper": 3.6}  # measured: 0.357 / 0.100 on base
FLOAT32_RTF_FACTOR = 1.15
GPU_RTF_FACTOR = 1 / 15  # a guess (no GPU here): a data-centre GPU against 2 CPU threads
RTF_SAFETY = 3.0  # other jobs on the node, hard audio, temperature fallback
DIARIZATION_RTF_CPU = 0.15  # measured on sample.wav, 2 threads
PER_FILE_SECONDS = 2.0  # ffprobe, ffmpeg start, five atomic writes
UNKNOWN_DURATION_SECONDS = 60.0  # a file ffprobe could not read: it fails fast, or is short
LOAD_SECONDS_FIXED = 4.0  # interpreter, imports, model read
LOAD_SECONDS_PER_M = 0.03

TASK_MARGIN_SECONDS = 300  # scheduling, container start, node file system
TASK_MARGIN_FRACTION = 0.25  # and a quarter of the estimate on top, whichever is more
TIME_FLOOR_SECONDS = 10 * 60



def base_model_name(name: str) -> str:
    return name.lower().removesuffix(".en") if name.lower() not in MODEL_PARAMETERS_M else name.lower()


def model_parameters_m(name: str, folder: Path | None = None) -> tuple[float, bool]:
    """(parameters in millions, known): by its name (a published checkpoint's, or the size the name
    contains: kb-whisper-small), else counted from the weights staged in `folder`, else the largest."""
    key = base_model_name(name)
    if key in MODEL_PARAMETERS_M:
        return float(MODEL_PARAMETERS_M[key]), True
    for family in ("large-v3-turbo", "turbo", "large", "medium", "small", "base", "tiny"):
        if family in key:
            return float(MODEL_PARAMETERS_M[family]), True
    counted = counted_parameters_m(folder) if folder is not None else None
    if counted and counted >= SMALLEST_COUNTED_M:
        return counted, False
    return float(UNKNOWN_MODEL_PARAMETERS_M), False


def counted_parameters_m(folder: Path) -> float | None:
    """Parameters (millions) of the model staged in `folder`, from the size of its weights:
    openai-whisper.pt holds float16 (as published, and as staging writes it), model.bin as its
    own header says (int8 after an import with --quantization int8)."""
    checkpoint, weights = folder / OPENAI_CHECKPOINT, folder / "model.bin"
    try:
        if checkpoint.is_file():
            return checkpoint.stat().st_size / BYTES_PER_WEIGHT["float16"] / 1e6
        if weights.is_file():
            from whisper_hpc.convert import weight_storage

            return weights.stat().st_size / BYTES_PER_WEIGHT.get(weight_storage(weights), 2) / 1e6
    except (OSError, ValueError):
        return None
    return None


def workload_memory(parameters_m: float, backend: str = "faster-whisper") -> str:
    """The --mem to ask for one file at a time on a CPU with this model: the module's advice."""
    return format_memory(Workload(parameters_m, backend=backend).memory_mb())


@dataclass(frozen=True)
class Workload:
    """What one array task runs: which model, on what, with how many threads."""

    parameters_m: float
    backend: str = "faster-whisper"
    compute_type: str | None = None  # None: the engine's default for the device
    gpu: bool = False
    threads: int = 2
    diarize: bool = False

    @property
    def precision(self) -> str:
        if self.compute_type in ("float32", "float16", "bfloat16"):
            return "float16" if self.compute_type == "bfloat16" else self.compute_type
        if self.backend == "openai-whisper":
            return "float16" if self.gpu else "float32"
        if self.compute_type and self.compute_type.startswith("int8"):
            return "int8"
        return "float16" if self.gpu else "int8"

    @property
    def lanes(self) -> int:
        """Files transcribed at once, at most (lanes.py: on the CPU with faster-whisper, without speakers)."""
        return self.threads if not self.gpu and self.backend == "faster-whisper" and not self.diarize else 1

    def peak_mb(self) -> float:
        """Expected peak host memory (no safety factor): measured for tiny and base, else extrapolated."""
        intercept, slope = MEMORY_FIT_MB.get((self.backend, self.precision), MEMORY_FIT_MB[("openai-whisper", "float32")])
        lane_intercept, lane_slope = LANE_MEMORY_FIT_MB
        lanes = (max(1, self.lanes) - 1) * (lane_intercept + lane_slope * self.parameters_m)
        return intercept + slope * self.parameters_m + lanes + (DIARIZATION_MEMORY_MB if self.diarize else 0)

    def memory_mb(self, longest_seconds: float = 0.0) -> int:
        """Host memory to request, rounded up; includes the safety factor, and, when diarizing, the
        waveform of the longest recording (`longest_seconds`), which the pipeline holds whole."""
        wanted = max(MEMORY_FLOOR_MB, self.peak_mb() * MEMORY_SAFETY)
        rounded = int(math.ceil(wanted / MEMORY_STEP_MB) * MEMORY_STEP_MB)
        return rounded + (waveform_mb(longest_seconds) if self.diarize else 0)

    def rtf_bound(self) -> float:
        """Seconds of work per second of audio, pessimistic (includes RTF_SAFETY)."""
        reference_m, reference_rtf, exponent = RTF_REFERENCE
        rtf = reference_rtf * (self.parameters_m / reference_m) ** exponent
        rtf *= BACKEND_RTF_FACTOR.get(self.backend, max(BACKEND_RTF_FACTOR.values()))
        if self.precision == "float32":
            rtf *= FLOAT32_RTF_FACTOR
        if self.gpu:
            rtf *= GPU_RTF_FACTOR
        else:
            rtf *= max(0.3, (RTF_REFERENCE_THREADS / max(1, self.threads)) ** 0.7)
        if self.diarize:
            rtf += DIARIZATION_RTF_CPU * (GPU_RTF_FACTOR if self.gpu else 1.0)
        return rtf * RTF_SAFETY

    def load_seconds(self) -> float:
        return LOAD_SECONDS_FIXED + LOAD_SECONDS_PER_M * self.parameters_m

    def file_seconds(self, duration: float | None) -> float:
        audio = UNKNOWN_DURATION_SECONDS if duration is None else duration
        return PER_FILE_SECONDS + audio * self.rtf_bound()

    def task_seconds(self, durations: Sequence[float | None], loads: int = 1) -> float:
        return loads * self.load_seconds() + sum(self.file_seconds(d) for d in durations)


def file_lanes(threads: int, durations: Sequence[float]) -> int:
    """How many files to transcribe at once on `threads` CPU threads (lanes.py): the most, up to
    one per thread and per file, that still leaves the longest file no longer than a lane's share
    of the audio, so that no lane runs on long after the others; 1 for a single long file."""
    longest = max(durations, default=0.0)
    fits = len(durations) if longest <= 0 else int(sum(durations) / longest + 1e-9)
    return max(1, min(threads, len(durations), fits))


def waveform_mb(seconds: float) -> int:
    """Megabytes a recording of `seconds` takes as one 16 kHz float32 waveform."""
    return math.ceil(seconds * WAVEFORM_BYTES_PER_SECOND / 1048576)


def time_limit_seconds(estimate: float, cap: int | None) -> int:
    """The --time to ask for: the estimate plus a margin, whole minutes, at most the site's cap."""
    wanted = max(TIME_FLOOR_SECONDS, estimate + max(TASK_MARGIN_SECONDS, TASK_MARGIN_FRACTION * estimate))
    wanted = int(math.ceil(wanted / 60.0) * 60)
    return min(wanted, cap) if cap else wanted


# ---- Slurm's time and memory syntax -------------------------------------------------------------

TIME_PATTERN = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
MEMORY_PATTERN = re.compile(r"^(\d+)([KMGT]?)B?$", re.IGNORECASE)
MEMORY_UNITS_MB = {"K": 1 / 1024, "M": 1, "": 1, "G": 1024, "T": 1024 * 1024}


def parse_time(text: str) -> int | None:
    """Slurm's --time forms (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in seconds; None: unlimited."""
    value = str(text).strip()
    if value.upper() in ("UNLIMITED", "INFINITE", "0", ""):
        return None
    match = TIME_PATTERN.match(value)
    if not match:
        raise ValueError(f"'{text}' is not a Slurm time (use HH:MM:SS, MM or D-HH:MM:SS)")
    days, first, second, third = match.groups()
    if days is not None:
        hours, minutes, secs = int(first), int(second or 0), int(third or 0)
        return int(days) * 86400 + hours * 3600 + minutes * 60 + secs
    if third is not None:
        return int(first) * 3600 + int(second) * 60 + int(third)
    if second is not None:
        return int(first) * 60 + int(second)
    return int(first) * 60


def format_time(seconds: int) -> str:
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}-{clock}" if days else clock


def parse_memory(text: str) -> int:
    """Slurm's --mem (4G, 4000M, 4000) in megabytes."""
    match = MEMORY_PATTERN.match(str(text).strip())
    if not match:
        raise ValueError(f"'{text}' is not a memory size (use e.g. 4G or 4000M)")
    megabytes = int(match.group(1)) * MEMORY_UNITS_MB[match.group(2).upper()]
    if megabytes <= 0:
        raise ValueError(f"'{text}' is not a memory size greater than zero")
    return int(math.ceil(megabytes))


def format_memory(megabytes: int) -> str:
    return f"{megabytes // 1024}G" if megabytes % 1024 == 0 else f"{megabytes}M"


# ---- what the module help and the example job scripts advise -----------------------------------

MODEL_SIZES = ("tiny", "base", "small", "medium", "large", "turbo")
MEASURED_SIZES = ("tiny", "base")
EXAMPLE_JOB_SECONDS = 4 * 3600


def memory_advice() -> list[dict]:
    """One row per model size: expected peak and the --mem to ask for, for both engines."""
    rows = []
    for size in MODEL_SIZES:
        parameters = MODEL_PARAMETERS_M[size]
        fast, openai = Workload(parameters), Workload(parameters, backend="openai-whisper")
        rows.append({
            "size": size, "parameters": f"{parameters} M",
            "faster_whisper": f"{fast.peak_mb() / 1024:.1f} GB", "openai_whisper": f"{openai.peak_mb() / 1024:.1f} GB",
            "how": "measured" if size in MEASURED_SIZES else "estimated",
            "request": workload_memory(parameters), "request_openai": workload_memory(parameters, "openai-whisper"),
        })
    return rows


def example_job_seconds(max_time: str) -> int:
    """The example job scripts' --time: four hours, or the site's limit when that is shorter."""
    limit = parse_time(max_time)
    return EXAMPLE_JOB_SECONDS if limit is None else min(limit, EXAMPLE_JOB_SECONDS)
