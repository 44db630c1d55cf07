"""From a manifest's files to an array job: durations, sizing, chunks, the sbatch request, the script."""

from __future__ import annotations

import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from whisper_hpc import sizing
from whisper_hpc.batch import plan, slurm
from whisper_hpc.files import write_atomically
from whisper_hpc.batch.manifest import Manifest
from whisper_hpc.batch.request import Refusal, TranscriptionRequest
from whisper_hpc.batch.selection import absolute, groups, invocations

DEFAULT_CPUS = 2
PROBE_WORKERS = 8
MAX_ARRAY_TASKS = 1000
TEMPLATE = "slurm/batch-array.sbatch.j2"


def say(message: str) -> None:
    print(f"whisper-batch: {message}", file=sys.stderr, flush=True)


def probe_durations(manifest: Manifest, indices: Sequence[int]) -> None:
    """Fill in each file's duration (ffprobe, several at once); a file it cannot read is noted."""
    from whisper_hpc.audio import AudioError, probe

    todo = [i for i in indices if manifest.entries[i].duration is None and manifest.entries[i].probe_error is None]

    def one(index: int) -> None:
        entry = manifest.entries[index]
        try:
            entry.duration = probe(Path(entry.path)).duration
        except AudioError as error:
            entry.probe_error = str(error)

    if todo:
        with ThreadPoolExecutor(max_workers=min(PROBE_WORKERS, len(todo))) as pool:
            list(pool.map(one, todo))
    problems = [manifest.entries[i].probe_error for i in todo if manifest.entries[i].probe_error]
    for problem in problems[:10]:
        say(f"warning: {problem} (it stays in the batch; status will list it if it fails)")
    if len(problems) > 10:
        say(f"warning: {len(problems) - 10} more files ffprobe cannot read")


def workload(manifest: Manifest, request: TranscriptionRequest, settings: dict) -> sizing.Workload:
    parameters, _ = sizing.model_parameters_m(manifest.model, request.model.path)
    return sizing.Workload(
        parameters_m=parameters,
        backend=request.backend,
        compute_type=request.compute_type,
        gpu=gpus_wanted(request, settings) > 0,
        threads=cpus_wanted(request, settings),
        diarize=request.diarize,
    )


def gpus_wanted(request: TranscriptionRequest, settings: dict) -> int:
    """--gpus N, else on --device cuda the GPUs --device_index lists (0,1,2,3: four), else one."""
    if "gpus" in settings:
        return settings["gpus"]
    if request.device != "cuda":
        return 0
    listed = getattr(request, "gpus", None)
    return len(listed) if listed and len(listed) > 1 else 1


def cpus_wanted(request: TranscriptionRequest, settings: dict) -> int:
    """--cpus N, else --threads, else DEFAULT_CPUS for each GPU's worker (at least DEFAULT_CPUS)."""
    if "cpus" in settings:
        return settings["cpus"]
    return request.threads or DEFAULT_CPUS * max(1, gpus_wanted(request, settings))


def gres(site_gres: str, gpus: int) -> str:
    """The site's GPU gres with the count replaced: gpu:1 -> gpu:2, gpu:a100:1 -> gpu:a100:2."""
    if gpus <= 0:
        return ""
    parts = (site_gres or "gpu:1").split(":")
    if parts[-1].isdigit():
        parts[-1] = str(gpus)
    else:
        parts.append(str(gpus))
    return ":".join(parts)


@dataclass
class ArrayPlan:
    tasks: list[list[int]]
    request: slurm.ArrayRequest
    estimates: list[float]  # seconds per task
    settings: dict


def plan_array(manifest: Manifest, indices: Sequence[int], request: TranscriptionRequest, settings: dict) -> ArrayPlan:
    site = request.site
    work = workload(manifest, request, settings)
    cap = sizing.parse_time(site.slurm.max_time)
    throttle = settings.get("throttle") or site.slurm.array_throttle
    gpus = gpus_wanted(request, settings)
    seconds = {i: work.file_seconds(manifest.entries[i].duration) for i in indices}
    target = plan.target_task_seconds(sum(seconds.values()), throttle, cap, gpus)
    grouped = groups(manifest.entries, indices)
    tasks = plan.make_chunks(grouped, seconds, target, settings.get("chunk_size"))
    while len(tasks) > MAX_ARRAY_TASKS:  # Slurm's default MaxArraySize is 1001
        if "chunk_size" in settings:
            raise Refusal(f"--chunk_size {settings['chunk_size']} makes {len(tasks)} array tasks; Slurm allows "
                          f"{MAX_ARRAY_TASKS}: pass a larger --chunk_size")
        target *= 1.1 * len(tasks) / MAX_ARRAY_TASKS
        tasks = plan.make_chunks(grouped, seconds, target)
    longest = max((manifest.entries[i].duration or sizing.UNKNOWN_DURATION_SECONDS for i in indices), default=0.0)
    estimates = [
        plan.task_seconds(work, [manifest.entries[i].duration for i in chunk],
                          loads=len(invocations(manifest.entries, chunk)), gpus=gpus)
        for chunk in tasks
    ]
    limit = sizing.parse_time(settings["time"]) if "time" in settings else sizing.time_limit_seconds(max(estimates), cap)
    if cap and max(estimates) > cap:
        say(f"warning: the longest task may need {sizing.format_time(int(max(estimates)))}, more than the site "
            f"limit {site.slurm.max_time}; pass a smaller --chunk_size (resume finishes whatever a time-out leaves)")
    request = slurm.ArrayRequest(
        tasks=len(tasks),
        throttle=throttle,
        memory=settings.get("mem") or sizing.format_memory(plan.task_memory_mb(work, longest, gpus)),
        time=sizing.format_time(limit),
        cpus=cpus_wanted(request, settings),
        partition=settings.get("partition", site.slurm.partition),
        account=settings.get("account", site.slurm.account),
        gres=gres(site.slurm.gpu_gres, gpus),
        mail_user=settings.get("mail_user", ""),
        mail_type=settings.get("mail_type", ""),
    )
    return ArrayPlan(tasks, request, estimates, settings)


def batch_command() -> list[str]:
    """How a job runs this program: the same whisper-batch that submitted it."""
    launcher = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if launcher is not None and launcher.name == "whisper-batch" and launcher.is_file():
        return [str(absolute(str(launcher)))]
    found = shutil.which("whisper-batch")
    return [found] if found else [sys.executable, "-m", "whisper_hpc.batch"]


def render_script(manifest: Manifest, submission: int) -> Path:
    from whisper_hpc.render import render

    text = render(TEMPLATE, {"batch_command": batch_command(), "submission": submission, "manifest": str(manifest.path)})
    return write_atomically(manifest.script_path(submission), text, mode=0o755)


def describe(plan_: ArrayPlan, manifest: Manifest, count: int) -> str:
    r = plan_.request
    lines = [f"{count} files in {r.tasks} tasks (at most {r.throttle} at once), "
             f"each --mem={r.memory} --time={r.time} --cpus-per-task={r.cpus}"
             + (f" --gres={r.gres}" if r.gres else "")]
    for number, (chunk, estimate) in enumerate(zip(plan_.tasks, plan_.estimates)):
        audio = sum(manifest.entries[i].duration or 0.0 for i in chunk)
        lines.append(f"  task {number}: {len(chunk)} files, {audio:.0f} s of audio, estimated {sizing.format_time(int(estimate))}")
    return "\n".join(lines)
