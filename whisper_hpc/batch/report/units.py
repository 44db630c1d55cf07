"""Sizes and durations as people read them, and memory as Slurm's --mem takes it."""

from __future__ import annotations

import math
import time

from whisper_hpc.sizing import format_memory, format_time

KIB, MIB, GIB, TIB = 1 << 10, 1 << 20, 1 << 30, 1 << 40


def human_bytes(count: float) -> str:
    """1288490188 -> "1.2G", 734003200 -> "700M", 8589934592 -> "8G" (powers of 1024, as Slurm counts)."""
    for unit, size in (("T", TIB), ("G", GIB), ("M", MIB), ("K", KIB)):
        if count >= size:
            value = count / size
            text = f"{value:.1f}" if value < 10 and unit in "TG" else f"{value:.0f}"
            return text.removesuffix(".0") + unit
    return f"{count:.0f}B"


def slurm_memory(count: int) -> str:
    """A whole --mem value for `count` bytes, as sizing writes it: "2G", else megabytes ("1536M")."""
    return format_memory(math.ceil(count / MIB))


def clock(seconds: float) -> str:
    """3723.4 -> "01:02:03", as Slurm writes times (sizing.format_time)."""
    return format_time(round(seconds))


def hours(seconds: float) -> str:
    """Seconds as hours, with enough digits that a short batch does not read as zero."""
    value = seconds / 3600
    return f"{value:.2f} h" if value >= 0.1 or value == 0 else f"{value:.4f} h"


def moment(epoch: float | None) -> str:
    """A local date and time, or "-" when unknown."""
    return "-" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction * 100:.0f}%"
