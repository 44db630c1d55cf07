"""A whisper-batch manifest edited by a hostile user, or damaged.

The manifest (OUTPUT_DIR/.whisper-batch/<name>.json) is data: whatever it holds, nothing in it is
ever executed, nothing is written outside the batch's output folder (and its .whisper-batch
folder), and a manifest that is damaged or leads elsewhere is refused with one line naming the
manifest and the key (ManifestError), never a traceback. Hostile file names and engine flag
values run for real (`whisper-batch task`, the real whisper-hpc, tiny.en, jfk.flac) and sentinel
files prove no shell saw them; every other case must be refused before anything runs.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import BIN
from whisper_hpc.batch.manifest import Manifest, ManifestError, manifest_path
from whisper_hpc.batch.selection import Entry, select

HOSTILE_NAMES = [
    "$(touch pwned).flac",
    "`touch pwned-backquote`.flac",
    "a; touch pwned-semicolon ;.flac",
    "new\nline $(touch pwned-newline).flac",
    "it's \"quoted\" && touch pwned-and.flac",
]
HOSTILE_PROMPT = "$(touch pwned-prompt) `touch pwned-prompt2`; touch pwned-prompt3"


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(folder).as_posix(): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*")}


def sentinels(*folders: Path) -> list[Path]:
    return [p for folder in folders for p in folder.rglob("pwned*")]


class Batch:
    """A real batch on disk: inputs, OUTPUT_DIR, its manifest, and a place outside it."""

    def __init__(self, tmp_path: Path, names: list[str], source: Path, engine_args: list[str] | None = None) -> None:
        self.tmp = tmp_path
        self.inputs, self.out, self.outside, self.work, self.home, self.scratch = (
            tmp_path / n for n in ("in", "out", "outside", "work", "home", "scratch"))
        for folder in (self.inputs, self.out, self.outside, self.work, self.home, self.scratch):
            folder.mkdir()
        for name in names:
            shutil.copyfile(source, self.inputs / name)
        entries = select([str(self.inputs / name) for name in names], self.out)
        self.manifest = Manifest(
            path=manifest_path(self.out, "hostile"), name="hostile", output_dir=str(self.out),
            engine_args=engine_args or ["--model", "tiny.en", "--language", "en", "--output_format", "txt,json"],
            formats=["txt", "json"], split_channels=False, overwrite=False, model="tiny.en", entries=entries)
        self.manifest.add_submission("run", [list(range(len(entries)))], {"settings": {"cpus": 2}})
        self.manifest.save()
        self.path = self.manifest.path

    def data(self) -> dict:
        return json.loads(self.path.read_text())

    def write(self, data: dict) -> None:
        self.path.write_text(json.dumps(data))

    def environment(self, model_root: Path) -> dict:
        return {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(self.home), "TMPDIR": str(self.scratch), "LANG": "C.UTF-8",
                "WHISPER_MODELS": str(model_root), "SLURM_CPUS_PER_TASK": "2", "SLURM_ARRAY_TASK_ID": "0"}

    def batch(self, model_root: Path, *arguments: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "whisper-batch"), *arguments], cwd=self.work, env=self.environment(model_root),
                              capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def jfk(shared_data) -> Path:
    return shared_data / "jfk.flac"


# ---- names and flag values that a shell would execute: run for real ---------------------------------


@pytest.mark.engine
@pytest.mark.system
def test_hostile_names_and_flag_values_run_unexecuted_and_write_only_into_the_output_folder(tmp_path, jfk, model_root):
    batch = Batch(tmp_path, HOSTILE_NAMES, jfk, ["--model", "tiny.en", "--language", "en", "--output_format", "txt,json",
                                                 "--initial_prompt", HOSTILE_PROMPT])
    # Outside OUTPUT_DIR nothing may change (TMPDIR aside: whisper-hpc's run folder comes and goes).
    elsewhere = lambda snap: {k: v for k, v in snap.items() if k.split("/")[0] not in ("out", "scratch")}  # noqa: E731
    outside_before = elsewhere(snapshot(tmp_path))

    result = batch.batch(model_root, "task", "--submission", "1", str(batch.path))

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    again = Manifest.load(batch.path)
    assert again.unfinished() == []  # every hostile name was transcribed
    for entry in again.entries:
        text = Path(entry.output_base + ".txt").read_text()
        assert "ask not what your country can do for you" in text.lower()
    assert sentinels(tmp_path) == [], "a shell executed part of a file name or a flag value"
    assert elsewhere(snapshot(tmp_path)) == outside_before
    assert os.listdir(batch.scratch) == []  # whisper-hpc's run folder is gone
    result_file = batch.out / ".whisper-batch" / "hostile" / "results-1-0.json"
    assert json.loads(result_file.read_text())["state"] == "finished"


# ---- hostile or damaged manifests: refused, one line, nothing run or written ----------------------------


def set_entry(index: int, **values):
    def change(data: dict, batch: Batch) -> None:
        data["entries"][index].update({k: v(batch) if callable(v) else v for k, v in values.items()})
    return change


def set_key(key: str, value):
    def change(data: dict, batch: Batch) -> None:
        data[key] = value(batch) if callable(value) else value
    return change


def symlinked_escape(data: dict, batch: Batch) -> None:
    (batch.out / "escape").symlink_to(batch.outside, target_is_directory=True)
    data["entries"][0].update(output_dir=str(batch.out / "escape"), output_base=str(batch.out / "escape" / "jfk"))


def other_users_folder(data: dict, batch: Batch) -> None:
    other = batch.tmp / "someone-else" / "transcripts"
    other.mkdir(parents=True)
    data["entries"][0].update(output_dir=str(other), output_base=str(other / "jfk"))


def whole_output_dir_moved(data: dict, batch: Batch) -> None:
    data["output_dir"] = str(batch.outside)
    for entry in data["entries"]:
        entry.update(output_dir=str(batch.outside), output_base=str(batch.outside / Path(entry["output_base"]).name))


def submission(**values):
    def change(data: dict, batch: Batch) -> None:
        data["submissions"][0].update(values)
    return change


def settings(**values):
    def change(data: dict, batch: Batch) -> None:
        data["submissions"][0]["resources"]["settings"].update(values)
    return change


def engine(*arguments: str):
    return set_key("engine_args", ["--model", "tiny.en", *arguments])


# (id, change, the key the refusal names, whether running it could write outside tmp_path)
REFUSED = [
    ("output_dir-etc", set_entry(0, output_dir="/etc/x", output_base="/etc/x/jfk"), "entries[0].output_dir", True),
    ("output_dir-dotdot", set_entry(0, output_dir=lambda b: f"{b.out}/../outside",
                                    output_base=lambda b: f"{b.out}/../outside/jfk"), "entries[0].output_dir", False),
    ("output_dir-other-user", other_users_folder, "entries[0].output_dir", False),
    ("output_dir-through-link", symlinked_escape, "entries[0].output_dir", False),
    ("output_base-etc", set_entry(0, output_base="/etc/x/jfk"), "entries[0].output_base", True),
    ("output_base-dotdot", set_entry(0, output_base=lambda b: f"{b.out}/../outside/jfk"), "entries[0].output_base", False),
    ("output_base-state-folder", set_entry(0, output_base=lambda b: f"{b.out}/.whisper-batch/hostile"),
     "entries[0].output_base", False),
    ("output_base-folder", set_entry(0, output_base=lambda b: f"{b.out}/.."), "entries[0].output_base", False),
    ("manifest-output_dir", whole_output_dir_moved, "output_dir", False),
    ("name-dotdot", set_key("name", "../../outside/x"), "name", False),
    ("engine-output_dir", engine("--output_dir", "/etc/x"), "engine_args", True),
    ("engine-output_dir-equals", engine("--output_dir=/etc/x"), "engine_args", True),
    ("engine-o-joined", engine("-o/etc/x"), "engine_args", True),
    ("engine-file_list", engine("--file_list", "/etc/shadow"), "engine_args", False),
    ("engine-input", engine("/etc/passwd"), "engine_args", False),
    ("engine-dashdash-input", engine("--", "/etc/passwd"), "engine_args", False),
    ("engine-unknown-flag", engine("--exec", "touch pwned"), "engine_args", False),
    ("engine-not-strings", set_key("engine_args", ["--model", 7]), "engine_args[1]", False),
    ("engine-not-a-list", set_key("engine_args", "--model tiny.en; touch pwned"), "engine_args", False),
    ("path-relative-flag", set_entry(0, path="-o/etc/x"), "entries[0].path", True),
    ("path-number", set_entry(0, path=5), "entries[0].path", False),
    ("path-nul", set_entry(0, path="/tmp/a\0b.wav"), "entries[0].path", False),
    ("entries-string", set_key("entries", "x"), "entries", False),
    ("entry-list", set_key("entries", [[]]), "entries[0]", False),
    ("entry-unknown-key", set_entry(0, shell="touch pwned"), "entries[0].shell", False),
    ("entry-duration", set_entry(0, duration="long"), "entries[0].duration", False),
    ("entries-shared-output", lambda d, b: d["entries"].append(dict(d["entries"][0], path=str(b.inputs / "x.wav"))),
     "entries", False),
    ("formats-path", set_key("formats", ["txt/../../../outside/x"]), "formats[0]", False),
    ("formats-string", set_key("formats", "txt"), "formats", False),
    ("split_channels-string", set_key("split_channels", "yes"), "split_channels", False),
    ("overwrite-number", set_key("overwrite", 1), "overwrite", False),
    ("created-string", set_key("created", "yesterday"), "created", False),
    ("unknown-key", set_key("hook", "touch pwned"), "hook", False),
    ("missing-entries", lambda d, b: d.pop("entries"), "entries", False),
    ("submission-number", submission(number="1/../../outside"), "submissions[0].number", False),
    ("submission-kind", submission(kind="shell"), "submissions[0].kind", False),
    ("task-index-range", submission(tasks=[[99]]), "submissions[0].tasks[0][0]", False),
    ("task-index-string", submission(tasks=[["0"]]), "submissions[0].tasks[0][0]", False),
    ("job-id", submission(job_id="1; touch pwned"), "submissions[0].job_id", False),
    ("settings-type", settings(chunk_size="3; touch pwned"), "submissions[0].resources.settings.chunk_size", False),
    ("settings-value", settings(mem="lots"), "submissions[0].resources.settings", False),
    ("settings-unknown", settings(wrap="touch pwned"), "submissions[0].resources.settings.wrap", False),
    ("submissions-object", set_key("submissions", {"0": 1}), "submissions", False),
]


@pytest.fixture
def batch(tmp_path) -> Batch:
    source = tmp_path / "source.flac"
    source.write_bytes(b"not read: nothing runs in these tests")
    return Batch(tmp_path, ["jfk.flac", "talk.wav"], source)


def hostile_manifest(batch: Batch, change) -> None:
    data = batch.data()
    change(data, batch)
    batch.write(data)


@pytest.mark.parametrize("change, key", [(c, k) for _, c, k, _ in REFUSED], ids=[i for i, *_ in REFUSED])
def test_a_hostile_or_damaged_manifest_is_refused_naming_the_manifest_and_the_key(batch, change, key):
    hostile_manifest(batch, change)
    with pytest.raises(ManifestError) as refused:
        Manifest.load(batch.path)
    message = str(refused.value)
    assert message.startswith(f"{batch.path}: {key}: "), message
    assert "\n" not in message and "start the batch again" in message


def test_the_untouched_manifest_loads(batch):
    again = Manifest.load(batch.path)
    assert again.to_dict() == batch.manifest.to_dict()
    again.check()


SAFE_TO_RUN = [(i, c, k) for i, c, k, writes_elsewhere in REFUSED if not writes_elsewhere]
THROUGH_THE_COMMANDS = ("output_dir-through-link", "output_base-dotdot", "output_base-state-folder", "name-dotdot",
                        "engine-file_list", "entry-unknown-key", "task-index-range", "job-id")
COMMAND_CASES = [case for case in SAFE_TO_RUN if case[0] in THROUGH_THE_COMMANDS]


@pytest.mark.parametrize("change, key", [(c, k) for _, c, k in COMMAND_CASES], ids=[i for i, *_ in COMMAND_CASES])
def test_the_task_and_status_refuse_it_in_one_line_and_write_nothing(batch, model_root, change, key):
    hostile_manifest(batch, change)
    before = snapshot(batch.tmp)
    for command in (["task", "--submission", "1"], ["status"], ["resume", "--dry_run"]):
        result = batch.batch(model_root, *command, str(batch.path), timeout=60)
        assert result.returncode == 2, (command, result.stderr)
        assert result.stdout == ""
        assert result.stderr.startswith(f"whisper-batch: {batch.path}: {key}: ") and result.stderr.count("\n") == 1, \
            result.stderr
    assert snapshot(batch.tmp) == before
    assert sentinels(batch.tmp) == []


@pytest.fixture
def signals_kept():
    """run_task installs SIGTERM/SIGINT handlers for a real task: give pytest its own back."""
    kept = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    yield
    for number, handler in kept.items():
        signal.signal(number, handler)


@pytest.mark.parametrize("change, key", [(c, k) for _, c, k in SAFE_TO_RUN if k.startswith(("entries[0].output", "engine"))],
                         ids=[i for i, _, k in SAFE_TO_RUN if k.startswith(("entries[0].output", "engine"))])
def test_run_task_checks_a_manifest_built_in_memory_before_anything(batch, change, key, signals_kept):
    """The same rules for a Manifest object that never went through load (whisper-batch run builds one)."""
    from whisper_hpc.batch.task import run_task

    data = batch.data()
    change(data, batch)
    manifest = copy.deepcopy(batch.manifest)
    manifest.entries = [Entry(**e) for e in data["entries"]]
    manifest.engine_args = data["engine_args"]
    before = snapshot(batch.tmp)
    with pytest.raises(ManifestError, match="^" + re.escape(f"{batch.path}: {key}: ")):
        run_task(manifest, 1, 0)
    assert snapshot(batch.tmp) == before


def test_a_fifo_or_a_folder_in_place_of_the_manifest_is_refused_without_blocking(batch, model_root):
    batch.path.unlink()
    os.mkfifo(batch.path)
    result = batch.batch(model_root, "status", str(batch.path), timeout=60)  # opening it to read would block
    assert result.returncode == 2 and result.stderr == f"whisper-batch: {batch.path} is not a whisper-batch manifest (not a regular file)\n"
    batch.path.unlink()
    batch.path.mkdir()
    result = batch.batch(model_root, "status", str(batch.path), timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and str(batch.path) in result.stderr, result.stderr


def test_a_manifest_moved_out_of_its_output_folder_is_refused(batch):
    elsewhere = batch.outside / ".whisper-batch" / "hostile.json"
    elsewhere.parent.mkdir()
    shutil.copyfile(batch.path, elsewhere)
    with pytest.raises(ManifestError, match=r": output_dir: .* is not the folder this manifest lies in"):
        Manifest.load(elsewhere)
    loose = batch.tmp / "hostile.json"
    shutil.copyfile(batch.path, loose)
    with pytest.raises(ManifestError, match=r": output_dir: "):
        Manifest.load(loose)


def test_a_folder_named_as_an_entry_is_not_walked(batch, model_root):
    """An entry whose path is a folder (here: the whole tmp tree) would make a chunk run transcribe
    everything in it; the task refuses that chunk instead, and runs nothing."""
    data = batch.data()
    data["entries"][0]["path"] = str(batch.tmp)
    batch.write(data)
    result = batch.batch(model_root, "task", "--submission", "1", str(batch.path), timeout=120)
    assert result.returncode == 2, result.stderr
    record = json.loads((batch.out / ".whisper-batch" / "hostile" / "results-1-0.json").read_text())
    assert "a folder, not a file" in record["task_error"] and record["exit_codes"] == []
    assert not [p for p in batch.out.rglob("*") if ".whisper-batch" not in p.parts]


def test_hostile_result_files_are_ignored_not_a_traceback(batch, model_root):
    results = batch.out / ".whisper-batch" / "hostile"
    results.mkdir(exist_ok=True)
    (results / "results-1-0.json").write_text(json.dumps({"submission": 1, "task": 0, "state": "finished",
                                                          "errors": ["not", "a", "dict"], "exit_codes": "1", "pid": "self"}))
    result = batch.batch(model_root, "status", str(batch.path), timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout.splitlines()[-1].startswith("0 done, 0 failed, 0 running, 2 pending of 2 files")
