"""Cutting a batch into array tasks: how much work per task, and which files go together.

The sizing itself (memory, time, Slurm's syntax) lives in whisper_hpc/sizing.py.
"""

from __future__ import annotations

from typing import Sequence

from whisper_hpc.sizing import TASK_MARGIN_FRACTION, TASK_MARGIN_SECONDS

TARGET_TASK_MIN_SECONDS = 10 * 60  # below this a task spends too much of itself on start-up
TARGET_TASK_MAX_SECONDS = 30 * 60  # above this a killed task loses too much, and waits longer


def target_task_seconds(total_seconds: float, throttle: int, cap: int | None) -> float:
    """Work per task: enough to amortise the model load, small enough to spread over `throttle` tasks."""
    spread = total_seconds / max(1, throttle)
    target = min(TARGET_TASK_MAX_SECONDS, max(TARGET_TASK_MIN_SECONDS, spread))
    if cap:
        target = min(target, max(60.0, (cap - TASK_MARGIN_SECONDS) / (1 + TASK_MARGIN_FRACTION)))
    return target


def make_chunks(
    groups: Sequence[Sequence[int]],
    seconds: dict[int, float],
    target_seconds: float,
    chunk_size: int | None = None,
) -> list[list[int]]:
    """Pack groups of file indices, in order, into chunks.

    A group (files whose transcripts are named relative to each other) is never split. With
    `chunk_size`, a chunk holds that many files (more only when one group is bigger); else it
    holds files until their estimated work would pass `target_seconds`. Every chunk has at
    least one file.
    """
    chunks: list[list[int]] = []
    current: list[int] = []
    current_seconds = 0.0
    for group in groups:
        group = list(group)
        group_seconds = sum(seconds[i] for i in group)
        if current:
            full = (len(current) + len(group) > chunk_size) if chunk_size else (current_seconds + group_seconds > target_seconds)
            if full:
                chunks.append(current)
                current, current_seconds = [], 0.0
        current.extend(group)
        current_seconds += group_seconds
    if current:
        chunks.append(current)
    return chunks
