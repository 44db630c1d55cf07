"""whisper-batch's pure logic: chunking, transcript naming, Slurm parsing, error matching (sizing: test_sizing.py).

No Slurm and no model here (tests/test_batch.py runs the real thing); files are made in tmp_path.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from whisper_hpc import sizing
from whisper_hpc.batch import plan, slurm
from whisper_hpc.batch.cli import main
from whisper_hpc.batch.request import Refusal, batch_parser, engine_arguments, explicit_settings
from whisper_hpc.batch.schedule import gres
from whisper_hpc.batch.manifest import Manifest, Submission, TaskResult, find_by_job, manifest_path, read_result, \
    write_result
from whisper_hpc.batch.selection import (
    Entry, NamingError, check_invocation, groups, invocations, list_safe, outputs_exist, select, whole_groups,
)
from whisper_hpc.batch.status import file_statuses, printable, report
from whisper_hpc.batch.task import file_errors, invocation_argv, usage_error
from whisper_hpc.options import parse

def test_target_task_length_between_bounds_and_under_the_cap():
    assert plan.target_task_seconds(60, throttle=20, cap=None) == plan.TARGET_TASK_MIN_SECONDS
    assert plan.target_task_seconds(10 ** 6, throttle=20, cap=None) == plan.TARGET_TASK_MAX_SECONDS
    assert plan.target_task_seconds(20 * 900, throttle=20, cap=None) == 900
    assert plan.target_task_seconds(10 ** 6, throttle=1, cap=15 * 60) < 15 * 60


def test_a_task_with_n_gpus_holds_n_times_the_work_in_the_same_time():
    for gpus in (2, 4):
        assert plan.target_task_seconds(60, throttle=20, cap=None, gpus=gpus) == gpus * plan.TARGET_TASK_MIN_SECONDS
        assert plan.target_task_seconds(10 ** 7, throttle=20, cap=None, gpus=gpus) == gpus * plan.TARGET_TASK_MAX_SECONDS
        assert plan.target_task_seconds(20 * 900 * gpus, throttle=20, cap=None, gpus=gpus) == 900 * gpus
        assert plan.target_task_seconds(10 ** 7, throttle=1, cap=15 * 60, gpus=gpus) < 15 * 60 * gpus


def test_a_tasks_time_on_several_gpus_is_its_longest_first_share():
    assert plan.parallel_seconds([5, 4, 3, 3, 1], 1) == 16
    assert plan.parallel_seconds([5, 4, 3, 3, 1], 2) == 8  # 5+3 | 4+3+1
    assert plan.parallel_seconds([100, 1, 1], 4) == 100  # one long file is the task's time
    assert plan.parallel_seconds([], 3) == 0
    work = sizing.Workload(sizing.MODEL_PARAMETERS_M["base"], gpu=True)
    durations = [600.0, 300.0, 300.0, None]
    assert plan.task_seconds(work, durations, gpus=1) == work.task_seconds(durations)
    on_two = plan.task_seconds(work, durations, gpus=2)
    assert on_two == pytest.approx(work.load_seconds() + work.file_seconds(600.0) + work.file_seconds(60.0))
    assert on_two < work.task_seconds(durations)
    assert plan.task_memory_mb(work, 0.0, gpus=4) == 4 * work.memory_mb()  # a worker process per GPU


def test_whisper_batch_sizes_a_task_of_four_gpus_for_four_workers(tmp_path):
    from whisper_hpc.assemble import Request as TranscriptionRequest
    from whisper_hpc.batch.schedule import plan_array
    from whisper_hpc.model_store import StagedModel
    from whisper_hpc.site import Site, SlurmTable

    names = [f"f{i}.wav" for i in range(2000)]  # ten minutes each: tasks of the longest target, both ways
    manifest = small_manifest(tmp_path, names)
    for entry in manifest.entries:
        entry.duration = 600.0
    model = tmp_path / "base"
    model.mkdir()
    request = TranscriptionRequest(
        inputs=("x.wav",), output_dir=tmp_path, formats=("txt",), site=Site(slurm=SlurmTable(max_time="UNLIMITED")),
        root=tmp_path, model=StagedModel("base", model), language="en", backend="faster-whisper", device="cuda",
        device_index=0, compute_type=None, threads=0, speakers=False, diarize=False, diarization_model=None,
        split_channels=False, redo=False, clips=None, speaker_name="SPEAKER")
    one = plan_array(manifest, range(len(names)), request, {"gpus": 1, "throttle": 1})
    four = plan_array(manifest, range(len(names)), request, {"gpus": 4, "throttle": 1})
    assert len(one.tasks) > 4 * (len(four.tasks) - 1) and len(four.tasks) > 2
    assert abs(len(four.tasks[0]) - 4 * len(one.tasks[0])) <= 3  # files per task scale by the GPUs
    assert max(four.estimates) == pytest.approx(max(one.estimates), rel=0.1)  # the same time, four times the files
    assert (one.request.gres, four.request.gres) == ("gpu:1", "gpu:4")
    assert (one.request.cpus, four.request.cpus) == (2, 8)  # a worker's CPUs for each GPU
    assert sizing.parse_memory(four.request.memory) == 4 * sizing.parse_memory(one.request.memory)
    listed = dataclasses.replace(request, gpus=(0, 1))  # --device_index 0,1 asks for two GPUs
    assert plan_array(manifest, range(len(names)), listed, {}).request.gres == "gpu:2"
    assert plan_array(manifest, range(len(names)), request, {}).request.gres == "gpu:1"


# ---- chunks ---------------------------------------------------------------------------------------


def test_chunks_by_size_keep_order_and_cover_every_file_once():
    chunks = plan.make_chunks([[i] for i in range(10)], {i: 1.0 for i in range(10)}, 1e9, chunk_size=3)
    assert chunks == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


def test_chunks_by_estimated_time():
    seconds = {0: 400.0, 1: 400.0, 2: 400.0, 3: 2000.0, 4: 10.0}
    chunks = plan.make_chunks([[i] for i in seconds], seconds, target_seconds=900)
    assert chunks == [[0, 1], [2], [3], [4]]  # a file longer than the target gets a task of its own


def test_a_group_is_never_split_across_chunks():
    groups_ = [[0], [1, 2, 3], [4]]
    chunks = plan.make_chunks(groups_, {i: 1.0 for i in range(5)}, 1e9, chunk_size=2)
    assert chunks == [[0], [1, 2, 3], [4]]
    assert sorted(i for c in chunks for i in c) == list(range(5))


# ---- inputs and transcript names ----------------------------------------------------------------------


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_names_match_one_whisper_hpc_run_and_every_chunk_reproduces_them(tmp_path):
    inputs = tmp_path / "in"
    for name in ("talk.wav", "talk.mp3", "solo.flac", "deep/nested/x.wav", "deep/other.wav"):
        touch(inputs / name)
    touch(tmp_path / "a" / "same.wav")
    touch(tmp_path / "b" / "same.wav")
    out = tmp_path / "out"
    entries = select([str(inputs), str(tmp_path / "a" / "same.wav"), str(tmp_path / "b" / "same.wav")], out)
    bases = {Path(e.path).relative_to(tmp_path).as_posix(): Path(e.output_base).relative_to(out).as_posix() for e in entries}
    assert bases == {
        "in/talk.wav": "talk.wav", "in/talk.mp3": "talk.mp3",  # same stem: extension kept
        "in/solo.flac": "solo",
        "in/deep/nested/x.wav": "deep/nested/x", "in/deep/other.wav": "deep/other",  # folders kept
        "a/same.wav": "a/same.wav", "b/same.wav": "b/same.wav",  # same name, two folders
    }
    # Each group alone (as a resume may run it), and any mix of groups, names transcripts the same.
    grouped = groups(entries, range(len(entries)))
    assert sorted(len(g) for g in grouped) == [1, 1, 1, 2, 2]
    for group in grouped:
        for output_dir, indices in invocations(entries, group):
            check_invocation(entries, output_dir, indices)
    for output_dir, indices in invocations(entries, range(len(entries))):
        check_invocation(entries, output_dir, indices)


def test_a_chunk_that_split_a_group_would_be_caught(tmp_path):
    entries = select([str(touch(tmp_path / "talk.wav")), str(touch(tmp_path / "talk.mp3"))], tmp_path / "out")
    with pytest.raises(NamingError, match="instead of"):
        check_invocation(entries, entries[0].output_dir, [0])
    assert whole_groups(entries, [1]) == [0, 1]


def test_two_inputs_that_would_share_transcripts_are_refused(tmp_path):
    with pytest.raises(NamingError, match="rename one"):
        select([str(touch(tmp_path / "talk.wav")), str(touch(tmp_path / "talk.mp3")),
                str(touch(tmp_path / "talk.wav.flac"))], tmp_path / "out")


def test_relative_inputs_become_absolute_verbatim(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    touch(tmp_path / "a b" / "$(x).wav")
    entries = select(["a b/$(x).wav"], tmp_path / "out")
    assert entries[0].path == str(tmp_path / "a b" / "$(x).wav")


@pytest.mark.parametrize("name, safe", [
    ("/d/plain.wav", True), ("/d/with space.wav", True), ("/d/ünï 日本.mp3", True), ("/d/$(touch x).wav", True),
    ("/d/new\nline.wav", False), ("/d/trailing space.wav ", False), ("/d/cr\r.wav", False),
    ("/d/sep\u2028.wav", False), ("/d/bad\udcff.wav", False),
])
def test_which_names_a_file_list_can_carry(name, safe):
    assert list_safe(name) is safe


def test_done_needs_every_format_and_for_overwrite_batches_a_fresh_one(tmp_path):
    entry = Entry(str(tmp_path / "a.wav"), str(tmp_path), str(tmp_path / "a"))
    formats = ("txt", "json")
    assert not outputs_exist(entry, formats, False)
    (tmp_path / "a.txt").write_text("x")
    assert not outputs_exist(entry, formats, False)
    (tmp_path / "a.json").write_text("{}")
    assert outputs_exist(entry, formats, False)
    os.utime(tmp_path / "a.txt", (1000, 1000))
    assert not outputs_exist(entry, formats, False, since=2000)
    assert outputs_exist(entry, formats, False, since=500)


def test_split_channel_outputs_count_as_done(tmp_path):
    entry = Entry(str(tmp_path / "call.wav"), str(tmp_path), str(tmp_path / "call"))
    for side in ("left", "right"):
        (tmp_path / f"call.{side}.txt").write_text("x")
    assert outputs_exist(entry, ("txt",), True)
    assert not outputs_exist(entry, ("txt",), False)


# ---- the chunk's whisper-hpc command ---------------------------------------------------------------


def small_manifest(tmp_path: Path, names: list[str], engine_args=None) -> Manifest:
    out = tmp_path / "out"
    entries = [Entry(str(tmp_path / n), str(out), str(out / Path(n).stem)) for n in names]
    return Manifest(path=manifest_path(out, "test"), name="test", output_dir=str(out),
                    engine_args=engine_args or ["--model", "tiny.en"], formats=["txt", "json"],
                    split_channels=False, overwrite=False, model="tiny.en", entries=entries)


def test_hostile_names_reach_whisper_hpc_as_whole_arguments(tmp_path):
    names = ["plain.wav", "$(touch pwned).wav", "new\nline.wav", "q'\" ü.wav"]
    manifest = small_manifest(tmp_path, names)
    listing = tmp_path / "list.txt"
    argv = invocation_argv(manifest, manifest.output_dir, range(4), listing)
    assert argv[argv.index("--output_dir") + 1] == manifest.output_dir
    assert argv[-1] == str(tmp_path / "new\nline.wav")  # a line-based list cannot carry it
    from whisper_hpc.inputs import read_file_list
    assert read_file_list(listing) == [str(tmp_path / n) for n in names if "\n" not in n]


def test_per_file_errors_are_matched_to_the_right_file():
    paths = {0: "/d/a.wav", 1: "/d/a.wav: b.wav", 2: "/d/new\nline.wav", 3: "/d/ok.wav", 4: "/d/bad\udcff.wav"}
    text = (
        "whisper-hpc: faster-whisper tiny.en on cpu\n"
        "error: /d/a.wav: b.wav: not an audio file\n"
        "error: /d/new\nline.wav: truncated or damaged\n"
        "[1/3] done /d/ok.wav: 0:04 of audio\n"
        "error: /d/a.wav: the file is empty (0 bytes)\n"
        "error: /d/bad\\udcff.wav: no such file\n"
    )
    assert file_errors(paths, text) == {
        1: "not an audio file", 2: "truncated or damaged", 0: "the file is empty (0 bytes)", 4: "no such file",
    }


def test_usage_error_is_whisper_hpcs_last_refusal():
    text = "whisper-hpc: faster-whisper tiny.en\nwhisper-hpc: model 'x' is not staged in /m\n"
    assert usage_error(text) == "model 'x' is not staged in /m"
    assert usage_error("[1/1] done a.wav\n") is None


# ---- flags -------------------------------------------------------------------------------------------


def test_engine_flags_are_the_users_own_and_round_trip_through_whisper_hpcs_parser(tmp_path):
    argv = ["a.wav", "--model", "base", "--language", "en", "--output_format", "srt,json", "--beam_size", "2",
            "--temperature_increment_on_fallback", "None", "--vad_filter", "--initial_prompt", "$(not run) 'x'",
            "b.wav", "--logprob_threshold", "-2", "--model_dir", "rel/models", "-o", "outdir", "--file_list", "x.txt",
            "--overwrite", "c.wav", "--task=transcribe"]
    namespace = parse(argv)
    flags = engine_arguments(argv, "base")
    assert flags == ["--model", "base", "--language", "en", "--output_format", "srt,json", "--beam_size", "2",
                     "--temperature_increment_on_fallback", "None", "--vad_filter", "--initial_prompt", "$(not run) 'x'",
                     "--logprob_threshold", "-2", "--model_dir", os.path.abspath("rel/models"), "--overwrite",
                     "--task", "transcribe"]
    again = parse(flags)
    for name in ("model", "language", "output_format", "beam_size", "temperature_increment_on_fallback",
                 "vad_filter", "initial_prompt", "logprob_threshold"):
        assert getattr(again, name) == getattr(namespace, name), name
    assert again.model_dir == os.path.abspath("rel/models")
    assert again.audio == [] and again.file_list is None and again.output_dir == "."


def test_the_site_default_model_is_pinned():
    assert engine_arguments(["a.wav", "--language", "en"], "small") == ["--model", "small", "--language", "en"]
    assert engine_arguments(["--model_directory", "/m/x", "a.wav"], "x") == ["--model_directory", "/m/x"]


def test_batch_flags_are_checked():
    def settings(*argv):
        return explicit_settings(batch_parser().parse_known_args(list(argv))[0])
    assert settings("--mem", "4G", "--throttle", "3", "--mail_type", "end,fail") == {
        "mem": "4G", "throttle": 3, "mail_type": "END,FAIL"}
    for bad, message in ((("--mem", "lots"), "--mem"), (("--time", "1h"), "--time"), (("--throttle", "0"), "at least 1"),
                         (("--mail_type", "SOMETIMES"), "SOMETIMES"), (("--gpus", "-1"), "--gpus")):
        with pytest.raises(Refusal, match=message):
            settings(*bad)


def test_gres_keeps_the_sites_gpu_type():
    assert gres("gpu:1", 2) == "gpu:2"
    assert gres("gpu:a100:1", 1) == "gpu:a100:1"
    assert gres("gpu", 3) == "gpu:3"
    assert gres("gpu:1", 0) == ""


# ---- Slurm's answers -----------------------------------------------------------------------------------


def test_array_index_expressions():
    assert slurm.expand_indices("[3-6%2]") == [3, 4, 5, 6]
    assert slurm.expand_indices("[1,4,7-9]") == [1, 4, 7, 8, 9]
    assert slurm.expand_indices("5") == [5]


def test_sacct_and_squeue_states():
    sacct = "41_0|COMPLETED\n41_1|CANCELLED by 0\n41_[2-4%2]|PENDING\n410_0|RUNNING\n41|FAILED\n"
    assert slurm.parse_states(sacct, "41") == {"0": "COMPLETED", "1": "CANCELLED", "2": "PENDING", "3": "PENDING",
                                             "4": "PENDING", "": "FAILED"}
    squeue = "41_3|RUNNING\n41_4|PENDING\n"
    assert slurm.parse_states(squeue, "41") == {"3": "RUNNING", "4": "PENDING"}


def test_sbatch_options_escape_the_log_folder_but_not_the_task_pattern():
    request = slurm.ArrayRequest(tasks=7, throttle=2, memory="1G", time="00:10:00", cpus=1, gres="gpu:1",
                                 mail_user="me@example.org")
    options = request.options("/data/100%/x", "task-1-%a.log", "/data/100%")
    assert "--array=0-6%2" in options
    assert "--output=/data/100%%/x/task-1-%a.log" in options
    assert "--chdir=/data/100%" in options
    assert "--gres=gpu:1" in options and "--mail-type=END,FAIL" in options
    assert not any(o.startswith("--partition") for o in options)


# ---- manifest and status --------------------------------------------------------------------------------


def test_manifest_round_trips_any_file_name(tmp_path):
    manifest = small_manifest(tmp_path, ["a.wav", "new\nline.wav", "bad\udcff.wav", "日本.wav"])
    manifest.add_submission("array", [[0, 1], [2, 3]], {"memory": "1G"}).job_id = "77"
    manifest.save()
    again = Manifest.load(manifest.path)
    assert [e.path for e in again.entries] == [e.path for e in manifest.entries]
    assert again.submissions[0].tasks == [[0, 1], [2, 3]] and again.submissions[0].job_id == "77"
    assert find_by_job(manifest.state_dir, "77") == manifest.path
    assert find_by_job(manifest.state_dir, "78") is None


def test_damaged_manifest_is_one_clear_line(tmp_path, capsys):
    bad = tmp_path / "m.json"
    bad.write_text("{not json")
    assert main(["status", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a whisper-batch manifest" in err


def test_status_from_outputs_results_and_slurm_states(tmp_path):
    names = ["done.wav", "bad.wav", "killed.wav", "queued.wav", "running.wav", "never.wav", "oom.wav"]
    manifest = small_manifest(tmp_path, names)
    out = Path(manifest.output_dir)
    out.mkdir(parents=True)
    for fmt in ("txt", "json"):
        (out / f"done.{fmt}").write_text("x")
    first = manifest.add_submission("array", [[0, 1], [2], [3], [4], [6]], {})
    first.job_id = "50"
    write_result(manifest.result_path(1, 0), TaskResult(1, 0, "finished", errors={"1": "the file is empty (0 bytes)"}))
    write_result(manifest.result_path(1, 1), TaskResult(1, 1, "terminated"))
    states = {"50": {"0": "COMPLETED", "1": "CANCELLED", "2": "PENDING", "3": "RUNNING", "4": "OUT_OF_MEMORY"}}
    statuses = file_statuses(manifest, states_of=lambda job: states.get(job, {}))
    got = {Path(s.path).name: (s.state, s.live) for s in statuses}
    assert got == {
        "done.wav": ("done", False), "bad.wav": ("failed", False), "killed.wav": ("pending", False),
        "queued.wav": ("pending", True), "running.wav": ("running", True), "never.wav": ("pending", False),
        "oom.wav": ("pending", False),
    }
    details = {Path(s.path).name: s.detail for s in statuses}
    assert details["bad.wav"] == "the file is empty (0 bytes)"
    assert "CANCELLED" in details["killed.wav"] and "--mem" in details["oom.wav"]
    text = report(manifest, statuses)
    assert text.splitlines()[-1].startswith("1 done, 1 failed, 1 running, 4 pending of 7 files")


def test_a_later_submission_decides(tmp_path):
    manifest = small_manifest(tmp_path, ["a.wav"])
    manifest.add_submission("array", [[0]], {}).job_id = "60"
    manifest.add_submission("array", [[0]], {}).job_id = "61"
    states = {"60": {"0": "CANCELLED"}, "61": {"0": "RUNNING"}}
    [status] = file_statuses(manifest, states_of=lambda job: states[job])
    assert (status.state, status.live) == ("running", True)


def test_printable_paths_stay_on_one_line():
    assert printable("/d/new\nline.wav") == "/d/new\\nline.wav"
    assert printable("/d/ünï 日本 $(x).wav") == "/d/ünï 日本 $(x).wav"


def test_submission_lookup():
    submission = Submission(number=1, kind="array", tasks=[[0, 2], [1]])
    assert submission.task_of(2) == 0 and submission.task_of(1) == 1 and submission.task_of(5) is None


def test_result_files_are_json_and_read_back(tmp_path):
    path = tmp_path / "r" / "results-1-0.json"
    write_result(path, TaskResult(1, 0, "finished", errors={"0": "bad"}, exit_codes=[1]))
    assert json.loads(path.read_text())["errors"] == {"0": "bad"}
    assert not list(path.parent.glob("*.partial"))
    assert read_result(path) == TaskResult(1, 0, "finished", errors={"0": "bad"}, exit_codes=[1])
    path.write_text('{"state": "finished"')  # cut short by a full disk: no result, not a crash
    assert read_result(path) is None


def test_a_file_whose_name_partner_is_done_still_runs_with_it(tmp_path, model_root, monkeypatch, capsys):
    """talk.wav done, talk.mp3 not: both go to the task (whisper-hpc skips talk.wav), one is counted."""
    folder = tmp_path / "in"
    out = tmp_path / "out"
    for name in ("talk.wav", "talk.mp3", "other.wav"):
        touch(folder / name)
    out.mkdir()
    for fmt in ("txt", "json"):
        (out / f"talk.wav.{fmt}").write_text("x")
        (out / f"other.{fmt}").write_text("x")
    monkeypatch.setenv("WHISPER_MODELS", str(model_root))
    monkeypatch.delenv("WHISPER_HPC_SITE", raising=False)
    code = main(["submit", str(folder), "--model", "tiny.en", "--output_format", "txt,json", "--output_dir", str(out),
                 "--dry_run"])
    printed = capsys.readouterr().out
    assert code == 0
    assert printed.startswith("dry run: would submit 1 files in 1 tasks"), printed
    assert "task 0: 2 files" in printed
    assert not (out / ".whisper-batch").exists()


def test_huge_batches_stay_within_slurms_array_size(tmp_path):
    from whisper_hpc.assemble import Request as TranscriptionRequest
    from whisper_hpc.batch.schedule import MAX_ARRAY_TASKS, plan_array
    from whisper_hpc.model_store import StagedModel
    from whisper_hpc.site import Site, SlurmTable

    names = [f"f{i}.wav" for i in range(20000)]
    manifest = small_manifest(tmp_path, names)
    for entry in manifest.entries:
        entry.duration = 600.0  # 20000 ten-minute recordings
    model = tmp_path / "tiny.en"
    model.mkdir()
    unlimited = Site(slurm=SlurmTable(max_time="UNLIMITED"))
    request = TranscriptionRequest(
        inputs=("x.wav",), output_dir=tmp_path, formats=("txt",), site=unlimited, root=tmp_path,
        model=StagedModel("tiny.en", model), language="en", backend="faster-whisper", device="cpu", device_index=0,
        compute_type=None, threads=0, speakers=False, diarize=False, diarization_model=None, split_channels=False,
        redo=False, clips=None, speaker_name="SPEAKER")
    work = sizing.Workload(sizing.MODEL_PARAMETERS_M["tiny"])
    plain = plan.make_chunks([[i] for i in range(len(names))], dict.fromkeys(range(len(names)), work.file_seconds(600.0)),
                             plan.TARGET_TASK_MAX_SECONDS)
    assert len(plain) > MAX_ARRAY_TASKS  # what the ordinary target would give
    array = plan_array(manifest, range(len(names)), request, {})
    assert len(array.tasks) <= MAX_ARRAY_TASKS
    assert sorted(i for task in array.tasks for i in task) == list(range(len(names)))
    with pytest.raises(Refusal, match="larger --chunk_size"):
        plan_array(manifest, range(len(names)), dataclasses.replace(request, site=Site()), {"chunk_size": 2})


def test_the_job_script_hands_the_manifest_over_as_one_literal_argument(tmp_path):
    import subprocess

    from whisper_hpc.render import render

    recorder = tmp_path / "record.py"
    recorder.write_text("import json, sys\nopen(sys.argv[1], 'w').write(json.dumps(sys.argv[2:]))\n")
    record = tmp_path / "argv.json"
    manifest = tmp_path / "it's \"odd\" $(touch pwned) `touch pwned2`\nline" / ".whisper-batch" / "b.json"
    text = render("slurm/batch-array.sbatch.j2", {
        "batch_command": ["python3", str(recorder), str(record)], "submission": 3, "manifest": str(manifest)})
    assert text.startswith("#!/bin/bash\n")
    script = tmp_path / "job.sh"
    script.write_text(text)
    subprocess.run(["bash", str(script)], cwd=tmp_path, check=True)
    assert json.loads(record.read_text()) == ["task", "--submission", "3", str(manifest)]
    assert not list(tmp_path.rglob("pwned*"))


def test_engine_arguments_keep_a_value_that_starts_with_a_dash_attached():
    """`--initial_prompt=-- uh, so` must come back as one value, not as a flag of its own."""
    from whisper_hpc.options import parse

    recorded = engine_arguments(["a.wav", "--initial_prompt=-- uh, so", "--hotwords", "x"], "base")
    assert recorded == ["--model", "base", "--initial_prompt=-- uh, so", "--hotwords", "x"]
    assert parse(["a.wav", *recorded]).initial_prompt == "-- uh, so"
