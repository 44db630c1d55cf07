"""Put speakers into a transcript: pure logic, no models.

Each word goes to the speaker whose turns overlap it most; a word no turn overlaps goes to
the nearest speaker (before it on a tie). A segment whose words change speaker is split
there, so every segment has one speaker and every word carries one.
"""

from __future__ import annotations

import bisect
from dataclasses import replace

from whisper_hpc.transcript import Segment, SpeakerTurn, Word

MIN_WORD_SECONDS = 0.001  # a word stamped with zero duration still counts as a moment


DEFAULT_SPEAKER_NAME = "SPEAKER"


def number_speakers(turns: list[SpeakerTurn], name: str = DEFAULT_SPEAKER_NAME) -> list[SpeakerTurn]:
    """Rename speakers SPEAKER_00, SPEAKER_01, ... in order of first appearance."""
    ordered = sorted(turns, key=lambda t: (t.start, t.end))
    names: dict[str, str] = {}
    for turn in ordered:
        names.setdefault(turn.speaker, f"{name}_{len(names):02d}")
    return [replace(t, speaker=names[t.speaker]) for t in ordered]


def number_in_transcript_order(
    segments: list[Segment], turns: list[SpeakerTurn], name: str = DEFAULT_SPEAKER_NAME,
) -> tuple[list[Segment], list[SpeakerTurn]]:
    """Rename speakers SPEAKER_00 (`name`_00), ... in the order they are first heard in the transcript.

    Speakers who say no transcribed word follow, in order of their first turn.
    """
    order: dict[str, None] = {}
    for segment in segments:
        for word in segment.words or []:
            if word.speaker:
                order.setdefault(word.speaker)
        if segment.speaker:
            order.setdefault(segment.speaker)
    for turn in sorted(turns, key=lambda t: (t.start, t.end)):
        order.setdefault(turn.speaker)
    names = {old: f"{name}_{index:02d}" for index, old in enumerate(order)}
    renamed_segments = [
        replace(
            s,
            speaker=names.get(s.speaker, s.speaker),
            words=None if s.words is None else [replace(w, speaker=names.get(w.speaker, w.speaker)) for w in s.words],
        )
        for s in segments
    ]
    return renamed_segments, [replace(t, speaker=names[t.speaker]) for t in turns]


def within(turns: list[SpeakerTurn], duration: float) -> list[SpeakerTurn]:
    """The turns cut to the audio's duration (a hand-made RTTM may run past the end)."""
    return [replace(t, end=min(t.end, duration)) for t in turns if t.start < duration]


class SpeakerLookup:
    """Which speaker a stretch of time belongs to, in O(log turns) per question."""

    def __init__(self, turns: list[SpeakerTurn]) -> None:
        self.turns = sorted((t for t in turns if t.end > t.start), key=lambda t: (t.start, t.end))
        self.starts = [t.start for t in self.turns]
        self.longest = max((t.duration for t in self.turns), default=0.0)
        # latest end among turns[:i + 1], and which turn has it
        self.latest: list[tuple[float, int]] = []
        for index, turn in enumerate(self.turns):
            previous = self.latest[-1] if self.latest else (float("-inf"), -1)
            self.latest.append(max(previous, (turn.end, index), key=lambda pair: pair[0]))

    def __bool__(self) -> bool:
        return bool(self.turns)

    def speaker(self, start: float, end: float) -> str:
        end = max(end, start + MIN_WORD_SECONDS)
        first = bisect.bisect_left(self.starts, start - self.longest)
        after = bisect.bisect_left(self.starts, end)
        overlap: dict[str, float] = {}
        for turn in self.turns[first:after]:
            shared = min(end, turn.end) - max(start, turn.start)
            if shared > 0:
                overlap[turn.speaker] = overlap.get(turn.speaker, 0.0) + shared
        if overlap:
            return max(overlap, key=overlap.get)  # the first one listed wins a tie
        return self.nearest(start, end, after)

    def nearest(self, start: float, end: float, after: int) -> str:
        before_gap = after_gap = float("inf")
        index_before = -1
        if after > 0:
            latest_end, index_before = self.latest[after - 1]
            before_gap = start - latest_end
        if after < len(self.turns):
            after_gap = self.turns[after].start - end
        return self.turns[index_before].speaker if before_gap <= after_gap else self.turns[after].speaker


def assign_speakers(segments: list[Segment], turns: list[SpeakerTurn]) -> list[Segment]:
    """New segments with a speaker on each segment and word; split where the speaker changes.

    With no turns at all (nobody speaks), segments are returned without speakers.
    """
    lookup = SpeakerLookup(turns)
    if not lookup:
        return list(segments)
    placed: list[Segment] = []
    for segment in segments:
        if not segment.words:
            placed.append(replace(segment, speaker=lookup.speaker(segment.start, segment.end)))
            continue
        words = [replace(w, speaker=lookup.speaker(w.start, w.end)) for w in segment.words]
        placed.extend(split_by_speaker(segment, words))
    return placed


def split_by_speaker(segment: Segment, words: list[Word]) -> list[Segment]:
    runs: list[list[Word]] = []
    for word in words:
        if runs and runs[-1][-1].speaker == word.speaker:
            runs[-1].append(word)
        else:
            runs.append([word])
    if len(runs) == 1:
        return [replace(segment, words=words, speaker=words[0].speaker)]
    pieces = []
    for position, run in enumerate(runs):
        start = segment.start if position == 0 else run[0].start
        end = segment.end if position == len(runs) - 1 else run[-1].end
        text = "".join(w.word for w in run)
        pieces.append(replace(segment, start=start, end=max(start, end), text=text, words=run, speaker=run[0].speaker))
    return pieces
