"""Several files at once in one process, on the CPU: threads ("lanes") sharing one model.

faster-whisper's `num_workers` makes one model hold several CTranslate2 replicas that share
its weights; each replica decodes on its own `cpu_threads`. On many short files, windows side
by side on one thread each keep the cores busier than one window at a time on all of them,
whose matrix products scale worse across threads (docs/benchmarks.rst has the measurements).

- How many lanes: sizing.file_lanes, from the threads and the files' durations (probed first,
  longest first, as the GPU pool does), so that no lane is left with a file longer than the
  others' share; the threads are divided among them. One lane: the plain runner, unchanged.
- Each lane has its own Prefetcher (decoding its next file while its engine transcribes this
  one) and takes its files from one queue, longest first, so the lanes finish together. Every
  file is taken exactly once.
- One model load (EngineLoader with `workers`), shared by every lane; the summary, the
  progress lines and the writes are shared under one lock each. Outputs stay atomic: a stop
  (Ctrl-C, SIGTERM) lets the transcripts being written finish, and every lane end at its next
  segment (none is left inside the engine as the process exits); files still being
  transcribed are left for the next run, which picks up where this one stopped.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

from whisper_hpc import devices, runtime, sizing
from whisper_hpc.engines import DecodeOptions, Engine
from whisper_hpc.inputs import Job
from whisper_hpc.pool import Task, longest_first
from whisper_hpc.progress import Progress
from whisper_hpc.result_cache import ResultCache
from whisper_hpc.runner import (
    FILE_ERRORS, POLL_SECONDS, EngineState, Prefetcher, RunSettings, Stopped, Summary, failure_message, pending_jobs,
    run_jobs, transcribe_job, write_all,
)


class SharedEngine:
    """The lanes' one engine: loaded by the first lane that needs it, while the others wait."""

    def __init__(self, load: Callable[[str | None], Engine]) -> None:
        self.load = load
        self.lock = threading.Lock()
        self.engines: dict[str | None, Engine | BaseException] = {}

    def __call__(self, compute_type: str | None = None) -> Engine:
        with self.lock:
            if compute_type not in self.engines:
                try:
                    self.engines[compute_type] = self.load(compute_type)
                except BaseException as error:  # noqa: BLE001 - every lane fails as the first did, loading once
                    self.engines[compute_type] = error
            found = self.engines[compute_type]
        if isinstance(found, BaseException):
            raise found
        return found

    def release(self) -> None:
        """Drop the model here, on the main thread, once no lane's system thread is left (Lanes.wait):
        destroyed on a lane's thread as the interpreter exits, it would abort the process."""
        with self.lock:
            self.engines.clear()
        gc.collect()  # what the stopped lanes left in reference cycles (their tracebacks), the model with it
        runtime.release_freed_memory()


class StoppableEngine:
    """A lane's view of the shared engine: it raises Stopped between one segment and the next once
    the run is stopping, so that no lane is left inside the engine when the process exits."""

    def __init__(self, engine: Engine, stopping: threading.Event) -> None:
        self.engine = engine
        self.stopping = stopping
        self.name, self.device, self.compute_type = engine.name, engine.device, engine.compute_type

    def transcribe(self, samples, options: DecodeOptions):
        self.check()
        result = self.engine.transcribe(samples, options)
        return replace(result, segments=self.until_stopped(result.segments))

    def until_stopped(self, segments):
        try:
            for segment in segments:
                self.check()
                yield segment
        finally:
            close = getattr(segments, "close", None)
            if close is not None:
                close()  # the engine's generator, which holds on to the model, ends here

    def check(self) -> None:
        if self.stopping.is_set():
            raise Stopped

    def versions(self) -> dict[str, str]:
        return self.engine.versions()


class LockedProgress:
    """A Progress the lanes share: one line at a time, numbered in the order files finish."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.lock = threading.Lock()

    def within_file(self, name: str, position: float, duration: float | None, started: float) -> None:
        with self.lock:
            self.progress.within_file(name, position, duration, started)

    def file_finished(self, name: str, duration: float, wall: float, how: str = "") -> None:
        with self.lock:
            self.progress.file_finished(self.progress.files_done + 1, name, duration, wall, how=how)


class FileQueue:
    """The run's files, longest first, handed out one at a time to whichever lane asks."""

    def __init__(self, tasks: list[Task], stopping: threading.Event) -> None:
        self.tasks = deque(tasks)
        self.lock = threading.Lock()
        self.stopping = stopping

    def __iter__(self) -> Iterator[tuple[int, Job]]:
        while not self.stopping.is_set():
            with self.lock:
                if not self.tasks:
                    return
                task = self.tasks.popleft()
            yield task.number, task.job


class Lanes:
    """The lanes of one run, and what they share."""

    def __init__(self, tasks: list[Task], settings: RunSettings, load: Callable[[str | None], Engine],
                 options: DecodeOptions, progress: Progress, errors, cache: ResultCache | None) -> None:
        self.settings = settings
        self.engine = SharedEngine(load)
        self.options = options
        self.errors = errors
        self.cache = cache
        self.summary = Summary()
        self.progress = LockedProgress(progress)
        self.stopping = threading.Event()
        self.files = FileQueue(tasks, self.stopping)
        self.failure_lock = threading.Lock()
        self.write_lock = threading.Lock()  # one file's transcripts written at a time; a stop waits for it
        self.failure: BaseException | None = None  # what ended a lane other than a file's own error
        self.prefetchers: list[Prefetcher] = []  # the lanes' decoders, all ended before the run returns

    def write(self, job: Job, transcripts, settings: RunSettings) -> None:
        with self.write_lock:
            if self.stopping.is_set():
                raise Stopped
            write_all(job, transcripts, settings)

    def lane(self) -> None:
        state = EngineState(lambda compute_type: StoppableEngine(self.engine(compute_type), self.stopping),
                            self.options)
        try:
            with Prefetcher(iter(self.files), self.settings) as prefetched:
                self.prefetchers.append(prefetched)
                while not self.stopping.is_set():
                    started = time.monotonic()
                    current = prefetched.next_file()
                    if current is None:
                        return
                    self.transcribe(current, state, started)
        except Stopped:
            return
        except BaseException as error:  # noqa: BLE001 - it ends the run, raised by the main thread
            with self.failure_lock:
                self.failure = self.failure or error
            self.stopping.set()

    def transcribe(self, current, state: EngineState, started: float) -> None:
        job = current.job
        try:
            duration, how = transcribe_job(current, state, self.settings, self.progress, None, self.cache,
                                           self.errors, started, write=self.write)
        except FILE_ERRORS as error:
            if self.stopping.is_set():
                raise Stopped from None
            with self.progress.lock:  # its line among the lanes' progress lines
                self.summary.file_failed(failure_message(job, error), self.errors)
        else:
            with self.progress.lock:
                self.summary.done += 1
            self.progress.file_finished(str(job.source), duration, time.monotonic() - started, how=how)
        finally:
            current.close()

    def run(self, count: int) -> Summary:
        threads = [threading.Thread(target=self.lane, name=f"whisper-hpc-lane-{n}", daemon=True) for n in range(count)]
        for thread in threads:
            thread.start()
        try:
            self.wait(threads)
        except BaseException:  # Ctrl-C, SIGTERM: each lane ends at its next segment, none inside the engine
            self.stop()
            self.wait(threads)
            raise
        finally:
            self.wait([prefetcher.thread for prefetcher in self.prefetchers])  # stopped: each ends at its next wait
            self.engine.release()
        if self.failure is not None:
            raise self.failure
        return self.summary

    def wait(self, threads: list[threading.Thread]) -> None:
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=POLL_SECONDS)
            gone(thread)

    def stop(self) -> None:
        """End the run: no file is begun or written any more, and the one being written is finished."""
        self.stopping.set()
        with self.write_lock:
            pass


def gone(thread: threading.Thread, timeout: float = 5.0) -> None:
    """Wait until the system thread behind a joined `thread` has exited. A joined thread still lets
    go of its last objects: were the model among them, CTranslate2 would destroy it on that thread,
    which the interpreter cuts off if it is exiting (a stop), and the process aborts. The model is
    let go of on the main thread instead (SharedEngine.release), once no lane can hold it."""
    task = Path(f"/proc/self/task/{thread.native_id}")
    deadline = time.monotonic() + timeout
    while thread.native_id is not None and task.exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def run_lanes(jobs: list[Job], settings: RunSettings, load, options: DecodeOptions, threads: int,
              lanes: int | None = None, errors=None, cache: ResultCache | None = None) -> Summary:
    """Run every job, several at once when that pays (`lanes`: how many; None: sizing.file_lanes
    chooses from the threads and the durations). `load` is an assemble.EngineLoader: with more
    than one lane it loads one model with a replica per lane and the threads divided among them."""
    errors = errors or sys.stderr
    summary = Summary()
    pending = pending_jobs(jobs, settings, summary, errors)
    count = max(1, min(lanes or threads, len(pending)))  # without a count: a lane per thread at most
    tasks = longest_first(pending) if count > 1 else []
    if lanes is None and tasks:
        count = sizing.file_lanes(threads, [task.seconds for task in tasks])
    if count == 1:
        finished = run_jobs(pending, settings, load, options, errors=errors, cache=cache)
    else:
        each = devices.worker_threads(threads, count)
        load = replace(load, model=replace(load.model, workers=count, threads=each))
        print(f"whisper-hpc: {count} files at once on one model, {each} CPU thread{'s' if each != 1 else ''} "
              f"each; {len(pending)} files, longest first", file=errors, flush=True)
        finished = Lanes(tasks, settings, load, options, Progress(len(pending), errors), errors, cache).run(count)
    finished.skipped += summary.skipped
    return finished
