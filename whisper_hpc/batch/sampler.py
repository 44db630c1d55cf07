"""A light sampler of one array task's CPU, memory and GPU use: samples-S-T.tsv beside its results.

Every few seconds (WHISPER_HPC_SAMPLE_SECONDS, default 5; 0 turns it off) a daemon thread adds
one block of rows to a TSV file and flushes it, so a task killed at any moment leaves a readable
series (`read_samples` ignores a cut-off last line):

    time  cpu_percent  rss_bytes  gpu  gpu_util_percent  gpu_memory_used_bytes  gpu_memory_total_bytes

* cpu_percent and rss_bytes are summed over the process tree under the task's process (found
  through the parent links in /proc/*/stat, so whisper-hpc counts even when it runs inside the
  container); 100 means one core busy. CPU time includes that of reaped children (cutime,
  cstime), so a whisper-hpc run that ends between two samples still counts. The first row's
  cpu_percent is the average since the tree's root started. RSS is summed, so pages shared
  between processes count once per process.
* with NVML (nvidia-ml-py) and a GPU, one row per visible GPU (CUDA_VISIBLE_DEVICES: indices or
  UUIDs) with its utilisation and memory; the figures are the whole device's. Without NVML the
  gpu columns are empty and one row is written per sample.

Only /proc and NVML are read: no subprocess, no psutil. Whatever goes wrong (no NVML, a process
gone mid-read, a full disk) is swallowed: the sampler never fails the task.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Mapping

from whisper_hpc.devices import visible_devices
from whisper_hpc.files import read_regular_file

INTERVAL_VARIABLE = "WHISPER_HPC_SAMPLE_SECONDS"
DEFAULT_INTERVAL = 5.0
INTERVAL_BOUNDS = (0.5, 3600.0)  # from the environment; outside them (or not a number) means the default
COLUMNS = ("time", "cpu_percent", "rss_bytes", "gpu", "gpu_util_percent", "gpu_memory_used_bytes",
           "gpu_memory_total_bytes")
HEADER = "\t".join(COLUMNS) + "\n"
MAX_SAMPLES_BYTES = 64 << 20  # a day of samples every second is about 6 MB; past this a file is not read
STOP_WAIT_SECONDS = 10.0  # stop() gives up on a thread stuck in a driver call after this


def interval_from_environment(environ: Mapping[str, str] = os.environ) -> float:
    """Seconds between samples from WHISPER_HPC_SAMPLE_SECONDS: 0 means off; nonsense, the default."""
    text = environ.get(INTERVAL_VARIABLE, "").strip()
    if not text:
        return DEFAULT_INTERVAL
    try:
        value = float(text)
    except ValueError:
        return DEFAULT_INTERVAL
    if value == 0:
        return 0.0
    low, high = INTERVAL_BOUNDS
    return value if math.isfinite(value) and low <= value <= high else DEFAULT_INTERVAL


# ---- the process tree, from /proc ----------------------------------------------------------------

@dataclass(frozen=True)
class ProcessStat:
    """What one /proc/PID/stat line says that the sampler uses."""

    pid: int
    ppid: int
    cpu_ticks: int  # utime + stime + cutime + cstime
    start_ticks: int  # since boot
    rss_pages: int


def parse_stat(pid: int, line: bytes) -> ProcessStat | None:
    """One /proc/PID/stat line; the command name (field 2) may hold spaces and parentheses."""
    fields = line[line.rfind(b")") + 2:].split()
    try:
        ticks = sum(int(f) for f in fields[11:15])
        return ProcessStat(pid, int(fields[1]), ticks, int(fields[19]), int(fields[21]))
    except (IndexError, ValueError):
        return None


def read_stat_line(pid: int) -> bytes | None:
    """The process's /proc/PID/stat line, or None when it is gone (or was never there)."""
    try:
        descriptor = os.open(f"/proc/{pid}/stat", os.O_RDONLY)  # os.open: half the cost of open()
    except OSError:
        return None
    try:
        return os.read(descriptor, 4096)
    except OSError:
        return None
    finally:
        os.close(descriptor)


def parent_of(line: bytes) -> int | None:
    try:
        return int(line[line.rfind(b")") + 2:].split(None, 2)[1])
    except (IndexError, ValueError):
        return None


def all_stat_lines() -> dict[int, tuple[int, bytes]]:
    """pid -> (parent pid, stat line) for every process /proc shows; those that vanish mid-read are left out."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return {}
    lines = {}
    for name in names:
        if name.isdigit():
            line = read_stat_line(int(name))
            parent = None if line is None else parent_of(line)
            if parent is not None:
                lines[int(name)] = (parent, line)
    return lines


def tree(root: int, lines: Mapping[int, tuple[int, bytes]]) -> list[ProcessStat]:
    """`root` and all its descendants among `lines` (empty when root is gone)."""
    if root not in lines:
        return []
    children: dict[int, list[int]] = {}
    for pid, (parent, _line) in lines.items():
        children.setdefault(parent, []).append(pid)
    found, waiting, seen = [], [root], {root}
    while waiting:
        pid = waiting.pop()
        stat = parse_stat(pid, lines[pid][1])
        if stat is not None:
            found.append(stat)
        for child in children.get(pid, ()):
            if child not in seen:
                seen.add(child)
                waiting.append(child)
    return found


def tree_pids(root: int) -> set[int]:
    """The pids of `root`'s process tree now."""
    return {stat.pid for stat in tree(root, all_stat_lines())}


def uptime_seconds() -> float | None:
    try:
        with open("/proc/uptime", "rb") as stream:
            return float(stream.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# ---- GPUs, through NVML --------------------------------------------------------------------------

@dataclass(frozen=True)
class GpuReading:
    index: int
    util_percent: int | None
    memory_used: int | None
    memory_total: int | None


class GpuReader:
    """Utilisation and memory of the visible GPUs; `available` stays False without NVML or GPU."""

    def __init__(self) -> None:
        self.nvml: Any = None
        self.handles: list[tuple[int, Any]] = []

    @property
    def available(self) -> bool:
        return bool(self.handles)

    def open(self, environ: Mapping[str, str] = os.environ) -> None:
        """Load NVML and find the visible GPUs; any failure leaves the reader without GPUs."""
        try:
            import pynvml  # nvidia-ml-py: only on images that ship it, and needs the driver

            pynvml.nvmlInit()
        except Exception:  # ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded...
            return
        self.nvml = pynvml
        try:
            self.handles = self.find_handles(visible_devices(environ.get("CUDA_VISIBLE_DEVICES")))
        except Exception:
            self.handles = []
        if not self.handles:
            self.close()

    def find_handles(self, wanted: list[int | str] | None) -> list[tuple[int, Any]]:
        nvml = self.nvml
        if wanted is None:
            wanted = list(range(nvml.nvmlDeviceGetCount()))
        handles = []
        for device in wanted:
            try:
                if isinstance(device, int):
                    handles.append((device, nvml.nvmlDeviceGetHandleByIndex(device)))
                else:
                    handle = nvml.nvmlDeviceGetHandleByUUID(device)
                    handles.append((int(nvml.nvmlDeviceGetIndex(handle)), handle))
            except Exception:  # not on this node, or hidden by the job's cgroup
                continue
        return handles

    def read(self) -> list[GpuReading]:
        return [self.read_one(index, handle) for index, handle in self.handles]

    def read_one(self, index: int, handle: Any) -> GpuReading:
        util = used = total = None
        try:
            util = int(self.nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:  # e.g. NVML_ERROR_NOT_SUPPORTED on a MIG slice
            pass
        try:
            memory = self.nvml.nvmlDeviceGetMemoryInfo(handle)
            used, total = int(memory.used), int(memory.total)
        except Exception:
            pass
        return GpuReading(index, util, used, total)

    def close(self) -> None:
        if self.nvml is not None:
            try:
                self.nvml.nvmlShutdown()
            except Exception:
                pass
        self.nvml = None
        self.handles = []


# ---- the series ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sample:
    """One row of samples-S-T.tsv; the gpu fields are None when no GPU was sampled."""

    time: float
    cpu_percent: float
    rss_bytes: int
    gpu: int | None = None
    gpu_util_percent: float | None = None
    gpu_memory_used_bytes: int | None = None
    gpu_memory_total_bytes: int | None = None


def text(value: object) -> str:
    return "" if value is None else str(value)


def rows(when: float, cpu_percent: float, rss_bytes: int, gpus: list[GpuReading]) -> str:
    """One sample's block of TSV lines: one per GPU, or one with empty gpu fields."""
    common = f"{when:.3f}\t{cpu_percent:.1f}\t{rss_bytes}"
    if not gpus:
        return common + "\t\t\t\t\n"
    return "".join(f"{common}\t{g.index}\t{text(g.util_percent)}\t{text(g.memory_used)}\t{text(g.memory_total)}\n"
                   for g in gpus)


def optional_number(value: str, kind: type) -> Any:
    return None if value == "" else kind(value)


def parse_row(line: str) -> Sample | None:
    parts = line.split("\t")
    if len(parts) != len(COLUMNS):
        return None
    try:
        sample = Sample(float(parts[0]), float(parts[1]), int(parts[2]), optional_number(parts[3], int),
                        optional_number(parts[4], float), optional_number(parts[5], int),
                        optional_number(parts[6], int))
    except ValueError:
        return None
    if not (math.isfinite(sample.time) and math.isfinite(sample.cpu_percent)) or sample.cpu_percent < 0 \
            or sample.rss_bytes < 0:
        return None
    if sample.gpu_util_percent is not None and not math.isfinite(sample.gpu_util_percent):
        return None
    return sample


def parse_samples(text: str) -> list[Sample]:
    """The whole rows of a samples file's text: headers, garbage and a cut-off last line are skipped."""
    lines = text.split("\n")
    lines.pop()  # what follows the last newline: "" or a line the writer did not finish
    return [sample for sample in map(parse_row, lines) if sample is not None]


def read_samples(path: Path | str) -> list[Sample]:
    """The rows of a samples file; [] when it is absent, unreadable, not a regular file or too large."""
    try:
        data = read_regular_file(Path(path), limit=MAX_SAMPLES_BYTES)
    except (OSError, ValueError):
        return []
    return parse_samples(data.decode("utf-8", "replace"))


def open_series(path: Path) -> IO[str]:
    """The samples file, open for appending, with the header written if it is new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = open(path, "a+", encoding="utf-8", newline="\n")
    try:
        size = stream.seek(0, os.SEEK_END)
        if size == 0:
            stream.write(HEADER)
        else:
            stream.seek(size - 1)
            if stream.read(1) != "\n":  # a killed earlier run left half a line: end it
                stream.write("\n")
        stream.flush()
    except BaseException:
        stream.close()
        raise
    return stream


@dataclass
class Cost:
    """What sampling itself took on its thread: CPU and wall seconds in sample() and loading NVML."""

    samples: int = 0
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0


class Sampler:
    """Samples the process tree under `root` (and the GPUs) into `path` every `interval` seconds.

    start() opens the file and takes the first sample; stop() takes the last one. Also a context
    manager. An interval of 0 (WHISPER_HPC_SAMPLE_SECONDS=0) or a file that cannot be created
    makes it do nothing. `cost` adds up what sampling itself took.
    """

    def __init__(self, path: Path | str, root: int, interval: float | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self.path = Path(path)
        self.root = root
        self.environ = os.environ if environ is None else environ
        self.interval = interval_from_environment(self.environ) if interval is None else interval
        self.cost = Cost()
        self.stream: IO[str] | None = None
        self.thread: threading.Thread | None = None
        self.stopping = threading.Event()
        self.gpus = GpuReader()
        self.last: tuple[float, int] | None = None  # (monotonic seconds, cpu ticks) of the previous sample
        self.ticks_per_second = os.sysconf("SC_CLK_TCK")
        self.page_size = os.sysconf("SC_PAGE_SIZE")

    @property
    def enabled(self) -> bool:
        return math.isfinite(self.interval) and self.interval > 0

    def start(self) -> Sampler:
        if not self.enabled or self.thread is not None:
            return self
        try:
            self.stream = open_series(self.path)
            thread = threading.Thread(target=self.run, name="whisper-batch sampler", daemon=True)
            thread.start()
        except Exception as error:  # an unwritable folder, no thread left: the task runs unsampled
            self.close()
            print(f"whisper-batch: no resource samples ({self.path}: {getattr(error, 'strerror', None) or error})",
                  file=sys.stderr, flush=True)
            return self
        self.thread = thread
        return self

    def stop(self) -> None:
        """Take the last sample and close the file (waits at most STOP_WAIT_SECONDS)."""
        if self.thread is None:
            return
        self.stopping.set()
        self.thread.join(STOP_WAIT_SECONDS)
        self.thread = None

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exception: object) -> None:
        self.stop()

    def run(self) -> None:
        """The thread: a sample now, one every interval, one more at stop; never raises."""
        try:
            self.counted(lambda: self.gpus.open(self.environ))
            while True:
                begun = time.monotonic()
                self.sample()
                if self.stopping.wait(max(0.0, self.interval - (time.monotonic() - begun))):
                    break
            self.sample()
        except Exception:
            pass
        finally:
            self.close()

    def close(self) -> None:
        self.gpus.close()
        stream, self.stream = self.stream, None
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass

    def counted(self, work: Callable[[], None]) -> None:
        """Run `work` on this thread, adding the CPU and wall time it takes to `cost`."""
        cpu_before, wall_before = time.thread_time(), time.perf_counter()
        try:
            work()
        finally:
            self.cost.cpu_seconds += time.thread_time() - cpu_before
            self.cost.wall_seconds += time.perf_counter() - wall_before

    def sample(self) -> None:
        """Write one block of rows (and count what it cost)."""
        self.counted(self.write_sample)
        self.cost.samples += 1

    def write_sample(self) -> None:
        try:
            block = self.measure()
            if self.stream is not None:
                self.stream.write(block)
                self.stream.flush()
        except Exception:  # a full disk, a vanished /proc: try again next time
            pass

    def measure(self) -> str:
        when, now = time.time(), time.monotonic()
        members = tree(self.root, all_stat_lines())
        ticks = sum(p.cpu_ticks for p in members)
        rss = sum(p.rss_pages for p in members) * self.page_size
        cpu = self.cpu_percent(now, ticks, members)
        self.last = (now, ticks)
        return rows(when, cpu, rss, self.gpus.read() if self.gpus.available else [])

    def cpu_percent(self, now: float, ticks: int, members: list[ProcessStat]) -> float:
        """CPU use since the previous sample; for the first, since the root started."""
        if self.last is not None:
            seconds, used = now - self.last[0], ticks - self.last[1]
        else:
            uptime = uptime_seconds()
            root = next((p for p in members if p.pid == self.root), None)
            if uptime is None or root is None:
                return 0.0
            seconds, used = uptime - root.start_ticks / self.ticks_per_second, ticks
        # A process that left the tree unreaped takes its ticks along: never below 0.
        return max(0.0, used / self.ticks_per_second / seconds * 100) if seconds > 0 else 0.0
