"""`whisper-models verify` against a model root that an attacker or an accident changed.

Every case starts from a copy of the real staged tiny.en (never build/models itself) and breaks
it one way: an added file (and a FIFO, and names that would forge or break output lines), a
group-writable file and folder, symbolic links (dangling, to a file outside, to a FIFO), a folder
and a file nobody else can read (as root the modes are what is wrong; as `nobody`, reading fails),
manifests whose `files` point outside the folder (`../..`, absolute paths, through a link, at a
FIFO), damaged manifests, and a link in the root itself. Each case must give exit status 1, one
line per problem naming the model and the file, no traceback, and the untouched copy of tiny.en
beside it must still be verified.

That nothing outside a model folder is ever opened is proved with inotify: every file and folder
outside the model root that a manifest or a link leads to is watched for open and read events
while verify runs (and the watch is shown to fire when the test opens one afterwards); a FIFO
among them would also block any reader forever, which the subprocess timeout would catch.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import BIN, need
from test_staging import program_for_nobody

pytestmark = pytest.mark.system  # a real staged model

TIMEOUT = 120  # seconds; a run takes a few. A verify that opened a FIFO would hang until then.
UNLOADABLE = "other users' jobs cannot load it"


# ---- helpers ----------------------------------------------------------------------------------------


class Watch:
    """inotify on some paths: which of them were opened or read (by any process) since the last look."""

    IN_ACCESS, IN_OPEN = 0x1, 0x20

    def __init__(self, paths: list[Path]) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        need(self.fd >= 0, f"inotify is not available here (errno {ctypes.get_errno()})")
        self.paths: dict[int, Path] = {}
        for path in paths:
            wd = libc.inotify_add_watch(self.fd, os.fsencode(path), self.IN_ACCESS | self.IN_OPEN)
            assert wd >= 0, f"cannot watch {path} (errno {ctypes.get_errno()})"
            self.paths[wd] = path

    def touched(self) -> set[Path]:
        seen: set[Path] = set()
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return seen
            offset = 0
            while offset < len(data):
                wd, _mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16: offset + 16 + length].rstrip(b"\0")
                seen.add(self.paths[wd] / os.fsdecode(name) if name else self.paths[wd])
                offset += 16 + length

    def close(self) -> None:
        os.close(self.fd)


def verify(root: Path, *arguments: str, user: str | None = None, home: Path | None = None) -> subprocess.CompletedProcess:
    home = home or root.parent / "home"
    home.mkdir(exist_ok=True)
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(home), "LANG": "C.UTF-8"}
    command = [str(BIN / "whisper-models"), "--root", str(root), "verify", *arguments]
    if user:
        assert user == "nobody", "program_for_nobody checks what nobody may read and run"
        command = [shutil.which("runuser"), "-u", user, "--", "env", "-i", *[f"{k}={v}" for k, v in env.items()],
                   *program_for_nobody("whisper-models", "whisper_hpc.staging"), "--root", str(root), "verify", *arguments]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, symlinks=True)  # keeps the staged modes: 0555 folders, 0444 files
    return target


class Editing:
    """Give the owner write permission on a staged folder while a case breaks it; put 0555 back."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __enter__(self) -> Path:
        self.folder.chmod(0o755)
        return self.folder

    def __exit__(self, *exc) -> None:
        self.folder.chmod(0o555)


def rewrite_manifest(model: Path, change) -> None:
    path = model / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest["files"])
    with Editing(model):
        path.unlink()
        path.write_text(json.dumps(manifest, indent=2))
        path.chmod(0o444)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hand_back(base: Path) -> None:
    subprocess.run(["chmod", "-R", "u+rwX", str(base)], check=False, capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


# ---- the cases ----------------------------------------------------------------------------------------
# Each builds one hostile model folder (a copy of tiny.en) in ROOT; `outside` is a folder beside
# the root whose every file is watched. Each returns the lines verify must print (after "NAME: ").


def added(model: Path, outside: Path) -> list[str]:
    with Editing(model):
        (model / "extra.bin").write_bytes(b"planted")
        (model / "forged\ntiny.en: ok").write_bytes(b"a name that would print a second, forged line")
        (model / os.fsdecode(b"bad\xff.bin")).write_bytes(b"a name that is not UTF-8")
        os.mkfifo(model / "pipe")
    return ["extra.bin: not in the manifest (added after staging)",
            "forged\\ntiny.en: ok: not in the manifest (added after staging)",
            "bad\\udcff.bin: not in the manifest (added after staging)",
            "pipe: a FIFO (not staged by whisper-models); not opened"]


def replaced(model: Path, outside: Path) -> list[str]:
    with Editing(model):
        (model / "model.bin").unlink()
        (model / "model.bin").mkdir()
        (model / "model.bin").chmod(0o555)
        tokenizer = (model / "tokenizer.json").read_bytes()
        (model / "tokenizer.json").unlink()
        (model / "tokenizer.json").write_bytes(tokenizer[:1000])
        config = bytearray((model / "config.json").read_bytes())
        config[10] ^= 1
        (model / "config.json").unlink()
        (model / "config.json").write_bytes(bytes(config))
    for name in ("tokenizer.json", "config.json"):
        (model / name).chmod(0o444)
    return ["model.bin: a folder where the manifest lists a file (replaced)",
            f"tokenizer.json: size 1000 bytes, the manifest says {len(tokenizer)} (truncated or replaced)",
            "config.json: SHA-256 differs from the manifest (corrupt or modified)"]


def writable(model: Path, outside: Path) -> list[str]:
    (model / "config.json").chmod(0o664)
    model.chmod(0o575)
    return ["config.json: writable by group or others", ".: writable by group or others"]


def linked(model: Path, outside: Path) -> list[str]:
    shutil.copyfile(model / "vocabulary.txt", outside / "vocabulary.txt")  # same size, same SHA-256
    os.mkfifo(outside / "tokenizer-fifo")
    with Editing(model):
        (model / "dangling").symlink_to(outside / "nowhere")
        (model / "vocabulary.txt").unlink()
        (model / "vocabulary.txt").symlink_to(outside / "vocabulary.txt")
        (model / "tokenizer.json").unlink()
        (model / "tokenizer.json").symlink_to(outside / "tokenizer-fifo")
    return ["dangling: a symbolic link (not staged by whisper-models); not followed",
            "vocabulary.txt: a symbolic link (not staged by whisper-models); not followed",
            "tokenizer.json: a symbolic link (not staged by whisper-models); not followed"]


def unreadable(model: Path, outside: Path) -> list[str]:
    with Editing(model):
        (model / "secret").mkdir()
        (model / "secret" / "notes.txt").write_text("planted")
        (model / "secret").chmod(0o000)
    (model / "model.bin").chmod(0o000)
    return [f"secret: not readable by every user (mode 0000; staged ones are 0555): {UNLOADABLE}",
            "secret/notes.txt: not in the manifest (added after staging)",
            f"model.bin: not readable by every user (mode 0000; staged ones are 0444): {UNLOADABLE}"]


def escaping(model: Path, outside: Path) -> list[str]:
    sentinel = outside / "sentinel"
    sentinel.write_bytes(b"whoever reads this followed a forged manifest entry\n")
    absolute = outside / "absolute-sentinel"
    shutil.copyfile(sentinel, absolute)
    os.mkfifo(outside / "fifo")
    (outside / "linked").mkdir()
    shutil.copyfile(sentinel, outside / "linked" / "sentinel")
    honest = {"size": sentinel.stat().st_size, "sha256": sha256(sentinel)}  # what a verify that read it would find
    entries = {
        "../../outside/sentinel": honest,
        str(absolute): honest,
        "../../outside/fifo": {"size": 0, "sha256": hashlib.sha256(b"").hexdigest()},
        str(outside / "fifo"): {"size": 0, "sha256": hashlib.sha256(b"").hexdigest()},
        "/etc/shadow": {"size": 1, "sha256": "0" * 64},
        "../" * 12 + "etc/passwd": {"size": 1, "sha256": "0" * 64},
        "link/sentinel": honest,
        "./config.json": {"size": 1, "sha256": "0" * 64},
    }
    rewrite_manifest(model, lambda files: files.update(entries))
    with Editing(model):
        (model / "link").symlink_to(outside / "linked", target_is_directory=True)
    outside_folder = "leads outside the model folder (..); not read (damaged or forged manifest)"
    absolute_path = "an absolute path, outside the model folder; not read (damaged or forged manifest)"
    return [f"../../outside/sentinel: listed in the manifest, {outside_folder}",
            f"{absolute}: listed in the manifest, {absolute_path}",
            f"../../outside/fifo: listed in the manifest, {outside_folder}",
            f"{outside / 'fifo'}: listed in the manifest, {absolute_path}",
            f"/etc/shadow: listed in the manifest, {absolute_path}",
            f"{'../' * 12}etc/passwd: listed in the manifest, {outside_folder}",
            "link/sentinel: reached through link, which is not a folder; not read",
            "link: a symbolic link (not staged by whisper-models); not followed",
            "./config.json: listed in the manifest, not a plain relative path; not read (damaged or forged manifest)"]


def damaged(model: Path, outside: Path) -> list[str]:
    def spoil(files: dict) -> None:
        files["config.json"] = "yes"
        files["model.bin"]["size"] = str(files["model.bin"]["size"])
        files["tokenizer.json"] = {"size": True, "sha256": None}
        files["vocabulary.txt"] = None
    rewrite_manifest(model, spoil)
    bad = "the manifest gives no valid size and sha256 for it (damaged manifest)"
    return [f"{name}: {bad}" for name in ("config.json", "model.bin", "tokenizer.json", "vocabulary.txt")]


def null_manifest(model: Path, outside: Path) -> list[str]:
    with Editing(model):
        (model / "manifest.json").unlink()
        (model / "manifest.json").write_text("null")
    return [f"{model / 'manifest.json'} lists no files"]


def manifest_link(model: Path, outside: Path) -> list[str]:
    os.mkfifo(outside / "manifest-fifo")
    with Editing(model):
        (model / "manifest.json").unlink()
        (model / "manifest.json").symlink_to(outside / "manifest-fifo")
    return [f"{model / 'manifest.json'} is a symbolic link (not staged by whisper-models); not followed"]


def manifest_fifo(model: Path, outside: Path) -> list[str]:
    with Editing(model):
        (model / "manifest.json").unlink()
        os.mkfifo(model / "manifest.json")
    return [f"{model / 'manifest.json'} is not a regular file; not read"]


CASES = {"added": added, "replaced": replaced, "writable": writable, "linked": linked, "unreadable": unreadable, "escaping": escaping,
         "damaged": damaged, "null-manifest": null_manifest, "manifest-link": manifest_link,
         "manifest-fifo": manifest_fifo}


def root_link(root: Path, outside: Path) -> list[str]:
    """A link in the model root itself, to a folder that looks like a model (jobs would load it)."""
    elsewhere = outside / "elsewhere"
    elsewhere.mkdir()
    for name in ("model.bin", "config.json", "tokenizer.json"):
        (elsewhere / name).write_bytes(b"not a model")
    files = {name: {"size": 11, "sha256": sha256(elsewhere / name)} for name in ("model.bin", "config.json", "tokenizer.json")}
    (elsewhere / "manifest.json").write_text(json.dumps({"files": files}))
    (root / "rootlink").symlink_to(elsewhere, target_is_directory=True)
    return [f"{root / 'rootlink'} is a symbolic link to {elsewhere}, not a staged folder (not followed): "
            "remove the link and stage the model"]


class Hostile:
    def __init__(self, base: Path, result: subprocess.CompletedProcess, expected: dict[str, list[str]],
                 touched: set[Path], watch_works: bool) -> None:
        self.base, self.result, self.expected, self.touched, self.watch_works = base, result, expected, touched, watch_works
        self.root = base / "models"


@pytest.fixture(scope="module")
def hostile(model_root, tmp_path_factory) -> Hostile:
    """One root: the untouched tiny.en and every hostile case beside it; one full verify (SHA-256 too)."""
    base = tmp_path_factory.mktemp("hostile-models")
    root, outside = base / "models", base / "outside"
    root.mkdir()
    outside.mkdir()
    copy_model(model_root / "tiny.en", root / "tiny.en")
    expected = {}
    for name, case in CASES.items():
        expected[name] = case(copy_model(root / "tiny.en", root / name), outside)
    expected["rootlink"] = root_link(root, outside)
    folders = [p for p in outside.rglob("*") if p.is_dir() and not p.is_symlink()]
    watch = Watch([outside, *folders])
    try:
        result = verify(root)
        touched = watch.touched()
        (outside / "sentinel").read_bytes()  # the watch does see a read
        watch_works = outside / "sentinel" in watch.touched()
    finally:
        watch.close()
    yield Hostile(base, result, expected, touched, watch_works)
    hand_back(base)


# ---- the tests ---------------------------------------------------------------------------------------------


def test_a_hostile_root_fails_with_one_line_per_problem_and_no_traceback(hostile):
    result = hostile.result
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "unexpected error" not in result.stderr, result.stderr
    names = set(hostile.expected)
    for line in result.stderr.splitlines():
        assert line.split(": ", 1)[0] in names, f"a line that names no model: {line!r}"


def test_the_untouched_model_beside_them_is_still_verified_in_full(hostile):
    [line] = hostile.result.stdout.splitlines()
    assert line.startswith("tiny.en: ok (5 files, ") and line.endswith(", sizes and SHA-256 match the manifest)"), line


@pytest.mark.parametrize("case", [*CASES, "rootlink"])
def test_each_problem_is_one_line_naming_the_model_and_the_file(hostile, case):
    lines = hostile.result.stderr.splitlines()
    mine = [line for line in lines if line.startswith(f"{case}: ")]
    for expected in hostile.expected[case]:
        assert f"{case}: {expected}" in mine, f"{expected!r} not in {mine}"
    reported = [line for line in mine if "problem(s) in" not in line]
    assert len(reported) == len(hostile.expected[case]), mine  # nothing else, nothing twice


def test_nothing_outside_the_model_folders_was_opened_or_read(hostile):
    assert hostile.watch_works, "the inotify watch did not see the test's own read"
    reached = {line.split(": ", 1)[0] for line in hostile.result.stderr.splitlines()}
    assert {"linked", "escaping", "manifest-link", "rootlink"} <= reached  # verify got to every case that points out
    assert hostile.touched == set(), f"verify opened files outside the model root: {sorted(hostile.touched)}"


@pytest.mark.parametrize("case", [*CASES, "rootlink"])
def test_each_case_alone_exits_1_with_its_lines(hostile, case):
    result = verify(hostile.root, "--sizes-only", case)
    assert result.returncode == 1, result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    for line in lines:
        assert line.startswith(f"{case}: "), line
    for expected in hostile.expected[case]:
        if "SHA-256" not in expected:
            assert f"{case}: {expected}" in lines, lines


def test_a_name_that_is_not_a_folder_in_the_root_is_refused(hostile):
    for name in ("../outside", "/etc", "..", "diarization"):
        result = verify(hostile.root, name)
        assert result.returncode == 1 and result.stderr == f"{name}: not staged in {hostile.root}\n", result.stderr


# ---- as an unprivileged user: folders and files that cannot be read ----------------------------------------------


@pytest.fixture
def shared_base():
    """A folder under /tmp that every user can traverse (pytest's tmp_path is root's alone)."""
    need(os.geteuid() == 0 and shutil.which("runuser") is not None, "needs root and runuser to act as `nobody`")
    base = Path(tempfile.mkdtemp(prefix="whisper-hostile-", dir="/tmp"))
    base.chmod(0o755)
    yield base
    hand_back(base)


def test_unreadable_folders_and_files_are_one_line_each_for_an_unprivileged_user(model_root, shared_base):
    root = shared_base / "models"
    root.mkdir()
    root.chmod(0o755)
    control = copy_model(model_root / "tiny.en", root / "tiny.en")
    closed = copy_model(control, root / "closed")
    closed.chmod(0o000)
    secret = copy_model(control, root / "secret")
    with Editing(secret):
        (secret / "private").mkdir()
        (secret / "private" / "x.bin").write_bytes(b"x")
        (secret / "private").chmod(0o700)
    locked = copy_model(control, root / "locked")
    (locked / "model.bin").chmod(0o600)
    pipelines = root / "diarization"
    pipelines.mkdir(mode=0o700)
    home = shared_base / "home"
    home.mkdir()
    shutil.chown(home, "nobody")

    result = verify(root, user="nobody", home=home)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    [ok] = result.stdout.splitlines()
    assert ok.startswith("tiny.en: ok (5 files, ") and ok.endswith(", sizes and SHA-256 match the manifest)"), ok
    lines = result.stderr.splitlines()
    assert f"closed: {closed} cannot be read (Permission denied): staged folders are 0555, readable by every user" in lines
    assert f"secret: private: not readable by every user (mode 0700; staged ones are 0555): {UNLOADABLE}" in lines
    assert f"locked: model.bin: not readable by every user (mode 0600; staged ones are 0444): {UNLOADABLE}" in lines
    assert f"diarization: {pipelines} cannot be read (Permission denied): it must be readable by every user" in lines
    for line in lines:
        assert line.split(": ", 1)[0] in ("closed", "secret", "locked", "diarization"), line
    assert not any("private/x.bin" in line for line in lines)  # unreadable: not guessed at
    # Named, the closed model is one line too, and the others are still checked.
    named = verify(root, "closed", "tiny.en", user="nobody", home=home)
    assert named.returncode == 1 and named.stdout.startswith("tiny.en: ok")
    assert named.stderr.splitlines() == [f"closed: {closed / 'manifest.json'} cannot be read: Permission denied"]
