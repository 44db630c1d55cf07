"""whisper-batch on a real Slurm cluster, with real recordings, a real model and real ffmpeg.

An array over 23 short recordings cut from the shared data (some with hostile names, one that is
not audio at all) runs with a throttle and small chunks; it is cancelled in the middle, `status`
shows what is done and what is pending, `resume` finishes it, and then every file has exactly one
complete set of transcripts, none was transcribed twice, no .partial file is left, the broken
file is listed as failed with its reason, and no name was ever executed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster_fixtures import installed_prefix, lmod, slurm_cluster  # noqa: F401
from conftest import BIN

pytestmark = [pytest.mark.system, pytest.mark.engine]

FORMATS = ("txt", "srt", "json")
SUBMITTED = re.compile(r"^submitted job (\d+): (\d+) files in (\d+) tasks, manifest (.+)$")
SENTINELS = ("pwned", "pwned2", "pwned3")
# (source, start, seconds, target name): 3-6 s pieces of real speech, several containers and codecs.
PIECES = [
    ("jfk.flac", 0, 4, "jfk 1.flac"), ("jfk.flac", 4, 4, "$(touch pwned).flac"), ("jfk.flac", 7, 4, "jfk-3.wav"),
    ("jfk.flac", 1, 5, "`touch pwned2`.wav"),
    ("sample.wav", 0, 5, "sample-a.wav"), ("sample.wav", 5, 5, "it's \"quoted\".wav"), ("sample.wav", 10, 5, "sample-c.mp3"),
    ("sample.wav", 15, 5, "sample-d.ogg"), ("sample.wav", 20, 5, "sample-e.wav"), ("sample.wav", 25, 5, "ünïcödé 日本語.wav"),
    ("sample.wav", 12, 5, "semi;colon && touch pwned3.flac"),
    ("multilingual.mp3", 0, 5, "ml-1.mp3"), ("multilingual.mp3", 5, 5, "ml-2.wav"), ("multilingual.mp3", 10, 5, "ml-3.flac"),
    ("multilingual.mp3", 15, 5, "ml-4.mp3"), ("multilingual.mp3", 20, 6, "ml 5 *?.wav"), ("multilingual.mp3", 26, 4, "new\nline.wav"),
    ("hotwords.mp3", 0, 4, "hotwords.mp3"), ("stereo_diarization.wav", 0, 5, "stereo.wav"),
    ("jfk.flac", 2, 3, "talk.wav"), ("sample.wav", 2, 3, "talk.mp3"),  # same stem: transcripts talk.wav.*, talk.mp3.*
    ("sample.wav", 7, 4, "100% -dash.wav"),
]
BROKEN = "broken.wav"  # text, not audio
SITE_THROTTLE = 5


@dataclass
class Recordings:
    folder: Path
    good: list[Path]
    broken: Path


def make_recordings(folder: Path, shared_data: Path, broken: bool = True) -> Recordings:
    """The pieces of real speech (and, with `broken`, one file that is not audio) in `folder`."""
    folder.mkdir(parents=True)
    for source, start, seconds, name in PIECES:
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-ss", str(start), "-t", str(seconds),
                        "-i", str(shared_data / source), "-ac", "1", "file:" + str(folder / name)], check=True)
    bad = folder / BROKEN
    if broken:
        bad.write_text("this is not audio\n")
    return Recordings(folder, [folder / p[3] for p in PIECES], bad)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory, shared_data) -> Recordings:
    return make_recordings(tmp_path_factory.mktemp("recordings") / "in put", shared_data)


@pytest.fixture
def batch(slurm_cluster, model_root, tmp_path):
    """Run the real `whisper-batch` against the cluster, in a clean environment."""
    home = tmp_path / "home"
    scratch = tmp_path / "tmp"
    home.mkdir()
    scratch.mkdir()
    site = tmp_path / "site.toml"
    site.write_text(f'[slurm]\narray_throttle = {SITE_THROTTLE}\nmax_time = "02:00:00"\n')
    env = {
        **slurm_cluster.env,
        "PATH": os.pathsep.join([str(BIN), "/usr/bin", "/bin", "/usr/sbin", "/sbin"]),
        "HOME": str(home), "TMPDIR": str(scratch), "WHISPER_MODELS": str(model_root), "LANG": "C.UTF-8",
        "WHISPER_HPC_SITE": str(site),
    }

    def run(*arguments: str, extra_env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "whisper-batch"), *arguments], env={**env, **(extra_env or {})},
                              cwd=cwd or tmp_path, capture_output=True, text=True, timeout=600)

    run.env = env
    return run


def submitted(result: subprocess.CompletedProcess) -> tuple[str, int, int, Path]:
    assert result.returncode == 0, result.stderr
    match = SUBMITTED.match(result.stdout.splitlines()[0])
    assert match, result.stdout
    return match.group(1), int(match.group(2)), int(match.group(3)), Path(match.group(4))


def status_json(batch, target: str) -> tuple[int, dict]:
    result = batch("status", target, "--json")
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def states_by_path(report: dict) -> dict[str, str]:
    return {f["path"]: f["state"] for f in report["files"]}


def wait_for_progress(manifest: Path, timeout: float = 600) -> None:
    """Until one task has finished and transcripts exist: the array is under way, not over."""
    deadline = time.monotonic() + timeout
    results = manifest.parent / manifest.stem
    while time.monotonic() < deadline:
        for result in results.glob("results-*.json"):
            try:
                if json.loads(result.read_text())["state"] == "finished":
                    return
            except (OSError, ValueError, KeyError):
                pass
        time.sleep(0.2)
    raise TimeoutError(f"no task of {manifest} finished within {timeout} s")


def wait_until_gone(cluster, job: str, timeout: float = 120) -> None:
    """Until no task of the job is queued or running.

    (Not cluster.wait: sacct keeps never-started tasks of a cancelled array as one
    "JOB_[2-7%2] CANCELLED" line, which it takes for tasks still pending.)
    """
    deadline = time.monotonic() + timeout
    while cluster.run(["squeue", "-h", "-j", job, "-o", "%i"], check=False).stdout.strip():
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job} still queued or running after {timeout} s")
        time.sleep(0.3)


def transcribed_counts(manifest: Path, paths: list[Path]) -> dict[Path, int]:
    """How often whisper-hpc reported each file transcribed, over every task log of the batch."""
    logs = "".join(p.read_text(errors="replace") for p in (manifest.parent / manifest.stem).glob("task-*.log"))
    return {path: logs.count(f"] done {path}: ") for path in paths}


def expected_outputs(out: Path, path: Path) -> list[Path]:
    stem = path.name if path.stem == "talk" else path.stem  # talk.wav and talk.mp3 keep their extension
    return [out / f"{stem}.{fmt}" for fmt in FORMATS]


def sentinels(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.name in SENTINELS]


def test_array_cancelled_in_the_middle_then_resumed_loses_and_repeats_nothing(batch, recordings, slurm_cluster, tmp_path):
    out = tmp_path / "out dir $(touch pwned)"
    files = [*recordings.good, recordings.broken]
    job, count, tasks, manifest = submitted(batch(
        "submit", str(recordings.folder), "--model", "tiny.en", "--compute_type", "int8", "--output_dir", str(out),
        "--output_format", ",".join(FORMATS), "--chunk_size", "3", "--throttle", "2", "--cpus", "1", "--mem", "1G",
        "--beam_size", "1",
    ))
    assert count == len(files) and tasks == 8  # 23 files, 3 per task; talk.wav and talk.mp3 in one task
    assert manifest.parent == out / ".whisper-batch"
    recorded = json.loads(manifest.read_text())
    assert sorted(e["path"] for e in recorded["entries"]) == sorted(map(str, files)), "names stored verbatim"
    assert "--throttle" not in recorded["engine_args"] and "--model" in recorded["engine_args"]

    wait_for_progress(manifest)
    slurm_cluster.run(["scancel", job])
    wait_until_gone(slurm_cluster, job)

    code, middle = status_json(batch, job)  # found from the job id alone
    print("after scancel:", middle["counts"], [f["detail"] for f in middle["files"] if f["state"] == "pending"][:3])
    assert code == 1
    assert middle["manifest"] == str(manifest)
    states = states_by_path(middle)
    assert set(states) == set(map(str, files))
    assert middle["counts"]["done"] >= 1 and middle["counts"]["pending"] >= 1, middle["counts"]
    assert middle["counts"]["running"] == 0
    for path, state in states.items():
        outputs = expected_outputs(out, Path(path))
        assert all(p.exists() for p in outputs) == (state == "done"), (path, state)
    assert not list(out.rglob("*.partial")), "a cancelled task left a half-written transcript"
    text = batch("status", str(manifest))
    assert text.returncode == 1 and "pending" in text.stdout and "done" in text.stdout
    assert text.stdout.splitlines()[-1].startswith(f"{middle['counts']['done']} done")

    not_done = [p for p, s in states.items() if s != "done"]
    job2, count2, _, manifest2 = submitted(batch("resume", str(manifest), "--throttle", "2"))
    assert manifest2 == manifest and count2 == len(not_done), "resume submits exactly what is not done"
    wait_until_gone(slurm_cluster, job2, timeout=600)

    code, final = status_json(batch, str(manifest))
    assert code == 1, "the broken file is not done"
    assert final["counts"] == {"done": len(recordings.good), "failed": 1, "running": 0, "pending": 0}
    [failed] = [f for f in final["files"] if f["state"] == "failed"]
    assert failed["path"] == str(recordings.broken)
    assert "not an audio or video file" in failed["detail"]
    listed = batch("status", str(manifest)).stdout
    assert f"failed   {recordings.broken}  (" in listed and "not an audio or video file" in listed

    # Exactly one complete set of transcripts per recording, nothing else, nothing half-written.
    wanted = {p for path in recordings.good for p in expected_outputs(out, path)}
    written = {p for p in out.iterdir() if p.name != ".whisper-batch"}
    assert written == wanted
    for path in recordings.good:
        transcript = json.loads(expected_outputs(out, path)[-1].read_text(encoding="utf-8"))
        assert transcript["source"] == str(path)
    assert not list(out.rglob("*.partial"))
    counts = transcribed_counts(manifest, recordings.good)
    assert max(counts.values()) == 1, {str(p): c for p, c in counts.items() if c != 1}
    assert sum(counts.values()) >= len(recordings.good) - 1  # one may have been written just as scancel struck
    assert not sentinels(tmp_path, recordings.folder.parent, slurm_cluster.root), "a file name was executed"

    again = batch("resume", str(manifest), "--dry_run")  # only the failed file is left to retry
    assert again.returncode == 0 and again.stdout.startswith("dry run: would submit 1 files in 1 tasks"), again.stdout


def test_run_inside_an_allocation_writes_the_same_manifest(batch, recordings, slurm_cluster, tmp_path):
    out = tmp_path / "out"
    chosen = [recordings.good[1], recordings.good[16], recordings.good[9]]  # $(...), newline, unicode
    script = tmp_path / "job.sh"
    script.write_text('#!/bin/bash\nexec whisper-batch run "$@"\n')
    job = slurm_cluster.sbatch(
        script, *map(str, chosen), "--model", "tiny.en", "--output_dir", str(out), "--output_format", "txt,json",
        options=["--cpus-per-task=1", "--mem=1G", f"--output={tmp_path}/run.log"], cwd=tmp_path, env=batch.env,
    )
    assert slurm_cluster.wait(job, timeout=300) == "COMPLETED", (tmp_path / "run.log").read_text(errors="replace")
    [manifest] = (out / ".whisper-batch").glob("*.json")
    recorded = json.loads(manifest.read_text())
    assert recorded["submissions"][0]["kind"] == "run" and recorded["submissions"][0]["job_id"] == job
    code, report = status_json(batch, str(manifest))
    assert code == 0 and report["counts"]["done"] == 3
    for verb, said in (("run", "do"), ("submit", "submit")):  # all done: neither runs nor records anything
        again = batch(verb, *map(str, chosen), "--model", "tiny.en", "--output_dir", str(out), "--output_format", "txt,json")
        assert again.returncode == 0 and again.stdout.startswith(f"nothing to {said}: all 3 files are done"), again
    assert list((out / ".whisper-batch").glob("*.json")) == [manifest]
    assert not sentinels(tmp_path, recordings.folder.parent)


def test_sigterm_to_the_task_alone_is_passed_on_and_leaves_nothing_half_written(batch, shared_data, tmp_path):
    """As `scancel --batch` does: only whisper-batch is signalled; it stops whisper-hpc cleanly."""
    long_talk = tmp_path / "long talk $(touch pwned).wav"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(shared_data / "multilingual.mp3"),
                    "-ar", "16000", "-ac", "1", str(long_talk)], check=True)
    out = tmp_path / "out"
    arguments = ["run", str(long_talk), "--model", "base", "--threads", "1", "--output_dir", str(out)]
    process = subprocess.Popen([str(BIN / "whisper-batch"), *arguments], env=batch.env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:  # the model is loaded: whisper-hpc is now transcribing
        if " base on cpu" in line:
            break
    process.send_signal(subprocess.signal.SIGTERM)
    rest = process.communicate(timeout=120)[1]
    assert process.returncode == 143, rest
    [manifest] = (out / ".whisper-batch").glob("*.json")
    result = json.loads((manifest.parent / manifest.stem / "results-1-0.json").read_text())
    assert result["state"] == "terminated"
    assert not [p for p in out.iterdir() if p.name != ".whisper-batch"], "no transcript, whole or partial"
    code, report = status_json(batch, str(manifest))
    assert code == 1 and report["files"][0]["state"] == "pending" and "stopped" in report["files"][0]["detail"]
    again = batch(*arguments)
    assert again.returncode == 0, again.stderr
    assert all((out / f"{long_talk.stem}.{fmt}").is_file() for fmt in ("txt", "srt", "vtt", "tsv", "json"))
    assert not sentinels(tmp_path)


def test_the_module_gives_whisper_batch_and_its_tasks_use_the_wrapper(lmod, slurm_cluster, installed_prefix,
                                                                      shared_data, tmp_path):
    work = tmp_path / "my project"  # the job's working directory: bound into the container too
    pieces = make_recordings(work / "in", shared_data, broken=False).good
    chosen = [pieces[1], pieces[5], pieces[16]]  # $(...), quotes, newline
    for path in pieces:
        if path not in chosen:
            path.unlink()
    shell = {"SLURM_CONF": str(slurm_cluster.conf)}
    result = lmod("module load whisper\nwhisper-batch submit in --model tiny.en --output_dir . --output_format txt,json "
                  "--chunk_size 2 --throttle 2 --cpus 1 --mem 1G", env=shell, cwd=work)
    job, count, tasks, manifest = submitted(result)
    assert (count, tasks) == (3, 2)
    wait_until_gone(slurm_cluster, job, timeout=600)
    status = lmod(f"module load whisper\nwhisper-batch status {job}", env=shell, cwd=work)
    logs = "".join(p.read_text(errors="replace") for p in (manifest.parent / manifest.stem).glob("task-*.log"))
    assert status.returncode == 0, status.stdout + status.stderr + logs
    assert status.stdout.splitlines()[-1].startswith("3 done, 0 failed")
    for path in chosen:
        assert (work / f"{path.stem}.txt").is_file() and (work / f"{path.stem}.json").is_file()
    script = (manifest.parent / manifest.stem / "submit-1.sbatch").read_text()
    assert str(installed_prefix.bin / "whisper-batch") in script, "the job runs the module's whisper-batch"
    result_files = sorted((manifest.parent / manifest.stem).glob("results-1-*.json"))
    engines = {json.loads(p.read_text())["engine"][0] for p in result_files}
    assert engines == {str(installed_prefix.bin / "singularity_wrapper")}, engines
    assert not sentinels(work)


def one_line_refusal(result: subprocess.CompletedProcess, *phrases: str) -> None:
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("whisper-batch: "), result.stderr
    for phrase in phrases:
        assert phrase in result.stderr


def test_refuses_to_submit_what_cannot_run(batch, recordings, slurm_cluster, tmp_path):
    before = slurm_cluster.active_jobs()
    source = str(recordings.good[0])
    out = tmp_path / "refused"
    one_line_refusal(batch("submit", source, "--model", "large-v9", "--output_dir", str(out)), "large-v9", "not staged")
    blocker = tmp_path / "a file"
    blocker.write_text("x")
    one_line_refusal(batch("submit", source, "--model", "tiny.en", "--output_dir", str(blocker / "sub")),
                     "cannot create output directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_refusal(batch("submit", str(empty), "--model", "tiny.en", "--output_dir", str(out)), "no input files")
    one_line_refusal(batch("submit", "--model", "tiny.en", "--output_dir", str(out)), "no input files")
    one_line_refusal(batch("submit", source, "--model", "tiny.en", "--output_dir", str(out),
                           extra_env={"PATH": str(BIN)}), "sbatch not found")
    one_line_refusal(batch("submit", source, "--model", "tiny.en", "--language", "de", "--output_dir", str(out)),
                     "English-only")
    one_line_refusal(batch("submit", source, "--model", "tiny.en", "--mem", "lots", "--output_dir", str(out)), "--mem")
    one_line_refusal(batch("submit", source, "--model", "tiny.en", "--modle", "x", "--output_dir", str(out)),
                     "unknown flag --modle")
    one_line_refusal(batch("submit", source, "--model", "tiny.en", "--diarize", "--diarization_model", "no-such-pipeline",
                           "--output_dir", str(out)), "no-such-pipeline")
    one_line_refusal(batch("status", "999999"), "cannot find the manifest of job 999999")
    assert not (out / ".whisper-batch").exists() or not list((out / ".whisper-batch").glob("*.json"))
    assert slurm_cluster.active_jobs() == before, "a refused submission reached Slurm"


def test_dry_run_shows_the_plan_and_writes_nothing(batch, recordings, tmp_path):
    out = tmp_path / "dry"
    result = batch("submit", str(recordings.folder), "--model", "base", "--output_dir", str(out), "--dry_run")
    assert result.returncode == 0, result.stderr
    assert f"would submit {len(recordings.good) + 1} files in 1 tasks" in result.stdout
    sbatch = [line for line in result.stdout.splitlines() if line.startswith("sbatch ")]
    assert sbatch and f"--array=0-0%{SITE_THROTTLE}" in sbatch[0], "the site's throttle is the default"
    assert "--mem=" in sbatch[0] and "--time=" in sbatch[0]
    assert not out.exists()
