"""The real `whisper-hpc` command on real speech with real weights, both engines."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from conftest import BIN, ROOT, need
from wer import word_error_rate
from whisper_hpc.writers import FORMATS

pytestmark = pytest.mark.engine
BACKENDS = ("faster-whisper", "openai-whisper")

# The recording's English half reads the MIT licence's permission paragraph; the German half
# reads its German translation, as spoken in the recording (it omits the "Software" aside).
MIT_ENGLISH = (
    "Permission is hereby granted, free of charge, to any person obtaining a copy of this software and "
    "associated documentation files, to deal in the Software without restriction, including without "
    "limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies "
    "of the Software, and to permit persons to whom the Software is furnished to do so, subject to the "
    "following conditions: The above copyright notice and this permission notice shall be included in all "
    "copies or substantial portions of the Software."
)
MIT_GERMAN = (
    "Jedem, der diese Software und die dazugehörigen Dokumentationsdateien erhält, wird hiermit "
    "unentgeltlich die Genehmigung erteilt, mit der Software uneingeschränkt zu verfahren. Dies umfasst "
    "insbesondere das Recht, die Software zu verwenden, zu vervielfältigen, zu modifizieren, "
    "zusammenzufügen, zu veröffentlichen, zu verteilen, unterzulizenzieren und/oder Kopien der Software "
    "zu verkaufen, und diese Rechte unter den folgenden Bedingungen anderen zu übertragen."
)
LANGUAGE_SWITCH_SECONDS = 29.5  # where the English reading ends and the German one begins


def ffmpeg(*arguments: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *arguments], check=True)


def load_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def leftovers(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.name.endswith(".partial")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_jfk_with_both_engines(cli, tmp_path, shared_data, references, backend):
    out = tmp_path / "out"
    result = cli(str(shared_data / "jfk.flac"), "--model", "tiny.en", "--backend", backend, "-o", str(out))
    assert result.returncode == 0, result.stderr
    transcript = load_json(out / "jfk.json")
    assert word_error_rate(references["jfk.flac"], transcript["text"]) <= 0.10
    assert transcript["engine"] == backend and transcript["model"] == "tiny.en"
    assert transcript["language"] == "en"
    assert transcript["duration"] == pytest.approx(11.0, abs=0.05)
    assert transcript["wall_time"] > 0 and transcript["real_time_factor"] > 0
    assert set(transcript["versions"]) >= {"whisper-hpc"}
    assert sorted(p.name for p in out.iterdir()) == sorted(f"jfk.{ext}" for ext in FORMATS)
    assert "1 done, 0 skipped, 0 failed" in result.stderr
    assert re.search(r"\[1/1\] done .*jfk\.flac: 0:11 of audio in [\d.]+ s \(RTF [\d.]+\)", result.stderr)
    assert "\r" not in result.stderr  # a log, not a terminal: no carriage-return spinners
    if backend == "openai-whisper":
        assert result.stderr.count("fp16") <= 1 and "UserWarning" not in result.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_stereo_channels_transcribed_separately(cli, tmp_path, shared_data, references, backend):
    out = tmp_path / "out"
    result = cli(str(shared_data / "stereo_diarization.wav"), "--model", "tiny.en", "--backend", backend,
                 "--split_channels", "True", "-o", str(out), "-f", "json")
    assert result.returncode == 0, result.stderr
    for side in ("left", "right"):
        transcript = load_json(out / f"stereo_diarization.{side}.json")
        assert transcript["channel"] == side
        assert word_error_rate(references[f"stereo_diarization.wav:{side}"], transcript["text"]) <= 0.15
    assert not (out / "stereo_diarization.json").exists()


@pytest.fixture(scope="module")
def language_halves(shared_data, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("halves")
    english, german = folder / "english.wav", folder / "german.wav"
    ffmpeg("-i", str(shared_data / "multilingual.mp3"), "-t", str(LANGUAGE_SWITCH_SECONDS), str(english))
    ffmpeg("-i", str(shared_data / "multilingual.mp3"), "-ss", str(LANGUAGE_SWITCH_SECONDS), str(german))
    return english, german


@pytest.mark.parametrize("backend", BACKENDS)
def test_english_and_german_with_the_multilingual_base_model(cli, tmp_path, language_halves, backend):
    english, german = language_halves
    out = tmp_path / "out"
    result = cli(str(english), str(german), "--model", "base", "--backend", backend, "-o", str(out))
    assert result.returncode == 0, result.stderr
    en, de = load_json(out / "english.json"), load_json(out / "german.json")
    assert en["language"] == "en" and de["language"] == "de"
    assert en["language_probability"] > 0.9 and de["language_probability"] > 0.9
    assert word_error_rate(MIT_ENGLISH, en["text"]) <= 0.15
    assert word_error_rate(MIT_GERMAN, de["text"]) <= 0.35
    for stem, transcript in (("english", en), ("german", de)):
        check_subtitles(out / f"{stem}.srt", out / f"{stem}.vtt", transcript["duration"])


@pytest.fixture(scope="session")
def pyannote_sample_reference() -> str:
    """The transcript that ships with the pyannote.audio sample (sample.stm in its wheel)."""
    wheels = sorted((ROOT / "build" / "demo" / "wheel").glob("pyannote_audio-*.whl"))
    need(bool(wheels), "the pyannote.audio wheel is not downloaded; run `make demo` (make test does)")
    stm = zipfile.ZipFile(wheels[0]).read("pyannote/audio/sample/sample.stm").decode()
    return " ".join(line.split(maxsplit=5)[5] for line in stm.splitlines() if line.strip())


def test_pyannote_sample_conversation(cli, tmp_path, shared_data, pyannote_sample_reference):
    out = tmp_path / "out"
    result = cli(str(shared_data / "sample.wav"), "--model", "tiny.en", "-o", str(out), "-f", "json,srt,vtt")
    assert result.returncode == 0, result.stderr
    transcript = load_json(out / "sample.json")
    assert word_error_rate(pyannote_sample_reference, transcript["text"]) <= 0.35
    check_subtitles(out / "sample.srt", out / "sample.vtt", transcript["duration"])


SRT_CUE = re.compile(r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d{3}) --> (\d\d):(\d\d):(\d\d),(\d{3})\n([^\n]+)\n")
VTT_CUE = re.compile(r"(\d\d):(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d):(\d\d)\.(\d{3})\n([^\n]+)\n")


def seconds(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def check_subtitles(srt: Path, vtt: Path, duration: float) -> None:
    """Well-formed cues, numbered in order, monotonic, inside the audio."""
    srt_text = srt.read_text(encoding="utf-8")
    cues = srt_text.split("\n\n")
    assert cues and all(SRT_CUE.fullmatch(c if c.endswith("\n") else c + "\n") for c in cues), srt_text
    parsed = [SRT_CUE.fullmatch(c if c.endswith("\n") else c + "\n").groups() for c in cues]
    assert [int(p[0]) for p in parsed] == list(range(1, len(parsed) + 1))
    times = [(seconds(*p[1:5]), seconds(*p[5:9])) for p in parsed]
    vtt_text = vtt.read_text(encoding="utf-8")
    assert vtt_text.startswith("WEBVTT\n\n")
    vtt_cues = vtt_text[len("WEBVTT\n\n"):].split("\n\n")
    vtt_times = []
    for cue in vtt_cues:
        match = VTT_CUE.fullmatch(cue if cue.endswith("\n") else cue + "\n")
        assert match, cue
        vtt_times.append((seconds(*match.groups()[0:4]), seconds(*match.groups()[4:8])))
    assert vtt_times == times
    previous_end = 0.0
    for start, end in times:
        assert previous_end - 0.001 <= start <= end <= duration + 0.001
        previous_end = end


@pytest.mark.parametrize("backend", BACKENDS)
def test_word_timestamps_inside_their_segments(cli, tmp_path, shared_data, backend):
    out = tmp_path / "out"
    result = cli(str(shared_data / "jfk.flac"), "--model", "tiny.en", "--backend", backend,
                 "--word_timestamps", "True", "-o", str(out), "-f", "json")
    assert result.returncode == 0, result.stderr
    segments = load_json(out / "jfk.json")["segments"]
    words = [w for s in segments for w in s["words"]]
    assert len(words) >= 20
    for segment in segments:
        for word in segment["words"]:
            assert segment["start"] - 0.01 <= word["start"] <= word["end"] <= segment["end"] + 0.01
    starts = [w["start"] for w in words]
    assert starts == sorted(starts)


def test_batched_inference_and_video_input(cli, tmp_path, shared_data, references):
    video = tmp_path / "talk.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=duration=11:size=64x64:rate=5", "-i", str(shared_data / "jfk.flac"),
           "-shortest", "-c:v", "mpeg4", "-c:a", "aac", str(video))
    out = tmp_path / "out"
    result = cli(str(video), "--model", "tiny.en", "--batch_size", "4", "-o", str(out), "-f", "txt")
    assert result.returncode == 0, result.stderr
    assert word_error_rate(references["jfk.flac"], (out / "talk.txt").read_text()) <= 0.15


def test_a_bad_batch_reports_each_file_and_finishes_the_rest(cli, tmp_path, shared_data):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "empty.wav").write_bytes(b"")
    (inputs / "notes.wav").write_text("this is a text file, not audio\n")
    (inputs / "cut.mp3").write_bytes((shared_data / "multilingual.mp3").read_bytes()[:30000])
    ffmpeg("-f", "lavfi", "-i", "testsrc=duration=1:size=64x64:rate=5", "-c:v", "mpeg4", str(inputs / "silent-film.mp4"))
    strange = inputs / "it's a \"talk\" ünïcødé $(touch pwned).flac"
    shutil.copy(shared_data / "jfk.flac", strange)
    shutil.copy(shared_data / "jfk.flac", inputs / "-leading dash.flac")
    missing = inputs / "missing.wav"
    out = tmp_path / "out"
    result = cli(str(missing), str(inputs), "--model", "tiny.en", "-o", str(out), "-f", "txt,json")
    assert result.returncode == 1
    assert "2 done, 0 skipped, 5 failed" in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 5
    for name, reason in (
        ("missing.wav", "no such file"),
        ("empty.wav", "empty"),
        ("notes.wav", "not an audio or video file"),
        ("cut.mp3", "truncated"),
        ("silent-film.mp4", "no audio stream"),
    ):
        assert any(name in line and reason in line for line in errors), (name, errors)
    assert (out / f"{strange.stem}.txt").read_text().lower().startswith("and so")
    assert (out / "-leading dash.txt").is_file()
    assert not list(tmp_path.rglob("pwned")) and not (tmp_path / "pwned").exists()
    assert not leftovers(out)
    for stem in ("empty", "notes", "cut", "silent-film", "missing"):
        assert not list(out.glob(f"{stem}.*"))


def test_unknown_model_lists_the_staged_ones(cli, tmp_path, shared_data):
    result = cli(str(shared_data / "jfk.flac"), "--model", "large-v9", "-o", str(tmp_path / "out"))
    assert result.returncode == 2
    message = result.stderr.strip()
    assert "large-v9" in message and "tiny.en" in message and "base" in message
    assert "whisper-models" in message
    assert len(message.splitlines()) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_cuda_requested_on_a_cpu_machine(cli, tmp_path, shared_data, backend):
    result = cli(str(shared_data / "jfk.flac"), "--model", "tiny.en", "--device", "cuda", "--backend", backend,
                 "-o", str(tmp_path / "out"))
    assert result.returncode == 2
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1
    assert "CUDA requested" in message and "--device cpu" in message
    assert not (tmp_path / "out" / "jfk.txt").exists()


def test_english_only_model_refuses_other_languages(cli, tmp_path, shared_data):
    result = cli(str(shared_data / "jfk.flac"), "--model", "tiny.en", "--language", "de", "-o", str(tmp_path))
    assert result.returncode == 2 and "English-only" in result.stderr


def test_second_run_skips_and_overwrite_redoes(cli, tmp_path, shared_data):
    out = tmp_path / "out"
    audio = str(shared_data / "jfk.flac")
    cli(audio, "--model", "tiny.en", "-o", str(out), check=True)
    first = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = cli(audio, "--model", "tiny.en", "-o", str(out), check=True)
    assert "0 done, 1 skipped, 0 failed" in again.stderr
    assert "faster-whisper tiny.en" not in again.stderr  # nothing to do: the model is never loaded
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == first
    redo = cli(audio, "--model", "tiny.en", "-o", str(out), "--overwrite", check=True)
    assert "1 done, 0 skipped, 0 failed" in redo.stderr
    assert all(p.stat().st_mtime_ns > first[p.name] for p in out.iterdir())


def test_file_list_and_model_directory_as_whisper_ctranslate2_users_type_it(cli, tmp_path, shared_data, model_root):
    listing = tmp_path / "todo.txt"
    listing.write_text(f"# my files\n{shared_data / 'jfk.flac'}\n\n")
    out = tmp_path / "out"
    result = cli("--file_list", str(listing), "--model_directory", str(model_root / "tiny.en"),
                 "--local_files_only", "True", "--language", "en", "-o", str(out), "-f", "txt")
    assert result.returncode == 0, result.stderr
    assert (out / "jfk.txt").read_text().strip()


def test_offline_in_a_network_namespace_and_nothing_left_behind(cli, tmp_path, shared_data, home):
    unshare = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
    probe = subprocess.run([*unshare, "true"], capture_output=True)
    need(probe.returncode == 0, f"cannot create a network namespace here ({probe.stderr.decode().strip()})")
    out = tmp_path / "out"
    for backend, extra in zip(BACKENDS, (["--vad_filter"], [])):  # the VAD runs in onnxruntime, which writes to $TMPDIR
        result = cli(str(shared_data / "jfk.flac"), "--model", "tiny.en", "--backend", backend, "-o", str(out),
                     "--overwrite", *extra, wrap=unshare)
        assert result.returncode == 0, result.stderr
        assert "And so" in (out / "jfk.txt").read_text()
    assert list(home.rglob("*")) == []
    assert list(cli.scratch.iterdir()) == []  # the per-run directory and every cache in it are gone


def test_openai_engine_converts_a_ctranslate2_only_model_for_the_run(cli, tmp_path, shared_data, model_root):
    only_ct2 = tmp_path / "models" / "tiny.en"
    only_ct2.mkdir(parents=True)
    for name in ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt"):
        os.symlink(model_root / "tiny.en" / name, only_ct2 / name)
    out = tmp_path / "out"
    result = cli(str(shared_data / "jfk.flac"), "--model", "tiny.en", "--backend", "openai-whisper",
                 "-o", str(out), "-f", "txt", env={"WHISPER_MODELS": str(tmp_path / "models")})
    assert result.returncode == 0, result.stderr
    assert "converting" in result.stderr and "whisper-models convert tiny.en" in result.stderr
    assert "And so" in (out / "jfk.txt").read_text()
    assert not (only_ct2 / "openai-whisper.pt").exists()
    assert list(cli.scratch.iterdir()) == []


def test_sigterm_mid_file_leaves_no_partial_output(model_root, shared_data, tmp_path, home):
    """scancel and time limits send SIGTERM: finished files stay, the current one is not written."""
    long_audio = tmp_path / "long.wav"
    ffmpeg("-stream_loop", "5", "-i", str(shared_data / "multilingual.mp3"), str(long_audio))
    out, scratch = tmp_path / "out", tmp_path / "tmp"
    scratch.mkdir()
    environment = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(scratch),
                   "WHISPER_MODELS": str(model_root), "SLURM_CPUS_PER_TASK": "2"}
    process = subprocess.Popen(
        [str(BIN / "whisper-hpc"), str(shared_data / "jfk.flac"), str(long_audio), "--model", "tiny.en",
         "-o", str(out), "--backend", "openai-whisper"],
        env=environment, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 300
    lines = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        lines.append(line)
        if "[1/2] done" in line:
            break
    assert (out / "jfk.json").is_file(), "".join(lines)
    time.sleep(2)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    assert not list(out.glob("long.*"))
    assert not leftovers(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"jfk.{e}" for e in FORMATS)
    assert list(scratch.iterdir()) == []

