"""`make bench-finetune`: whisper-finetune's training speed on 1 and 2 ranks, side by side in one run.

Prepares a run directory of real speech (jfk.flac and the two channels of stereo_diarization.wav,
at several sample rates so there are enough clips) on the model asked for, then trains the same
global batch with one process and with two ranks (torchrun, gloo on CPU, NCCL where there are
GPUs), in turns, and prints steps/s, tokens/s (from the trainer's last progress line), peak
memory of the largest process and the 2-rank / 1-rank ratio. On a shared 2-core machine no
speed-up is expected: the point is to report what is measured.

    python tests/bench_finetune.py [--model tiny.en] [--steps 6] [--batch 4] [--method lora] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_transcribe import MODELS, SHARED, ffmpeg, run_recorded  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent / "infra"))
from cluster import free_ports  # noqa: E402

BIN = Path(sys.executable).parent
RATES = (16000, 22050, 32000, 44100)
PROGRESS = re.compile(r"^step (\d+)/(\d+) loss \S+ tokens/s (\d+)", re.MULTILINE)


def manifest(folder: Path) -> Path:
    """Twelve real clips with their reference text: three recordings at four sample rates."""
    refs = dict(line.split("\t", 1) for line in (SHARED / "refs.tsv").read_text().splitlines() if "\t" in line)
    lines = []
    for rate in RATES:
        ffmpeg("-i", str(SHARED / "jfk.flac"), "-ar", str(rate), str(folder / f"jfk-{rate}.wav"))
        lines.append(f"jfk-{rate}.wav\t{refs['jfk.flac']}")
        for index, side in enumerate(("left", "right")):
            name = f"stereo-{side}-{rate}.wav"
            ffmpeg("-i", str(SHARED / "stereo_diarization.wav"), "-af", f"pan=mono|c0=c{index}", "-ar", str(rate),
                   str(folder / name))
            lines.append(f"{name}\t{refs[f'stereo_diarization.wav:{side}']}")
    path = folder / "train.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tokens_per_second(output: str) -> float:
    rates = [int(m.group(3)) for m in PROGRESS.finditer(output)]
    return sum(rates[1:]) / len(rates[1:]) if len(rates) > 1 else float(rates[0]) if rates else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4, help="global batch (clips per step), even")
    parser.add_argument("--method", choices=("lora", "full"), default="lora")
    parser.add_argument("--repeats", type=int, default=2)
    arguments = parser.parse_args()
    threads = os.cpu_count() or 2
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as name:
        work = Path(name)
        (work / "data").mkdir()
        env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8",
               "WHISPER_MODELS": str(MODELS), "GLOO_SOCKET_IFNAME": "lo"}
        prepared = work / "prepared"
        subprocess.run([str(BIN / "python"), "-m", "whisper_hpc.finetune", "prepare", str(manifest(work / "data")),
                        "--model", arguments.model, "--output", str(prepared), "--eval_fraction", "0"],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        results: dict[int, list[dict]] = {1: [], 2: []}
        for _ in range(arguments.repeats):
            for ranks in (1, 2):  # in turns, so that load drifts hit both
                # each rank gets its share of the cores, as torchrun's OMP_NUM_THREADS would
                share = {"OMP_NUM_THREADS": str(max(1, threads // ranks))}
                output = run_logged(prepared, work, ranks, arguments, {**env, **share})
                results[ranks].append(output)
        print(f"whisper-finetune {arguments.method} on {arguments.model}, {arguments.steps} steps of "
              f"{arguments.batch} clips, {threads} cores, median of {arguments.repeats}")
        medians = {}
        for ranks, runs in results.items():
            walls = sorted(r["wall"] for r in runs)
            wall = walls[len(walls) // 2]
            tokens = sorted(r["tokens"] for r in runs)[len(runs) // 2]
            peak = max(r["peak"] for r in runs)
            medians[ranks] = tokens
            print(f"  {ranks} rank{'s' if ranks > 1 else ' '}: {arguments.steps / wall:.3f} steps/s end to end "
                  f"({wall:.1f} s, start-up included), {tokens:.0f} tokens/s in training, peak {peak:.0f} MB "
                  "(largest process)")
        print(f"  scaling, 2 ranks / 1 rank (tokens/s): {medians[2] / medians[1]:.2f}x")
    return 0


def run_logged(prepared: Path, work: Path, ranks: int, arguments, env: dict) -> dict:
    """One training run; its wall time, peak memory and the tokens/s its progress lines give."""
    run = work / f"run-{ranks}"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(prepared, run)
    flags = ["train", str(run), "--method", arguments.method, "--max_steps", str(arguments.steps),
             "--batch_size", str(arguments.batch // ranks), "--save_every", "0", "--log_every", "1"]
    if ranks == 1:
        command = [str(BIN / "python"), "-m", "whisper_hpc.finetune", *flags]
    else:
        command = [str(BIN / "python"), "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node",
                   str(ranks), "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{free_ports(1)[0]}",
                   "-m", "whisper_hpc.finetune", *flags]
    wall, peak, output = run_recorded(command, work, env)
    return {"wall": wall, "peak": peak, "tokens": tokens_per_second(output)}


if __name__ == "__main__":
    raise SystemExit(main())
