"""Transcript files (whisper_hpc.writers) and the engine-neutral result (whisper_hpc.transcript)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import docx
import pytest

from whisper_hpc import writers
from whisper_hpc.transcript import Segment, Transcript, Word
from whisper_hpc import files
from whisper_hpc.files import write_atomically
from whisper_hpc.writers import (
    FORMATS,
    RENDERERS,
    WriterOptions,
    render_csv,
    render_docx,
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


# ----------------------------------------------------------------------------- subtitle layout from word timings

SPEECH = ("And so my fellow Americans ask not what your country can do for you ask what you can do for your "
          "extraordinarily magnanimous country").split()
LABEL = re.compile(r"^\[SPEAKER_\d\d\] ")


def timed_transcript(speakers: tuple[str | None, ...] = (None,)) -> Transcript:
    """Three segments of words 0.3 s apart (0.25 s long), with a 4 s pause before the third."""
    segments, t = [], 0.0
    for number, chunk in enumerate((SPEECH[:5], SPEECH[5:15], SPEECH[15:])):
        speaker = speakers[number % len(speakers)]
        t += 4.0 if number == 2 else 0.0
        words = []
        for text in chunk:
            words.append(Word(round(t, 3), round(t + 0.25, 3), " " + text, 0.9, speaker))
            t += 0.3
        segments.append(Segment(words[0].start, words[-1].end, "".join(w.word for w in words), words, speaker=speaker))
    return make_transcript(segments, options={"word_timestamps": True})


def all_words(transcript: Transcript) -> list[Word]:
    return [w for s in transcript.segments for w in s.words]


LAYOUTS = [
    WriterOptions(),
    WriterOptions(max_line_width=20),
    WriterOptions(max_line_width=20, max_line_count=2),
    WriterOptions(max_line_width=12, max_line_count=1),
    WriterOptions(max_line_width=42, max_line_count=2),
    WriterOptions(max_words_per_line=3),
    WriterOptions(max_words_per_line=2, max_line_count=1),
    WriterOptions(max_line_width=25, max_words_per_line=1),  # the width wins, as in openai-whisper
]


def check_layout(cues: list[tuple[float, float, str]], options: WriterOptions, words: list[str]) -> None:
    assert_monotonic(cues)
    shown = []
    for _, _, text in cues:
        lines = text.split("\n")
        assert len(lines) <= (options.max_line_count or len(lines))
        for line in lines:
            line_words = LABEL.sub("", line).split()
            if options.max_line_width and len(line_words) > 1:
                assert len(line) <= options.max_line_width, line
            if options.max_words_per_line and not options.max_line_width:
                assert len(line_words) <= options.max_words_per_line, line
            shown += line_words
    assert shown == words


@pytest.mark.parametrize("options", LAYOUTS, ids=repr)
@pytest.mark.parametrize("speakers", [(None,), ("SPEAKER_00", "SPEAKER_01")])
def test_word_layout_respects_the_limits(options, speakers):
    transcript = timed_transcript(speakers)
    for cues in (parse_srt(render_srt(transcript, options)), parse_vtt(render_vtt(transcript, options))):
        check_layout(cues, options, SPEECH)


def test_word_layout_without_limits_is_one_cue_per_segment_timed_by_its_words():
    transcript = timed_transcript()
    cues = parse_srt(render_srt(transcript))
    assert [c[2] for c in cues] == [s.text.strip() for s in transcript.segments]
    assert [c[:2] for c in cues] == [(s.words[0].start, s.words[-1].end) for s in transcript.segments]


def test_width_and_count_flow_across_segments_but_a_long_pause_starts_a_cue():
    transcript = timed_transcript()
    options = WriterOptions(max_line_width=42, max_line_count=2)
    cues = parse_srt(render_srt(transcript, options))
    first_of = [s.words[0].start for s in transcript.segments]
    assert not any(start == pytest.approx(first_of[1]) for start, _, _ in cues)  # no break between 1 and 2
    assert any(start == pytest.approx(first_of[2]) for start, _, _ in cues)  # the 4 s pause breaks
    assert len(cues[0][2].split("\n")) == 2


def test_a_change_of_speaker_starts_a_cue_with_its_label():
    transcript = timed_transcript(("SPEAKER_00", "SPEAKER_01"))
    options = WriterOptions(max_line_width=42, max_line_count=2)
    for start, end, text in parse_srt(render_srt(transcript, options)):
        speaker = LABEL.match(text).group(0)[1:-2]
        owner = [s for s in transcript.segments if s.start - 1e-3 <= start and end <= s.end + 1e-3]
        assert owner and owner[0].speaker == speaker
        assert text.count("[SPEAKER_") == 1


HIGHLIGHTS = [
    WriterOptions(highlight_words=True),
    WriterOptions(highlight_words=True, max_line_width=20, max_line_count=2),
]


@pytest.mark.parametrize("options", HIGHLIGHTS, ids=repr)
def test_highlight_words_gives_one_cue_per_word_at_its_times(options):
    transcript = timed_transcript()
    words = all_words(transcript)
    for cues in (parse_srt(render_srt(transcript, options)), parse_vtt(render_vtt(transcript, options))):
        assert_monotonic(cues)
        highlighted = [c for c in cues if "<u>" in c[2]]
        assert [re.search(r"<u>(.*?)</u>", c[2]).group(1) for c in highlighted] == SPEECH
        assert all(c[2].count("<u>") == 1 for c in highlighted)
        for (start, end, _), word in zip(highlighted, words):
            assert (start, end) == (pytest.approx(word.start, abs=5e-4), pytest.approx(word.end, abs=5e-4))
        gaps = [c for c in cues if "<u>" not in c[2]]
        assert gaps and all(end - start == pytest.approx(0.05, abs=2e-3) or end - start > 3 for start, end, _ in gaps)


def test_highlighted_speaker_cues_keep_the_label():
    transcript = timed_transcript(("SPEAKER_00", "SPEAKER_01"))
    cues = parse_vtt(render_vtt(transcript, WriterOptions(highlight_words=True)))
    assert cues[0][2] == "[SPEAKER_00] <u>And</u> so my fellow Americans"
    assert all(LABEL.match(c[2]) for c in cues)


def test_layout_options_leave_segments_without_words_alone():
    options = WriterOptions(max_line_width=5, max_line_count=1, highlight_words=True)
    assert render_srt(make_transcript(), options) == render_srt(make_transcript())
    assert render_vtt(make_transcript(), options) == render_vtt(make_transcript())


def test_segments_with_and_without_words_mix():
    segments = [Segment(0.0, 1.0, " no timings"), Segment(1.0, 2.0, " empty word list", words=[]),
                Segment(2.0, 3.0, " timed words", words=[Word(2.1, 2.5, " timed", 0.9), Word(2.5, 2.9, " words", 0.9)])]
    cues = parse_srt(render_srt(make_transcript(segments), WriterOptions(max_line_width=8)))
    assert cues == [(0.0, 1.0, "no timings"), (1.0, 2.0, "empty word list"), (2.1, 2.9, "timed\nwords")]


@pytest.mark.parametrize("highlight", [False, True])
def test_words_cannot_break_a_cue(highlight):
    words = [Word(0.0, 0.5, " wait", 0.9), Word(0.5, 1.0, " --", 0.9), Word(1.0, 1.5, ">", 0.9),
             Word(1.5, 2.0, " new\nline", 0.9), Word(2.0, 2.5, " \n", 0.9), Word(2.5, 3.0, " x--->", 0.9)]
    transcript = make_transcript([Segment(0.0, 3.0, "".join(w.word for w in words), words), Segment(3.0, 4.0, "   ")])
    options = WriterOptions(max_line_width=10, highlight_words=highlight)
    for cues in (parse_srt(render_srt(transcript, options)), parse_vtt(render_vtt(transcript, options))):
        assert_monotonic(cues)
        assert "wait" in cues[0][2] and not any("-->" in c[2] for c in cues)


# ----------------------------------------------------------------------------- speakers, tsv, txt


def speaker_transcript() -> Transcript:
    return make_transcript([
        Segment(0.0, 1.25, " Hello there.", speaker="SPEAKER_00"),
        Segment(1.25, 2.0, " Hi.", speaker="SPEAKER_01"),
        Segment(2.0, 3.0, " (no label)"),
    ])


def test_speaker_labels_in_txt_srt_vtt():
    transcript = speaker_transcript()
    assert render_txt(transcript) == (
        "(00:00:00 - 00:00:01) SPEAKER_00\nHello there.\n\n(00:00:01 - 00:00:02) SPEAKER_01\nHi.\n\n"
        "(00:00:02 - 00:00:03)\n(no label)\n"
    )
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


def test_txt_joins_consecutive_segments_of_a_speaker_into_a_paragraph():
    transcript = make_transcript([
        Segment(0.0, 1.5, " Hello there.", speaker="SPEAKER_00"),
        Segment(1.5, 3.2, " How are\nyou?", speaker="SPEAKER_00"),
        Segment(62.0, 80.4, " Fine.", speaker="SPEAKER_01"), Segment(81.0, 82.0, "  ", speaker="SPEAKER_00"),
    ])
    assert render_txt(transcript) == (
        "(00:00:00 - 00:00:03) SPEAKER_00\nHello there. How are you?\n\n(00:01:02 - 00:01:20) SPEAKER_01\nFine.\n"
    )


# ----------------------------------------------------------------------------- csv


def test_csv_parses_back_with_every_word():
    transcript = make_transcript([
        Segment(0.0, 1.23456, ' He said, "no", twice.', speaker="SPEAKER_00"),
        Segment(1.5, 2.0, " line\nbreak; and 'quotes'"), Segment(3661.5, 3723.25, " Thank you."),
    ])
    rows = list(csv.DictReader(io.StringIO(render_csv(transcript))))
    assert rows == [
        {"start": "0.000", "end": "1.235", "speaker": "SPEAKER_00", "text": 'He said, "no", twice.'},
        {"start": "1.500", "end": "2.000", "speaker": "", "text": "line break; and 'quotes'"},
        {"start": "3661.500", "end": "3723.250", "speaker": "", "text": "Thank you."},
    ]
    assert render_csv(transcript).count("\n") == 4
    assert render_csv(make_transcript([])) == "start,end,speaker,text\n"


# ----------------------------------------------------------------------------- docx


def read_docx(data: bytes) -> list:
    return docx.Document(io.BytesIO(data)).paragraphs


def test_docx_has_heading_details_and_speaker_turns():
    transcript = make_transcript([
        Segment(0.0, 1.5, " Hello, there.", speaker="SPEAKER_00"),
        Segment(1.5, 3.2, " How are you?", speaker="SPEAKER_00"),
        Segment(62.0, 80.4, " Fine\x0b thanks.", speaker="SPEAKER_01"),
    ], source="/data/Grüße talk.wav", created="2025-06-25T12:00:00Z")
    paragraphs = read_docx(render_docx(transcript))
    assert paragraphs[0].text == "Grüße talk.wav" and paragraphs[0].style.name.startswith("Heading")
    assert [p.text for p in paragraphs[1:5]] == [
        "Date: 2025-06-25T12:00:00Z", "Model: tiny.en", "Duration: 01:02:05", "Language: en"]
    turns = paragraphs[5:]
    headings = [p.runs[0].text.rstrip("\n") for p in turns]
    assert headings == ["(00:00:00 - 00:00:03) SPEAKER_00", "(00:01:02 - 00:01:20) SPEAKER_01"]
    assert all(p.runs[0].bold for p in turns)
    assert [p.text.split("\n", 1)[1] for p in turns] == ["Hello, there. How are you?", "Fine thanks."]


def test_docx_without_speakers_has_a_paragraph_per_segment():
    transcript = make_transcript(created="")
    paragraphs = read_docx(render_docx(transcript))
    assert not any(p.text.startswith("Date") for p in paragraphs)
    body = [p.text for p in paragraphs if p.text.startswith("(")]
    assert body == [f"{heading}\n{s.text.strip()}" for heading, s in zip(
        ["(00:00:00 - 00:00:02)", "(00:00:02 - 00:00:05)", "(00:01:00 - 00:01:01)", "(01:01:01 - 01:02:03)"],
        transcript.segments)]
    words = " ".join(p.text for p in paragraphs).split()
    assert all(w in words for w in transcript.text.split())


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
    assert data["text"] == " Grüße 日本"
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


def test_json_is_one_line_unless_pretty():
    transcript = word_transcript(True)
    compact, pretty = render_json(transcript), render_json(transcript, WriterOptions(pretty_json=True))
    assert compact.count("\n") == 1 and compact.endswith("}\n")
    assert pretty.startswith('{\n  "text": ') and pretty.endswith("}\n")
    assert json.loads(compact) == json.loads(pretty)


def test_transcript_text_and_real_time_factor():
    transcript = make_transcript([Segment(0, 1, " a "), Segment(1, 2, "   "), Segment(2, 3, "b")], wall_time=3.0,
                                 duration=6.0)
    assert transcript.text == " a    b"
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
    assert "SPEAKER_01" in " ".join(p.text for p in docx.Document(tmp_path / "all.docx").paragraphs)
    assert list(csv.DictReader((tmp_path / "all.csv").open(encoding="utf-8")))[0]["speaker"] == "SPEAKER_00"


def test_write_transcript_passes_the_options_to_every_renderer(tmp_path):
    options = WriterOptions(highlight_words=True, pretty_json=True)
    write_transcript(timed_transcript(), tmp_path / "talk", ("json", "srt", "vtt"), options)
    assert (tmp_path / "talk.json").read_text(encoding="utf-8").startswith('{\n  "text"')
    assert "<u>And</u>" in (tmp_path / "talk.srt").read_text(encoding="utf-8")
    assert "<u>And</u>" in (tmp_path / "talk.vtt").read_text(encoding="utf-8")


def test_importing_the_writers_loads_no_docx():
    code = "import sys, whisper_hpc.writers; sys.exit('docx' in sys.modules or 'lxml' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent).returncode == 0
