"""`make bench-peers`: whisper-hpc side by side with its peers, in one run, on the same audio and model.

    whisper-hpc          our command (the whisper venv), default settings
    whisper-ctranslate2  the same engine's own command line, --model_directory on our staged folder
    whisperx             --no_align, on our staged CTranslate2 folder (its own VAD and batching)
    whisper.cpp          pywhispercpp's `pwcpp`, on a ggml file our converter writes from the staged
                         openai-whisper.pt (`whisper-models export --format ggml`), its defaults (greedy)
    openai CLI           `whisper`, on the staged openai-whisper.pt

The peers live in their own venv, build/peers/venv (requirements/peers-bench.lock, `make peers-venv`).
Every command gets 2 threads (or --threads), runs without network (in a network namespace when
`unshare -n` works here, and with HF_HUB_OFFLINE=1 in any case) and with an empty HOME.

Two workloads:
  long   one long file: the shared recordings concatenated until it lasts --minutes
         (bench_transcribe's `references` and `concatenation`)
  clips  12 short real clips cut from the shared recordings at the pauses between utterances
         (each with its reference text), all in one invocation of each command

It prints wall time, how many times our wall time each took ("x ours": above 1, we are faster) and
WER. The machines are shared: the ratios from one run are what to read, not the seconds.

    python tests/bench_peers.py [--minutes 10] [--rounds 1] [--threads 2] [--only long|clips]
                                [--peers whisper-ctranslate2,whisperx,whisper.cpp,openai]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_transcribe import concatenation, ffmpeg, probe_seconds, references, run_measured  # noqa: E402
from wer import word_error_rate  # noqa: E402

ROOT = HERE.parent
BIN = Path(sys.executable).parent
SHARED = Path(os.environ.get("SHARED_DATA", ROOT.parent / "shared" / "data"))
MODELS = Path(os.environ.get("WHISPER_MODELS", ROOT / "build" / "models"))
PEERS_VENV = Path(os.environ.get("PEERS_VENV", ROOT / "build" / "peers" / "venv"))
PEERS = ("whisper-ctranslate2", "whisperx", "whisper.cpp", "openai")

# whisperx's command line imports torchaudio (for alignment, unused with --no_align). The torchaudio
# wheel's compiled extension is built for another torch than the CPU torch of our locks; torchaudio
# supports running without it, so import it in that mode first, then run whisperx's own `cli()`.
WHISPERX = """
import importlib.util, sys
try:
    import torchaudio
except OSError:
    for name in [n for n in sys.modules if n == "torchaudio" or n.startswith("torchaudio.")]:
        del sys.modules[name]
    location = importlib.util.find_spec("torchaudio").submodule_search_locations[0] + "/_extension/utils.py"
    spec = importlib.util.spec_from_file_location("torchaudio._extension.utils", location)
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    utils._load_lib = lambda library: False
    sys.modules["torchaudio._extension.utils"] = utils
    import torchaudio
from whisperx.__main__ import cli
sys.argv[0] = "whisperx"
cli()
"""


@dataclass(frozen=True)
class Clip:
    source: str
    start: float
    end: float
    text: str
    channel: int | None = None  # of a stereo source: 0 left, 1 right


def clips_from_recordings() -> list[Clip]:
    """12 short clips of real speech, cut in the pauses between utterances, with their references:
    jfk at its pause after "Americans", each channel of stereo_diarization.wav (refs.tsv), and
    sample.wav at the turns of its reference transcript (sample.stm in the pyannote wheel)."""
    refs = dict(line.split("\t", 1) for line in (SHARED / "refs.tsv").read_text().splitlines() if "\t" in line)
    jfk = refs["jfk.flac"]
    first, rest = jfk.split(", ", 1)
    clips = [Clip("jfk.flac", 0.0, 2.8, first + ","), Clip("jfk.flac", 2.8, 11.0, rest),
             Clip("stereo_diarization.wav", 0.0, 5.0, refs["stereo_diarization.wav:left"], 0),
             Clip("stereo_diarization.wav", 0.0, 5.0, refs["stereo_diarization.wav:right"], 1)]
    wheel = sorted((ROOT / "build" / "demo" / "wheel").glob("pyannote_audio-*.whl"))[0]
    stm = zipfile.ZipFile(wheel).read("pyannote/audio/sample/sample.stm").decode()
    turns = [(float(start), float(end), text) for _, _, _, start, end, text in
             (line.split(maxsplit=5) for line in stm.splitlines() if line.strip())]
    groups = [[0, 1, 2, 3], [4, 5], [6], [7], [8, 9], [10], [11], [12]]  # 8 clips of 1.5-4.5 s
    for number, group in enumerate(groups):
        start = 6.3 if number == 0 else (turns[group[0] - 1][1] + turns[group[0]][0]) / 2
        end = 30.0 if group[-1] == len(turns) - 1 else (turns[group[-1]][1] + turns[group[-1] + 1][0]) / 2
        clips.append(Clip("sample.wav", start, end, " ".join(turns[i][2] for i in group)))
    return clips


def cut_clips(folder: Path) -> tuple[list[Path], list[str]]:
    """The clips as files in `folder`, in several containers, and their reference texts."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, texts = [], []
    for number, clip in enumerate(clips_from_recordings(), start=1):
        path = folder / f"clip{number:02d}.{('wav', 'flac', 'mp3')[number % 3]}"
        channel = ["-af", f"pan=mono|c0=c{clip.channel}"] if clip.channel is not None else ["-ac", "1"]
        ffmpeg("-ss", f"{clip.start:.3f}", "-t", f"{clip.end - clip.start:.3f}", "-i", str(SHARED / clip.source),
               *channel, "-ar", "16000", str(path))
        paths.append(path)
        texts.append(clip.text)
    return paths, texts


def offline_prefix() -> list[str]:
    """`unshare -n` (no network at all) where this user may create a network namespace, else nothing."""
    prefix = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
    probe = subprocess.run([*prefix, "true"], capture_output=True)
    return prefix if probe.returncode == 0 else []


def environment(work: Path, threads: int) -> dict[str, str]:
    home = work / "home"
    home.mkdir(exist_ok=True)
    return {
        "PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(work), "LANG": "C.UTF-8",
        "XDG_CACHE_HOME": str(home / ".cache"), "WHISPER_MODELS": str(MODELS),
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
        "PYANNOTE_METRICS_ENABLED": "0", "SLURM_CPUS_PER_TASK": str(threads),
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
    }


@dataclass
class Setup:
    model: str
    threads: int
    work: Path
    env: dict[str, str]
    prefix: list[str]
    ggml: Path | None = None


def ggml_model(setup: Setup) -> Path:
    """whisper.cpp's model file for the staged model, written by our converter."""
    output = setup.work / "ggml"
    shutil.rmtree(output, ignore_errors=True)
    subprocess.run([*setup.prefix, str(BIN / "whisper-models"), "--root", str(MODELS), "export", setup.model,
                    "--format", "ggml", "--output", str(output)], env=setup.env, check=True, stdout=subprocess.DEVNULL)
    return output / f"ggml-{setup.model}.bin"


def transcripts(out: Path, audio: list[Path], suffix: str) -> list[str]:
    return [(out / f"{path.stem}{suffix}").read_text(encoding="utf-8") for path in audio]


def fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def run_ours(setup: Setup, audio: list[Path], out: Path) -> tuple[float, float, list[str]]:
    wall, rss = run_measured([*setup.prefix, str(BIN / "whisper-hpc"), *map(str, audio), "--model", setup.model,
                              "--threads", str(setup.threads), "--language", "en", "-o", str(out), "-f", "txt",
                              "--overwrite"], cwd=out, env=setup.env)
    return wall, rss, transcripts(out, audio, ".txt")


def run_ctranslate2(setup: Setup, audio: list[Path], out: Path) -> tuple[float, float, list[str]]:
    wall, rss = run_measured([*setup.prefix, str(PEERS_VENV / "bin" / "whisper-ctranslate2"), *map(str, audio),
                              "--model_directory", str(MODELS / setup.model), "--local_files_only", "True",
                              "--threads", str(setup.threads), "--language", "en", "--output_dir", str(out),
                              "--output_format", "txt", "--verbose", "False"], cwd=out, env=setup.env)
    return wall, rss, transcripts(out, audio, ".txt")


def run_whisperx(setup: Setup, audio: list[Path], out: Path) -> tuple[float, float, list[str]]:
    wall, rss = run_measured([*setup.prefix, str(PEERS_VENV / "bin" / "python"), "-c", WHISPERX, *map(str, audio),
                              "--model", str(MODELS / setup.model), "--model_cache_only", "True", "--no_align",
                              "--compute_type", "int8", "--threads", str(setup.threads), "--language", "en",
                              "--output_dir", str(out), "--output_format", "txt", "--verbose", "False"],
                             cwd=out, env=setup.env)
    return wall, rss, transcripts(out, audio, ".txt")


def run_whisper_cpp(setup: Setup, audio: list[Path], out: Path) -> tuple[float, float, list[str]]:
    links = []  # pwcpp writes FILE.txt beside each input: give it links to the audio in its own folder
    for path in audio:
        link = out / path.name
        link.symlink_to(path)
        links.append(link)
    wall, rss = run_measured([*setup.prefix, str(PEERS_VENV / "bin" / "pwcpp"), *map(str, links), "-m", str(setup.ggml),
                              "--n_threads", str(setup.threads), "--language", "en", "--print_progress", "False",
                              "-otxt"], cwd=out, env=setup.env)
    return wall, rss, [(out / f"{path.name}.txt").read_text(encoding="utf-8") for path in audio]


def run_openai(setup: Setup, audio: list[Path], out: Path) -> tuple[float, float, list[str]]:
    # By path: `--model tiny.en --model_dir D` accepts only the official download (its SHA-256 is
    # checked, anything else is "re-downloaded"), and our staged checkpoint is converted, not downloaded.
    wall, rss = run_measured([*setup.prefix, str(PEERS_VENV / "bin" / "whisper"), *map(str, audio),
                              "--model", str(MODELS / setup.model / "openai-whisper.pt"), "--threads", str(setup.threads),
                              "--language", "en", "--output_dir", str(out), "--output_format", "txt",
                              "--verbose", "False"], cwd=out, env=setup.env)
    return wall, rss, transcripts(out, audio, ".txt")


COMMANDS: dict[str, Callable[[Setup, list[Path], Path], tuple[float, float, list[str]]]] = {
    "whisper-hpc": run_ours, "whisper-ctranslate2": run_ctranslate2, "whisperx": run_whisperx,
    "whisper.cpp": run_whisper_cpp, "openai": run_openai,
}
LABELS = {"whisper-hpc": "whisper-hpc", "whisper-ctranslate2": "whisper-ctranslate2", "whisperx": "whisperx --no_align",
          "whisper.cpp": "whisper.cpp (greedy)", "openai": "openai CLI"}


def side_by_side(setup: Setup, title: str, audio: list[Path], texts: list[str], names: list[str], rounds: int) -> dict:
    """Every command on the same audio, `rounds` times in turns; medians, ratios to ours, WER."""
    print(f"\n{title}", flush=True)
    walls: dict[str, list[float]] = {name: [] for name in names}
    reference = " ".join(texts)
    figures = {}
    for round_number in range(rounds):  # in turns, so that each sees the same load and the same warm page cache
        for name in names:  # ours first: in the last round each line is printed as soon as its command ends
            wall, rss, outputs = COMMANDS[name](setup, audio, fresh(setup.work / "out" / name))
            walls[name].append(wall)
            if round_number < rounds - 1:
                continue
            median = statistics.median(walls[name])
            error = word_error_rate(reference, " ".join(outputs))
            figures[name] = (median, error)
            ours = figures["whisper-hpc"][0]
            spread = f"  ({', '.join(f'{w:.1f}' for w in walls[name])})" if rounds > 1 else ""
            print(f"  {LABELS[name]:22s} {median:7.1f} s  {median / ours:5.2f}x ours  {rss:6.0f} MB  "
                  f"WER {error:.3f}{spread}  load {os.getloadavg()[0]:.1f}", flush=True)
    return figures


def check_peers(names: list[str]) -> None:
    missing = [str(PEERS_VENV / "bin" / tool) for tool in ("whisper-ctranslate2", "pwcpp", "whisper", "python")
               if not (PEERS_VENV / "bin" / tool).exists()]
    if missing and any(name != "whisper-hpc" for name in names):
        raise SystemExit(f"the peers' venv is incomplete ({', '.join(missing)} missing); run `make peers-venv`")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the long file (default 10)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each command, taken in turns (median counts)")
    parser.add_argument("--threads", type=int, default=2, help="threads for every command (default 2)")
    parser.add_argument("--only", choices=("long", "clips"), help="run one workload only")
    parser.add_argument("--peers", default=",".join(PEERS), help=f"which peers (default: {','.join(PEERS)})")
    arguments = parser.parse_args()
    peers = [name for name in arguments.peers.split(",") if name]
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        parser.error(f"unknown peers: {', '.join(unknown)} (known: {', '.join(PEERS)})")
    names = ["whisper-hpc", *peers]
    check_peers(names)
    with tempfile.TemporaryDirectory(prefix="whisper-bench-peers-") as scratch:
        work = Path(scratch)
        setup = Setup(arguments.model, arguments.threads, work, environment(work, arguments.threads), offline_prefix())
        print(f"model {arguments.model}, {arguments.threads} threads each, "
              f"{'no network (unshare -n)' if setup.prefix else 'HF_HUB_OFFLINE=1 (no network namespace here)'}, "
              f"load average {os.getloadavg()[0]:.2f} at start", flush=True)
        if "whisper.cpp" in names:
            setup.ggml = ggml_model(setup)
            print(f"ggml model written by `whisper-models export --format ggml`: {setup.ggml.stat().st_size / 1e6:.1f} MB")
        if arguments.only in (None, "long"):
            parts, texts = references(work)
            long_audio = work / "long.wav"
            reference = concatenation(parts, texts, arguments.minutes, long_audio)
            minutes = probe_seconds(long_audio) / 60
            side_by_side(setup, f"long file: {minutes:.1f} min of concatenated real recordings, one file",
                         [long_audio], [reference], names, arguments.rounds)
        if arguments.only in (None, "clips"):
            audio, texts = cut_clips(work / "clips")
            seconds = sum(probe_seconds(path) for path in audio)
            side_by_side(setup, f"many short clips: {len(audio)} real clips ({seconds:.0f} s in all), one invocation",
                         audio, texts, names, arguments.rounds)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
