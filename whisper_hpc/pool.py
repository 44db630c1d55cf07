"""Several GPUs in one job: a worker process per GPU, all fed from one queue, longest file first.

whisper-hpc runs a pool when the run is on CUDA and has more than one worker: the GPUs of
--device_index 0,1,2,3, else those the job was given (CUDA_VISIBLE_DEVICES, else Slurm's
SLURM_STEP_GPUS / SLURM_JOB_GPUS), one worker each, or --gpu_workers N of them (more workers
than GPUs share the GPUs in turn). One GPU, or the CPU: no pool, the files run in the process
itself (whisper_hpc.runner), with nothing spawned; unless --cpu_workers N asks for N workers on
the CPU, the threads divided among them (faster on many short files: docs/benchmarks.rst).

- The queue. The parent probes every pending file (audio.probe; a file that cannot be probed
  is guessed from its size) and queues them longest first. The queue is the parent's: a worker
  asks for a file whenever its decoder wants the next one, and gets the first in the queue, so
  the workers end together. (A queue the workers shared could be left locked for good by a
  worker killed while it held the queue's lock; each worker has its own two pipes instead, and
  a killed worker breaks only those.) A file is only given to a worker that already holds one
  while more files wait than there are idle workers: the last files go to idle workers.
- The workers. Each is a process of the "spawn" context (CUDA and CTranslate2 do not survive a
  fork) with its share of the CPU threads (devices.worker_threads: threads // workers, at least
  1). It loads the model once, on its GPU (its device_index: for CUDA_VISIBLE_DEVICES=3,5 the
  GPUs are 0 and 1), and runs the very code of a single process (runner.transcribe_job:
  result cache, out-of-memory back-off, speakers), decoding its next file while it transcribes
  this one (runner.Prefetcher). It writes each file's transcripts itself, atomically, as a
  single process does.
- The results. Workers send each file's outcome back; the parent owns the Progress and the
  Summary and prints, in the order files finish, one `[i/N] done ...` line per file (or its
  `error: FILE: reason` line), then the summary line, as a single process would.
- A worker that dies (killed, a segfault): every file it held goes back to the front of the
  queue, marked. A marked file is only given to a worker that holds nothing else (so the next
  death is its own), and no second file joins it there; a marked file a worker dies with again
  is reported failed, with a line that says so. Temporary files the dead worker left beside
  its outputs are removed, and a new worker starts on its GPU. Every other file still finishes
  exactly once. A worker that dies while loading its model is not replaced (its GPU is taken
  to be unusable); its files go to the others.
- Ctrl-C (the workers ignore SIGINT: the parent stops them) and SIGTERM end every worker with
  SIGTERM, which removes what it was writing; one that does not end is killed.

A program that runs a pool itself (not through the whisper-hpc command) needs the
`if __name__ == "__main__":` guard every spawn needs: each worker imports its main module.

Test hooks: environment variables read by this module only, for tests/test_pool.py (and never
useful in a real run):

  WHISPER_HPC_POOL_FAKE_GPUS=1          each worker loads its engine (and diarizer) on the CPU, yet
                                        counts, is named and reports as the GPU it was given: a
                                        pool of N GPUs, run on a machine without one
  WHISPER_HPC_POOL_KILL_AT=NAME         a worker SIGKILLs itself when it starts the file whose
                                        name (the last part of its path) is NAME
  WHISPER_HPC_POOL_KILL_WHILE_WRITING=NAME
                                        the same, half-way through writing its transcripts: one
                                        format written, the next one's temporary file left behind
  WHISPER_HPC_POOL_KILL_ONCE=PATH       with either: only the worker that creates PATH dies
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from whisper_hpc import audio, devices, runtime
from whisper_hpc.errors import WhisperHpcError, termination_status, unwind_on_sigterm
from whisper_hpc.inputs import Job
from whisper_hpc.progress import Progress
from whisper_hpc.runner import (
    FILE_ERRORS, POLL_SECONDS, EngineState, Prefetcher, RunSettings, Summary, failure_message, pending_jobs,
    transcribe_job, write_all,
)
from whisper_hpc.writers import write_transcript

FAKE_GPUS_VARIABLE = "WHISPER_HPC_POOL_FAKE_GPUS"
KILL_AT_VARIABLE = "WHISPER_HPC_POOL_KILL_AT"
KILL_WHILE_WRITING_VARIABLE = "WHISPER_HPC_POOL_KILL_WHILE_WRITING"
KILL_ONCE_VARIABLE = "WHISPER_HPC_POOL_KILL_ONCE"

BYTES_PER_SECOND_GUESS = 16000  # 128 kbit/s: how long a file that cannot be probed is taken to be
MAX_DEATHS = 2  # a file held by this many workers as they died is not tried again
WITHIN_FILE_SECONDS = 2.0  # a worker's in-file progress goes to the parent at most this often
STOP_SECONDS = 30.0  # how long finished workers get to end before they are terminated
TERMINATE_SECONDS = 5.0  # how long a terminated worker gets before it is killed


def notice(message: str, stream) -> None:
    print(f"whisper-hpc: {message}", file=stream, flush=True)


def how_it_ended(code: int | None) -> str:
    if code is None:
        return "did not end"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


# ---- the parent -------------------------------------------------------------------------------------

@dataclass
class Task:
    number: int
    job: Job
    seconds: float  # its duration, or the guess from its size
    deaths: list[str] = field(default_factory=list)  # how each worker that died holding it ended


@dataclass
class WorkerPayload:
    """What each worker gets at its start (pickled): the run, less its files."""

    settings: RunSettings
    load: Callable  # assemble.EngineLoader (or any picklable loader; one with `on` is moved to the GPU)
    options: object  # DecodeOptions
    speakers: object = None
    cache: object = None
    device: str = "cuda"  # "cpu": --cpu_workers, every worker on the CPU


def longest_first(jobs: list[Job]) -> list[Task]:
    """The jobs as tasks, longest recording first (a file that cannot be probed is guessed from its size)."""
    tasks = []
    for number, job in enumerate(jobs):
        seconds = None
        try:
            seconds = audio.probe(job.source).duration
        except Exception:  # noqa: BLE001 - its worker will say what is wrong with it
            pass
        if not seconds:
            try:
                seconds = job.source.stat().st_size / BYTES_PER_SECOND_GUESS
            except (OSError, ValueError):
                seconds = 0.0
        tasks.append(Task(number, job, float(seconds)))
    return sorted(tasks, key=lambda task: (-task.seconds, task.number))


def partial_files(job: Job, formats: tuple[str, ...]) -> list[str]:
    """The temporary files a writer killed while writing `job`'s transcripts leaves beside them
    (files.write_atomically's .<name>.<format>.XXXXXXXX.partial), and nobody else's."""
    folder = job.output_base.parent
    pattern = re.compile(re.escape("." + job.output_base.name) + r"(\.(left|right|ch\d+))?\."
                         + "(" + "|".join(re.escape(f) for f in formats) + r")\.[a-z0-9_]{8}\.partial")
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return [os.path.join(folder, name) for name in names if pattern.fullmatch(name)]


class Worker:
    """One worker process, its pipes and what it holds, as the parent sees it."""

    def __init__(self, number: int, gpu: int, threads: int, context, payload: WorkerPayload) -> None:
        self.number = number
        self.gpu = gpu
        task_reader, self.tasks = context.Pipe(duplex=False)
        self.results, result_writer = context.Pipe(duplex=False)
        self.on_cpu = payload.device == "cpu"
        self.visible = "" if self.on_cpu else devices.only_gpu(gpu)
        self.process = context.Process(target=worker_main, name=f"whisper-hpc-gpu{gpu}-worker{number}",
                                       args=(number, gpu, self.visible, threads, payload, task_reader, result_writer),
                                       daemon=True)
        with runtime.threads_for_children(threads):  # read by OpenMP as the worker imports its engine
            self.process.start()
        task_reader.close()
        result_writer.close()
        self.held: list[Task] = []
        self.asking = False
        self.ready = False  # its model load was tried (a death before is the GPU's, not a file's)
        self.pipe_open = True
        self.alive = True

    def name(self) -> str:
        return f"worker {self.number} ({self.where()})"

    def where(self) -> str:
        return "CPU" if self.on_cpu else f"GPU {self.gpu}"

    def give(self, task: Task) -> bool:
        try:
            self.tasks.send(("task", task.number, task.job))
        except (OSError, ValueError):
            self.asking = False
            return False  # it is dying: its sentinel says so soon
        self.held.append(task)
        self.asking = False
        return True

    def stop(self) -> None:
        try:
            self.tasks.send(("stop",))
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        for end in (self.tasks, self.results):
            try:
                end.close()
            except OSError:
                pass


class GpuPool:
    def __init__(self, jobs: list[Job], settings: RunSettings, load: Callable, options, gpus: list[int], threads: int,
                 errors=None, speakers=None, cache=None, device: str = "cuda") -> None:
        self.jobs = jobs
        self.settings = settings
        self.payload = WorkerPayload(settings, load, options, speakers, cache, device)
        self.gpus = list(gpus)
        self.threads = devices.worker_threads(threads, len(self.gpus))
        self.errors = errors or sys.stderr
        self.summary = Summary()
        self.workers: list[Worker] = []
        self.queue: deque[Task] = deque()
        self.dispatched: list[int] = []  # task numbers in the order they were handed out
        self.done_by: dict[int, int] = {}  # task number -> the GPU of the worker that finished it
        self.finished = 0
        self.total = 0
        self.fatal: WhisperHpcError | None = None
        self.context = multiprocessing.get_context("spawn")
        self.progress: Progress | None = None

    # ---- the run

    def run(self) -> Summary:
        pending = pending_jobs(self.jobs, self.settings, self.summary, self.errors)
        if not pending:
            return self.summary
        self.total = len(pending)
        self.progress = Progress(self.total, self.errors)
        where = "the CPU" if self.payload.device == "cpu" else f"GPU {','.join(str(g) for g in self.gpus)}"
        notice(f"{len(self.gpus)} workers on {where}, {self.threads} CPU "
               f"thread{'s' if self.threads != 1 else ''} each; {self.total} files, longest first", self.errors)
        try:
            for gpu in self.gpus:
                self.start_worker(gpu)
            self.queue = deque(longest_first(pending))  # while the workers start and load their models
            while self.finished < self.total:
                self.serve()
                if not any(w.alive for w in self.workers):
                    self.fail_the_rest()
                    break
                self.wait()
                if self.fatal is not None:
                    raise self.fatal
            self.stop_workers()
        except BaseException:
            self.terminate_workers()
            raise
        return self.summary

    def start_worker(self, gpu: int) -> Worker:
        worker = Worker(len(self.workers) + 1, gpu, self.threads, self.context, self.payload)
        self.workers.append(worker)
        return worker

    def serve(self) -> None:
        """Answer the workers that asked: idle ones first; one that is busy only while more files
        wait than there are idle workers, and never beside (or instead of) a marked file."""
        alive = [w for w in self.workers if w.alive]
        for worker in [w for w in alive if w.asking and not w.held]:
            if self.queue:
                self.hand(worker, self.queue.popleft())
        idle = sum(1 for w in alive if not w.held)
        for worker in [w for w in alive if w.asking and w.held]:
            if not self.queue or self.queue[0].deaths or any(t.deaths for t in worker.held) or len(self.queue) <= idle:
                continue
            self.hand(worker, self.queue.popleft())

    def hand(self, worker: Worker, task: Task) -> None:
        if worker.give(task):
            self.dispatched.append(task.number)
        else:
            self.queue.appendleft(task)

    def wait(self) -> None:
        alive = [w for w in self.workers if w.alive]
        watched = {w.process.sentinel: w for w in alive}
        pipes = {w.results: w for w in alive if w.pipe_open}
        ready = multiprocessing.connection.wait([*pipes, *watched], timeout=1.0)
        ended = []
        for handle in ready:
            if handle in pipes:
                self.read(pipes[handle])
            else:
                ended.append(watched[handle])
        for worker in alive:
            if worker.alive and not worker.pipe_open and worker not in ended:
                worker.process.join(TERMINATE_SECONDS)  # its pipe closed: it is ending
                if worker.process.exitcode is None:
                    worker.process.kill()
                    worker.process.join()
                ended.append(worker)
        for worker in ended:
            self.read(worker)  # what it sent before it ended comes first
            self.died(worker)

    def read(self, worker: Worker) -> None:
        while worker.pipe_open:
            try:
                if not worker.results.poll():
                    return
                message = worker.results.recv()
            except Exception:  # noqa: BLE001 - EOF: it died; anything else: a message it was cut short in
                worker.pipe_open = False
                return
            self.handle(worker, message)

    def handle(self, worker: Worker, message: tuple) -> None:
        kind = message[0]
        if kind == "want":
            worker.asking = True
        elif kind == "ready":
            worker.ready = True
        elif kind == "loaded":
            _, engine, model, device, compute_type, threads, visible = message
            shown = f"worker {worker.number}" if worker.on_cpu else \
                f"GPU {worker.gpu} (worker {worker.number}, CUDA_VISIBLE_DEVICES={visible})"
            notice(f"{shown}: {engine} {model} on {device} ({compute_type}, {threads} threads)", self.errors)
        elif kind == "within":
            _, name, position, duration, elapsed = message
            self.progress.within_file(name, position, duration, time.monotonic() - elapsed)
        elif kind == "say":
            self.errors.write(message[1] + "\n")
            self.errors.flush()
        elif kind in ("done", "failed"):
            task = next((t for t in worker.held if t.number == message[1]), None)
            if task is None:
                return
            worker.held.remove(task)
            self.finished += 1
            if kind == "done":
                _, _, duration, wall, how = message
                self.summary.done += 1
                self.done_by[task.number] = worker.gpu
                self.progress.file_finished(self.finished, str(task.job.source), duration, wall, how=how)
            else:
                self.summary.file_failed(message[2], self.errors)
        elif kind == "fatal":
            _, text, code = message
            self.fatal = WhisperHpcError(text, code)

    def died(self, worker: Worker) -> None:
        """Put back what a dead worker held (or fail what killed a worker before), and replace it."""
        if not worker.alive:
            return
        worker.process.join(TERMINATE_SECONDS)
        worker.alive = False
        worker.close()
        how = how_it_ended(worker.process.exitcode)
        held, worker.held = worker.held, []
        for task in held:
            for path in partial_files(task.job, self.settings.formats):
                try:
                    os.unlink(path)
                except OSError:
                    pass
        if self.fatal is not None or self.finished >= self.total:
            return
        if not worker.ready:
            others = "its files go to the other workers" if held else "the other workers go on"
            notice(f"{worker.name()} died while loading the model ({how}); {others}", self.errors)
            self.queue.extendleft(reversed(held))
            return
        back = []
        for task in held:
            task.deaths.append(how)
            if len(task.deaths) >= MAX_DEATHS:
                self.finished += 1
                self.summary.file_failed(failure_message(task.job, RuntimeError(
                    f"every worker that transcribed it died ({'; '.join(task.deaths)}): not tried again; the file "
                    "may crash the decoder or the engine (check it with `ffmpeg -v error -i FILE -f null -`)")), self.errors)
            else:
                back.append(task)
                notice(f"{worker.name()} died ({how}) while it held {task.job.source}; it goes to another worker",
                       self.errors)
        self.queue.extendleft(reversed(back))
        if held and self.queue:  # a death with a file in hand: the file's doing, not the GPU's
            replacement = self.start_worker(worker.gpu)
            notice(f"{replacement.name()} starts in its place", self.errors)
        elif not held:
            notice(f"{worker.name()} ended ({how}); the other workers go on", self.errors)

    def fail_the_rest(self) -> None:
        ends = sorted({how_it_ended(w.process.exitcode) for w in self.workers})
        while self.queue:
            task = self.queue.popleft()
            self.finished += 1
            self.summary.file_failed(failure_message(task.job, RuntimeError(
                f"not transcribed: no worker process is left ({', '.join(ends)}); see the lines above")), self.errors)

    def stop_workers(self) -> None:
        alive = [w for w in self.workers if w.alive]
        for worker in alive:
            worker.stop()
        deadline = time.monotonic() + STOP_SECONDS
        for worker in alive:
            worker.process.join(max(0.0, deadline - time.monotonic()))
        self.terminate_workers()

    def terminate_workers(self) -> None:
        """SIGTERM every worker left (its atomic writes remove their temporary files), then SIGKILL."""
        alive = [w for w in self.workers if w.process.exitcode is None]
        for worker in alive:
            try:
                worker.process.terminate()
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + TERMINATE_SECONDS
        for worker in alive:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.exitcode is None:
                worker.process.kill()
                worker.process.join()
        for worker in self.workers:
            worker.alive = False
            worker.close()


def run_pool(jobs: list[Job], settings: RunSettings, load: Callable, options, gpus: list[int], threads: int,
             errors=None, speakers=None, cache=None, device: str = "cuda") -> Summary:
    """Every job, on one worker process per entry of `gpus` (its device_index), `threads` CPU
    threads shared among them: the single process's run_jobs, spread over the GPUs (on `device`
    "cpu", over as many workers on the CPU)."""
    return GpuPool(jobs, settings, load, options, gpus, threads, errors, speakers, cache, device).run()


# ---- a worker -------------------------------------------------------------------------------------

class Sender:
    """The worker's end of its results pipe, for both of its threads."""

    def __init__(self, connection) -> None:
        self.connection = connection
        self.lock = threading.Lock()

    def send(self, message: tuple) -> None:
        with self.lock:
            self.connection.send(message)


class RemoteProgress:
    """Progress inside a file, sent to the parent (which prints it) now and then."""

    def __init__(self, sender: Sender) -> None:
        self.sender = sender
        self.last = 0.0

    def within_file(self, name: str, position: float, duration: float | None, started: float) -> None:
        now = time.monotonic()
        if now - self.last >= WITHIN_FILE_SECONDS:
            self.last = now
            self.sender.send(("within", name, position, duration, now - started))


class RemoteLines:
    """A text stream whose lines the parent prints (the out-of-memory notices)."""

    def __init__(self, sender: Sender) -> None:
        self.sender = sender
        self.buffer = ""

    def write(self, text: str) -> int:
        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            self.sender.send(("say", line))
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def requested_jobs(sender: Sender, tasks, stop: threading.Event):
    """The files the parent hands this worker, each when its decoder asks for the next."""
    while not stop.is_set():
        sender.send(("want",))
        while not tasks.poll(POLL_SECONDS):
            if stop.is_set():
                return
        message = tasks.recv()
        if message[0] != "task":
            return
        yield message[1], message[2]


def dies_here(variable: str, job: Job) -> bool:
    """The test hooks: does this worker kill itself on this file?"""
    name = os.environ.get(variable)
    if not name or job.source.name != name:
        return False
    once = os.environ.get(KILL_ONCE_VARIABLE)
    if once:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            return False
    return True


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def hooked_write(job: Job, transcripts, settings: RunSettings) -> None:
    """write_all, or (test hook) a death half-way through it, as a SIGKILL mid-write leaves things."""
    if dies_here(KILL_WHILE_WRITING_VARIABLE, job):
        label, transcript = transcripts[0]
        base = job.channel_base(label)
        write_transcript(transcript, base, settings.formats[:1], settings.layout)
        tempfile.mkstemp(prefix=f".{base.name}.{settings.formats[-1]}.", suffix=".partial", dir=base.parent)
        die()
    write_all(job, transcripts, settings)


def on_device(loader, device: str, gpu: int, threads: int):
    """A loader moved to this worker's GPU (assemble.EngineLoader.on), or as it is."""
    return loader.on(device, gpu, threads) if hasattr(loader, "on") else loader


def worker_main(number: int, gpu: int, visible: str, threads: int, payload: WorkerPayload, tasks, results) -> None:
    """A worker process: load the model on `gpu` (made its only GPU: CUDA_VISIBLE_DEVICES=`visible`,
    device_index 0), then transcribe what the parent hands over."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which ends the workers
    unwind_on_sigterm()
    sender = Sender(results)
    code = 0
    try:
        fake = os.environ.get(FAKE_GPUS_VARIABLE, "") == "1"
        on_cpu = payload.device == "cpu"
        device = "cpu" if fake or on_cpu else "cuda"  # faked: the CPU, yet named as the GPU
        if not on_cpu:
            os.environ["CUDA_VISIBLE_DEVICES"] = visible  # before an engine is imported, as the threads
        runtime.pin_threads(threads)
        runtime.one_malloc_arena()
        index = 0
        load = on_device(payload.load, device, index, threads)
        speakers = payload.speakers
        if speakers is not None and hasattr(speakers, "load"):
            speakers.load = on_device(speakers.load, device, index, threads)

        def announced(compute_type: str | None = None):
            engine = load(compute_type)
            model = getattr(getattr(getattr(load, "model", None), "staged", None), "name", payload.settings.model_name)
            sender.send(("loaded", engine.name, model, engine.device, engine.compute_type, threads,
                         os.environ.get("CUDA_VISIBLE_DEVICES")))
            return engine

        state = EngineState(announced, payload.options)
        stop = threading.Event()
        with Prefetcher(requested_jobs(sender, tasks, stop), payload.settings, stop=stop) as prefetched:
            try:
                state.engine = state.load(None)  # while the decoder fetches the first file
            except FILE_ERRORS:
                pass  # tried again for each file, which fails with the error, as in one process
            sender.send(("ready",))
            run_tasks(prefetched, state, payload, speakers, sender)
        state.engine = None  # the model leaves the GPU before the interpreter ends
    except WhisperHpcError as error:
        code = error.exit_code
        try:
            sender.send(("fatal", str(error), error.exit_code))
        except OSError:
            pass
    except (EOFError, BrokenPipeError, ConnectionResetError):
        code = 1  # the parent is gone
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:  # noqa: BLE001 - a bug: say where, and die like a crash (the parent retries elsewhere)
        code = termination_status()  # or a library's error raised in place of SIGTERM's SystemExit
        if code is None:
            traceback.print_exc()
            code = 1
    # Returning through multiprocessing runs its finalisers; the decoding thread is a daemon and
    # never holds the exit up.
    sys.exit(code)


def run_tasks(prefetched: Prefetcher, state: EngineState, payload: WorkerPayload, speakers, sender: Sender) -> None:
    progress = RemoteProgress(sender)
    lines = RemoteLines(sender)
    while (current := prefetched.next_file()) is not None:
        started = time.monotonic()
        if dies_here(KILL_AT_VARIABLE, current.job):
            die()
        try:
            duration, how = transcribe_job(current, state, payload.settings, progress, speakers, payload.cache, lines,
                                           started, write=hooked_write)
            sender.send(("done", current.key, duration, time.monotonic() - started, how))
        except FILE_ERRORS as error:
            sender.send(("failed", current.key, failure_message(current.job, error)))
        current.close()
