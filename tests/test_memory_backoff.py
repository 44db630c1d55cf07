"""A GPU out-of-memory error on a file: half the batch down to 1, then a lighter compute type, each
with one notice; only then does that file fail, and the rest go on.

No GPU here: the engine below raises the error CTranslate2 raises, on real audio decoded by the
real runner (the logic under test is the runner's, not CUDA's).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from whisper_hpc.engines import DecodeOptions
from whisper_hpc.engines.base import EngineResult
from whisper_hpc.engines.memory import is_out_of_memory, next_retry
from whisper_hpc.inputs import collect_jobs
from whisper_hpc.runner import RunSettings, run_jobs
from whisper_hpc.transcript import Segment

OUT_OF_MEMORY = "CUDA failed with error out of memory"


@dataclass
class GpuThatFits:
    """Loads of a fake faster-whisper on a GPU that fits at most `batch` clips of `compute_type`s
    (None: any), and never a file longer than `longest` seconds."""

    batch: int = 64
    compute_types: tuple[str, ...] | None = None
    longest: float = float("inf")
    loads: list[str] = field(default_factory=list)
    tries: list[tuple[int, str]] = field(default_factory=list)

    def load(self, compute_type: str | None = None):
        gpu = self
        self.loads.append(compute_type or "float16")

        class Engine:
            name, device = "faster-whisper", "cuda"

            def __init__(self) -> None:
                self.compute_type = gpu.loads[-1]

            def transcribe(self, samples, options: DecodeOptions) -> EngineResult:
                gpu.tries.append((options.batch_size, self.compute_type))
                fits = options.batch_size <= gpu.batch and len(samples) / 16000 <= gpu.longest and \
                    (gpu.compute_types is None or self.compute_type in gpu.compute_types)

                def segments():
                    if not fits:
                        raise RuntimeError(OUT_OF_MEMORY)  # as CTranslate2 does, while decoding
                    yield Segment(0.0, 1.0, " words")

                return EngineResult(segments(), "en", 1.0)

            def versions(self) -> dict[str, str]:
                return {}

        return Engine()


def run(files: list[Path], gpu: GpuThatFits, tmp_path: Path, batch_size: int = 8):
    errors = io.StringIO()
    summary = run_jobs(collect_jobs([str(f) for f in files], tmp_path / "out"), RunSettings(formats=("txt",)),
                       gpu.load, DecodeOptions(batch_size=batch_size), errors=errors)
    notices = [line for line in errors.getvalue().splitlines() if "ran out of memory; retrying" in line]
    return summary, notices, errors.getvalue()


@pytest.fixture
def jfk(shared_data: Path) -> Path:
    return shared_data / "jfk.flac"


def test_the_batch_is_halved_until_it_fits(jfk, tmp_path):
    gpu = GpuThatFits(batch=2)
    summary, notices, _ = run([jfk], gpu, tmp_path)
    assert summary.done == 1 and not summary.failed
    assert notices == [f"whisper-hpc: {jfk}: the GPU ran out of memory; retrying with --batch_size 4 (was 8)",
                       f"whisper-hpc: {jfk}: the GPU ran out of memory; retrying with --batch_size 2 (was 4)"]
    assert gpu.loads == ["float16"], "halving the batch needs no second model load"
    assert (tmp_path / "out" / "jfk.txt").read_text().strip() == "words"


def test_then_a_lighter_compute_type_and_later_files_keep_what_fitted(jfk, shared_data, tmp_path):
    gpu = GpuThatFits(batch=1, compute_types=("int8_float16",))
    second = shared_data / "hotwords.mp3"
    summary, notices, _ = run([jfk, second], gpu, tmp_path)
    assert summary.done == 2 and not summary.failed
    assert [n.split("; ", 1)[1] for n in notices] == [
        "retrying with --batch_size 4 (was 8)", "retrying with --batch_size 2 (was 4)",
        "retrying with --batch_size 1 (was 2)", "retrying with --compute_type int8_float16 (was float16)"]
    assert gpu.loads == ["float16", "int8_float16"]
    assert gpu.tries[-1] == (1, "int8_float16") and gpu.tries.count((1, "int8_float16")) == 2, \
        "the next file starts where the first one fitted"


def test_a_file_that_never_fits_fails_alone_and_the_rest_finish(jfk, shared_data, tmp_path):
    long_one = shared_data / "multilingual.mp3"  # 60 s; jfk and hotwords are shorter
    gpu = GpuThatFits(longest=20.0)
    summary, notices, text = run([long_one, jfk, shared_data / "hotwords.mp3"], gpu, tmp_path, batch_size=2)
    assert summary.done == 2 and len(summary.failed) == 1
    assert f"error: {long_one}: the GPU ran out of memory even at --batch_size 1 with int8_float16 ({OUT_OF_MEMORY}); " \
        "use a smaller --model, or a GPU with more memory" in text
    assert [n.split("; ", 1)[1] for n in notices] == [
        "retrying with --batch_size 1 (was 2)", "retrying with --compute_type int8_float16 (was float16)"]
    assert not (tmp_path / "out" / "multilingual.txt").exists()
    assert (tmp_path / "out" / "jfk.txt").exists() and (tmp_path / "out" / "hotwords.txt").exists()


def test_other_runtime_errors_are_not_retried(jfk, tmp_path):
    class Broken(GpuThatFits):
        def load(self, compute_type=None):
            engine = super().load(compute_type)
            engine.transcribe = lambda samples, options: (_ for _ in ()).throw(RuntimeError("cuDNN failed"))
            return engine

    gpu = Broken()
    summary, notices, text = run([jfk], gpu, tmp_path)
    assert len(summary.failed) == 1 and not notices and "cuDNN failed" in text and gpu.loads == ["float16"]


@pytest.mark.parametrize("error, expected", [
    (RuntimeError("CUDA failed with error out of memory"), True),
    (RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"), True),
    (type("OutOfMemoryError", (RuntimeError,), {})("anything"), True),
    (RuntimeError("cuDNN error: CUDNN_STATUS_NOT_INITIALIZED"), False),
    (MemoryError(), False),
])
def test_what_counts_as_out_of_memory(error, expected):
    assert is_out_of_memory(error) is expected


def test_retries_run_out():
    options = DecodeOptions(batch_size=1)
    assert next_retry("faster-whisper", "int8_float16", options) is None
    assert next_retry("openai-whisper", "float16", options) is None
    assert next_retry("openai-whisper", "float32", options).compute_type == "float16"
    assert next_retry("faster-whisper", "bfloat16", options).compute_type == "int8_bfloat16"


class Pipeline:
    """pyannote's SpeakerDiarization as far as the back-off sees it: two batch sizes."""

    def __init__(self, segmentation: int, embedding: int, fits: int) -> None:
        self.segmentation_batch_size, self.embedding_batch_size, self.fits = segmentation, embedding, fits

    def window(self) -> str:
        if max(self.segmentation_batch_size, self.embedding_batch_size) > self.fits:
            raise RuntimeError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return "turns"


def test_diarization_halves_its_batches_until_they_fit():
    from whisper_hpc.diarization.pipeline import within_gpu_memory

    pipeline, notices = Pipeline(32, 16, fits=8), []
    assert within_gpu_memory(pipeline, pipeline.window, notices.append) == "turns"
    assert (pipeline.segmentation_batch_size, pipeline.embedding_batch_size) == (8, 4)
    assert notices == [
        "speaker diarization ran out of GPU memory; retrying with segmentation and embedding batches of 16 and 8 "
        "(were 32 and 16)",
        "speaker diarization ran out of GPU memory; retrying with segmentation and embedding batches of 8 and 4 "
        "(were 16 and 8)"]
    never = Pipeline(2, 1, fits=0)
    with pytest.raises(RuntimeError, match="even with batches of 1; diarize on a GPU with more memory") as given_up:
        within_gpu_memory(never, never.window, notices.append)
    assert not is_out_of_memory(given_up.value), "Whisper's back-off must not retry what diarization gave up on"
    broken = Pipeline(4, 4, fits=4)
    broken.window = lambda: (_ for _ in ()).throw(RuntimeError("cuDNN failed"))
    with pytest.raises(RuntimeError, match="cuDNN failed"):
        within_gpu_memory(broken, broken.window, notices.append)
    assert (broken.segmentation_batch_size, broken.embedding_batch_size) == (4, 4)
