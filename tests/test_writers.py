"""Transcript files (whisper_hpc.writers) and the engine-neutral result (whisper_hpc.transcript)."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from whisper_hpc import writers
from whisper_hpc.transcript import Segment, Transcript, Word
from whisper_hpc import files
from whisper_hpc.files import write_atomically
from whisper_hpc.writers import (
    FORMATS,
    RENDERERS,
    render_json,
    render_srt,
    render_tsv,
    render_txt,
    render_vtt,
    timestamp,
    write_transcript,
)

# Line terminators as the WebVTT spec (and most subtitle parsers) read them.
LINES = re.compile(r"\r\n|\r|\n")
SRT_TIME = r"(\d\d):([0-5]\d):([0-5]\d),(\d\d\d)"
VTT_TIME = r"(\d\d):([0-5]\d):([0-5]\d)\.(\d\d\d)"


def seconds(match: re.Match, first: int) -> float:
    h, m, s, ms = (int(match.group(first + i)) for i in range(4))
    return h * 3600 + m * 60 + s + ms / 1000


def parse_cues(body: str, time_pattern: str, numbered: bool) -> list[tuple[float, float, str]]:
    """A deliberately strict reader: one blank line between cues, every cue complete."""
    assert body.endswith("\n") and not body.endswith("\n\n"), repr(body[-20:])
    cues = []
    for number, block in enumerate(body[:-1].split("\n\n"), start=1):
        lines = LINES.split(block)
        if numbered:
            assert lines[0] == str(number), f"cue {number} numbered {lines[0]!r}"
            lines = lines[1:]
        timing = re.fullmatch(f"{time_pattern} --> {time_pattern}", lines[0])
        assert timing, f"bad timing line {lines[0]!r}"
        text = lines[1:]
        assert text and all(line.strip() for line in text), f"cue {number} has an empty line: {block!r}"
        assert not any("-->" in line for line in text), f"cue {number} text contains '-->': {block!r}"
        cues.append((seconds(timing, 1), seconds(timing, 5), "\n".join(text)))
    return cues


def parse_srt(text: str) -> list[tuple[float, float, str]]:
    assert text, "empty srt"
    return parse_cues(text, SRT_TIME, numbered=True)


def parse_vtt(text: str) -> list[tuple[float, float, str]]:
    assert text.startswith("WEBVTT\n\n"), repr(text[:20])
    return parse_cues(text[len("WEBVTT\n\n"):], VTT_TIME, numbered=False)


def assert_monotonic(cues: list[tuple[float, float, str]]) -> None:
    for (start, end, _), (next_start, _, _) in zip(cues, cues[1:] + [(float("inf"), 0, "")]):
        assert 0 <= start <= end <= next_start


def make_transcript(segments: list[Segment] | None = None, **overrides) -> Transcript:
    fields = dict(
        source="talk.wav", language="en", language_probability=0.98, duration=3725.0,
        segments=segments if segments is not None else [
            Segment(0.0, 2.5, " And so, my fellow Americans,"),
            Segment(2.5, 5.004, " ask not what your country can do for you,"),
            Segment(59.9995, 61.5, " ask what you can do for your country."),
            Segment(3661.5, 3723.25, " Thank you."),
        ],
        model="tiny.en", engine="faster-whisper", versions={"faster-whisper": "1.1.0", "whisper-hpc": "0.1.0"},
        device="cpu", compute_type="int8", wall_time=372.5,
    )
    fields.update(overrides)
    return Transcript(**fields)


# ----------------------------------------------------------------------------- timestamps


def test_timestamp_zero():
    assert timestamp(0) == "00:00:00.000"
    assert timestamp(0, ",") == "00:00:00,000"


def test_timestamp_rounds_up_into_the_next_minute():
    assert timestamp(59.9995) == "00:01:00.000"
    assert timestamp(59.9995, ",") == "00:01:00,000"
    assert timestamp(59.9994) == "00:00:59.999"


def test_timestamp_hours():
    assert timestamp(3600 + 61.5) == "01:01:01.500"
    assert timestamp(3600 + 61.5, always_hours=False) == "01:01:01.500"
    assert timestamp(61.5, always_hours=False) == "01:01.500"


def test_timestamp_never_negative():
    assert timestamp(-0.2) == "00:00:00.000"


# ----------------------------------------------------------------------------- srt and vtt


def test_srt_is_well_formed():
    text = render_srt(make_transcript())
    cues = parse_srt(text)
    assert [c[2] for c in cues] == [
        "And so, my fellow Americans,", "ask not what your country can do for you,",
        "ask what you can do for your country.", "Thank you.",
    ]
    assert cues[1][:2] == (2.5, 5.004)
    assert cues[2][:2] == (60.0, 61.5)
    assert cues[3][:2] == (3661.5, 3723.25)
    assert_monotonic(cues)


def test_vtt_is_well_formed():
    text = render_vtt(make_transcript())
    cues = parse_vtt(text)
    assert len(cues) == 4
    assert cues[3] == (3661.5, 3723.25, "Thank you.")
    assert "01:01:01.500 --> 01:02:03.250\nThank you.\n" in text
    assert_monotonic(cues)


def test_many_cues_are_numbered_one_to_n():
    segments = [Segment(i * 1.5, i * 1.5 + 1.2, f" line {i}") for i in range(120)]
    cues = parse_srt(render_srt(make_transcript(segments)))
    assert [c[2] for c in cues] == [f"line {i}" for i in range(120)]
    assert_monotonic(cues)
    assert len(parse_vtt(render_vtt(make_transcript(segments)))) == 120


@pytest.mark.parametrize(
    "nasty",
    [" a --> b", "first line\nsecond line", "para one\n\npara two", "ends with newline\n\n\n",
     "1\n00:00:00,000 --> 00:00:09,000\ninjected", "-->", "x-->y-->z"],
)
def test_text_cannot_break_a_cue(nasty):
    segments = [Segment(0.0, 1.0, " before"), Segment(1.0, 2.0, nasty), Segment(2.0, 3.0, " after")]
    transcript = make_transcript(segments)
    for cues in (parse_srt(render_srt(transcript)), parse_vtt(render_vtt(transcript))):
        assert len(cues) == 3
        assert cues[0][2] == "before" and cues[2][2] == "after"
        assert "\n" not in cues[1][2]
        assert cues[1][:2] == (1.0, 2.0)


@pytest.mark.parametrize("nasty", ["wait --->", "a ----> b"])
def test_longer_arrows_cannot_break_a_cue(nasty):
    transcript = make_transcript([Segment(0.0, 1.0, nasty), Segment(1.0, 2.0, " after")])
    assert len(parse_srt(render_srt(transcript))) == 2
    assert len(parse_vtt(render_vtt(transcript))) == 2


def test_carriage_returns_cannot_break_a_cue_or_a_row():
    transcript = make_transcript([Segment(0.0, 1.0, "one\r\rtwo"), Segment(1.0, 2.0, "three\r\nfour")])
    assert len(parse_srt(render_srt(transcript))) == 2
    assert len(parse_vtt(render_vtt(transcript))) == 2
    assert len(LINES.split(render_tsv(transcript).rstrip("\n"))) == 3


def test_empty_transcript_renders_valid_empty_files():
    empty = make_transcript([])
    assert render_srt(empty) == ""
    assert render_vtt(empty) == "WEBVTT\n\n"
    assert render_txt(empty) == ""
    assert render_tsv(empty) == "start\tend\ttext\n"
    assert json.loads(render_json(empty))["segments"] == []


# ----------------------------------------------------------------------------- speakers, tsv, txt


def speaker_transcript() -> Transcript:
    return make_transcript([
        Segment(0.0, 1.25, " Hello there.", speaker="SPEAKER_00"),
        Segment(1.25, 2.0, " Hi.", speaker="SPEAKER_01"),
        Segment(2.0, 3.0, " (no label)"),
    ])


def test_speaker_labels_in_txt_srt_vtt():
    transcript = speaker_transcript()
    assert render_txt(transcript) == "[SPEAKER_00] Hello there.\n[SPEAKER_01] Hi.\n(no label)\n"
    for cues in (parse_srt(render_srt(transcript)), parse_vtt(render_vtt(transcript))):
        assert [c[2] for c in cues] == ["[SPEAKER_00] Hello there.", "[SPEAKER_01] Hi.", "(no label)"]


def test_tsv_has_speaker_column_only_when_there_are_speakers():
    rows = [line.split("\t") for line in render_tsv(speaker_transcript()).splitlines()]
    assert rows[0] == ["start", "end", "speaker", "text"]
    assert rows[1:] == [["0", "1250", "SPEAKER_00", "Hello there."], ["1250", "2000", "SPEAKER_01", "Hi."],
                        ["2000", "3000", "", "(no label)"]]
    plain = render_tsv(make_transcript()).splitlines()
    assert plain[0] == "start\tend\ttext"


def test_tsv_is_integer_milliseconds_and_one_row_per_segment():
    transcript = make_transcript([Segment(0.0004, 1.2346, "tab\there"), Segment(3661.5, 3700.0, "new\nline")])
    lines = render_tsv(transcript).splitlines()
    assert len(lines) == 3
    rows = [line.split("\t") for line in lines[1:]]
    assert all(len(row) == 3 for row in rows)
    assert all(re.fullmatch(r"\d+", cell) for row in rows for cell in row[:2])
    assert rows == [["0", "1235", "tab here"], ["3661500", "3700000", "new line"]]


def test_txt_one_line_per_segment():
    assert render_txt(make_transcript()).splitlines()[0] == "And so, my fellow Americans,"
    assert render_txt(make_transcript()).count("\n") == 4


# ----------------------------------------------------------------------------- json

METADATA = ("language", "language_probability", "duration", "model", "engine", "versions", "wall_time",
            "real_time_factor", "segments")


def word_transcript(word_timestamps: bool) -> Transcript:
    words = [Word(0.0, 0.4, " Grüße", 0.9), Word(0.4, 1.0, " 日本", 0.8)]
    return make_transcript(
        [Segment(0.0, 1.0, " Grüße 日本", words=words, avg_logprob=-0.2)],
        language="de", options={"word_timestamps": word_timestamps},
    )


def test_json_round_trips_with_metadata():
    data = json.loads(render_json(word_transcript(False)))
    assert set(METADATA) <= set(data)
    assert data["language"] == "de"
    assert data["language_probability"] == 0.98
    assert data["duration"] == 3725.0
    assert (data["model"], data["engine"]) == ("tiny.en", "faster-whisper")
    assert data["versions"]["faster-whisper"] == "1.1.0"
    assert data["wall_time"] == 372.5
    assert data["real_time_factor"] == pytest.approx(0.1)
    assert data["text"] == "Grüße 日本"
    assert data["segments"][0]["text"] == " Grüße 日本"
    assert data["segments"][0]["avg_logprob"] == -0.2
    assert "words" not in data["segments"][0]


def test_json_words_only_with_word_timestamps():
    data = json.loads(render_json(word_transcript(True)))
    words = data["segments"][0]["words"]
    assert [w["word"] for w in words] == [" Grüße", " 日本"]
    assert words[1]["start"] == 0.4 and words[1]["probability"] == 0.8


def test_json_keeps_unicode_readable():
    assert "Grüße 日本" in render_json(word_transcript(False))


def test_transcript_text_and_real_time_factor():
    transcript = make_transcript([Segment(0, 1, " a "), Segment(1, 2, "   "), Segment(2, 3, "b")], wall_time=3.0,
                                 duration=6.0)
    assert transcript.text == "a b"
    assert transcript.real_time_factor == 0.5
    assert make_transcript(duration=0.0).real_time_factor == 0.0


def test_segment_shifted_moves_words_too():
    segment = Segment(1.0, 2.0, "x", words=[Word(1.0, 1.5, "x", 0.9)], speaker="S")
    moved = segment.shifted(10.0)
    assert (moved.start, moved.end, moved.speaker) == (11.0, 12.0, "S")
    assert (moved.words[0].start, moved.words[0].end) == (11.0, 11.5)
    assert segment.start == 1.0 and segment.words[0].start == 1.0
    assert Segment(0, 1, "y").shifted(5).words is None
    assert segment.shifted(0) is segment


# ----------------------------------------------------------------------------- writing files


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.name.endswith(".partial"))


def test_write_atomically_writes_text(tmp_path):
    target = tmp_path / "deep" / "er" / "talk.txt"
    write_atomically(target, "hello\n")
    assert target.read_text(encoding="utf-8") == "hello\n"
    assert leftovers(tmp_path) == []


def test_write_atomically_honours_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        write_atomically(tmp_path / "a.txt", "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640


def test_existing_target_is_replaced_whole(tmp_path):
    target = tmp_path / "talk.srt"
    target.write_text("OLD " * 10000, encoding="utf-8")
    write_atomically(target, "new\n")
    assert target.read_text(encoding="utf-8") == "new\n"
    assert leftovers(tmp_path) == []


def test_failure_in_rename_leaves_no_partial_and_keeps_old_target(tmp_path, monkeypatch):
    target = tmp_path / "talk.srt"
    target.write_text("old complete file\n", encoding="utf-8")

    def broken_replace(source, destination):
        assert Path(source).exists() and Path(source).name.endswith(".partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        write_atomically(target, "new complete file\n")
    assert target.read_text(encoding="utf-8") == "old complete file\n"
    assert leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["talk.srt"]


def test_failure_while_writing_midway_leaves_nothing(tmp_path):
    target = tmp_path / "talk.txt"
    # A lone surrogate cannot be encoded: the write fails after part of the text is buffered.
    with pytest.raises(UnicodeEncodeError):
        write_atomically(target, "x" * 100_000 + "\ud800" + "y" * 10)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_parent_that_is_a_file_fails_without_leftovers(tmp_path):
    blocker = tmp_path / "out"
    blocker.write_text("i am a file")
    with pytest.raises(OSError):
        write_atomically(blocker / "talk.txt", "text")
    assert blocker.read_text() == "i am a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_unicode_file_names(tmp_path):
    written = write_transcript(make_transcript(), tmp_path / "Grüße aus 日本 «talk»", ("txt", "srt"))
    assert [p.name for p in written] == ["Grüße aus 日本 «talk».txt", "Grüße aus 日本 «talk».srt"]
    assert parse_srt((tmp_path / "Grüße aus 日本 «talk».srt").read_text(encoding="utf-8"))[0][0] == 0.0


def test_write_transcript_writes_each_format_and_json_last(tmp_path, monkeypatch):
    order = []
    real = writers.write_atomically

    def recording(path, text):
        order.append(path.name)
        real(path, text)

    monkeypatch.setattr(writers, "write_atomically", recording)
    written = write_transcript(make_transcript(), tmp_path / "talk.v2", ("json", "srt", "txt"))
    assert order == ["talk.v2.srt", "talk.v2.txt", "talk.v2.json"]
    assert written == [tmp_path / name for name in order]
    assert json.loads((tmp_path / "talk.v2.json").read_text(encoding="utf-8"))["model"] == "tiny.en"


def test_every_format_has_a_renderer(tmp_path):
    assert set(RENDERERS) == set(FORMATS)
    written = write_transcript(speaker_transcript(), tmp_path / "all", FORMATS)
    assert sorted(p.suffix for p in written) == sorted("." + f for f in FORMATS)
    parse_vtt((tmp_path / "all.vtt").read_text(encoding="utf-8"))
    parse_srt((tmp_path / "all.srt").read_text(encoding="utf-8"))
