"""`make bench` for whisper-batch: an array job (one model load per task) vs one `srun` per file.

All run on a private Slurm cluster, on the same ~20 short real recordings, with the same
whisper-hpc flags, one CPU per task or step, in turn, in one run:

  array         whisper-batch submit, --parallel tasks at once, one model load per task
  srun          one `srun whisper-hpc FILE` per file, one after another: what users of the
                peer deployment type today (the target, >= 2x, is against this)
  srun x N      the same sruns, --parallel at once: equal concurrency, so the ratio isolates
                the start-ups (interpreter, imports, model load, step launch) the array saves

The figures that matter are ratios of files per minute, since these machines are shared and
absolute times drift with load.

    python tests/bench_batch.py [--rounds 2] [--parallel 2] [--model tiny.en]
"""

from __future__ import annotations

import argparse
import math
import os
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
from test_batch import SUBMITTED, make_recordings  # noqa: E402

ROOT = HERE.parent
BIN = Path(sys.executable).parent
SHARED = Path(os.environ.get("SHARED_DATA", ROOT.parent / "shared" / "data"))
MODELS = Path(os.environ.get("WHISPER_MODELS", ROOT / "build" / "models"))
TARGET = 2.0


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=2, help="array throttle = concurrent sruns")
    parser.add_argument("--model", default="tiny.en")
    arguments = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    recordings = make_recordings(work / "recordings", SHARED, broken=False)
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
        subprocess.run(["rm", "-rf", str(work)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
