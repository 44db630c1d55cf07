"""Quantization report: tiny.en and base as CTranslate2 float32, float16 and int8, side by side.

Each variant is made the way a site makes it: `whisper-models export --format transformers`, then
`whisper-models import --quantization Q`. Then, in turns (A B C A B C ...), faster-whisper
transcribes the shared recordings with each, and openai-whisper once per model (its checkpoint
is the same float16 file whatever the CTranslate2 quantization). Prints size on disk, median
wall time, its ratio to float32, and WER. Run by `make bench`.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from wer import word_error_rate  # noqa: E402

BIN = Path(sys.executable).parent
ROUNDS = 3
QUANTIZATIONS = ("float32", "float16", "int8")


def run(argv: list[str], env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{argv[:3]}... failed:\n{result.stderr[-2000:]}")
    return result


def transcript(folder: Path) -> dict[str, str]:
    texts = {}
    for path in folder.glob("*.txt"):
        name = path.name[: -len(".txt")]
        key = {"stereo_diarization.left": "stereo_diarization.wav:left",
               "stereo_diarization.right": "stereo_diarization.wav:right"}.get(name, f"{name}.flac")
        texts[key] = path.read_text(encoding="utf-8")
    return texts


def main() -> int:
    shared = Path(os.environ.get("SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    staged = Path(os.environ.get("WHISPER_MODELS", Path(__file__).resolve().parents[1] / "build" / "models"))
    references = dict(line.split("\t", 1) for line in (shared / "refs.tsv").read_text().splitlines() if "\t" in line)
    work = Path(tempfile.mkdtemp(prefix="bench-quantization-"))
    env = {**os.environ, "WHISPER_MODELS": str(work / "root"), "TMPDIR": str(work), "SLURM_CPUS_PER_TASK": "2"}
    try:
        root = work / "root"
        root.mkdir()
        variants = []
        for model in ("tiny.en", "base"):
            shutil.copytree(staged / model, root / model)
            exported = work / f"{model}-hf"
            run([str(BIN / "whisper-models"), "--root", str(root), "export", model, "--format", "transformers",
                 "--output", str(exported)], env)
            for quantization in QUANTIZATIONS:
                name = f"{model}-{quantization}"
                run([str(BIN / "whisper-models"), "--root", str(root), "import", str(exported), "--name", name,
                     "--quantization", quantization], env)
                variants.append((model, quantization, name, "faster-whisper"))
            variants.append((model, "(float16 .pt)", f"{model}-float32", "openai-whisper"))
        inputs = [str(shared / "jfk.flac"), str(shared / "stereo_diarization.wav")]
        times: dict[tuple, list[float]] = {v: [] for v in variants}
        texts: dict[tuple, dict[str, str]] = {}
        for _ in range(ROUNDS):
            for variant in variants:
                model, quantization, name, backend = variant
                out = work / "out" / name / backend
                started = time.monotonic()
                run([str(BIN / "whisper-hpc"), *inputs, "--model", name, "--backend", backend, "--split_channels", "True",
                     "-o", str(out), "-f", "txt", "--overwrite", "True"], env)
                times[variant].append(time.monotonic() - started)
                texts[variant] = transcript(out)
        print(f"{'model':<8} {'CTranslate2':<14} {'engine':<15} {'model.bin':>10} {'wall s':>7} {'vs float32':>10} {'WER':>6}")
        for variant in variants:
            model, quantization, name, backend = variant
            size = (root / name / "model.bin").stat().st_size / 1e6
            median = statistics.median(times[variant])
            reference = statistics.median(times[(model, "float32", f"{model}-float32", "faster-whisper")])
            errors = [word_error_rate(references[key], text) for key, text in texts[variant].items() if key in references]
            shown_size = f"{size:.0f} MB" if backend == "faster-whisper" else "-"
            print(f"{model:<8} {quantization:<14} {backend:<15} {shown_size:>10} {median:7.2f} {median / reference:10.2f} "
                  f"{statistics.mean(errors):6.3f}")
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(work)], check=False)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
