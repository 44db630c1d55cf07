"""Hostile input to singularity_wrapper on a shared node: planted temp folders, system folders
bound from any source, absurd thread counts, fake GPU lists, and the temp skeleton left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BIN, ROOT
from test_wrapper import WRAPPER, build, env_passed, pairs, sw

NOBODY = 65534


class Node:
    """A made-up node in tmp_path: a stub apptainer that records its argv, an image, a site file."""

    def __init__(self, tmp_path: Path, site: str = "") -> None:
        self.root = tmp_path
        self.scratch = tmp_path / "scratch"
        self.work = tmp_path / "work"
        self.record = tmp_path / "apptainer-argv"
        for folder in (self.scratch, self.work, tmp_path / "bin", tmp_path / "home"):
            folder.mkdir(parents=True, exist_ok=True)
        stub = tmp_path / "bin" / "apptainer"
        stub.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {self.record}\n")
        stub.chmod(0o755)
        (tmp_path / "whisper.sif").write_text("")
        self.site = tmp_path / "site.toml"
        self.site.write_text(site or f'[wrapper]\ndata_areas = ["{tmp_path}"]\n', encoding="utf-8")

    def run(self, *arguments: str, **environ: str) -> subprocess.CompletedProcess:
        env = {"PATH": f"{self.root / 'bin'}:/usr/bin:/bin", "HOME": str(self.root / "home"), "LANG": "C.UTF-8",
               "TMPDIR": str(self.scratch), "WHISPER_HPC_SITE": str(self.site),
               "CONTAINER_IMAGE": str(self.root / "whisper.sif"), **environ}
        self.record.unlink(missing_ok=True)
        return subprocess.run([sys.executable, "-I", str(WRAPPER), *arguments], cwd=self.work, env=env,
                              capture_output=True, text=True, timeout=60)

    @property
    def ran(self) -> list[str] | None:
        return self.record.read_text().splitlines() if self.record.exists() else None

    @property
    def private(self) -> Path:
        return self.scratch / f"singularity_wrapper-{os.getuid()}"


# ----- the per-job temporary folder -------------------------------------------------------------


def test_the_job_folder_is_private_unguessable_and_new_each_run(tmp_path):
    node = Node(tmp_path)
    folders = []
    for _ in range(2):  # the stub apptainer ends at once: the second run removes the first's as stale
        assert node.run("run", "x.wav").returncode == 0
        folders += list(node.private.iterdir())
    assert len(set(folders)) == 2 and not folders[0].exists()
    assert (node.private.stat().st_mode & 0o777) == 0o700
    for folder in folders[1:]:
        assert (folder.stat().st_mode & 0o777) == 0o700 and folder.stat().st_uid == os.getuid()
        host, pid, token = folder.name.split(".")
        assert pid.isdigit() and len(token) == 16  # 64 random bits: nothing to pre-create
    assert [p.name for p in node.scratch.iterdir()] == [node.private.name]


@pytest.mark.parametrize("planted", ["world-writable", "foreign", "symlink", "file"])
def test_a_planted_temp_parent_is_refused_and_nothing_runs(tmp_path, planted):
    if planted == "foreign" and os.getuid() != 0:
        pytest.skip(reason="making a folder owned by another user needs root (CI runs as root)")
    node = Node(tmp_path)
    elsewhere = tmp_path / "attacker"
    elsewhere.mkdir()
    if planted == "world-writable":
        node.private.mkdir(mode=0o777)
        node.private.chmod(0o777)
    elif planted == "foreign":
        node.private.mkdir(mode=0o700)
        os.chown(node.private, NOBODY, NOBODY)
    elif planted == "symlink":
        node.private.symlink_to(elsewhere)
    else:
        node.private.write_text("not a folder")
    result = node.run("run", "x.wav")
    assert result.returncode == 2 and node.ran is None, result.stderr
    assert f"refusing the temporary folder {node.private}" in result.stderr
    assert result.stderr.count("\n") == 1
    assert list(elsewhere.iterdir()) == []  # nothing was made where the link pointed


def test_a_stale_folder_is_removed_but_never_through_a_link(tmp_path):
    node = Node(tmp_path)
    assert node.run("run", "x.wav").returncode == 0
    [folder] = node.private.iterdir()
    host = folder.name.split(".")[0]
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "data").write_text("precious")
    dead = node.private / f"{host}.999999999.00000000000000ff"
    (dead / "cache").mkdir(parents=True)
    (dead / "cache" / "link").symlink_to(keep)
    assert node.run("run", "x.wav").returncode == 0
    assert not dead.exists() and (keep / "data").read_text() == "precious"


def test_whisper_hpc_removes_the_wrappers_folder_when_it_ends(tmp_path):
    """Native mode (no apptainer): the program the wrapper execs removes the skeleton it was given."""
    node = Node(tmp_path, f'[wrapper]\ndata_areas = ["{tmp_path}"]\nnative_fallback = true\n')
    program = "from whisper_hpc import runtime; import os; runtime.start_run(); print(os.environ['WHISPER_HPC_TMPDIR'])"
    result = node.run("exec", str(BIN / "python"), "-c", program, PATH=f"{BIN}:/usr/bin:/bin")
    assert result.returncode == 0, result.stderr
    folder = Path(result.stdout.strip())
    assert folder.parent == node.private and not folder.exists()
    assert list(node.private.iterdir()) == []


# ----- binds from every source --------------------------------------------------------------------


@pytest.mark.parametrize("models", ["/etc", "/", "/usr/lib", "/home/../etc"])
def test_a_model_root_that_is_a_system_folder_is_refused_whatever_its_source(tmp_path, models):
    node = Node(tmp_path)
    result = node.run("run", "x.wav", WHISPER_MODELS=models)
    assert result.returncode == 2 and node.ran is None, result.stderr
    assert f"$WHISPER_MODELS {models} is the system folder" in result.stderr
    site = Node(tmp_path / "site", f'[paths]\nmodel_root = "{tmp_path}/m"\n[wrapper]\ndata_areas = ["{tmp_path}"]\n')
    link = tmp_path / "m"
    link.symlink_to(models)
    result = site.run("run", "x.wav")
    assert result.returncode == 2 and site.ran is None and "the model root (site file" in result.stderr, result.stderr


def test_a_data_area_reaching_a_system_folder_through_a_link_is_refused(tmp_path):
    (tmp_path / "project").symlink_to("/etc")
    node = Node(tmp_path, f'[wrapper]\ndata_areas = ["{tmp_path}/project"]\n')
    result = node.run("run", "x.wav")
    assert result.returncode == 2 and node.ran is None
    assert f"the data area (site file {node.site}) {tmp_path}/project is the system folder /etc" in result.stderr


@pytest.mark.parametrize("area, refusal", [("/home/../etc", "other than /etc"), ("../data", "an absolute path"),
                                           (".", "an absolute path"), ("/", "other than /")])
def test_data_areas_with_dot_dot_or_relative_are_refused_before_anything_runs(tmp_path, area, refusal):
    node = Node(tmp_path, f'[wrapper]\ndata_areas = ["{area}"]\n')
    result = node.run("run", "x.wav")
    assert result.returncode == 2 and node.ran is None and refusal in result.stderr, result.stderr


def test_a_scratch_folder_that_is_a_system_folder_is_refused(tmp_path):
    node = Node(tmp_path)
    result = node.run("run", "x.wav", TMPDIR="/etc")
    assert result.returncode == 2 and node.ran is None
    assert "the scratch folder for temporary files /etc is the system folder /etc" in result.stderr


def test_every_bind_is_absolute(tmp_path):
    node = Node(tmp_path)
    assert node.run("run", "x.wav").returncode == 0
    for bind in pairs(node.ran, "--bind"):
        source, destination = bind.split(":")[:2]
        assert source.startswith("/") and destination.startswith("/"), bind


# ----- threads and GPUs ---------------------------------------------------------------------------


def test_absurd_slurm_cpus_are_capped_at_the_cpus_this_process_may_use():
    passed = env_passed(build({"SLURM_CPUS_PER_TASK": "99999"})[0])
    assert passed["OMP_NUM_THREADS"] == str(len(os.sched_getaffinity(0)))


def test_the_package_caps_threads_too(monkeypatch):
    from whisper_hpc import runtime

    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "99999")
    assert runtime.available_cpus() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("value", ["None", "NONE", "none", ",", "", "-1", "NoDevFiles", "0,-1", "gpu0", "GPU-", " , "])
def test_fake_gpu_lists_add_no_nv(value):
    assert "--nv" not in build({"CUDA_VISIBLE_DEVICES": value}, devices=("/dev/nvidiactl",))[0]


@pytest.mark.parametrize("value", ["0", "0,1", "3", "GPU-5e1b6d2a-1c3f-4f0e-9c1e-2d3b4a5c6d7e", "MIG-GPU-abc/1/0"])
def test_real_gpu_lists_add_nv(value):
    assert "--nv" in build({"CUDA_VISIBLE_DEVICES": value}, devices=("/dev/nvidiactl",))[0]


def test_the_wrapper_source_is_what_the_package_installs():
    from whisper_hpc.render import template_text

    assert template_text("wrapper/singularity_wrapper") == (ROOT / "wrapper" / "singularity_wrapper").read_text()
