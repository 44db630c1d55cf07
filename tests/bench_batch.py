"""`make bench` for whisper-batch: an array job (one model load per task) vs one `srun` per file.

All run on a private Slurm cluster, on the same short real recordings (22, three times by
default), with the same whisper-hpc flags, one CPU per task or step, in turn, in one run:

  array         whisper-batch submit, --parallel tasks at once, one model load per task
  srun          one `srun whisper-hpc FILE` per file, one after another: what users of the
                peer deployment type today (the target, >= 3x, is against this)
  srun x N      the same sruns, --parallel at once: equal concurrency, so the ratio isolates
                the start-ups (interpreter, imports, model load, step launch) the array saves

The figures that matter are ratios of files per minute, since these machines are shared and
absolute times drift with load.

Then, without Slurm, the task sampler's overhead (whisper_hpc.batch.sampler): the same
`whisper-batch run` over the same recordings with the sampler at its default interval and with
it off (WHISPER_HPC_SAMPLE_SECONDS=0), in alternation; the medians' difference is the overhead
on the wall time (target < 1 %). Wall times that close are within the machine's noise, so the
sampler's own cost is also measured directly: one more run with the task's sampler off and the
same Sampler, at the same interval, watching that run's process tree from here, summing the
CPU time its thread spends in sample() (what the task's sampler would spend).

    python tests/bench_batch.py [--rounds 2] [--parallel 2] [--model tiny.en] [--sampler_rounds 3]
                                [--only array|sampler] [--copies 3]
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "infra"))
from cluster import Cluster  # noqa: E402
from test_batch import SUBMITTED, Recordings, make_recordings  # noqa: E402

from whisper_hpc.batch.sampler import DEFAULT_INTERVAL, INTERVAL_VARIABLE, Sampler, all_stat_lines  # noqa: E402

ROOT = HERE.parent
BIN = Path(sys.executable).parent
SHARED = Path(os.environ.get("SHARED_DATA", ROOT.parent / "shared" / "data"))
MODELS = Path(os.environ.get("WHISPER_MODELS", ROOT / "build" / "models"))
TARGET = 3.0
SAMPLER_TARGET = 1.0  # percent of the wall time


def engine_flags(model: str) -> list[str]:
    return ["--model", model, "--compute_type", "int8", "--output_format", "all"]


def wait_until_gone(cluster: Cluster, job: str) -> None:
    while cluster.run(["squeue", "-h", "-j", job, "-o", "%i"], check=False).stdout.strip():
        time.sleep(0.2)


def array_round(cluster: Cluster, env: dict, files: list[Path], folder: Path, out: Path, parallel: int,
                model: str) -> float:
    """Seconds from `whisper-batch submit` until the array has left the queue."""
    chunk = math.ceil(len(files) / parallel)  # one task (one model load) per slot
    started = time.monotonic()
    result = subprocess.run(
        [str(BIN / "whisper-batch"), "submit", str(folder), *engine_flags(model), "--output_dir", str(out),
         "--chunk_size", str(chunk), "--throttle", str(parallel), "--cpus", "1", "--mem", "1G"],
        env=env, capture_output=True, text=True,
    )
    match = SUBMITTED.match(result.stdout.strip().splitlines()[0] if result.stdout.strip() else "")
    if result.returncode != 0 or not match:
        raise SystemExit(f"whisper-batch submit failed:\n{result.stdout}{result.stderr}")
    wait_until_gone(cluster, match.group(1))
    elapsed = time.monotonic() - started
    check = subprocess.run([str(BIN / "whisper-batch"), "status", match.group(4)], env=env, capture_output=True, text=True)
    if check.returncode != 0:
        raise SystemExit(f"the array did not finish every file:\n{check.stdout}")
    return elapsed


def srun_round(env: dict, files: list[Path], out: Path, parallel: int, model: str) -> float:
    """Seconds for one `srun whisper-hpc FILE` per file, `parallel` steps at a time."""
    def one(path: Path) -> None:
        result = subprocess.run(
            ["srun", "--ntasks=1", "--cpus-per-task=1", "--mem=1G", str(BIN / "whisper-hpc"), str(path),
             *engine_flags(model), "--output_dir", str(out)],
            env=env, capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise SystemExit(f"srun whisper-hpc {path} failed:\n{result.stderr[-2000:]}")

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(one, files))
    return time.monotonic() - started


def array_section(arguments: argparse.Namespace, work: Path, recordings: Recordings) -> None:
    """The array against one srun per file, on a private Slurm cluster."""
    files = recordings.good
    print(f"{len(files)} recordings, model {arguments.model}, {arguments.parallel} at a time, "
          f"load average {os.getloadavg()[0]:.2f} at start", flush=True)
    cluster = Cluster.start(parent=str(work))
    try:
        env = {**cluster.env, "PATH": os.pathsep.join([str(BIN), cluster.env["PATH"]]), "WHISPER_MODELS": str(MODELS),
               "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8"}
        env.pop("WHISPER_HPC_SITE", None)
        kinds = ("array", "srun", "srun x N")
        totals = dict.fromkeys(kinds, 0.0)
        for number in range(arguments.rounds):
            order = kinds if number % 2 == 0 else tuple(reversed(kinds))
            for kind in order:
                out = work / f"out-{kind.replace(' ', '')}-{number}"
                if kind == "array":
                    seconds = array_round(cluster, env, files, recordings.folder, out, arguments.parallel, arguments.model)
                else:
                    parallel = arguments.parallel if kind == "srun x N" else 1
                    seconds = srun_round(env, files, out, parallel, arguments.model)
                totals[kind] += seconds
                print(f"  round {number + 1} {kind:<8} {seconds:6.1f} s  {len(files) / seconds * 60:6.1f} files/min", flush=True)
        rate = {kind: arguments.rounds * len(files) / totals[kind] * 60 for kind in kinds}
        print(f"whisper-batch array ({arguments.parallel} tasks at once)  {rate['array']:6.1f} files/min")
        print(f"one srun per file, in turn          {rate['srun']:6.1f} files/min")
        print(f"one srun per file, {arguments.parallel} at once         {rate['srun x N']:6.1f} files/min")
        ratio = rate["array"] / rate["srun"]
        print(f"ratio array / srun per file         {ratio:6.2f}x   (target >= {TARGET:.0f}x: {'met' if ratio >= TARGET else 'NOT met'})")
        print(f"ratio at equal concurrency          {rate['array'] / rate['srun x N']:6.2f}x   (the start-ups saved)")
        print(f"load average {os.getloadavg()[0]:.2f} at the end")
    finally:
        cluster.stop()


def plain_env(work: Path, sample_seconds: str | None) -> dict:
    """A clean environment outside Slurm; `sample_seconds` None leaves the sampler at its default."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("SLURM_") and key not in ("WHISPER_HPC_SITE", INTERVAL_VARIABLE)}
    env.update({"PATH": os.pathsep.join([str(BIN), env.get("PATH", "/usr/bin:/bin")]), "WHISPER_MODELS": str(MODELS),
                "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8"})
    if sample_seconds is not None:
        env[INTERVAL_VARIABLE] = sample_seconds
    return env


def start_batch_run(env: dict, folder: Path, out: Path, model: str) -> subprocess.Popen:
    argv = [str(BIN / "whisper-batch"), "run", str(folder), *engine_flags(model), "--output_dir", str(out)]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_batch_run(process: subprocess.Popen) -> None:
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"whisper-batch run failed:\n{stdout}{stderr[-2000:]}")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def batch_run_seconds(env: dict, folder: Path, out: Path, model: str) -> tuple[float, float]:
    """Wall and CPU seconds (its whole process tree) of one `whisper-batch run` over `folder`
    (a fresh `out`, so every file is transcribed)."""
    started, cpu = time.monotonic(), children_cpu_seconds()
    finish_batch_run(start_batch_run(env, folder, out, model))
    return time.monotonic() - started, children_cpu_seconds() - cpu


def sampler_section(arguments: argparse.Namespace, work: Path, recordings: Recordings) -> None:
    """whisper-batch run with the task sampler at its default interval and off, alternating."""
    files = recordings.good
    print(f"task sampler: {len(files)} recordings, model {arguments.model}, whisper-batch run outside Slurm, "
          f"interval {DEFAULT_INTERVAL:g} s, {len(all_stat_lines())} processes on this machine, "
          f"load average {os.getloadavg()[0]:.2f} at start", flush=True)
    modes = {"sampler on": plain_env(work, None), "sampler off": plain_env(work, "0")}
    batch_run_seconds(modes["sampler off"], recordings.folder, work / "out-warm-up", arguments.model)  # caches warm
    walls: dict[str, list[float]] = {mode: [] for mode in modes}
    cpus: dict[str, list[float]] = {mode: [] for mode in modes}
    for number in range(arguments.sampler_rounds):
        order = list(modes) if number % 2 == 0 else list(reversed(modes))
        for mode in order:
            out = work / f"out-{mode.replace(' ', '-')}-{number}"
            wall, cpu = batch_run_seconds(modes[mode], recordings.folder, out, arguments.model)
            walls[mode].append(wall)
            cpus[mode].append(cpu)
            print(f"  round {number + 1} {mode:<11} {wall:6.2f} s wall  {cpu:6.2f} s CPU", flush=True)
    on, off = statistics.median(walls["sampler on"]), statistics.median(walls["sampler off"])
    overhead = (on - off) / off * 100
    spread = (max(walls["sampler off"]) - min(walls["sampler off"])) / off * 100
    print(f"median wall, sampler on            {on:6.2f} s")
    print(f"median wall, sampler off           {off:6.2f} s")
    print(f"overhead on the wall time          {overhead:+6.2f} %   (target < {SAMPLER_TARGET:g} %: "
          f"{'met' if overhead < SAMPLER_TARGET else 'NOT met'}; the runs off alone spread {spread:.1f} %)")
    extra_cpu = statistics.median(cpus["sampler on"]) - statistics.median(cpus["sampler off"])
    print(f"extra CPU with the sampler         {extra_cpu:+6.2f} s   ({extra_cpu / off * 100:+.2f} % of the wall time; "
          f"other load moves it too)")
    sampler_cost(work, recordings, arguments.model)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


def sampler_cost(work: Path, recordings: Recordings, model: str) -> None:
    """The sampler's own CPU time, measured directly on a twin run's process tree."""
    started = time.monotonic()
    process = start_batch_run(plain_env(work, "0"), recordings.folder, work / "out-sampler-cost", model)
    sampler = Sampler(work / "samples-cost.tsv", process.pid, interval=DEFAULT_INTERVAL).start()
    try:
        finish_batch_run(process)
    finally:
        sampler.stop()
    wall = time.monotonic() - started
    cost = sampler.cost
    share = cost.cpu_seconds / wall * 100
    print(f"sampler's own CPU, measured        {cost.cpu_seconds * 1000:6.1f} ms over {wall:.1f} s: "
          f"{share:.3f} % of the wall time (target < {SAMPLER_TARGET:g} %: {'met' if share < SAMPLER_TARGET else 'NOT met'}; "
          f"loading NVML and {cost.samples} samples: {cost.cpu_seconds / max(cost.samples, 1) * 1000:.1f} ms a sample on average)")


def copied(recordings: Recordings, copies: int) -> Recordings:
    """`recordings` with `copies` - 1 more copies of each good file beside it."""
    extra = []
    for number in range(1, copies):
        for path in recordings.good:
            extra.append(path.with_name(f"copy {number} {path.name}"))
            shutil.copyfile(path, extra[-1])
    return Recordings(recordings.folder, recordings.good + extra, recordings.broken)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=2, help="array throttle = concurrent sruns")
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--sampler_rounds", type=int, default=3, help="runs with the task sampler on (as many off)")
    parser.add_argument("--only", choices=("array", "sampler"), help="run one section")
    parser.add_argument("--copies", type=int, default=3,
                        help="the array section's batch: each recording this many times, under other names "
                             "(closer to a real batch's size)")
    arguments = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    try:
        recordings = make_recordings(work / "recordings", SHARED, broken=False)
        if arguments.only != "sampler":
            array_section(arguments, work, copied(recordings, arguments.copies))
        if arguments.only != "array":
            sampler_section(arguments, work, recordings)
    finally:
        subprocess.run(["rm", "-rf", str(work)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
