"""slurm/whisper-finetune.sbatch: rendered from the site file like the other job scripts, and run for
real across two Slurm nodes.

- Rendering: a hostile site file (quotes, `$(...)`, line breaks, Lua closers in every value the schema
  lets through) gives a script that `bash -n` accepts, whose hostile text stays in comment lines, whose
  #SBATCH options are exactly the site's, and which, run with stand-ins for srun and scontrol, hands
  every hostile run folder and flag to srun + torchrun as whole arguments; values the schema would
  refuse cannot even be rendered. The rendezvous (the head node's NodeAddr, the port), the processes
  per node and the requeue near the time limit are checked the same way.
- Two nodes: `sbatch -N2` of the installed script on a private two-node cluster
  (cluster_fixtures.slurm_two_nodes) trains tiny.en on real clips through srun, the wrapper (the real
  image in the container tier) and torchrun's c10d rendezvous with gloo over loopback, one process per
  node, and its checkpoints equal those of one process with the same global batch.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cluster_fixtures import installed_prefix, lmod, slurm_two_nodes  # noqa: F401
from conftest import BIN, need
from test_hostile_site import (CPU_MODEL, GPU_MODEL, LINE_BREAKS, ONE_LINE, SYSTEM_PATH, Installation,
                               hostile_installation, recorded)

pytestmark = pytest.mark.system

SCRIPT = "whisper-finetune.sbatch"
JOB_ID = "4242"
PORT = str(20000 + int(JOB_ID) % 10000)
HEAD_ADDRESS = "10.1.2.7"
HOSTILE_RUN = f"run {ONE_LINE}"  # a folder name: no '/' or line break
HOSTILE_FLAGS = ["--method", "lora", "--max_steps", "10", "--output_note", ONE_LINE + LINE_BREAKS, "--seed", "$(touch PWNED)"]

# Stand-ins that record their argv (NUL-separated: name, count, arguments) in $RECORD, like
# test_hostile_site's. scontrol answers `show hostnames` and `show node` as Slurm does; srun records
# what the container would see of the environment and, with $SRUN_HOLD, runs until that file exists.
STUBS = {
    "scontrol": r"""#!/bin/bash
printf '%s\0' scontrol "$#" "$@" >> "$RECORD"
case "$*" in
    "show hostnames "*) printf '%s\n' "${STUB_NODES:-gpu07 gpu08}" | tr ' ' '\n' ;;
    "-o show node "*) echo "NodeName=$4 Arch=x86_64 CoresPerSocket=8 NodeAddr=${STUB_ADDRESS:-10.1.2.7} NodeHostName=$4 Version=22.05.8" ;;
    "requeue "*) [ -z "${SRUN_HOLD:-}" ] || touch "$SRUN_HOLD" ;;
esac
""",
    "srun": r"""#!/bin/bash
printf '%s\0' srun "$#" "$@" >> "$RECORD"
printf '%s\0' environment 4 "${CONTAINER_IMAGE-}" "${APPTAINERENV_GLOO_SOCKET_IFNAME-unset}" \
    "${APPTAINERENV_NCCL_DEBUG-unset}" "${APPTAINERENV_TORCH_HOME-unset}" >> "$RECORD"
if [ -n "${SRUN_HOLD:-}" ]; then
    touch "$SRUN_HOLD.started"
    while [ ! -e "$SRUN_HOLD" ]; do sleep 0.05; done
fi
exit "${SRUN_STATUS:-0}"
""",
}


def write_stubs(folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    for name, text in STUBS.items():
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, model_root) -> Installation:
    """`make install` of test_hostile_site's hostile site file, with models staged under hostile names."""
    installation = hostile_installation(tmp_path_factory.mktemp("finetune-hostile"), model_root,
                                        (CPU_MODEL, GPU_MODEL, "tiny.en"), default=CPU_MODEL)
    assert installation.result.returncode == 0, installation.result.stderr
    write_stubs(installation.base / "finetune-stubs")
    (installation.work / HOSTILE_RUN).mkdir()
    (installation.work / "-dash run").mkdir()
    return installation


@pytest.fixture
def lmod_installed():
    from cluster_fixtures import LMOD_INIT

    need(LMOD_INIT.is_file(), f"Lmod is not installed ({LMOD_INIT}); run tests/infra/install-cluster.sh")


def job_environment(installation: Installation, record: Path, **extra: str) -> dict[str, str]:
    slurm = {"SLURM_JOB_ID": JOB_ID, "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NNODES": "2",
             "SLURM_CPUS_PER_TASK": "2", "SLURM_GPUS_ON_NODE": "1"}
    return installation.env(PATH=f"{installation.base / 'finetune-stubs'}:{SYSTEM_PATH}", RECORD=str(record),
                            **{**slurm, **extra})


def run_script(installation: Installation, arguments: list[str], record: Path, **extra: str):
    record.unlink(missing_ok=True)
    environment = {k: v for k, v in job_environment(installation, record, **extra).items() if v is not None}
    return subprocess.run(["bash", str(installation.script("finetune")), *arguments], env=environment,
                          cwd=installation.work, capture_output=True, text=True, timeout=120)


def torchrun_line(nproc: str = "1", endpoint: str = f"{HEAD_ADDRESS}:{PORT}", nodes: str = "2",
                  run: str = HOSTILE_RUN, flags: list[str] = HOSTILE_FLAGS, cpus: str = "2") -> list[str]:
    return ["srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
            f"--cpus-per-task={cpus}", "singularity_wrapper", "exec", "torchrun", "--nnodes", nodes,
            "--nproc_per_node", nproc, "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", JOB_ID,
            "-m", "whisper_hpc.finetune", "train", run, *flags]


# ----- rendering -----------------------------------------------------------------------------------

def expected_sbatch() -> list[str]:
    from whisper_hpc import sizing

    time_limit = sizing.format_time(sizing.example_job_seconds("02:00:00"))
    return ["--job-name=whisper-finetune", "--nodes=2", "--ntasks-per-node=1", "--gres=gpu:1", "--cpus-per-task=2",
            "--mem=16G", f"--time={time_limit}", "--output=whisper-finetune-%j.log", "--open-mode=append",
            "--requeue", "--signal=B:USR1@300", "--partition=batch", "--account=acct-1"]


def test_the_finetune_script_is_installed_beside_the_others_and_parses(hostile):
    from whisper_hpc.install import JOB_SCRIPTS

    assert SCRIPT in JOB_SCRIPTS
    path = hostile.script("finetune")
    assert os.access(path, os.X_OK)
    check = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    text = path.read_text(encoding="utf-8")
    assert "\r" not in text
    lines = text.split("\n")
    header = lines[:lines.index("set -eo pipefail")]
    assert header[0] == "#!/bin/bash" and all(line.startswith("#") for line in header), header
    assert [line.removeprefix("#SBATCH ") for line in header if line.startswith("#SBATCH")] == expected_sbatch()
    assert header[1].startswith("# Fine-tune a Whisper model on several nodes") and "Uni 'single'" in header[1]
    assert f"#        sbatch {shlex.quote(str(hostile.prefix / 'slurm' / SCRIPT))} my-run --method lora" in text
    for line in lines:
        if "touch PWNED" in line or "os.execute(" in line:  # hostile text, not a variable made of it
            if not line.startswith("#"):
                assert shlex.split(line) == ["module", "use", str(hostile.modulefiles)], line
    hostile.no_sentinel()


@pytest.mark.parametrize("key, value", [
    ("partition", "batch\n#SBATCH --account=evil"),
    ("account", "acct $(touch PWNED)"),
    ("gpu_gres", "gpu:1 --wrap=touch"),
])
def test_a_value_the_schema_would_refuse_cannot_be_rendered_into_it(tmp_path, key, value):
    """The template puts every #SBATCH value through the `sbatch` filter, whatever the schema let by."""
    from whisper_hpc.install import install_context
    from whisper_hpc.render import render
    from whisper_hpc.site import Site

    site = Site()
    site = dataclasses.replace(site, slurm=dataclasses.replace(site.slurm, **{key: value}))
    context = install_context(site, tmp_path / "prefix")
    with pytest.raises(ValueError, match="cannot be an #SBATCH value"):
        render(f"slurm/{SCRIPT}.j2", context)


# ----- running it with stand-ins -------------------------------------------------------------------

def test_hostile_run_folder_and_flags_reach_srun_and_torchrun_whole(hostile, lmod_installed):
    record = hostile.base / "finetune.record"
    result = run_script(hostile, [HOSTILE_RUN, *HOSTILE_FLAGS], record, GLOO_SOCKET_IFNAME="lo", NCCL_DEBUG="INFO",
                        TORCH_HOME="/mine/torch")
    assert result.returncode == 0, result.stderr
    assert "command not found" not in result.stderr and "Lmod has detected" not in result.stderr, result.stderr
    assert recorded(record) == [
        ["scontrol", "show", "hostnames", "gpu[07-08]"],
        ["scontrol", "-o", "show", "node", "gpu07"],
        torchrun_line(),
        ["environment", str(hostile.images / "whisper-diarization.sif"), "lo", "INFO", "unset"],
    ]
    assert (f"whisper-finetune: job {JOB_ID} (start 1): 2 nodes x 1 processes, rendezvous {HEAD_ADDRESS}:{PORT} "
            f"(gpu07), run {HOSTILE_RUN} from the start") in result.stderr
    hostile.no_sentinel()


@pytest.mark.parametrize("extra, nproc, endpoint", [
    ({"SLURM_GPUS_ON_NODE": None}, "1", f"{HEAD_ADDRESS}:{PORT}"),          # CPU nodes: one process per node
    ({"SLURM_GPUS_ON_NODE": "4"}, "4", f"{HEAD_ADDRESS}:{PORT}"),           # one process per GPU
    ({"WHISPER_FINETUNE_NPROC_PER_NODE": "3"}, "3", f"{HEAD_ADDRESS}:{PORT}"),
    ({"WHISPER_FINETUNE_PORT": "29400"}, "1", f"{HEAD_ADDRESS}:29400"),
    ({"STUB_ADDRESS": "fd00::7"}, "1", f"[fd00::7]:{PORT}"),
], ids=["cpu", "4-gpus", "nproc-override", "port-override", "ipv6"])
def test_processes_per_node_and_the_rendezvous(hostile, lmod_installed, extra, nproc, endpoint):
    record = hostile.base / "variants.record"
    result = run_script(hostile, ["-dash run", "--max_steps", "5"], record, **extra)
    assert result.returncode == 0, result.stderr
    [srun] = [call for call in recorded(record) if call[0] == "srun"]
    assert srun == torchrun_line(nproc=nproc, endpoint=endpoint, run="./-dash run", flags=["--max_steps", "5"])


@pytest.mark.parametrize("arguments, extra, message", [
    ([], {}, "usage: sbatch whisper-finetune.sbatch RUN_DIR"),
    (["-missing run", "--max_steps", "5"], {}, "whisper-finetune: no run folder -missing run; make it first: "
     "singularity_wrapper exec python -m whisper_hpc.finetune prepare MANIFEST --model NAME --output -missing run"),
    ([HOSTILE_RUN], {"SLURM_JOB_ID": None}, "usage: sbatch whisper-finetune.sbatch RUN_DIR"),
    ([HOSTILE_RUN], {"WHISPER_FINETUNE_NPROC_PER_NODE": "2; touch PWNED"},
     "WHISPER_FINETUNE_NPROC_PER_NODE must be a whole number above 0, not '2; touch PWNED'"),
    ([HOSTILE_RUN], {"WHISPER_FINETUNE_PORT": "$(touch PWNED)"},
     "WHISPER_FINETUNE_PORT must be a TCP port (1-65535), not '$(touch PWNED)'"),
    ([HOSTILE_RUN], {"WHISPER_FINETUNE_PORT": "70000"}, "WHISPER_FINETUNE_PORT must be a TCP port"),
], ids=["no-arguments", "no-run-folder", "outside-slurm", "nproc", "port", "port-range"])
def test_what_cannot_run_stops_before_srun_with_one_line(hostile, lmod_installed, arguments, extra, message):
    record = hostile.base / "refused.record"
    result = run_script(hostile, arguments, record, **extra)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not [call for call in recorded(record) if call[0] == "srun"]
    hostile.no_sentinel()


def checkpoint(run: Path, step: int, complete: bool = True) -> Path:
    folder = run / "checkpoints" / f"step-{step:06d}"
    folder.mkdir(parents=True)
    if complete:
        (folder / "COMPLETE").touch()
    return folder


@pytest.mark.parametrize("saved", [True, False], ids=["checkpoint-saved", "nothing-saved"])
def test_near_the_time_limit_the_job_requeues_itself_only_after_a_new_checkpoint(hostile, lmod_installed, saved):
    """--signal=B:USR1@300 reaches the batch shell while srun runs: it requeues the job (which then
    resumes from the newest complete checkpoint) when one was saved since the start, else says why not."""
    name = f"requeue {ONE_LINE} {saved}"
    run = hostile.work / name
    checkpoint(run, 5)
    hold = hostile.base / f"hold-{saved}"
    record = hostile.base / f"requeue-{saved}.record"
    record.unlink(missing_ok=True)
    log = hostile.base / f"requeue-{saved}.log"
    environment = job_environment(hostile, record, SRUN_HOLD=str(hold), SLURM_RESTART_COUNT="2")
    with log.open("w") as stderr:
        job = subprocess.Popen(["bash", str(hostile.script("finetune")), name, "--save_every", "5"], env=environment,
                               cwd=hostile.work, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 60
        while not Path(f"{hold}.started").exists():
            assert job.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        if saved:
            checkpoint(run, 12, complete=False)  # still being written: not a checkpoint yet
            newest = checkpoint(run, 10)
        job.send_signal(signal.SIGUSR1)
        if not saved:
            while "not requeued" not in log.read_text():
                assert job.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            hold.touch()  # the step ends by itself
        assert job.wait(timeout=60) == 0, log.read_text()
    finally:
        if job.poll() is None:
            job.kill()
    text = log.read_text()
    assert f"job {JOB_ID} (start 3)" in text and f"run {name} from {name}/checkpoints/step-000005" in text
    requeues = [call for call in recorded(record) if call[:2] == ["scontrol", "requeue"]]
    if saved:
        assert requeues == [["scontrol", "requeue", JOB_ID]]
        assert f"goes back to the queue and continues from {newest.relative_to(hostile.work)}" in text
    else:
        assert requeues == []
        assert (f"no checkpoint was saved since this job started ({name}/checkpoints/step-000005); not requeued: "
                "ask for a longer --time or save more often (--save_every)") in text
    hostile.no_sentinel()


# ----- two real nodes ------------------------------------------------------------------------------

def prepared_run(folder: Path, shared_data: Path, model_root: Path, references: dict[str, str]) -> Path:
    """A run directory of four real clips (J. F. Kennedy, at four sample rates) on tiny.en."""
    data = folder / "data"
    data.mkdir()
    lines = []
    for rate in (16000, 22050, 32000, 44100):
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(shared_data / "jfk.flac"), "-ar", str(rate),
                        str(data / f"jfk-{rate}.wav")], check=True)
        lines.append(f"jfk-{rate}.wav\t{references['jfk.flac']}\n")
    (data / "train.tsv").write_text("".join(lines), encoding="utf-8")
    run = folder / "prepared"
    result = subprocess.run([str(BIN / "python"), "-m", "whisper_hpc.finetune", "prepare", str(data / "train.tsv"),
                             "--model", "tiny.en", "--root", str(model_root), "--output", str(run), "--eval_fraction", "0"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return run


def adapter_tensors(run: Path, step: int) -> dict:
    from safetensors.numpy import load_file

    folder = run / "checkpoints" / f"step-{step:06d}"
    assert (folder / "COMPLETE").is_file(), sorted(p.name for p in (run / "checkpoints").iterdir())
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update({f"{path.name}:{k}": v for k, v in load_file(path).items()})
    assert tensors
    return tensors


TRAIN_FLAGS = ["--method", "lora", "--optimizer", "sgd", "--lr", "0.5", "--max_steps", "2", "--save_every", "2",
               "--seed", "3"]


def test_sbatch_on_two_nodes_trains_through_srun_and_torchrun_as_one_process_does(
        slurm_two_nodes, installed_prefix, lmod, shared_data, model_root, references, tmp_path):
    """`sbatch -N2` of the installed script: one torchrun per node (c10d rendezvous at the head node's
    NodeAddr, gloo over loopback), two ranks of one clip each, the same weights as one process with
    both clips per step."""
    import numpy as np

    from cluster import free_ports  # tests/infra, on sys.path through cluster_fixtures

    work = tmp_path / "project"
    work.mkdir()
    prepared = prepared_run(work, shared_data, model_root, references)
    one, two = work / "one", work / "two"
    for copy in (one, two):
        subprocess.run(["cp", "-a", str(prepared), str(copy)], check=True)
    alone = subprocess.run([str(BIN / "python"), "-m", "whisper_hpc.finetune", "train", str(one), "--batch_size", "2",
                            *TRAIN_FLAGS], capture_output=True, text=True, timeout=600)
    assert alone.returncode == 0, alone.stderr
    script = installed_prefix.prefix / "slurm" / SCRIPT
    [port] = free_ports(1)
    submitted = lmod(f"export SLURM_CONF={shlex.quote(str(slurm_two_nodes.conf))} WHISPER_FINETUNE_PORT={port}\n"
                     f"sbatch --parsable --nodes=2 --cpus-per-task=1 --mem=3G {shlex.quote(str(script))} two "
                     f"--batch_size 1 {' '.join(TRAIN_FLAGS)}", cwd=work, timeout=120)
    assert submitted.returncode == 0, submitted.stderr
    jobid = submitted.stdout.split()[-1].split(";")[0]
    state = slurm_two_nodes.wait(jobid, timeout=900)
    log = (work / f"whisper-finetune-{jobid}.log").read_text(errors="replace")
    assert state == "COMPLETED", log[-3000:]
    assert f"2 nodes x 1 processes, rendezvous 127.0.0.1:{port}" in log, log[-3000:]
    steps = slurm_two_nodes.run(["sacct", "-j", jobid, "-n", "-P", "-o", "JobName,NNodes,State"]).stdout
    assert any(line.split("|")[1:] == ["2", "COMPLETED"] and not line.startswith("batch") for line in steps.splitlines()), steps
    ours, theirs = adapter_tensors(one, 2), adapter_tensors(two, 2)
    assert ours.keys() == theirs.keys()
    # peft starts every lora_B at zero: non-zero ones prove the compared weights were trained.
    assert max(float(np.max(np.abs(v))) for k, v in ours.items() if "lora_B" in k) > 0
    for key in ours:
        scale = max(float(np.max(np.abs(ours[key]))), 1e-12)
        assert float(np.max(np.abs(ours[key] - theirs[key]))) <= 1e-5 * scale, key
