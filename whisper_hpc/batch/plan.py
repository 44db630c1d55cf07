"""Cutting a batch into array tasks: how much work per task, and which files go together.

The sizing itself (memory, time, Slurm's syntax) lives in whisper_hpc/sizing.py; what changes
when a task has several GPUs is here: whisper-hpc runs one worker per GPU, fed longest first
from one queue (whisper_hpc/pool.py), so a task of N GPUs holds N times the files in the same
time, and needs a worker's memory N times.
"""

from __future__ import annotations

import heapq
from typing import Sequence

from whisper_hpc.sizing import TASK_MARGIN_FRACTION, TASK_MARGIN_SECONDS, Workload

TARGET_TASK_MIN_SECONDS = 10 * 60  # below this a task spends too much of itself on start-up
TARGET_TASK_MAX_SECONDS = 30 * 60  # above this a killed task loses too much, and waits longer


def target_task_seconds(total_seconds: float, throttle: int, cap: int | None, gpus: int = 1) -> float:
    """Work per task (as one worker would take for it): enough to amortise the model load, small
    enough to spread over `throttle` tasks. A task's `gpus` workers share its files, so it holds
    `gpus` times the work of a one-GPU task in the same wall time."""
    workers = max(1, gpus)
    spread = total_seconds / max(1, throttle) / workers
    target = min(TARGET_TASK_MAX_SECONDS, max(TARGET_TASK_MIN_SECONDS, spread))
    if cap:
        target = min(target, max(60.0, (cap - TASK_MARGIN_SECONDS) / (1 + TASK_MARGIN_FRACTION)))
    return target * workers


def parallel_seconds(seconds: Sequence[float], workers: int) -> float:
    """The wall time of these files' work on `workers` workers that each take the longest file
    left when they are free (whisper-hpc's pool): the last worker to finish."""
    finish = [0.0] * max(1, workers)
    for work in sorted(seconds, reverse=True):
        heapq.heapreplace(finish, finish[0] + work)
    return max(finish)


def task_seconds(work: Workload, durations: Sequence[float | None], loads: int = 1, gpus: int = 1) -> float:
    """A task's estimated wall time: its model loads (made side by side by the workers) and its
    files spread over one worker per GPU."""
    if gpus <= 1:
        return work.task_seconds(durations, loads)
    return loads * work.load_seconds() + parallel_seconds([work.file_seconds(d) for d in durations], gpus)


def task_memory_mb(work: Workload, longest_seconds: float, gpus: int = 1) -> int:
    """Host memory for a task: one worker's (sizing.Workload.memory_mb) for each of its GPUs."""
    return work.memory_mb(longest_seconds) * max(1, gpus)


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
