"""What users type, on a real Slurm cluster with the real Lmod, producing real transcripts.

The peer deployment's commands run verbatim (the model variables are those of the models staged
here: $tiny_en and $base stand in for $medium_en and $large_v3), under srun, inside sbatch scripts,
and through the example job scripts `make install` renders. In the container tier (apptainer and
build/images/whisper.sif present) everything goes through the image; otherwise singularity_wrapper
runs whisper-hpc natively, as the test site allows.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from cluster_fixtures import apptainer_works, installed_prefix, lmod, slurm_cluster  # noqa: F401
from conftest import need
from wer import word_error_rate

pytestmark = [pytest.mark.system, pytest.mark.engine]

FORMATS = ("txt", "srt", "vtt", "tsv", "json")
SENTINELS = ("pwned", "pwned2", "pwned3", "pwned4")
HOSTILE = (
    "it's \"quoted\" $(touch pwned).wav",
    "`touch pwned2` ünïcödé 日本語.wav",
    "semi;colon && touch pwned3 |.wav",
)
ODD_FOR_SCRIPTS = ("-dash first.wav", "new\nline $(touch pwned4).wav")  # need `--` / no line list
GPU_STEP = re.compile(r"(^|\s)--nv(\s|$)")


@pytest.fixture(scope="module")
def work(tmp_path_factory, shared_data) -> Path:
    """A folder with talk.wav (J. F. Kennedy, 11 s) and copies under hostile names."""
    folder = tmp_path_factory.mktemp("cluster-work") / "my project"
    folder.mkdir()
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(shared_data / "jfk.flac"),
                    str(folder / "talk.wav")], check=True)
    for name in HOSTILE + ODD_FOR_SCRIPTS:
        (folder / name).write_bytes((folder / "talk.wav").read_bytes())
    return folder


@pytest.fixture
def shell(lmod, slurm_cluster):
    """A user's login shell on the cluster: Lmod ready, `module use PREFIX/modulefiles` done."""
    def run(snippet: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
        return lmod(snippet, env={"SLURM_CONF": str(slurm_cluster.conf)}, cwd=cwd, timeout=timeout)
    return run


def submit(shell, snippet: str, cwd: Path) -> str:
    """Run a snippet that ends in `sbatch --parsable ...`; the job id."""
    result = shell(snippet, cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[-1].split(";")[0]


def transcript_ok(folder: Path, stem: str, reference: str, formats=FORMATS) -> None:
    for fmt in formats:
        assert (folder / f"{stem}.{fmt}").is_file(), f"{stem}.{fmt} missing in {sorted(p.name for p in folder.iterdir())}"
    assert word_error_rate(reference, (folder / f"{stem}.txt").read_text(encoding="utf-8")) < 0.2


def nothing_executed(*folders: Path) -> None:
    for folder in folders:
        for sentinel in SENTINELS:
            assert not list(folder.rglob(sentinel)), f"a file name was executed: {sentinel} in {folder}"


def job_log(folder: Path, jobid: str, pattern: str = "whisper-{}.log") -> str:
    return (folder / pattern.format(jobid)).read_text(encoding="utf-8", errors="replace")


def stand_in_image(folder: Path, installed) -> dict[str, str]:
    """For --dry-run only: the real image in the container tier; in the native tier an existing
    file, so that the wrapper (with the real apptainer) shows the container command it would run."""
    if installed.mode == "container":
        return {}
    need(apptainer_works(), "apptainer is not installed (tests/infra/install-apptainer.sh); the --nv check needs it")
    image = folder / "stand-in.sif"
    image.write_bytes(b"")
    return {"CONTAINER_IMAGE": str(image)}


def exported(variables: dict[str, str]) -> str:
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in variables.items())


def test_the_private_cluster_runs_jobs_and_accounts_for_them(slurm_cluster, tmp_path):
    assert slurm_cluster.env["SLURM_CONF"] == str(slurm_cluster.conf) and not str(slurm_cluster.conf).startswith("/etc")
    nodes = slurm_cluster.run(["sinfo", "-h", "-o", "%N %T %G"]).stdout.split()
    assert nodes[1] in ("idle", "mixed", "allocated") and nodes[2] == "gpu:1"
    script = tmp_path / "hello.sh"
    script.write_text("#!/bin/bash\necho \"hello from $SLURM_JOB_ID\"\n")
    jobid = slurm_cluster.sbatch(script, options=["--output", str(tmp_path / "out.txt")], cwd=tmp_path)
    assert slurm_cluster.wait(jobid, timeout=120) == "COMPLETED"
    assert (tmp_path / "out.txt").read_text() == f"hello from {jobid}\n"


def test_peer_cpu_command_verbatim_under_srun(shell, work, references, installed_prefix, tmp_path):
    folder = tmp_path / "cpu"
    folder.mkdir()
    (folder / "talk.wav").write_bytes((work / "talk.wav").read_bytes())
    result = shell("""\
module load whisper
echo $model_names
export SINGULARITY_WRAPPER_VERBOSE=1
srun --mem=4G singularity_wrapper run talk.wav --model_directory $tiny_en --local_files_only True --language en
""", folder)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "base tiny_en"
    assert f"singularity_wrapper: {installed_prefix.mode}" in result.stderr
    transcript_ok(folder, "talk", references["jfk.flac"])


def test_peer_gpu_command_verbatim_under_srun(shell, work, installed_prefix, tmp_path):
    """No GPU exists behind the test node's gres: the real command must fail with one clear line,
    and --nv must appear exactly when Slurm allocated the (fake) GPU."""
    folder = tmp_path / "gpu"
    folder.mkdir()
    (folder / "talk.wav").write_bytes((work / "talk.wav").read_bytes())
    exports = exported(stand_in_image(folder, installed_prefix))
    result = shell(f"""\
module load whisper
srun --gres=gpu:1 --mem=8G singularity_wrapper run talk.wav --model_directory $base --device cuda
echo "exit=$?"
{exports}
echo "with-gpu: $(srun --gres=gpu:1 --mem=1G singularity_wrapper --dry-run run talk.wav --device cuda)"
echo "without: $(srun --mem=1G singularity_wrapper --dry-run run talk.wav --device cuda)"
""", folder)
    assert "exit=2" in result.stdout, result.stderr
    assert "whisper-hpc: CUDA requested, but" in result.stderr
    assert not (folder / "talk.txt").exists()
    with_gpu = next(line for line in result.stdout.splitlines() if line.startswith("with-gpu: "))
    without = next(line for line in result.stdout.splitlines() if line.startswith("without: "))
    assert GPU_STEP.search(with_gpu) and with_gpu.endswith("talk.wav --device cuda")
    assert not GPU_STEP.search(without) and without.endswith("talk.wav --device cuda")


def test_peer_commands_inside_an_sbatch_script(shell, work, references, installed_prefix, slurm_cluster, tmp_path):
    folder = tmp_path / "batch"
    folder.mkdir()
    (folder / "talk.wav").write_bytes((work / "talk.wav").read_bytes())
    exports = exported(stand_in_image(folder, installed_prefix))
    (folder / "job.sh").write_text(f"""\
#!/bin/bash
#SBATCH --mem=8G
#SBATCH --gres=gpu:1
#SBATCH --output=job-%j.log
module load whisper
echo "names: $model_names"
srun --mem=4G singularity_wrapper run talk.wav --model_directory $tiny_en --local_files_only True --language en
{exports}
echo "batch step: $(singularity_wrapper --dry-run run talk.wav --device cuda)"
echo "gpu step: $(srun --mem=1G singularity_wrapper --dry-run run talk.wav --device cuda)"
echo "cpu step: $(srun --mem=1G --gres=gpu:0 singularity_wrapper --dry-run run talk.wav --device cuda)"
""")
    jobid = submit(shell, "sbatch --parsable job.sh", folder)
    assert slurm_cluster.wait(jobid, timeout=600) == "COMPLETED", job_log(folder, jobid, "job-{}.log")
    log = job_log(folder, jobid, "job-{}.log")
    assert "names: base tiny_en" in log
    transcript_ok(folder, "talk", references["jfk.flac"])
    steps = {line.split(": ", 1)[0]: line for line in log.splitlines() if line.endswith("--device cuda")}
    assert GPU_STEP.search(steps["batch step"]) and GPU_STEP.search(steps["gpu step"])
    assert not GPU_STEP.search(steps["cpu step"])


def test_hostile_file_names_pass_srun_and_the_wrapper_unharmed(shell, work, references, tmp_path, lmod):
    folder = tmp_path / "hostile"
    folder.mkdir()
    for name in HOSTILE:
        (folder / name).write_bytes((work / name).read_bytes())
    names = " ".join(shlex.quote(name) for name in HOSTILE)
    result = shell(f"""\
module load whisper
srun --mem=2G singularity_wrapper run {names} --model_directory $tiny_en --language en --output_format txt,json
""", folder)
    assert result.returncode == 0, result.stderr
    for name in HOSTILE:
        transcript_ok(folder, Path(name).stem, references["jfk.flac"], formats=("txt", "json"))
    nothing_executed(folder, lmod.home)


def test_example_job_scripts_one_file_cpu_gpu_and_an_array(shell, work, references, installed_prefix,
                                                           slurm_cluster, tmp_path, lmod):
    folder = tmp_path / "scripts"
    folder.mkdir()
    array_files = ("talk.wav",) + HOSTILE[:2] + ODD_FOR_SCRIPTS[:1]
    for name in set(array_files + ODD_FOR_SCRIPTS):
        (folder / name).write_bytes((work / name).read_bytes())
    (folder / "files.txt").write_text("".join(f"{name}\n" for name in array_files), encoding="utf-8")
    slurm = installed_prefix.prefix / "slurm"
    newline_name = ODD_FOR_SCRIPTS[1]
    cpu = submit(shell, f"sbatch --parsable {slurm}/whisper-cpu.sbatch {shlex.quote(newline_name)} --language en", folder)
    gpu = submit(shell, f"sbatch --parsable {slurm}/whisper-gpu.sbatch talk.wav --output_dir gpu-out", folder)
    array = submit(shell, f"sbatch --parsable --array=1-{len(array_files)}%4 {slurm}/whisper-array.sbatch files.txt "
                          "--language en --output_dir array-out --output_format txt,json", folder)
    assert slurm_cluster.wait(cpu, timeout=600) == "COMPLETED", job_log(folder, cpu)
    transcript_ok(folder, Path(newline_name).stem, references["jfk.flac"])
    assert slurm_cluster.wait(gpu, timeout=300) == "FAILED"
    assert "whisper-hpc: CUDA requested, but" in job_log(folder, gpu) and not (folder / "gpu-out" / "talk.txt").exists()
    assert slurm_cluster.wait(array, timeout=900) == "COMPLETED", [
        p.read_text(errors="replace") for p in folder.glob(f"whisper-{array}_*.log")]
    for name in array_files:
        transcript_ok(folder / "array-out", Path(name).stem, references["jfk.flac"], formats=("txt", "json"))
    nothing_executed(folder, lmod.home)


def processes_in(folder: Path) -> list[int]:
    """PIDs of processes whose working directory is inside folder."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")).is_relative_to(folder):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_scancel_stops_the_engine_and_leaves_no_partial_outputs(shell, shared_data, installed_prefix,
                                                                slurm_cluster, tmp_path, lmod):
    folder = tmp_path / "cancel"
    folder.mkdir()
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-stream_loop", "5", "-i", str(shared_data / "sample.wav"),
                    str(folder / "long talk.wav")], check=True)  # 3 minutes of speech
    slurm = installed_prefix.prefix / "slurm"
    scratch = Path(lmod.base_env["TMPDIR"])
    jobid = submit(shell, f"module load whisper; sbatch --parsable {slurm}/whisper-cpu.sbatch 'long talk.wav' "
                          "--model_directory \"$base\" --output_dir out", folder)
    deadline = time.monotonic() + 300
    log = folder / f"whisper-{jobid}.log"
    while not (log.exists() and re.search(r"long talk\.wav: \d+:\d+ of 3:00", log.read_text(errors="replace"))):
        assert time.monotonic() < deadline, f"no progress: {log.read_text() if log.exists() else 'no log'}"
        assert jobid in slurm_cluster.active_jobs(), log.read_text() if log.exists() else "job ended"
        time.sleep(0.5)
    slurm_cluster.run(["scancel", jobid])
    assert slurm_cluster.wait(jobid, timeout=120) == "CANCELLED"
    text = log.read_text(errors="replace")
    assert "done long talk.wav" not in text  # it really was cancelled in the middle
    out = folder / "out"
    assert not out.exists() or list(out.iterdir()) == []  # no transcript, no .partial
    assert not list(folder.rglob("*.partial"))
    deadline = time.monotonic() + 30
    while processes_in(folder) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_in(folder) == []
    assert [p for p in scratch.rglob("*") if p.is_file()] == []  # the run's caches went with it


def test_diarization_module_same_command_with_diarize(shell, shared_data, installed_prefix, tmp_path):
    """module load whisper-diarization, then the peer command with --diarize: who spoke when."""
    if installed_prefix.mode == "container":
        image = installed_prefix.images / "whisper-diarization.sif"
        need(image.is_file(), f"the diarization image is not built ({image}); make images")
    else:
        probe = subprocess.run([str(installed_prefix.bin / "whisper-hpc"), "--help"], capture_output=True, text=True)
        need("--diarize" in probe.stdout, "this whisper-hpc has no --diarize")
    need((installed_prefix.model_root / "diarization").is_dir(),
         f"no diarization pipeline staged in {installed_prefix.model_root}/diarization; make diarization-pipeline")
    folder = tmp_path / "diarize"
    folder.mkdir()
    (folder / "talk.wav").write_bytes((shared_data / "sample.wav").read_bytes())  # two speakers, 30 s
    result = shell("""\
module load whisper-diarization
srun --mem=4G singularity_wrapper run talk.wav --model_directory $base --local_files_only True --language en --diarize
""", folder)
    assert result.returncode == 0, result.stderr
    speakers = {line.split()[7] for line in (folder / "talk.rttm").read_text().splitlines() if line.startswith("SPEAKER")}
    assert len(speakers) >= 2
    assert (folder / "talk.txt").read_text().strip()
