"""Bench: `whisper-hpc --diarize` on long real audio; peak memory must not grow with the duration.

    SHARED_DATA=../shared/data .venv/bin/python tests/bench_diarization.py [--minutes 10,60]

Builds concatenations of the shared real recordings (build/bench/speech-<N>min.wav, 16 kHz mono),
runs the real command on each (tiny.en, the staged diarization pipeline, 2 threads) one after
the other, and prints wall time, real-time factor, the diarization's share of the time, and the
peak resident memory of the run (getrusage of the finished child). Ratios between the rows of
one run are what to compare; absolute times depend on what else the machine is doing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RECORDINGS = ("sample.wav", "jfk.flac", "multilingual.mp3", "hotwords.mp3", "stereo_diarization.wav")


def concatenation(shared: Path, minutes: int, folder: Path) -> Path:
    """The shared recordings, one after another, repeated up to `minutes` (16 kHz mono 16-bit WAV)."""
    import wave

    import numpy as np

    from whisper_hpc.audio import SAMPLE_RATE, decode

    target = folder / f"speech-{minutes}min.wav"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    pieces = [decode(shared / name) for name in RECORDINGS if (shared / name).is_file()]
    one_pass = np.concatenate(pieces)
    total = minutes * 60 * SAMPLE_RATE
    samples = np.resize(one_pass, total)  # repeats the recordings as often as needed
    partial = target.with_suffix(".partial")
    with wave.open(str(partial), "wb") as stream:
        stream.setnchannels(1)
        stream.setsampwidth(2)
        stream.setframerate(SAMPLE_RATE)
        stream.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    partial.rename(target)
    return target


def run(audio: Path, out: Path, threads: int) -> dict:
    """One real run in a child process; its peak RSS is the largest of the children waited for so far."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    environment = {**os.environ, "SLURM_CPUS_PER_TASK": str(threads)}
    started = time.monotonic()
    result = subprocess.run([str(BIN / "whisper-hpc"), str(audio), "--model", "tiny.en", "--diarize", "-o", str(out),
                             "-f", "json,rttm", "--overwrite"], env=environment, capture_output=True, text=True)
    wall = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"bench: whisper-hpc failed on {audio}:\n{result.stderr}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    transcript = json.loads((out / f"{audio.stem}.json").read_text(encoding="utf-8"))
    return {
        "audio": audio.name, "seconds": transcript["duration"], "wall": wall,
        "diarization": transcript["diarization"]["wall_time"], "speakers": len(transcript["speakers"]),
        "peak_mb": peak / 1024 if peak > before else None,  # None: not above an earlier, larger run
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", default="10,60", help="durations to build and run, in minutes (default 10,60)")
    parser.add_argument("--threads", type=int, default=2)
    arguments = parser.parse_args(argv)
    shared = Path(os.environ.get("SHARED_DATA", ROOT.parent / "shared" / "data"))
    durations = sorted(int(m) for m in arguments.minutes.split(","))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-diarization-") as scratch:
        for minutes in durations:  # shortest first: getrusage keeps the maximum over children
            audio = concatenation(shared, minutes, ROOT / "build" / "bench")
            rows.append(run(audio, Path(scratch) / f"out-{minutes}", arguments.threads))
            row = rows[-1]
            peak = f"{row['peak_mb']:.0f} MB" if row["peak_mb"] else "not above the previous row"
            print(f"{row['audio']}: {row['seconds'] / 60:.1f} min of audio in {row['wall']:.0f} s "
                  f"(RTF {row['wall'] / row['seconds']:.3f}; diarization {row['diarization']:.0f} s, "
                  f"RTF {row['diarization'] / row['seconds']:.3f}), {row['speakers']} speakers, peak RSS {peak}",
                  flush=True)
    if len(rows) > 1 and all(r["peak_mb"] for r in rows):
        print(f"peak memory, {durations[-1]} min vs {durations[0]} min of audio: "
              f"{rows[-1]['peak_mb'] / rows[0]['peak_mb']:.2f}x for {durations[-1] / durations[0]:.0f}x the audio")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
