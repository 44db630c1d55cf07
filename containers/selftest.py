"""The images' `%test`: real checks of everything in the image that needs no model weights.

`python selftest.py` checks the whisper image; `--diarization` adds pyannote.audio's checks.
It runs the installed command line, decodes a generated tone through our audio module and
through PyAV, runs the Silero VAD that ships inside faster-whisper (onnxruntime), computes both
engines' log-mel features, loads openai-whisper's bundled tokenizer, and, for diarization, runs a
pyannote segmentation network on random weights.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

BIN = Path(sys.executable).parent
TONE_HZ = 440.0
TONE_SECONDS = 3.0


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"selftest: FAILED: {message}")


def run_cli(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "whisper-hpc"), *arguments], capture_output=True, text=True, timeout=600)


def cli_help() -> None:
    result = run_cli("--help")
    check(result.returncode == 0 and "--model" in result.stdout, f"whisper-hpc --help: {result.stderr[-500:]}")


def cli_doctor() -> None:
    """Exit 1 is expected when no models are bound; a crash would lack the closing section."""
    result = run_cli("doctor")
    check(result.returncode in (0, 1), f"whisper-hpc doctor exited {result.returncode}: {result.stderr[-800:]}")
    for expected in ("faster-whisper", "openai-whisper", "\nproblems", "would try the network          no:"):
        check(expected in result.stdout, f"whisper-hpc doctor printed no {expected.strip()!r}:\n{result.stdout}")


def cli_unstaged_model(scratch: Path) -> None:
    empty_root = scratch / "no models"
    empty_root.mkdir()
    result = run_cli(str(scratch / "missing.wav"), "--model", "base", "--model_dir", str(empty_root),
                     "--output_dir", str(scratch / "out"))
    check(result.returncode == 2 and "not staged" in result.stderr, f"an unstaged model: {result.stderr[-500:]}")


def make_tone(scratch: Path) -> Path:
    """A name with a space, quotes, unicode and $(...): it must reach ffmpeg unharmed."""
    path = scratch / "tone 'ü' $(touch pwned).flac"
    source = f"sine=frequency={TONE_HZ:g}:duration={TONE_SECONDS:g}:sample_rate=44100"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", source, "file:" + str(path)],
                   check=True, timeout=120)
    return path


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.argmax(spectrum)) * rate / len(samples)


def our_decoder(tone: Path) -> np.ndarray:
    from whisper_hpc.audio import SAMPLE_RATE, decode

    samples = decode(tone)
    check(abs(len(samples) - TONE_SECONDS * SAMPLE_RATE) < 0.05 * SAMPLE_RATE, f"decoded {len(samples)} samples")
    frequency = dominant_frequency(samples, SAMPLE_RATE)
    check(abs(frequency - TONE_HZ) < 5, f"decoded tone at {frequency:.1f} Hz, not {TONE_HZ:g}")
    return samples


def faster_whisper_parts(tone: Path, samples: np.ndarray) -> None:
    import ctranslate2
    from faster_whisper import decode_audio
    from faster_whisper.feature_extractor import FeatureExtractor
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    check({"int8", "float32"} <= set(ctranslate2.get_supported_compute_types("cpu")), "CTranslate2 lacks int8/float32")
    via_pyav = decode_audio(str(tone))
    check(abs(len(via_pyav) - len(samples)) < 1600, f"PyAV decoded {len(via_pyav)} samples, ffmpeg {len(samples)}")
    mel = FeatureExtractor(feature_size=80)(samples)
    check(mel.shape[0] == 80 and mel.shape[1] > 250, f"faster-whisper features shaped {mel.shape}")
    speech = get_speech_timestamps(samples, VadOptions())  # the Silero model inside faster-whisper
    check(isinstance(speech, list), "Silero VAD returned no list")


def openai_whisper_parts(samples: np.ndarray) -> None:
    import torch
    import whisper
    from whisper.tokenizer import get_tokenizer

    mel = whisper.log_mel_spectrogram(torch.from_numpy(samples))
    check(tuple(mel.shape[:1]) == (80,) and mel.shape[1] > 250 and bool(torch.isfinite(mel).all()), "openai-whisper mel")
    tokenizer = get_tokenizer(multilingual=True)
    check(tokenizer.decode(tokenizer.encode(" Ask not")) == " Ask not", "openai-whisper tokenizer round trip")


def pyannote_parts() -> None:
    import torch
    from whisper_hpc.diarization.torch_audio import import_pyannote

    import_pyannote()
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.segmentation import PyanNet

    model = PyanNet(sincnet={"stride": 10})
    model.specifications = Specifications(problem=Problem.MULTI_LABEL_CLASSIFICATION, resolution=Resolution.FRAME,
                                          duration=5.0, classes=["a", "b", "c"])
    model.build()
    model.eval()
    with torch.inference_mode():
        scores = model(torch.randn(1, 1, 16000 * 5))
    check(scores.shape[0] == 1 and scores.shape[2] == 3 and bool(torch.isfinite(scores).all()), "pyannote forward")


def main(argv: list[str]) -> int:
    diarization = "--diarization" in argv
    with tempfile.TemporaryDirectory(prefix="whisper-hpc-selftest-") as name:
        scratch = Path(name)
        cli_help()
        cli_doctor()
        cli_unstaged_model(scratch)
        tone = make_tone(scratch)
        samples = our_decoder(tone)
        faster_whisper_parts(tone, samples)
        openai_whisper_parts(samples)
        if diarization:
            pyannote_parts()
        check(not (scratch / "pwned").exists() and not Path("pwned").exists(), "a file name was run as a command")
    print(f"selftest: ok (command line, audio decoding, both engines' CPU parts{', pyannote' if diarization else ''})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
