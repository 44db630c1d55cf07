"""RTTM, the NIST format diarization tools exchange: one SPEAKER line per speech turn.

    SPEAKER <file-id> <channel> <onset> <duration> <NA> <NA> <speaker> <NA> <NA>

Fields are separated by whitespace, so a file id never contains any (we write `_` instead).
"""

from __future__ import annotations

import re
from pathlib import Path

from whisper_hpc.transcript import SpeakerTurn


class RttmError(ValueError):
    """An RTTM file we cannot use; the message names the file and the line."""


def file_id(name: str) -> str:
    """The RTTM file id for an audio file's stem: whitespace becomes `_`."""
    return re.sub(r"\s+", "_", name) or "audio"


def render_rttm(turns: list[SpeakerTurn], uri: str) -> str:
    uri = file_id(uri)
    return "".join(
        f"SPEAKER {uri} 1 {t.start:.3f} {t.duration:.3f} <NA> <NA> {t.speaker} <NA> <NA>\n"
        for t in sorted(turns, key=lambda t: (t.start, t.end, t.speaker))
    )


def parse_rttm(text: str, source: str = "RTTM") -> dict[str, list[SpeakerTurn]]:
    """Speaker turns by file id. Lines other than SPEAKER (and blank or `#` lines) are ignored."""
    turns: dict[str, list[SpeakerTurn]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#") or fields[0] != "SPEAKER":
            continue
        if len(fields) < 8:
            raise RttmError(f"{source}, line {number}: a SPEAKER line needs at least 8 fields, found {len(fields)}")
        try:
            onset, duration = float(fields[3]), float(fields[4])
        except ValueError:
            raise RttmError(f"{source}, line {number}: onset and duration must be numbers ('{fields[3]}', '{fields[4]}')")
        if onset < 0 or duration < 0 or onset != onset or duration != duration:
            raise RttmError(f"{source}, line {number}: negative or undefined onset or duration")
        turns.setdefault(fields[1], []).append(SpeakerTurn(onset, onset + duration, fields[7]))
    for uri in turns:
        turns[uri].sort(key=lambda t: (t.start, t.end))
    return turns


def read_rttm(path: Path) -> dict[str, list[SpeakerTurn]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RttmError(f"{path}: not a text file; --diarization_rttm expects an RTTM file")
    except OSError as error:
        raise RttmError(f"{path}: {error.strerror}")
    return parse_rttm(text, str(path))


def turns_for(audio: Path, rttm: Path, single_input: bool) -> list[SpeakerTurn]:
    """The turns of `audio` in `rttm` (a file, or a directory of <stem>.rttm files).

    A file's turns are found by its stem as RTTM file id; an RTTM holding exactly one file id
    is also taken for a run with a single input, whatever the id.
    """
    source = rttm / f"{audio.stem}.rttm" if rttm.is_dir() else rttm
    if rttm.is_dir() and not source.is_file():
        raise RttmError(f"{audio}: no {audio.stem}.rttm in {rttm}")
    by_file = read_rttm(source)
    for key in (audio.stem, file_id(audio.stem), audio.name):
        if key in by_file:
            return by_file[key]
    if len(by_file) <= 1 and (single_input or rttm.is_dir()):
        return next(iter(by_file.values()), [])  # no SPEAKER line at all: nobody speaks
    if not by_file:
        raise RttmError(f"{source}: no SPEAKER lines; nothing to merge into {audio.name}")
    found = ", ".join(sorted(by_file)[:10])
    raise RttmError(f"{audio}: no turns with file id '{file_id(audio.stem)}' in {source} (it has: {found})")
