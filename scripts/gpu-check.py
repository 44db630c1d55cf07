#!/usr/bin/env python3
"""`make gpu-check`: every GPU path on a node with a GPU, in one run, with one report.

    python scripts/gpu-check.py [--report DIR] [--minutes M] [--model NAME]

Steps (each its own command, so one failure does not hide the others):
doctor; faster-whisper in float16 and int8_float16; openai-whisper in float16; batched inference;
diarization on the GPU; two workers sharing the GPU (--gpu_workers 2); the out-of-memory back-off
under an artificial memory cap (a ballast process holds all but a little of the GPU's memory);
the Apptainer image with --nv through the wrapper. GPU memory and utilisation come from the
resource sampler (NVML) running beside the steps. The report (report.txt, report.json) lands in
DIR (default build/gpu-check). Without a GPU it says so and exits 2: the script waits for one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

BIN = Path(sys.executable).parent
MODELS = Path(os.environ.get("WHISPER_MODELS", ROOT / "build" / "models"))
SHARED = Path(os.environ.get("SHARED_DATA", ROOT.parent / "shared" / "data"))
STEP_TIMEOUT = 150
BALLAST_HEADROOM_MB = (1500, 1000, 700)  # memory left free for the back-off step, tried in turn


def has_gpu() -> bool:
    try:
        import ctranslate2

        return ctranslate2.get_cuda_device_count() > 0
    except Exception:
        return False


def step(name: str, command: list[str], env: dict | None = None, expect: str | None = None) -> dict:
    """Run one step; it passes when it exits 0 (and its stderr holds `expect`, where given)."""
    started = time.time()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=STEP_TIMEOUT,
                                env={**os.environ, **(env or {})}, cwd=ROOT)
        code, stderr = result.returncode, result.stderr
    except subprocess.TimeoutExpired as error:
        code, stderr = 124, (error.stderr or b"").decode(errors="replace") if isinstance(error.stderr, bytes) else ""
    ended = time.time()
    passed = code == 0 and (expect is None or expect in stderr)
    print(f"gpu-check: {'PASS' if passed else 'FAIL'} {name} ({ended - started:.1f} s)", flush=True)
    return {"name": name, "passed": passed, "exit": code, "started": started, "ended": ended,
            "seconds": round(ended - started, 2), "stderr_tail": stderr[-1500:]}


def ballast(headroom_mb: int) -> subprocess.Popen:
    """A process that holds all of GPU 0's free memory but `headroom_mb`, until it is killed."""
    code = ("import sys, time, torch\n"
            "free, total = torch.cuda.mem_get_info(0)\n"
            "keep = free - int(sys.argv[1]) * 2**20\n"
            "held = torch.empty(max(keep, 0), dtype=torch.uint8, device='cuda:0')\n"
            "print('held', keep, flush=True)\n"
            "time.sleep(3600)\n")
    process = subprocess.Popen([sys.executable, "-c", code, str(headroom_mb)], stdout=subprocess.PIPE, text=True)
    process.stdout.readline()  # the memory is held once it says so
    return process


def site_file(work: Path) -> Path:
    path = work / "site.toml"
    path.write_text(f'[paths]\nmodel_root = "{MODELS}"\n')
    return path


def gpu_figures(samples_path: Path, steps: list[dict]) -> None:
    """Each step's peak GPU memory and mean utilisation, from the sampler's rows in its time span."""
    from whisper_hpc.batch.sampler import read_samples

    samples = [s for s in read_samples(samples_path) if s.gpu is not None]
    for entry in steps:
        inside = [s for s in samples if entry["started"] <= s.time <= entry["ended"]]
        used = [s.gpu_memory_used_bytes for s in inside if s.gpu_memory_used_bytes is not None]
        busy = [s.gpu_util_percent for s in inside if s.gpu_util_percent is not None]
        entry["gpu_memory_peak_mb"] = round(max(used) / 2**20) if used else None
        entry["gpu_util_mean_percent"] = round(sum(busy) / len(busy)) if busy else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, default=ROOT / "build" / "gpu-check")
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the long test recording")
    parser.add_argument("--model", default="tiny.en")
    arguments = parser.parse_args()
    if not has_gpu():
        print("gpu-check: no CUDA GPU visible here; run it on a GPU node (srun --gres=gpu:1 make gpu-check)",
              file=sys.stderr)
        return 2
    import bench_transcribe
    from whisper_hpc.batch.sampler import Sampler

    arguments.report.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WHISPER_MODELS", str(MODELS))
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as folder:
        work = Path(folder)
        parts, texts = bench_transcribe.references(work)
        long = work / "long.wav"
        bench_transcribe.concatenation(parts, texts, arguments.minutes, long)
        clips = []
        for index in range(8):
            clip = work / f"clip {index}.wav"
            bench_transcribe.ffmpeg("-ss", str(index * 3), "-t", "6", "-i", str(SHARED / "sample.wav"), str(clip))
            clips.append(str(clip))
        out = work / "out"
        whisper = [str(BIN / "whisper-hpc")]
        common = ["--model", arguments.model, "--device", "cuda", "--overwrite", "True", "-o", str(out)]
        steps: list[dict] = []
        sampler = Sampler(arguments.report / "samples.tsv", os.getpid(), interval=1.0)
        with sampler:
            steps.append(step("doctor", whisper + ["doctor"]))
            for compute_type in ("float16", "int8_float16"):
                steps.append(step(f"faster-whisper {compute_type}",
                                  whisper + [str(long), *common, "--compute_type", compute_type]))
            steps.append(step("openai-whisper float16", whisper + [str(long), *common, "--backend", "openai-whisper",
                                                                   "--compute_type", "float16"]))
            steps.append(step("batched (--batch_size 16)", whisper + [str(long), *common, "--batch_size", "16"]))
            steps.append(step("diarization on the GPU", whisper + [str(SHARED / "sample.wav"), *common, "--diarize",
                                                                   "True"]))
            steps.append(step("two workers on one GPU", whisper + [*clips, *common, "--gpu_workers", "2"]))
            for headroom in BALLAST_HEADROOM_MB:
                holder = ballast(headroom)
                try:
                    result = step(f"out-of-memory back-off ({headroom} MB free)",
                                  whisper + [str(long), *common, "--batch_size", "256"], expect="ran out of memory")
                finally:
                    holder.kill()
                    holder.wait()
                steps.append(result)
                if result["passed"]:
                    break
            image = ROOT / "build" / "images" / "whisper.sif"
            bound = arguments.report / "jfk.wav"  # below the working directory, which the wrapper binds
            bench_transcribe.ffmpeg("-i", str(parts[0]), str(bound))
            steps.append(step("image with --nv through the wrapper",
                              [str(ROOT / "wrapper" / "singularity_wrapper"), "run", str(bound), "--model",
                               arguments.model, "--device", "cuda", "--overwrite", "True", "-o", str(arguments.report)],
                              env={"CONTAINER_IMAGE": str(image), "WHISPER_HPC_SITE": str(site_file(work))}))
        gpu_figures(arguments.report / "samples.tsv", steps)
    lines = [f"{'PASS' if s['passed'] else 'FAIL'}  {s['name']:42s} {s['seconds']:7.1f} s  "
             f"GPU memory peak {s['gpu_memory_peak_mb']} MB  utilisation {s['gpu_util_mean_percent']} %" for s in steps]
    (arguments.report / "report.txt").write_text("\n".join(lines) + "\n")
    (arguments.report / "report.json").write_text(json.dumps(steps, indent=2) + "\n")
    print("\n".join(lines))
    print(f"gpu-check: report in {arguments.report}/report.txt")
    return 0 if all(s["passed"] for s in steps) else 1


if __name__ == "__main__":
    raise SystemExit(main())
