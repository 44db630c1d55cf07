"""From a manifest's files to an array job: durations, sizing, chunks, the sbatch request, the script."""

from __future__ import annotations

import argparse
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from whisper_hpc.batch import plan, slurm
from whisper_hpc.batch.manifest import Manifest
from whisper_hpc.batch.request import Refusal, runs_pipeline
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


def workload(manifest: Manifest, namespace: argparse.Namespace, model_path: Path, settings: dict) -> plan.Workload:
    weights = model_path / "model.bin"
    parameters, _ = plan.model_parameters_m(manifest.model, weights.stat().st_size if weights.is_file() else None)
    return plan.Workload(
        parameters_m=parameters,
        backend=namespace.backend,
        compute_type=None if namespace.compute_type in ("default", "auto") else namespace.compute_type,
        gpu=gpus_wanted(namespace, settings) > 0,
        threads=cpus_wanted(namespace, settings),
        diarize=runs_pipeline(namespace),
    )


def gpus_wanted(namespace: argparse.Namespace, settings: dict) -> int:
    if "gpus" in settings:
        return settings["gpus"]
    return 1 if str(namespace.device).lower().startswith("cuda") else 0


def cpus_wanted(namespace: argparse.Namespace, settings: dict) -> int:
    if "cpus" in settings:
        return settings["cpus"]
    return namespace.threads if namespace.threads > 0 else DEFAULT_CPUS


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


def plan_array(manifest: Manifest, indices: Sequence[int], namespace, model_path: Path, site,
               settings: dict) -> ArrayPlan:
    work = workload(manifest, namespace, model_path, settings)
    cap = plan.parse_time(site.max_time)
    throttle = settings.get("throttle") or site.array_throttle
    seconds = {i: work.file_seconds(manifest.entries[i].duration) for i in indices}
    target = plan.target_task_seconds(sum(seconds.values()), throttle, cap)
    grouped = groups(manifest.entries, indices)
    tasks = plan.make_chunks(grouped, seconds, target, settings.get("chunk_size"))
    while len(tasks) > MAX_ARRAY_TASKS:  # Slurm's default MaxArraySize is 1001
        if "chunk_size" in settings:
            raise Refusal(f"--chunk_size {settings['chunk_size']} makes {len(tasks)} array tasks; Slurm allows "
                          f"{MAX_ARRAY_TASKS}: pass a larger --chunk_size")
        target *= 1.1 * len(tasks) / MAX_ARRAY_TASKS
        tasks = plan.make_chunks(grouped, seconds, target)
    estimates = [
        work.task_seconds([manifest.entries[i].duration for i in chunk], loads=len(invocations(manifest.entries, chunk)))
        for chunk in tasks
    ]
    limit = plan.parse_time(settings["time"]) if "time" in settings else plan.time_limit_seconds(max(estimates), cap)
    if cap and max(estimates) > cap:
        say(f"warning: the longest task may need {plan.format_time(int(max(estimates)))}, more than the site "
            f"limit {site.max_time}; pass a smaller --chunk_size (resume finishes whatever a time-out leaves)")
    request = slurm.ArrayRequest(
        tasks=len(tasks),
        throttle=throttle,
        memory=settings.get("mem") or plan.format_memory(work.memory_mb()),
        time=plan.format_time(limit),
        cpus=cpus_wanted(namespace, settings),
        partition=settings.get("partition", site.partition),
        account=settings.get("account", site.account),
        gres=gres(site.gpu_gres, gpus_wanted(namespace, settings)),
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
    import jinja2

    from whisper_hpc.render import render

    try:
        text = render(TEMPLATE, {"modules": [], "batch_command": batch_command(), "submission": submission,
                                 "manifest": str(manifest.path)})
    except jinja2.TemplateNotFound:
        raise Refusal(f"the job template {TEMPLATE} is not installed; reinstall whisper-hpc (make install)")
    path = manifest.script_path(submission)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(0o755)
    return path


def describe(plan_: ArrayPlan, manifest: Manifest, count: int) -> str:
    r = plan_.request
    lines = [f"{count} files in {r.tasks} tasks (at most {r.throttle} at once), "
             f"each --mem={r.memory} --time={r.time} --cpus-per-task={r.cpus}"
             + (f" --gres={r.gres}" if r.gres else "")]
    for number, (chunk, estimate) in enumerate(zip(plan_.tasks, plan_.estimates)):
        audio = sum(manifest.entries[i].duration or 0.0 for i in chunk)
        lines.append(f"  task {number}: {len(chunk)} files, {audio:.0f} s of audio, estimated {plan.format_time(int(estimate))}")
    return "\n".join(lines)
