"""`whisper-hpc doctor` for real: what it reports on this machine, and the problems it names."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.engine


def rows(output: str) -> dict[str, str]:
    """The report's `  label   value` rows."""
    found = {}
    for line in output.splitlines():
        match = re.match(r"^  (\S.*?)\s{2,}(.*)$", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def test_doctor_on_this_machine(cli, model_root):
    result = cli("doctor", env={"SLURM_CPUS_PER_TASK": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    report = rows(result.stdout)
    assert report["threads used"] == "1" and report["OMP_NUM_THREADS"] == "1"
    assert report["CT2_INTER_THREADS"] == "1"
    assert report["model root"] == str(model_root)
    assert report["tiny.en"] == "faster-whisper, openai-whisper"
    assert "ctranslate2" in report["faster-whisper"] and "torch" in report["openai-whisper"]
    assert "CPU only" in report["faster-whisper"]  # no GPU on this machine
    assert report["would try the network"].startswith("no:")
    assert report["HF_HUB_OFFLINE"] == "1" and report["PYANNOTE_METRICS_ENABLED"] == "0"
    assert "none found" in result.stdout.split("problems", 1)[1]


def test_doctor_names_each_problem(cli, tmp_path, model_root):
    root = tmp_path / "models"
    no_tokenizer = root / "tiny.en"
    no_tokenizer.mkdir(parents=True)
    for name in ("model.bin", "config.json", "vocabulary.txt"):
        os.symlink(model_root / "tiny.en" / name, no_tokenizer / name)
    online_pipeline = root / "diarization" / "from-the-hub"
    online_pipeline.mkdir(parents=True)
    (online_pipeline / "config.yaml").write_text(
        "pipeline:\n  name: pyannote.audio.pipelines.SpeakerDiarization\n"
        "  params:\n    segmentation: pyannote/segmentation-3.0\n    embedding: pyannote/wespeaker-voxceleb-resnet34-LM\n"
    )
    open_to_all = tmp_path / "results"
    open_to_all.mkdir()
    os.chmod(open_to_all, 0o777)
    result = cli("doctor", env={"WHISPER_MODELS": str(root), "WHISPER_HPC_RESULT_CACHE": str(open_to_all),
                                "WHISPER_HPC_RESULT_CACHE_SHARED": "1"})
    assert result.returncode == 1, result.stdout + result.stderr
    report = rows(result.stdout)
    assert report["result cache"].startswith(f"UNUSABLE: {open_to_all} is writable by every user")
    assert report["tiny.en"] == "incomplete: no tokenizer.json"
    assert f"{no_tokenizer} lacks tokenizer.json" in result.stdout and "whisper-models fetch tiny.en" in result.stdout
    assert f"no models are staged in {root}" in result.stdout
    assert report["pipeline from-the-hub"].startswith("unusable:")
    assert "pyannote/segmentation-3.0" in report["pipeline from-the-hub"]


def test_doctor_with_no_model_root(cli, tmp_path: Path):
    missing = tmp_path / "nowhere"
    result = cli("doctor", env={"WHISPER_MODELS": str(missing)})
    assert result.returncode == 1
    assert f"model root {missing} does not exist: set WHISPER_MODELS" in result.stdout
    assert rows(result.stdout)["pipelines"] == f"none staged in {missing / 'diarization'}"


def test_doctor_says_which_site_file_it_used_and_names_a_bad_one(cli, tmp_path, model_root):
    none = rows(cli("doctor", env={"WHISPER_HPC_SITE": ""}).stdout)
    assert none["site file"] == "none (built-in defaults)"
    site = tmp_path / "site.toml"
    site.write_text('[site]\nname = "Doctor test"\n', encoding="utf-8")
    assert rows(cli("doctor", env={"WHISPER_HPC_SITE": str(site)}).stdout)["site file"] == str(site)
    site.write_text('[wrapper]\ndata_area = ["/home"]\n', encoding="utf-8")
    result = cli("doctor", env={"WHISPER_HPC_SITE": str(site)})
    assert result.returncode == 1
    assert rows(result.stdout)["site file"].startswith(f"UNUSABLE, built-in defaults used: site file {site}: unknown key")
    assert "did you mean data_areas?" in result.stdout.split("problems", 1)[1]
