"""Shared fixtures: the real recordings, the staged models, and running the real command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ("cluster_fixtures",)

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() == "true"
BIN = Path(sys.executable).parent


def need(condition: bool, reason: str) -> None:
    """Skip with a reason outside CI; in CI a tier that cannot run is a failure."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI must run this tier, but: {reason}")
    pytest.skip(reason=reason)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = Path(os.environ.get("SHARED_DATA", ROOT.parent / "shared" / "data"))
    need(path.is_dir(), f"the shared recordings are absent ({path}); run inside the project workplace")
    return path


@pytest.fixture(scope="session")
def references(shared_data: Path) -> dict[str, str]:
    lines = (shared_data / "refs.tsv").read_text(encoding="utf-8").splitlines()
    return dict(line.split("\t", 1) for line in lines if "\t" in line)


@pytest.fixture(scope="session")
def model_root() -> Path:
    path = Path(os.environ.get("WHISPER_MODELS", ROOT / "build" / "models"))
    need((path / "tiny.en" / "model.bin").is_file(), f"no staged models in {path}; run `make models`")
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty HOME, so a test can prove that nothing is written there."""
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def cli(model_root: Path, home: Path, tmp_path: Path):
    """Run the installed `whisper-hpc` command for real, in a clean environment."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()

    def run(*arguments: str, cwd: Path | None = None, env: dict | None = None, wrap: list[str] | None = None,
            check: bool | None = None) -> subprocess.CompletedProcess:
        environment = {
            "PATH": f"{BIN}:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": str(home),
            "TMPDIR": str(scratch),
            "WHISPER_MODELS": str(model_root),
            "LANG": "C.UTF-8",
            "SLURM_CPUS_PER_TASK": "2",
        }
        environment.update(env or {})
        command = [*(wrap or []), str(BIN / "whisper-hpc"), *arguments]
        result = subprocess.run(command, cwd=cwd or tmp_path, env=environment, capture_output=True, text=True, timeout=1800)
        if check is True:
            assert result.returncode == 0, result.stderr
        return result

    run.scratch = scratch
    return run
