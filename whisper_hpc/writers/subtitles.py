"""Subtitles: srt and vtt, one cue per segment, or laid out from word timings as openai-whisper does."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import groupby
from typing import Iterator

from whisper_hpc.transcript import Segment, Transcript, Word
from whisper_hpc.writers.common import DEFAULT, WriterOptions, labelled, one_line, timestamp

LONG_PAUSE = 3.0  # seconds from one word's start to the next's that start a new cue, when cues flow


@dataclass
class Piece:
    """One word as shown: its text and what comes before it in the cue ("", " " or a line break)."""

    start: float
    end: float
    before: str
    text: str


@dataclass
class Cue:
    speaker: str | None
    pieces: list[Piece] = field(default_factory=list)

    @property
    def start(self) -> float:
        return self.pieces[0].start

    @property
    def end(self) -> float:
        return self.pieces[-1].end

    def text(self, underline: int | None = None) -> str:
        """The cue's lines, the word at `underline` in <u>...</u>."""
        words = [p.before + (f"<u>{p.text}</u>" if i == underline else p.text) for i, p in enumerate(self.pieces)]
        return label(self.speaker) + "".join(words)


def label(speaker: str | None) -> str:
    return f"[{one_line(speaker)}] " if speaker else ""


def guarded(text: str) -> str:
    """An arrow inside a cue's text would read as a new cue timing line."""
    return "\n".join(re.sub(r"-{2,}>", "->", line) for line in text.split("\n"))


def shown(words: list[Word]) -> list[tuple[Word, str]]:
    """The words with any text, each with that text on one line."""
    return [(w, one_line(w.word)) for w in words if one_line(w.word)]


def layout(segments: list[Segment], options: WriterOptions) -> Iterator[Cue]:
    """Cues from word timings, with openai-whisper's line width, line count and words-per-line limits.

    Each segment starts a new cue unless both a width and a count are set; then cues flow across
    segments and a pause of over 3 s starts a new one. A change of speaker always starts a new cue.
    """
    width = options.max_line_width or float("inf")
    count = options.max_line_count
    per_line = None if options.max_line_width else options.max_words_per_line
    keep_segments = not (options.max_line_width and count)
    cue: Cue | None = None
    line_length, lines, last = 0, 1, 0.0
    for segment in segments:
        for index, (word, text) in enumerate(shown(segment.words or [])):
            speaker = word.speaker or segment.speaker
            before = " " if word.word[:1].isspace() else ""
            chunk_start = index % per_line == 0 if per_line else index == 0
            same = cue is not None and speaker == cue.speaker and not (chunk_start and keep_segments)
            pause = not keep_segments and word.start - last > LONG_PAUSE
            fits = not pause and line_length + len(before + text) <= width
            if cue is not None and same and fits:
                cue.pieces.append(Piece(word.start, word.end, before, text))
                line_length += len(before + text)
            elif cue is not None and same and not (count and (pause or lines >= count)):
                cue.pieces.append(Piece(word.start, word.end, "\n", text))
                lines, line_length = lines + 1, len(text)
            else:
                if cue is not None:
                    yield cue
                cue = Cue(speaker, [Piece(word.start, word.end, "", text)])
                lines, line_length = 1, len(label(speaker) + text)
            last = word.start
    if cue is not None:
        yield cue


def highlighted(cue: Cue) -> Iterator[tuple[float, float, str]]:
    """One cue per word with that word underlined, and the cue plain in the gaps between words."""
    last = cue.start
    for index, piece in enumerate(cue.pieces):
        start = max(piece.start, last)
        if round(start * 1000) > round(last * 1000):
            yield last, start, cue.text()
        yield start, max(piece.end, start), cue.text(index)
        last = max(piece.end, start)


def cues(transcript: Transcript, options: WriterOptions) -> Iterator[tuple[float, float, str]]:
    """(start, end, text) of each cue; segments without word timings give one cue each."""
    for timed, group in groupby(transcript.segments, key=lambda s: bool(shown(s.words or []))):
        if not timed:
            for segment in group:
                if text := one_line(labelled(segment)):
                    yield segment.start, segment.end, guarded(text)
            continue
        for cue in layout(list(group), options):
            if options.highlight_words:
                yield from ((start, end, guarded(text)) for start, end, text in highlighted(cue))
            else:
                yield cue.start, cue.end, guarded(cue.text())


def render_srt(transcript: Transcript, options: WriterOptions = DEFAULT) -> str:
    return "\n".join(
        f"{i}\n{timestamp(start, ',')} --> {timestamp(end, ',')}\n{text}\n"
        for i, (start, end, text) in enumerate(cues(transcript, options), start=1)
    )


def render_vtt(transcript: Transcript, options: WriterOptions = DEFAULT) -> str:
    body = (f"{timestamp(start)} --> {timestamp(end)}\n{text}\n" for start, end, text in cues(transcript, options))
    return "WEBVTT\n\n" + "\n".join(body)
