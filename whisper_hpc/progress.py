"""Progress lines that read well both on a terminal and in a Slurm log."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """One line per file; inside a long file, a line per minute in logs or a live line on a tty."""

    def __init__(self, total_files: int, stream: TextIO | None = None, interval: float = 60.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.total = total_files
        self.started = time.monotonic()
        self.files_done = 0
        self.audio_done = 0.0
        self.interval = interval
        self.last_line = 0.0

    def say(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def within_file(self, name: str, position: float, duration: float | None, started: float) -> None:
        now = time.monotonic()
        elapsed = now - started
        rtf = elapsed / position if position > 0 else 0.0
        total = f" of {clock(duration)}" if duration else ""
        eta = f", file ETA {clock((duration - position) * rtf)}" if duration and position else ""
        line = f"  {name}: {clock(position)}{total} done, RTF {rtf:.2f}{eta}"
        if self.tty:
            self.stream.write("\r" + line + "\033[K")
            self.stream.flush()
        elif now - self.last_line >= self.interval:
            self.last_line = now
            self.say(line)

    def file_finished(self, index: int, name: str, duration: float, wall: float, how: str = "") -> None:
        if self.tty:
            self.stream.write("\r\033[K")
        self.files_done += 1
        self.audio_done += duration
        elapsed = time.monotonic() - self.started
        remaining = self.total - index
        eta = ""
        if remaining > 0 and self.files_done:
            eta = f", ETA {clock(elapsed / self.files_done * remaining)} for {remaining} more"
        rtf = wall / duration if duration else 0.0
        how = how or f"in {wall:.1f} s (RTF {rtf:.2f})"
        self.say(f"[{index}/{self.total}] done {name}: {clock(duration)} of audio {how}{eta}")
