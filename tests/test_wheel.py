"""The package as a wheel: built from a copy of the checkout, installed non-editable into a fresh
environment, and the whole site installation rendered from there, far from any checkout."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.system  # builds and installs the package, renders from the staged models

TEMPLATE_FOLDERS = ("modulefiles", "slurm", "ondemand", "wrapper", "containers")


def run(argv, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{argv}: {result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built (without network) from the checkout's files as git sees them."""
    copy = tmp_path_factory.mktemp("source")
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT).stdout
    archive = subprocess.run(["tar", "--null", "-T", "-", "-cf", "-"], input=listed.encode(), cwd=ROOT,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-xf", "-"], input=archive, cwd=copy, check=True)
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out),
         str(copy)])
    [built] = out.glob("whisper_hpc-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_python(wheel: Path, tmp_path_factory) -> Path:
    """A new virtual environment holding the wheel, not editable; its dependencies (jinja2,
    numpy) come from this environment's site-packages, added after its own."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    purelib = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(purelib), str(wheel)])
    (purelib / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def test_the_wheel_carries_every_template(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    for folder in TEMPLATE_FOLDERS:
        shipped = sorted(n for n in names if n.startswith(f"whisper_hpc/templates/{folder}/"))
        assert shipped, folder
    for template in ("modulefiles/whisper.lua.j2", "slurm/whisper-cpu.sbatch.j2", "ondemand/partials/job.rb.erb.j2",
                     "wrapper/singularity_wrapper", "containers/whisper.def"):
        assert f"whisper_hpc/templates/{template}" in names, template
        assert zipfile.ZipFile(wheel).read(f"whisper_hpc/templates/{template}") == (ROOT / template).read_bytes()


def test_an_installed_wheel_renders_the_whole_installation(fresh_python: Path, model_root: Path, tmp_path: Path):
    where = run([str(fresh_python), "-c", "import whisper_hpc; print(whisper_hpc.__file__)"], cwd=tmp_path).stdout
    assert str(fresh_python.parents[1]) in where and str(ROOT) not in where
    site = tmp_path / "site.toml"
    site.write_text(f'[site]\nname = "Wheel test"\n[paths]\nmodel_root = "{model_root}"\n', encoding="utf-8")
    prefix = tmp_path / "prefix"
    result = run([str(fresh_python), "-m", "whisper_hpc.install", "--site", str(site), "--prefix", str(prefix),
                  "--images", str(tmp_path / "no-images"), "--venv", str(fresh_python.parents[1])], cwd=tmp_path)
    assert f"install: site file: {site}" in result.stderr
    assert "NOT installed" not in result.stderr, result.stderr
    module = (prefix / "modulefiles" / "whisper" / "0.1.0.lua").read_text(encoding="utf-8")
    assert "Wheel test" in module and 'pushenv("tiny_en", ' in module and 'pushenv("HF_DATASETS_OFFLINE", "1")' in module
    assert (prefix / "modulefiles" / "whisper-diarization" / "0.1.0.lua").is_file()
    for script in ("whisper-cpu.sbatch", "whisper-gpu.sbatch", "whisper-array.sbatch"):
        run(["bash", "-n", str(prefix / "slurm" / script)])
    app = prefix / "ondemand" / "whisper"
    for name in ("manifest.yml", "form.yml", "submit.yml.erb", "template/script.sh.erb", "completed.html.erb"):
        assert (app / name).is_file(), name
    assert "tiny.en" in (app / "form.yml").read_text(encoding="utf-8")
    wrapper = prefix / "bin" / "singularity_wrapper"
    assert "run ARGS...     the image's runscript" in run([str(wrapper), "--help"]).stdout
    assert "model_root" in (prefix / "etc" / "site.toml").read_text(encoding="utf-8")
