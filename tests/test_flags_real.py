"""The peers' flags, each run for real on real speech with real weights, asserting its effect."""

from __future__ import annotations

import csv
import json
import os
import pty
import re
import subprocess
from pathlib import Path

import pytest

from conftest import BIN
from test_transcribe import MIT_ENGLISH, LANGUAGE_SWITCH_SECONDS, ffmpeg, load_json, pyannote_sample_reference  # noqa: F401 - a fixture
from wer import normalise, word_error_rate
from whisper_hpc.audio import probe

pytestmark = pytest.mark.engine
BACKENDS = ("faster-whisper", "openai-whisper")
CUE_TIME = re.compile(r"(\d\d:)?\d\d:\d\d[.,]\d\d\d --> (\d\d:)?\d\d:\d\d[.,]\d\d\d")


def cues(path: Path) -> list[tuple[str, list[str]]]:
    """(timing line, text lines) of each srt or vtt cue."""
    found, lines = [], path.read_text(encoding="utf-8").splitlines()
    for position, line in enumerate(lines):
        if CUE_TIME.fullmatch(line.strip()):
            text = []
            for following in lines[position + 1:]:
                if not following.strip():
                    break
                text.append(following)
            found.append((line, text))
    return found


@pytest.fixture(scope="module")
def speech_silence_speech(shared_data: Path, tmp_path_factory) -> Path:
    """jfk, 40 s of quiet room noise, jfk again: a long stretch where nobody speaks."""
    folder = tmp_path_factory.mktemp("gap")
    target = folder / "gap.wav"
    ffmpeg("-i", str(shared_data / "jfk.flac"), "-f", "lavfi", "-i", "anoisesrc=d=40:c=pink:r=16000:a=0.01",
           "-i", str(shared_data / "jfk.flac"), "-filter_complex", "[0]aresample=16000[a];[2]aresample=16000[c];"
           "[a][1][c]concat=n=3:v=0:a=1", "-ac", "1", str(target))
    return target


def test_hotwords_spell_a_name_the_model_does_not_know(cli, tmp_path, shared_data):
    plain = cli(str(shared_data / "hotwords.mp3"), "--model", "tiny.en", "-o", str(tmp_path / "plain"), "-f", "json")
    hinted = cli(str(shared_data / "hotwords.mp3"), "--model", "tiny.en", "-o", str(tmp_path / "hinted"), "-f", "json",
                 "--hotwords", "ComfyUI")
    assert plain.returncode == hinted.returncode == 0, plain.stderr + hinted.stderr
    assert "comfyui" not in load_json(tmp_path / "plain" / "hotwords.json")["text"].lower()  # "comfy eye"
    transcript = load_json(tmp_path / "hinted" / "hotwords.json")
    assert transcript["text"].lower().count("comfyui") == 2
    assert transcript["options"]["hotwords"] == "ComfyUI"


def test_hotwords_name_the_engine_they_need(cli, tmp_path, shared_data):
    result = cli(str(shared_data / "jfk.flac"), "--model", "tiny.en", "--backend", "openai-whisper",
                 "--hotwords", "ComfyUI", "-o", str(tmp_path))
    assert result.returncode == 2
    assert "--hotwords needs --backend faster-whisper" in result.stderr
    assert not list(tmp_path.glob("jfk.*"))


def test_vad_parameters_turn_the_vad_on_and_are_recorded(cli, tmp_path, speech_silence_speech, references):
    result = cli(str(speech_silence_speech), "--model", "tiny.en", "-o", str(tmp_path), "-f", "json",
                 "--vad_min_silence_duration_ms", "500", "--vad_threshold", "0.4", "--vad_speech_pad_ms", "200",
                 "--vad_max_speech_duration_s", "20", "--vad_min_speech_duration_ms", "100")
    assert result.returncode == 0, result.stderr
    assert "turning on --vad_filter" in result.stderr
    transcript = load_json(tmp_path / "gap.json")
    assert transcript["options"]["vad_filter"] is True
    assert transcript["options"]["vad_parameters"] == {
        "threshold": 0.4, "min_speech_duration_ms": 100, "max_speech_duration_s": 20.0,
        "min_silence_duration_ms": 500, "speech_pad_ms": 200}
    assert word_error_rate(references["jfk.flac"] + " " + references["jfk.flac"], transcript["text"]) <= 0.15
    assert not [s for s in transcript["segments"] if 12 < s["start"] and s["end"] < 50]


def test_multilingual_keeps_each_half_in_its_language(cli, tmp_path, shared_data):
    fixed = cli(str(shared_data / "multilingual.mp3"), "--model", "base", "-o", str(tmp_path / "fixed"), "-f", "json")
    switching = cli(str(shared_data / "multilingual.mp3"), "--model", "base", "-o", str(tmp_path / "multi"),
                    "-f", "json", "--multilingual", "True")
    assert fixed.returncode == switching.returncode == 0, fixed.stderr + switching.stderr
    assert "Genehmigung" not in load_json(tmp_path / "fixed" / "multilingual.json")["text"]  # translated
    transcript = load_json(tmp_path / "multi" / "multilingual.json")
    english = "".join(s["text"] for s in transcript["segments"] if s["end"] <= LANGUAGE_SWITCH_SECONDS + 1)
    german = "".join(s["text"] for s in transcript["segments"] if s["start"] >= LANGUAGE_SWITCH_SECONDS - 1)
    assert word_error_rate(MIT_ENGLISH, english) <= 0.25
    for word in ("Software", "Genehmigung", "Recht", "verkaufen"):
        assert word in german
    assert "Permission" not in german


def test_multilingual_names_the_engine_it_needs(cli, tmp_path, shared_data):
    result = cli(str(shared_data / "multilingual.mp3"), "--model", "base", "--backend", "openai-whisper",
                 "--multilingual", "True", "-o", str(tmp_path))
    assert result.returncode == 2
    assert "--multilingual needs --backend faster-whisper" in result.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_subtitle_layout_limits_hold_in_srt_and_vtt(cli, tmp_path, shared_data, references, backend):
    result = cli(str(shared_data / "jfk.flac"), "--model", "tiny.en", "--backend", backend, "-o", str(tmp_path),
                 "-f", "srt,vtt,json", "--max_line_width", "20", "--max_line_count", "2")
    assert result.returncode == 0, result.stderr
    assert "turning on --word_timestamps" in result.stderr
    for name in ("jfk.srt", "jfk.vtt"):
        found = cues(tmp_path / name)
        assert len(found) >= 3  # 110 characters of speech cannot fit in fewer cues of 2 x 20
        for _, lines in found:
            assert 1 <= len(lines) <= 2
            for line in lines:
                assert len(line) <= 20 or " " not in line.strip(), line
        spoken = " ".join(line for _, lines in found for line in lines)
        assert normalise(spoken) == normalise(load_json(tmp_path / "jfk.json")["text"])


def test_max_words_per_line(cli, tmp_path, shared_data):
    result = cli(str(shared_data / "jfk.flac"), "--model", "tiny.en", "-o", str(tmp_path), "-f", "srt",
                 "--max_words_per_line", "3", "--word_timestamps", "True")
    assert result.returncode == 0, result.stderr
    found = cues(tmp_path / "jfk.srt")
    assert len(found) >= 7 and all(len(" ".join(lines).split()) <= 3 for _, lines in found)


def test_highlight_words_underlines_each_word_in_its_time(cli, tmp_path, shared_data):
    result = cli(str(shared_data / "jfk.flac"), "--model", "tiny.en", "-o", str(tmp_path), "-f", "vtt,json",
                 "--highlight_words", "True")
    assert result.returncode == 0, result.stderr
    words = [w for s in load_json(tmp_path / "jfk.json")["segments"] for w in s["words"]]
    underlined = [(timing, lines) for timing, lines in cues(tmp_path / "jfk.vtt") if "<u>" in " ".join(lines)]
    assert len(underlined) == len(words)
    for (timing, lines), word in zip(underlined, words):
        assert f"<u>{word['word'].strip()}</u>" in " ".join(lines)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hallucination_silence_threshold_leaves_the_silence_empty(cli, tmp_path, speech_silence_speech, references,
                                                                   backend):
    """tiny.en writes nothing into this gap even without the flag (measured); the flag must not lose speech."""
    result = cli(str(speech_silence_speech), "--model", "tiny.en", "--backend", backend, "-o", str(tmp_path),
                 "-f", "json", "--hallucination_silence_threshold", "2", "--no_speech_threshold", "None",
                 "--logprob_threshold", "None")
    assert result.returncode == 0, result.stderr
    transcript = load_json(tmp_path / "gap.json")
    assert transcript["options"]["hallucination_silence_threshold"] == 2.0
    assert transcript["options"]["word_timestamps"] is True
    assert not [s for s in transcript["segments"] if 12 < s["end"] and s["start"] < 50]
    assert word_error_rate(references["jfk.flac"] + " " + references["jfk.flac"], transcript["text"]) <= 0.15


@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_timestamps_transcribe_only_the_stretches_named(cli, tmp_path, speech_silence_speech, references, backend):
    result = cli(str(speech_silence_speech), "--model", "tiny.en", "--backend", backend, "-o", str(tmp_path),
                 "-f", "json", "--clip_timestamps", "51")  # from 51 s to the end: the second jfk only
    assert result.returncode == 0, result.stderr
    transcript = load_json(tmp_path / "gap.json")
    assert transcript["segments"] and all(s["start"] >= 50.9 for s in transcript["segments"])
    assert word_error_rate(references["jfk.flac"], transcript["text"]) <= 0.15
    assert transcript["options"]["clips"] == [[51.0, None]]


def test_csv_and_docx_parse_back_with_every_word(cli, tmp_path, shared_data, references):
    import docx

    result = cli(str(shared_data / "jfk.flac"), "--model", "tiny.en", "-o", str(tmp_path), "-f", "all")
    assert result.returncode == 0, result.stderr
    expected = normalise(load_json(tmp_path / "jfk.json")["text"])
    assert word_error_rate(references["jfk.flac"], " ".join(expected)) <= 0.15
    with open(tmp_path / "jfk.csv", newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0]) == ["start", "end", "speaker", "text"]
    assert normalise(" ".join(r["text"] for r in rows)) == expected
    assert all(float(r["start"]) <= float(r["end"]) for r in rows)
    document = docx.Document(str(tmp_path / "jfk.docx"))
    paragraphs = [p.text for p in document.paragraphs]
    assert any("jfk.flac" in p for p in paragraphs[:3])
    assert set(expected) <= set(normalise(" ".join(paragraphs)))


def test_pretty_json_indents_and_default_json_is_one_line(cli, tmp_path, shared_data):
    compact = cli(str(shared_data / "jfk.flac"), "--model", "tiny.en", "-o", str(tmp_path / "a"), "-f", "json")
    pretty = cli(str(shared_data / "jfk.flac"), "--model", "tiny.en", "-o", str(tmp_path / "b"), "-f", "json", "-p")
    assert compact.returncode == pretty.returncode == 0
    one, indented = (tmp_path / "a" / "jfk.json").read_text(), (tmp_path / "b" / "jfk.json").read_text()
    assert one.count("\n") == 1 and indented.count("\n") > 20
    assert json.loads(one)["text"] == json.loads(indented)["text"]


def test_print_colors_colour_the_terminal_only(cli, tmp_path, shared_data, model_root, home):
    piped = cli(str(shared_data / "jfk.flac"), "--model", "tiny.en", "-o", str(tmp_path / "a"), "-f", "txt",
                "--print_colors", "True")
    assert piped.returncode == 0, piped.stderr
    assert "ask not" in piped.stdout and "\033[" not in piped.stdout
    leader, follower = pty.openpty()
    environment = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(home), "WHISPER_MODELS": str(model_root),
                   "TMPDIR": str(tmp_path), "LANG": "C.UTF-8"}
    process = subprocess.Popen([str(BIN / "whisper-hpc"), str(shared_data / "jfk.flac"), "--model", "tiny.en",
                                "-o", str(tmp_path / "b"), "-f", "txt", "--print_colors", "True"],
                               stdout=follower, stderr=subprocess.DEVNULL, env=environment)
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closes when the program exits
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert process.wait(timeout=600) == 0
    assert b"\033[38;5;" in shown and b"\033[0m" in shown
    assert "\033[" not in (tmp_path / "b" / "jfk.txt").read_text()


@pytest.fixture(scope="module")
def openai_whisper_json(model_root: Path, shared_data: Path, tmp_path_factory) -> dict:
    """openai-whisper's own transcribe() and its own json writer, on jfk with tiny.en."""
    folder = tmp_path_factory.mktemp("openai")
    code = (
        "import sys, whisper\n"
        "from whisper.utils import get_writer\n"
        "model = whisper.load_model(sys.argv[1], device='cpu')\n"
        "result = model.transcribe(sys.argv[2], fp16=False, language='en', word_timestamps=True)\n"
        "get_writer('json', sys.argv[3])(result, sys.argv[2])\n"
    )
    subprocess.run([str(BIN / "python"), "-c", code, str(model_root / "tiny.en" / "openai-whisper.pt"),
                    str(shared_data / "jfk.flac"), str(folder)], check=True, capture_output=True,
                   env={**os.environ, "HOME": str(folder)})
    return load_json(folder / "jfk.json")


@pytest.mark.parametrize("backend", BACKENDS)
def test_json_has_openai_whispers_shape(cli, tmp_path, shared_data, openai_whisper_json, backend):
    result = cli(str(shared_data / "jfk.flac"), "--model", "tiny.en", "--backend", backend, "-o", str(tmp_path),
                 "-f", "json", "--word_timestamps", "True")
    assert result.returncode == 0, result.stderr
    ours = load_json(tmp_path / "jfk.json")
    theirs = openai_whisper_json
    assert list(ours)[:3] == list(theirs) == ["text", "segments", "language"]
    assert ours["text"] == "".join(s["text"] for s in ours["segments"])
    assert theirs["text"] == "".join(s["text"] for s in theirs["segments"])
    for key in ("model", "engine", "versions", "duration", "wall_time", "options"):
        assert key in ours  # ours alongside
    their_segment, our_segment = theirs["segments"][0], ours["segments"][0]
    assert list(our_segment)[:len(their_segment)] == list(their_segment)
    for key, value in their_segment.items():
        assert type(our_segment[key]) is type(value) or {type(our_segment[key]), type(value)} <= {int, float}, key
    assert list(our_segment["words"][0])[:4] == list(their_segment["words"][0])
    assert [s["id"] for s in ours["segments"]] == list(range(len(ours["segments"])))
    assert all(isinstance(t, int) for s in ours["segments"] for t in s["tokens"]) and our_segment["tokens"]
    assert normalise(ours["text"]) == normalise(theirs["text"]) or word_error_rate(theirs["text"], ours["text"]) <= 0.1


def test_batch_size_alone_on_a_long_recording(cli, tmp_path, shared_data, references, pyannote_sample_reference):
    """`--batch_size 8` with no other flag works on audio longer than one window, as whisper-ctranslate2 users type it."""
    long_audio = tmp_path / "long.wav"
    listing = tmp_path / "parts.txt"
    jfk = tmp_path / "jfk.wav"
    ffmpeg("-i", str(shared_data / "jfk.flac"), "-ar", "16000", "-ac", "1", str(jfk))
    parts = [jfk, shared_data / "sample.wav"] * 4
    listing.write_text("".join(f"file '{p}'\n" for p in parts))
    ffmpeg("-f", "concat", "-safe", "0", "-i", str(listing), "-ar", "16000", "-ac", "1", str(long_audio))
    result = cli(str(long_audio), "--model", "tiny.en", "--batch_size", "8", "-o", str(tmp_path), "-f", "json")
    assert result.returncode == 0, result.stderr
    assert "batched inference cuts the audio at silences: turning on --vad_filter" in result.stderr
    transcript = load_json(tmp_path / "long.json")
    assert transcript["duration"] > 150 and transcript["options"]["batch_size"] == 8
    # Every part is there (batched decoding loses a little accuracy, and its exact words vary with
    # the CPU's kernels): the words of all eight within a bound, and each jfk part where it lies.
    reference = " ".join([references["jfk.flac"], pyannote_sample_reference] * 4)
    assert word_error_rate(reference, transcript["text"]) <= 0.3
    part = probe(jfk).duration + probe(shared_data / "sample.wav").duration
    for start in (i * part for i in range(4)):
        spoken = " ".join(s["text"] for s in transcript["segments"] if s["start"] < start + 11 and s["end"] > start)
        assert "country" in normalise(spoken), (start, spoken)
    assert transcript["segments"][-1]["end"] >= transcript["duration"] - 20


@pytest.mark.parametrize("backend", BACKENDS)
def test_sampling_at_a_temperature_gives_the_same_transcript_run_after_run(cli, tmp_path, shared_data, backend):
    """--temperature 1.0 samples every token; the engines' generators are seeded when they load, so
    two runs of the same command agree word for word (unseeded, no two runs did)."""
    texts = []
    for run in ("first", "second"):
        result = cli(str(shared_data / "sample.wav"), "--model", "tiny.en", "--language", "en", "--backend", backend,
                     "--temperature", "1.0", "--temperature_increment_on_fallback", "None", "-f", "txt",
                     "-o", str(tmp_path / run))
        assert result.returncode == 0, result.stderr
        texts.append((tmp_path / run / "sample.txt").read_text(encoding="utf-8"))
    assert texts[0] == texts[1] and len(texts[0].split()) > 20, texts
