"""singularity_wrapper: the command it builds (pure logic), and real runs of the installed wrapper."""

from __future__ import annotations

import importlib.util
import os
import shlex
import signal
import subprocess
import time
from importlib.machinery import SourceFileLoader
from pathlib import Path

import pytest

from cluster_fixtures import SYSTEM_PATH, installed_prefix  # noqa: F401
from conftest import ROOT
from whisper_hpc.runtime import CACHE_VARIABLES
from wer import word_error_rate

WRAPPER = ROOT / "wrapper" / "singularity_wrapper"


def load_wrapper():
    loader = SourceFileLoader("singularity_wrapper", str(WRAPPER))
    spec = importlib.util.spec_from_loader("singularity_wrapper", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


sw = load_wrapper()
SITE = {**sw.load_site(None), "data_areas": ["/home", "/scratch"], "model_root": "/site/models"}


def build(environ=None, arguments=("talk.wav",), subcommand="run", cwd="/scratch/me/project",
          temp_dir="/tmp/singularity_wrapper-1000/n1.42.0123456789abcdef", existing=("/home", "/scratch", "/site/models"), devices=()):
    """The apptainer command for a made-up node where `existing` directories and `devices` exist."""
    environ = {"LANG": "C.UTF-8", **(environ or {})}
    return sw.container_command(
        subcommand, list(arguments), apptainer="/usr/bin/apptainer", image="/images/whisper.sif", environ=environ,
        site=SITE, cwd=cwd, temp_dir=temp_dir, exists=lambda p: p in existing, device_exists=lambda p: p in devices,
    )


def pairs(command, flag):
    return [command[i + 1] for i, word in enumerate(command) if word == flag]


def env_passed(command):
    return dict(value.split("=", 1) for value in pairs(command, "--env"))


# ----- GPUs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("environ, expected", [
    ({}, False),
    ({"CUDA_VISIBLE_DEVICES": "0"}, True),
    ({"CUDA_VISIBLE_DEVICES": "0,1"}, True),
    ({"CUDA_VISIBLE_DEVICES": ""}, False),
    ({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, False),
    ({"CUDA_VISIBLE_DEVICES": "-1"}, False),
    ({"SLURM_STEP_GPUS": "0"}, True),
    ({"SLURM_STEP_GPUS": "NoDevFiles"}, False),
    ({"SLURM_JOB_GPUS": "0"}, True),                                  # the batch script of a GPU job
    ({"SLURM_JOB_GPUS": "0", "SLURM_STEP_ID": "0"}, False),           # srun --gres=gpu:0 inside it
    ({"SLURM_JOB_GPUS": "0", "SLURM_STEP_ID": "0", "CUDA_VISIBLE_DEVICES": "0"}, True),
    ({"SLURM_JOB_GPUS": "0", "CUDA_VISIBLE_DEVICES": ""}, False),     # hidden on purpose
    ({"ROCR_VISIBLE_DEVICES": "0"}, True),
])
def test_gpus_count_only_when_allocated_to_this_job_or_step(environ, expected):
    assert sw.gpus_allocated(environ) is expected


def test_nv_only_with_gpus_and_rocm_on_amd_nodes():
    assert "--nv" in build({"CUDA_VISIBLE_DEVICES": "0"})[0]
    assert "--nv" not in build({})[0] and "--rocm" not in build({})[0]
    amd = build({"ROCR_VISIBLE_DEVICES": "0"}, devices=("/dev/kfd",))[0]
    assert "--rocm" in amd and "--nv" not in amd
    assert "--nv" in build({"CUDA_VISIBLE_DEVICES": "0"}, devices=("/dev/kfd", "/dev/nvidiactl"))[0]


def test_program_arguments_pass_through_untouched_after_the_image():
    arguments = ["talk.wav", "--model_directory", "/m/x", "--device", "cuda", "--", "$(touch x).wav", "a b"]
    command, _ = build({"CUDA_VISIBLE_DEVICES": "0"}, arguments=arguments)
    image = command.index("/images/whisper.sif")
    assert command[image + 1:] == arguments
    assert command[:3] == ["/usr/bin/apptainer", "run", "--cleanenv"]


# ----- environment --------------------------------------------------------------------------

def test_threads_follow_slurm_cpus_per_task(monkeypatch):
    monkeypatch.setattr(sw.os, "sched_getaffinity", lambda pid: set(range(8)))
    passed = env_passed(build({"SLURM_CPUS_PER_TASK": "3"})[0])
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
        assert passed[name] == "3"
    assert "OMP_NUM_THREADS" not in env_passed(build({})[0])  # no allocation: the program decides


def test_caches_offline_and_models_inside_the_container():
    passed = env_passed(build({})[0])
    temp = "/tmp/singularity_wrapper-1000/n1.42.0123456789abcdef"
    assert passed["TMPDIR"] == passed["WHISPER_HPC_TMPDIR"] == temp
    for name in CACHE_VARIABLES:  # every cache the package itself redirects
        assert passed[name].startswith(temp + "/"), name
    assert passed["HF_HUB_OFFLINE"] == "1" and passed["PYANNOTE_METRICS_ENABLED"] == "0"
    assert passed["WHISPER_MODELS"] == "/models"


def test_only_relevant_variables_cross_cleanenv():
    passed = env_passed(build({"SLURM_JOB_ID": "7", "SLURM_CONF": "/etc/x", "PYTHONPATH": "/bad",
                               "WHISPER_HPC_SITE": "/host/site.toml", "WHISPER_HPC_DEBUG": "1"})[0])
    assert passed["SLURM_JOB_ID"] == "7" and passed["WHISPER_HPC_DEBUG"] == "1"
    assert not {"SLURM_CONF", "PYTHONPATH", "WHISPER_HPC_SITE"} & set(passed)


def test_values_that_env_flags_would_split_travel_as_apptainerenv():
    command, extra = build({"WHISPER_HPC_NOTE": 'a,b "c"'})
    assert "WHISPER_HPC_NOTE" not in env_passed(command)
    assert extra["APPTAINERENV_WHISPER_HPC_NOTE"] == 'a,b "c"'


def test_apptainer_keeps_its_own_files_out_of_home():
    assert build({})[1] == {"APPTAINER_CONFIGDIR": "/tmp/singularity_wrapper-1000/n1.42.0123456789abcdef/apptainer"}
    assert build({"APPTAINER_CONFIGDIR": "/mine"})[1] == {}


# ----- binds --------------------------------------------------------------------------------

def test_binds_data_areas_cwd_models_and_temp_dir():
    command, _ = build({}, cwd="/work/elsewhere", existing=("/home", "/site/models"))
    bound = pairs(command, "--bind")
    assert bound == ["/home:/home", "/work/elsewhere:/work/elsewhere", "/tmp/singularity_wrapper-1000:/tmp/singularity_wrapper-1000",
                     "/site/models:/models:ro", "/site/models:/site/models:ro"]  # /scratch absent: not bound
    assert pairs(command, "--pwd") == ["/work/elsewhere"]


def test_cwd_inside_a_data_area_is_not_bound_twice():
    bound = pairs(build({}, cwd="/scratch/me/project")[0], "--bind")
    assert "/scratch:/scratch" in bound and not any(b.startswith("/scratch/me") for b in bound)


@pytest.mark.parametrize("cwd", ["/", "/usr/share", "/etc", "/opt/whisper-hpc"])
def test_a_system_folder_as_working_directory_is_refused(cwd):
    with pytest.raises(sw.WrapperError, match=f"the working directory {cwd} is a system folder"):
        build({}, cwd=cwd)


def test_module_variable_overrides_site_model_root():
    bound = pairs(build({"WHISPER_MODELS": "/home/models"}, existing=("/home", "/home/models", "/site/models"))[0], "--bind")
    assert "/home/models:/models:ro" in bound and "/site/models:/models:ro" not in bound


def test_a_data_area_reached_through_a_symlink_is_bound_at_its_target_first():
    links = {"/project": "/gpfs/project", "/site/models": "/gpfs/models"}
    wanted = [("/project", "/project", ""), ("/home", "/home", ""), ("/site/models", "/models", "ro"),
              ("/site/models", "/site/models", "ro")]
    bound = sw.through_symlinks(wanted, realpath=lambda p: links.get(p, p))
    assert bound == [("/gpfs/project", "/gpfs/project", ""), ("/gpfs/project", "/project", ""), ("/home", "/home", ""),
                     ("/gpfs/models", "/gpfs/models", "ro"), ("/gpfs/models", "/models", "ro"),
                     ("/gpfs/models", "/site/models", "ro")]


def test_paths_bind_cannot_express_use_mount():
    assert sw.bind_flags("/a,b:c", "/a,b:c", "ro") == ["--mount", 'type=bind,"source=/a,b:c","destination=/a,b:c",ro']
    assert sw.bind_flags("/plain dir", "/plain dir", "") == ["--bind", "/plain dir:/plain dir"]


# ----- image and flags ----------------------------------------------------------------------

def test_container_names_win_over_the_older_sing_names():
    assert sw.image_path({"CONTAINER_IMAGE": "/a.sif", "SING_IMAGE": "/b.sif"}) == "/a.sif"
    assert sw.image_path({"SING_IMAGE": "/b.sif"}) == "/b.sif"
    assert sw.user_flags({"CONTAINER_FLAGS": "--bind '/x y'", "SING_FLAGS": "--nv"}) == ["--bind", "/x y"]
    assert sw.user_flags({"SING_FLAGS": "--contain"}) == ["--contain"]
    assert sw.user_flags({"CONTAINER_FLAGS": "", "SING_FLAGS": "--nv"}) == []  # set but empty: no flags


def test_user_flags_come_last_so_they_win():
    command, _ = build({"CONTAINER_FLAGS": "--bind /data --no-home"})
    image = command.index("/images/whisper.sif")
    assert command[image - 3:image] == ["--bind", "/data", "--no-home"]


def test_unsplittable_flags_are_a_clear_error():
    with pytest.raises(sw.WrapperError, match="CONTAINER_FLAGS"):
        sw.user_flags({"CONTAINER_FLAGS": "--bind 'unclosed"})


# ----- command line and fall-back -----------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    ([], "a subcommand is needed"),
    (["transcribe", "x.wav"], "unknown subcommand 'transcribe'"),
    (["exec"], "exec needs a command"),
    (["--bogus", "run"], "unknown option --bogus"),
])
def test_usage_errors(argv, message):
    with pytest.raises(sw.WrapperError, match=message):
        sw.parse(argv)


def test_wrapper_options_stop_at_the_subcommand():
    assert sw.parse(["--dry-run", "run", "--dry-run", "x"]) == ("run", ["--dry-run", "x"], {"dry_run": True, "verbose": False})


def write_site(path: Path, **wrapper) -> Path:
    lines = ["[wrapper]"] + [f"{k} = {'true' if v is True else 'false' if v is False else repr(v)}" for k, v in wrapper.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_wrapper(*argv, env, cwd):
    return subprocess.run([str(WRAPPER), *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_no_apptainer_and_no_fallback_is_a_clear_error(tmp_path):
    site = write_site(tmp_path / "site.toml", native_fallback=False, apptainer="apptainer-not-here")
    result = run_wrapper("run", "talk.wav", env={"PATH": SYSTEM_PATH, "WHISPER_HPC_SITE": str(site)}, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("singularity_wrapper: apptainer-not-here is not installed here")
    assert result.stdout == ""


def test_missing_image_is_named(tmp_path):
    site = write_site(tmp_path / "site.toml", native_fallback=False, apptainer="/bin/sh")
    result = run_wrapper("run", "x", env={"PATH": SYSTEM_PATH, "WHISPER_HPC_SITE": str(site),
                                          "CONTAINER_IMAGE": str(tmp_path / "gone.sif")}, cwd=tmp_path)
    assert result.returncode == 2 and f"{tmp_path}/gone.sif does not exist" in result.stderr


def test_native_fallback_without_the_native_command_says_so(tmp_path):
    site = write_site(tmp_path / "site.toml", native_fallback=True, apptainer="apptainer-not-here",
                      native_command="whisper-hpc-not-here")
    result = run_wrapper("run", "x", env={"PATH": SYSTEM_PATH, "WHISPER_HPC_SITE": str(site)}, cwd=tmp_path)
    assert result.returncode == 2 and "native command 'whisper-hpc-not-here' is not on PATH" in result.stderr


def test_broken_site_file_is_named(tmp_path):
    site = tmp_path / "site.toml"
    site.write_text("[wrapper\n")
    result = run_wrapper("run", "x", env={"PATH": SYSTEM_PATH, "WHISPER_HPC_SITE": str(site)}, cwd=tmp_path)
    assert result.returncode == 2 and f"the site file {site} is not valid TOML" in result.stderr


def test_stale_temp_dirs_of_ended_runs_are_removed(tmp_path):
    dead, alive, other_host, foreign = (tmp_path / n for n in
                                        ("n1.999999999.0f0f", "n1.1.a1b2", "n2.999999999.c3d4", "n1.notapid.e5f6"))
    for directory in (dead, alive, other_host, foreign):
        (directory / "cache").mkdir(parents=True)
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    (dead / "cache" / "link").symlink_to(outside)  # a link inside is removed, never followed
    sw.remove_stale_temp_dirs(str(tmp_path), "n1", alive=lambda pid: pid == 1)
    assert not dead.exists() and alive.exists() and other_host.exists() and foreign.exists()
    assert (outside / "keep").exists()


# ----- real runs of the installed wrapper ---------------------------------------------------

def wrapper_env(installed, tmp_path, **extra):
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {
        "PATH": f"{installed.bin}:{SYSTEM_PATH}", "HOME": str(home), "TMPDIR": str(scratch), "LANG": "C.UTF-8",
        "WHISPER_HPC_SITE": str(installed.site_file), "WHISPER_MODELS": str(installed.model_root),
        "CONTAINER_IMAGE": str(installed.images / "whisper.sif"), **extra,
    }


@pytest.mark.system
def test_dry_run_prints_the_exact_command(installed_prefix, tmp_path):
    env = wrapper_env(installed_prefix, tmp_path, SLURM_CPUS_PER_TASK="2")
    result = subprocess.run([str(installed_prefix.bin / "singularity_wrapper"), "--dry-run", "run", "a b.wav",
                             "--device", "cuda"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    words = shlex.split(result.stdout)
    assert words[-3:] == ["a b.wav", "--device", "cuda"]
    assert "OMP_NUM_THREADS=2" in result.stdout
    assert words[0] == "env"
    program = next(word for word in words[1:] if "=" not in word)  # after the variable assignments
    if installed_prefix.mode == "container":
        assert words[1].startswith("APPTAINER_CONFIGDIR=" + str(tmp_path / "scratch" / f"singularity_wrapper-{os.getuid()}"))
        assert Path(program).name == "apptainer" and "--cleanenv" in words and "--nv" not in words
        assert words[words.index(program) + 1] == "run"
    else:
        assert Path(program) == installed_prefix.bin / "whisper-hpc" and words[-4] == program
    assert not list((tmp_path / "scratch").iterdir())  # a dry run creates nothing


@pytest.mark.system
@pytest.mark.engine
def test_real_run_transcribes_and_leaves_no_cache_files(installed_prefix, tmp_path, shared_data, references):
    env = wrapper_env(installed_prefix, tmp_path, SINGULARITY_WRAPPER_VERBOSE="1")
    work = tmp_path / "work"
    work.mkdir()
    wrapper = str(installed_prefix.bin / "singularity_wrapper")
    (work / "jfk.flac").write_bytes((shared_data / "jfk.flac").read_bytes())  # the container sees the cwd
    first = subprocess.run([wrapper, "run", "jfk.flac", "--model_directory",
                            str(installed_prefix.model_root / "tiny.en"), "--output_format", "txt"],
                           env=env, cwd=work, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert f"singularity_wrapper: {installed_prefix.mode}" in first.stderr
    assert word_error_rate(references["jfk.flac"], (work / "jfk.txt").read_text()) < 0.2
    scratch = tmp_path / "scratch"
    private = scratch / f"singularity_wrapper-{os.getuid()}"
    assert [p.name for p in scratch.iterdir()] == [private.name] and (private.stat().st_mode & 0o777) == 0o700
    assert list(private.iterdir()) == []                                 # whisper-hpc removed the job's folder
    assert [p for p in Path(env["HOME"]).rglob("*")] == []               # and nothing went to HOME
    second = subprocess.run([wrapper, "exec", "true"], env=env, cwd=work, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    earlier = list(private.iterdir())                                    # `exec true` cannot remove its own
    assert len(earlier) == 1 and (earlier[0] / ".remove-when-done").is_file()
    third = subprocess.run([wrapper, "exec", "true"], env=env, cwd=work, capture_output=True, text=True, timeout=120)
    assert third.returncode == 0, third.stderr
    assert not any(p.exists() for p in earlier)                          # the next run cleared the last one's


@pytest.mark.system
def test_exec_hands_over_the_process_so_signals_reach_the_program(installed_prefix, tmp_path):
    """The wrapper replaces itself (exec): its PID becomes the program's (or apptainer's), and a
    SIGTERM from Slurm reaches the program instead of stopping a Python parent."""
    env = wrapper_env(installed_prefix, tmp_path)
    process = subprocess.Popen([str(installed_prefix.bin / "singularity_wrapper"), "exec", "sleep", "300"],
                               env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        command = []
        while time.monotonic() < deadline:
            command = [w for w in Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0") if w]
            if command and b"singularity_wrapper" not in b" ".join(command):
                break
            time.sleep(0.05)
        assert process.poll() is None, process.stderr.read()
        names = [Path(word.decode()).name for word in command]
        assert "singularity_wrapper" not in names and not names[0].startswith("python"), names
        if installed_prefix.mode == "native":
            assert names[:2] == ["sleep", "300"]
        time.sleep(0.5 if installed_prefix.mode == "native" else 3)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) in (-signal.SIGTERM, 128 + signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_offline_and_cache_variables_are_the_packages_own():
    from whisper_hpc.runtime import OFFLINE_VARIABLES

    assert sw.OFFLINE_VARIABLES == OFFLINE_VARIABLES
    assert sw.CACHE_VARIABLES == CACHE_VARIABLES
