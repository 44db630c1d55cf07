"""`make bench` for the engine: our command vs the plain openai-whisper CLI vs bare faster-whisper.

Everything runs side by side in one run on the same audio and model, and the figures that
matter are ratios, since these machines are shared and absolute times drift with load.

    python tests/bench_transcribe.py [--minutes 10] [--model tiny.en] [--memory-minutes 1,10,30,60] [--repeats 3]
                                    [--only-settings | --only-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wer import word_error_rate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHARED = Path(os.environ.get("SHARED_DATA", ROOT.parent / "shared" / "data"))
MODELS = Path(os.environ.get("WHISPER_MODELS", ROOT / "build" / "models"))
ENGLISH_SECONDS = 29.5  # the English half of multilingual.mp3


def run_measured(command: list[str], cwd: Path, env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one child process and everything it waits for."""
    wall, peak, _ = run_recorded(command, cwd, env)
    return wall, peak


def run_recorded(command: list[str], cwd: Path, env: dict | None = None) -> tuple[float, float, str]:
    """run_measured, and what the child printed (stdout and stderr), kept in a file rather than a
    pipe: wait4 gives the peak of the whole tree, and a child must not block on a full pipe meanwhile."""
    with tempfile.TemporaryFile() as log:
        started = time.monotonic()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.monotonic() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read().decode(errors="replace")
    if process.returncode != 0:
        raise SystemExit(f"benchmark command failed: {' '.join(command)}\n{output[-3000:]}")
    return wall, usage.ru_maxrss / 1024, output


def ffmpeg(*arguments: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *arguments], check=True)


def references(work: Path) -> tuple[list[Path], list[str]]:
    """Three real recordings with reference transcripts."""
    refs = dict(line.split("\t", 1) for line in (SHARED / "refs.tsv").read_text().splitlines() if "\t" in line)
    english = work / "english.wav"
    ffmpeg("-i", str(SHARED / "multilingual.mp3"), "-t", str(ENGLISH_SECONDS), "-ar", "16000", "-ac", "1", str(english))
    jfk = work / "jfk.wav"
    ffmpeg("-i", str(SHARED / "jfk.flac"), "-ar", "16000", "-ac", "1", str(jfk))
    sample_text = pyannote_sample_text()
    from test_transcribe import MIT_ENGLISH  # the reference lives with the tests

    return [jfk, SHARED / "sample.wav", english], [refs["jfk.flac"], sample_text, MIT_ENGLISH]


def pyannote_sample_text() -> str:
    wheel = sorted((ROOT / "build" / "demo" / "wheel").glob("pyannote_audio-*.whl"))[0]
    stm = zipfile.ZipFile(wheel).read("pyannote/audio/sample/sample.stm").decode()
    return " ".join(line.split(maxsplit=5)[5] for line in stm.splitlines() if line.strip())


def concatenation(parts: list[Path], texts: list[str], minutes: float, target: Path) -> str:
    """A long file made of real recordings, repeated until it lasts `minutes`; its reference text."""
    listing = target.with_suffix(".txt")
    durations = [probe_seconds(p) for p in parts]
    sequence, total, reference = [], 0.0, []
    while total < minutes * 60:
        for part, seconds, text in zip(parts, durations, texts):
            sequence.append(part)
            reference.append(text)
            total += seconds
    listing.write_text("".join(f"file '{p}'\n" for p in sequence))
    ffmpeg("-f", "concat", "-safe", "0", "-i", str(listing), "-ar", "16000", "-ac", "1", str(target))
    return " ".join(reference)


def probe_seconds(path: Path) -> float:
    output = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
                            capture_output=True, text=True, check=True).stdout
    return float(output)


def ours(audio: Path, model: str, out: Path, *extra: str) -> tuple[float, float, str]:
    wall, rss = run_measured([str(BIN / "whisper-hpc"), str(audio), "--model", model, "-o", str(out), "-f", "json",
                              "--overwrite", *extra], cwd=out)
    return wall, rss, json.loads((out / f"{audio.stem}.json").read_text())["text"]


def openai_cli(audio: Path, model: str, out: Path) -> tuple[float, float, str]:
    checkpoint = MODELS / model / "openai-whisper.pt"
    wall, rss = run_measured([str(BIN / "whisper"), str(audio), "--model", str(checkpoint), "--output_dir", str(out),
                              "--output_format", "txt", "--language", "en"], cwd=out)
    return wall, rss, (out / f"{audio.stem}.txt").read_text()


BARE_FASTER_WHISPER = """
import json, sys, time
from faster_whisper import WhisperModel
model = WhisperModel(sys.argv[1], device="cpu", compute_type="int8", cpu_threads=int(sys.argv[3]))
list(model.transcribe(sys.argv[2], beam_size=5, language="en")[0])   # warm-up
started = time.monotonic()
segments, info = model.transcribe(sys.argv[2], beam_size=5, language="en")
text = " ".join(s.text.strip() for s in segments)
print(json.dumps({"seconds": time.monotonic() - started, "text": text}))
"""


def bare_faster_whisper(audio: Path, model: str, threads: int) -> tuple[float, str]:
    result = subprocess.run([str(BIN / "python"), "-c", BARE_FASTER_WHISPER, str(MODELS / model), str(audio), str(threads)],
                            capture_output=True, text=True, check=True)
    data = json.loads(result.stdout.strip().splitlines()[-1])
    return data["seconds"], data["text"]


def settings_on_long_file(audio: Path, reference: str, model: str, work: Path) -> None:
    """Default, VAD and batched inference (cut by VAD, or in fixed 30 s clips) side by side on one file."""
    seconds = probe_seconds(audio)
    settings = {
        "default": (),
        "--vad_filter True": ("--vad_filter", "True"),
        "--batched True (cut by VAD)": ("--batched", "True"),
        "--batched True, fixed 30 s clips": ("--batched", "True", "--clip_timestamps", f"0,{seconds:.3f}"),
    }
    print(f"\n2b. settings side by side on the same {seconds / 60:.1f} min file")
    baseline = None
    for label, flags in settings.items():
        wall, rss, text = ours(audio, model, work, *flags)
        baseline = baseline or wall
        print(f"  {label:34s} {wall:6.1f} s  {rss:6.0f} MB  WER {word_error_rate(reference, text):.3f}  "
              f"{baseline / wall:5.2f}x the default")


def memory_as_audio_grows(parts: list[Path], texts: list[str], lengths: str, model: str, work: Path) -> None:
    """Peak memory of our command (decoding ahead on its own thread) on ever longer audio."""
    print("\n3. peak memory of our command as the audio grows")
    for length in [float(m) for m in lengths.split(",")]:
        audio = work / f"memory-{length:g}.wav"
        concatenation(parts, texts, length, audio)
        wall, rss, _ = ours(audio, model, work)
        print(f"  {probe_seconds(audio) / 60:5.1f} min  {rss:6.0f} MB peak  {wall:6.1f} s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the long file (default 10)")
    parser.add_argument("--memory-minutes", default="1,10,30,60", help="lengths for the memory check")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each command on jfk (default 3)")
    parser.add_argument("--only-settings", action="store_true", help="run only the settings comparison (2b)")
    parser.add_argument("--only-memory", action="store_true", help="run only the memory check (3)")
    arguments = parser.parse_args()
    threads = len(os.sched_getaffinity(0))
    os.environ.setdefault("WHISPER_MODELS", str(MODELS))
    print(f"model {arguments.model}, {threads} threads, load average {os.getloadavg()[0]:.2f} at start")
    with tempfile.TemporaryDirectory(prefix="whisper-bench-") as scratch:
        work = Path(scratch)
        parts, texts = references(work)
        jfk_reference = texts[0]
        if arguments.only_settings:
            long_audio = work / "long.wav"
            settings_on_long_file(long_audio, concatenation(parts, texts, arguments.minutes, long_audio),
                                  arguments.model, work)
            return 0
        if arguments.only_memory:
            memory_as_audio_grows(parts, texts, arguments.memory_minutes, arguments.model, work)
            return 0

        print(f"\n1. end to end on jfk (11 s): our command vs the plain openai-whisper CLI, "
              f"median of {arguments.repeats} runs each, taken in turns")
        ours_runs, cli_runs = [], []
        for _ in range(arguments.repeats):  # in turns, so both see the same load and the same warm page cache
            ours_runs.append(ours(parts[0], arguments.model, work))
            cli_runs.append(openai_cli(parts[0], arguments.model, work))
        ours_wall, ours_rss, ours_text = sorted(ours_runs)[len(ours_runs) // 2]
        cli_wall, cli_rss, cli_text = sorted(cli_runs)[len(cli_runs) // 2]
        print(f"  whisper-hpc      {ours_wall:6.1f} s  {ours_rss:6.0f} MB  WER {word_error_rate(jfk_reference, ours_text):.3f}")
        print(f"  openai CLI       {cli_wall:6.1f} s  {cli_rss:6.0f} MB  WER {word_error_rate(jfk_reference, cli_text):.3f}")
        print(f"  speed-up         {cli_wall / ours_wall:6.2f}x   (target >= 3x at equal or better WER)")

        long_audio = work / "long.wav"
        long_reference = concatenation(parts, texts, arguments.minutes, long_audio)
        minutes = probe_seconds(long_audio) / 60
        print(f"\n2. end to end on {minutes:.1f} min of concatenated real recordings")
        ours_wall, ours_rss, ours_text = ours(long_audio, arguments.model, work)
        cli_wall, cli_rss, cli_text = openai_cli(long_audio, arguments.model, work)
        bare_seconds, bare_text = bare_faster_whisper(long_audio, arguments.model, threads)
        ours_wer, cli_wer = word_error_rate(long_reference, ours_text), word_error_rate(long_reference, cli_text)
        print(f"  whisper-hpc      {ours_wall:6.1f} s  {ours_rss:6.0f} MB  WER {ours_wer:.3f}")
        print(f"  openai CLI       {cli_wall:6.1f} s  {cli_rss:6.0f} MB  WER {cli_wer:.3f}")
        print(f"  bare engine      {bare_seconds:6.1f} s  (warm faster-whisper, transcribe only)  "
              f"WER {word_error_rate(long_reference, bare_text):.3f}")
        print(f"  speed-up vs CLI  {cli_wall / ours_wall:6.2f}x   (target >= 3x)")
        print(f"  our overhead     {100 * (ours_wall / bare_seconds - 1):6.1f} %  over the bare call "
              "(target < 10 %; includes process start, model load and decoding)")

        settings_on_long_file(long_audio, long_reference, arguments.model, work)

        memory_as_audio_grows(parts, texts, arguments.memory_minutes, arguments.model, work)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
