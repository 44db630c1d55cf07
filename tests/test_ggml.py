"""whisper-models export --format ggml: our own conversion of a staged openai-whisper.pt into
whisper.cpp's model file, loaded and run by whisper.cpp itself.

whisper.cpp comes from pywhispercpp (requirements/ggml-test.lock), installed without our venv's
knowledge into build/peers/ggml-test (`make ggml-test`); a child process puts that folder on its
sys.path. Every whisper-models command runs without network (unshare -n), as test_exchange's do.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, ROOT, need
from test_diarization import unshare_prefix
from wer import word_error_rate

pytestmark = [pytest.mark.system]

GGML_TEST = Path(os.environ.get("GGML_TEST", ROOT / "build" / "peers" / "ggml-test"))
MAX_WER = 0.15
FLOAT32_TENSORS = ("encoder.conv1.bias", "encoder.conv2.bias", "encoder.positional_embedding",
                   "decoder.positional_embedding")  # whisper.cpp reads these as float32 in an f16 file

WHISPER_CPP = """
import json, sys
sys.path.insert(0, sys.argv[1])
import numpy
from pywhispercpp.model import Model
model = Model(sys.argv[2], n_threads=2, print_progress=False, print_realtime=False)
audio = numpy.fromfile(sys.argv[3], dtype=numpy.float32)
segments = model.transcribe(audio, language="en")
print(json.dumps({"text": " ".join(segment.text.strip() for segment in segments)}))
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    home = tmp_path_factory.mktemp("ggml-home")
    scratch = tmp_path_factory.mktemp("ggml-tmp")

    def run(root: Path, *arguments: str, check: bool = True) -> subprocess.CompletedProcess:
        env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(scratch), "LANG": "C.UTF-8",
               "HF_HUB_OFFLINE": "1"}
        result = subprocess.run([*unshare_prefix(), str(BIN / "whisper-models"), "--root", str(root), *arguments],
                                env=env, capture_output=True, text=True, timeout=600)
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    yield run
    assert list(home.iterdir()) == [] and list(scratch.iterdir()) == []  # nothing left behind


@pytest.fixture(scope="module")
def exported(models, model_root: Path, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("ggml-export") / "tiny-ggml"
    result = models(model_root, "export", "tiny.en", "--format", "ggml", "--output", str(output))
    assert f"exported as ggml to {output}" in result.stdout
    return output


def read_ggml(path: Path) -> tuple[list[int], int, dict[str, tuple[int, tuple[int, ...], int]]]:
    """(hparams, vocabulary size, {tensor: (ftype, torch-order shape, data bytes)}) of a ggml file."""
    data = path.read_bytes()
    position = 0

    def ints(count: int) -> tuple[int, ...]:
        nonlocal position
        values = struct.unpack_from(f"<{count}i", data, position)
        position += 4 * count
        return values

    magic, *hparams = ints(12)
    assert magic == 0x67676D6C
    rows, columns = ints(2)
    position += 4 * rows * columns
    (tokens,) = ints(1)
    for _ in range(tokens):
        (length,) = ints(1)
        position += length
    tensors = {}
    while position < len(data):
        n_dims, name_length, ftype = ints(3)
        shape = tuple(reversed(ints(n_dims)))
        name = data[position:position + name_length].decode()
        position += name_length
        size = (2 if ftype == 1 else 4)
        for dimension in shape:
            size *= dimension
        tensors[name] = (ftype, shape, size)
        position += size
    assert position == len(data)
    return hparams, tokens, tensors


def test_the_ggml_file_has_whisper_cpps_layout(exported, model_root):
    import torch

    assert os.listdir(exported) == ["ggml-tiny.en.bin"]
    hparams, tokens, tensors = read_ggml(exported / "ggml-tiny.en.bin")
    checkpoint = torch.load(model_root / "tiny.en" / "openai-whisper.pt", map_location="cpu", weights_only=True)
    dims = checkpoint["dims"]
    assert hparams == [dims["n_vocab"], dims["n_audio_ctx"], dims["n_audio_state"], dims["n_audio_head"],
                       dims["n_audio_layer"], dims["n_text_ctx"], dims["n_text_state"], dims["n_text_head"],
                       dims["n_text_layer"], dims["n_mels"], 1]
    assert tokens == 50256  # gpt2.tiktoken: the ordinary tokens; whisper.cpp adds the special ones
    state = checkpoint["model_state_dict"]
    assert list(tensors) == list(state)
    for name, (ftype, shape, _) in tensors.items():
        wanted = tuple(state[name].shape) + ((1,) if name in ("encoder.conv1.bias", "encoder.conv2.bias") else ())
        assert shape == wanted, name
        vector_like = len(shape) < 2 or name in FLOAT32_TENSORS
        assert ftype == (0 if vector_like else 1), name  # float32 : float16


@pytest.mark.engine
def test_whisper_cpp_loads_the_export_and_transcribes_jfk(exported, shared_data, references, tmp_path):
    need((GGML_TEST / "pywhispercpp" / "model.py").is_file(),
         f"whisper.cpp (pywhispercpp) is not installed in {GGML_TEST}; run `make ggml-test`")
    samples = tmp_path / "jfk.f32"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(shared_data / "jfk.flac"), "-ar", "16000", "-ac", "1",
                    "-f", "f32le", str(samples)], check=True)
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8", "OMP_NUM_THREADS": "2"}
    result = subprocess.run([*unshare_prefix(), str(BIN / "python"), "-c", WHISPER_CPP, str(GGML_TEST),
                             str(exported / "ggml-tiny.en.bin"), str(samples)],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    text = json.loads(result.stdout.strip().splitlines()[-1])["text"]
    assert word_error_rate(references["jfk.flac"], text) <= MAX_WER, text


def test_an_existing_output_is_refused_and_left_as_it_was(models, model_root, exported):
    before = (exported / "ggml-tiny.en.bin").stat()
    result = models(model_root, "export", "tiny.en", "--format", "ggml", "--output", str(exported), check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"whisper-models: tiny.en: {exported} exists and is not an empty folder; choose a new --output"]
    after = (exported / "ggml-tiny.en.bin").stat()
    assert (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size)


@pytest.fixture
def broken_root(model_root: Path, tmp_path: Path) -> Path:
    """A model root with a model that has no openai-whisper.pt and one whose checkpoint is cut short."""
    root = tmp_path / "root"
    no_checkpoint = root / "no-pt"
    no_checkpoint.mkdir(parents=True)
    for name in ("model.bin", "config.json", "tokenizer.json"):
        (no_checkpoint / name).symlink_to(model_root / "tiny.en" / name)
    truncated = root / "cut"
    truncated.mkdir()
    with (model_root / "tiny.en" / "openai-whisper.pt").open("rb") as source:
        (truncated / "openai-whisper.pt").write_bytes(source.read(1 << 20))
    foreign = root / "foreign"
    foreign.mkdir()
    shutil.copyfile(model_root / "tiny.en" / "config.json", foreign / "openai-whisper.pt")
    return root


@pytest.mark.parametrize("name, message", [
    ("no-pt", "has no openai-whisper.pt, which the ggml file is made from; write it with `whisper-models convert no-pt`"),
    ("cut", "cannot be read as an openai-whisper checkpoint"),
    ("foreign", "cannot be read as an openai-whisper checkpoint"),
])
def test_a_model_that_cannot_be_converted_fails_with_one_line_and_leaves_nothing(models, broken_root, tmp_path, name,
                                                                                 message):
    output = tmp_path / "out"
    result = models(broken_root, "export", name, "--format", "ggml", "--output", str(output), check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"whisper-models: {name}: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not output.exists() and not list(tmp_path.glob(".out*"))
