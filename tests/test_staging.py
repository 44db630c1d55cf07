"""`whisper-models`: the catalogue, fetch through the real huggingface_hub code path against a local
hub (tests/hub_server.py, HF_ENDPOINT pointing at it; no network), resume, verify, checksums, the
gated token, remove, and a staged tree used read-only by an unprivileged user."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import BIN, ROOT, need
from hub_server import HubServer
from wer import word_error_rate
from whisper_hpc.staging import credentials
from whisper_hpc.staging.catalogue import COMMIT, CatalogueError, load_catalogue
from whisper_hpc.diarization import DiarizationError
from whisper_hpc.diarization.staged import check_pipeline

CT2_REPO = "test-org/faster-whisper-synthetic"
PIPELINE_REPO = "test-org/speaker-diarization-synthetic"
TOKEN = "hf_TestToken0123456789abcdefSECRET"
MB = 1 << 20


def payload(size: int, seed: str) -> bytes:
    """Deterministic incompressible bytes."""
    blocks, counter = [], 0
    while sum(map(len, blocks)) < size:
        blocks.append(hashlib.sha256(f"{seed}{counter}".encode()).digest() * 64)
        counter += 1
    return b"".join(blocks)[:size]


SYNTHETIC_CT2 = {
    "config.json": json.dumps({"alignment_heads": [[1, 0]], "lang_ids": [], "suppress_ids": []}).encode(),
    "model.bin": payload(3 * MB, "model"),
    "tokenizer.json": b'{"model": {"vocab": {}}}',
    "vocabulary.txt": b"<|endoftext|>\nhello\n",
    "README.md": b"# a synthetic CTranslate2 repository\n",
    ".gitattributes": b"*.bin filter=lfs diff=lfs merge=lfs -text\n",
}
SYNTHETIC_PT = payload(2 * MB, "checkpoint")
PIPELINE_CONFIG = b"""version: 4.0.0
pipeline:
  name: pyannote.audio.pipelines.SpeakerDiarization
  params:
    clustering: VBxClustering
    segmentation: $model/segmentation
    embedding: $model/embedding
    plda: $model/plda
params:
  clustering:
    threshold: 0.6
"""
SYNTHETIC_PIPELINE = {
    "config.yaml": PIPELINE_CONFIG,
    "segmentation/pytorch_model.bin": payload(MB, "segmentation"),
    "embedding/pytorch_model.bin": payload(MB, "embedding"),
    "plda/plda.npz": payload(100_000, "plda"),
    "plda/xvec_transform.npz": payload(50_000, "xvec"),
    "README.md": b"licence: CC-BY-4.0\n",
    ".gitattributes": b"*.bin filter=lfs\n",
}


# -- fixtures ---------------------------------------------------------------------------------------

@pytest.fixture
def hub():
    with HubServer() as server:
        server.ct2 = server.add_repo(CT2_REPO, SYNTHETIC_CT2)
        server.pipeline = server.add_repo(PIPELINE_REPO, SYNTHETIC_PIPELINE, gated_token=TOKEN)
        digest = hashlib.sha256(SYNTHETIC_PT).hexdigest()
        server.pt_path = f"/main/whisper/models/{digest}/synthetic.pt"
        server.add_file(server.pt_path, SYNTHETIC_PT)
        yield server


def write_catalogue(path: Path, hub: HubServer, *, pt_sha256: str | None = None, extra: str = "") -> Path:
    digest = pt_sha256 or hashlib.sha256(SYNTHETIC_PT).hexdigest()
    path.write_text(f"""
[[whisper]]
name = "synthetic"
aliases = ["synth"]
openai_url = "{hub.url}{hub.pt_path}"
openai_sha256 = "{digest}"
ctranslate2_repo = "{CT2_REPO}"
ctranslate2_revision = "main"

[[diarization]]
name = "pipeline"
repo = "{PIPELINE_REPO}"
revision = "main"
gated = true
{extra}""", encoding="utf-8")
    return path


@pytest.fixture
def catalogue(tmp_path, hub) -> Path:
    return write_catalogue(tmp_path / "catalogue.toml", hub)


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "models"


class Models:
    """Runs the installed `whisper-models` in a clean environment and keeps every output it printed."""

    def __init__(self, root: Path, catalogue: Path, hub: HubServer, home: Path, scratch: Path) -> None:
        self.root, self.catalogue, self.hub, self.home, self.scratch = root, catalogue, hub, home, scratch
        self.outputs: list[str] = []

    def environment(self, extra: dict | None = None) -> dict:
        env = {
            "PATH": f"{BIN}:/usr/bin:/bin",
            "HOME": str(self.home),
            "TMPDIR": str(self.scratch),
            "LANG": "C.UTF-8",
            "HF_ENDPOINT": self.hub.url,
            "WHISPER_HPC_CATALOGUE": str(self.catalogue),
        }
        env.update(extra or {})
        return env

    def command(self, *arguments: str) -> list[str]:
        return [str(BIN / "whisper-models"), "--root", str(self.root), *arguments]

    def __call__(self, *arguments: str, env: dict | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run(self.command(*arguments), env=self.environment(env), capture_output=True,
                                text=True, timeout=600)
        self.outputs += [result.stdout, result.stderr]
        return result

    def start(self, *arguments: str, env: dict | None = None) -> subprocess.Popen:
        return subprocess.Popen(self.command(*arguments), env=self.environment(env), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)


@pytest.fixture
def models(root, catalogue, hub, home, tmp_path) -> Models:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    return Models(root, catalogue, hub, home, scratch)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def files_below(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def wait_for(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


# -- the catalogue ----------------------------------------------------------------------------------

def test_catalogue_has_every_openai_whisper_model_with_its_official_address_and_checksum():
    whisper = pytest.importorskip("whisper")
    faster_whisper_utils = pytest.importorskip("faster_whisper.utils")
    catalogue = load_catalogue(ROOT / "models" / "catalogue.toml")
    for name, url in whisper._MODELS.items():
        entry = catalogue.whisper_entry(name)
        assert entry is not None, name
        assert entry.openai_url == url and url.startswith("https://")
        assert entry.openai_sha256 == url.split("/")[-2]
        assert entry.ctranslate2_repo == faster_whisper_utils._MODELS[name]
    assert {e.name for e in catalogue.whisper} >= {"tiny", "tiny.en", "large-v3", "large-v3-turbo"}
    assert catalogue.lookup("turbo").name == "large-v3-turbo" and catalogue.lookup("large").name == "large-v3"
    for entry in catalogue.whisper:
        assert COMMIT.match(entry.ctranslate2_revision) or entry.ctranslate2_revision == "main", entry
    community = catalogue.pipeline_entry("community-1")
    assert community is not None and community.gated and community.repo == "pyannote/speaker-diarization-community-1"


def test_committed_catalogue_is_what_the_generator_writes():
    pytest.importorskip("whisper")
    from whisper_hpc.staging.generate_catalogue import render, rewrite, whisper_entries

    text = (ROOT / "models" / "catalogue.toml").read_text(encoding="utf-8")
    assert rewrite(text, render(whisper_entries())) == text


@pytest.mark.parametrize("entry, complaint", [
    ('[[whisper]]\nname = "x"\nopenai_url = "http://example.org/a/x.pt"\nopenai_sha256 = "' + "0" * 64 +
     '"\nctranslate2_repo = "o/r"\nctranslate2_revision = "main"\n', "not an https://"),
    ('[[whisper]]\nname = "x"\nopenai_url = "https://example.org/a/x.pt"\nopenai_sha256 = "abc"\n'
     'ctranslate2_repo = "o/r"\nctranslate2_revision = "main"\n', "openai_sha256"),
    ('[[whisper]]\nname = "../x"\n', "name"),
    ('[[diarization]]\nname = "p"\nrepo = "no-slash"\nrevision = "main"\n', "repo"),
    ("[[whisper]\n", "not valid TOML"),
])
def test_a_malformed_catalogue_is_refused_naming_the_file(tmp_path, entry, complaint):
    path = tmp_path / "bad.toml"
    path.write_text(entry, encoding="utf-8")
    with pytest.raises(CatalogueError) as raised:
        load_catalogue(path)
    assert str(path) in str(raised.value) and complaint in str(raised.value)


# -- fetch through huggingface_hub ------------------------------------------------------------------

def test_fetch_stages_both_engines_through_huggingface_hub(models, hub, root, home):
    result = models("fetch", "synth")  # an alias of "synthetic"
    assert result.returncode == 0, result.stderr
    staged = root / "synthetic"
    wanted = ["config.json", "manifest.json", "model.bin", "openai-whisper.pt", "tokenizer.json", "vocabulary.txt"]
    assert sorted(p.name for p in staged.iterdir()) == wanted  # README and .gitattributes are not model files
    for name in ("config.json", "model.bin", "tokenizer.json", "vocabulary.txt"):
        assert (staged / name).read_bytes() == SYNTHETIC_CT2[name]
    assert (staged / "openai-whisper.pt").read_bytes() == SYNTHETIC_PT

    manifest = json.loads((staged / "manifest.json").read_text())
    for name, recorded in manifest["files"].items():
        data = (staged / name).read_bytes()
        assert recorded == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    hub_source, pt_source = manifest["sources"]
    assert hub_source["repo"] == CT2_REPO and hub_source["revision"] == "main"
    assert hub_source["commit"] == hub.ct2.commit  # the resolved commit is recorded: pin it from here
    assert pt_source["sha256"] == hashlib.sha256(SYNTHETIC_PT).hexdigest()

    # The real huggingface_hub code path: repo info, tree listing, then HEAD + GET per file at the commit.
    paths = {(r.method, r.path) for r in hub.requests}
    assert ("GET", f"/api/models/{CT2_REPO}/revision/main") in paths
    assert ("GET", f"/api/models/{CT2_REPO}/tree/{hub.ct2.commit}") in paths
    assert ("HEAD", f"/{CT2_REPO}/resolve/{hub.ct2.commit}/model.bin") in paths
    assert ("GET", f"/{CT2_REPO}/resolve/{hub.ct2.commit}/model.bin") in paths
    assert not any("README" in path for _, path in paths)

    assert mode(staged) == 0o555 and all(mode(p) == 0o444 for p in staged.iterdir())
    assert not (staged / ".cache").exists() and not (root / ".staging" / "synthetic").exists()
    assert list(home.iterdir()) == []  # nothing in HOME (no ~/.cache/huggingface)
    assert list(models.scratch.iterdir()) == []  # the per-run cache folder is gone

    listing = json.loads(models("list", "--json").stdout)
    entry = next(m for m in listing["models"] if m["name"] == "synthetic")
    assert entry["engines"] == ["faster-whisper", "openai-whisper"] and entry["variable"] == "synthetic"
    assert entry["size"] == sum(p.stat().st_size for p in staged.iterdir())
    assert "synthetic" not in [a["name"] for a in listing["available"]]
    again = models("fetch", "synthetic")
    assert again.returncode == 0 and "already staged" in again.stdout
    verified = models("verify", "synthetic")
    assert verified.returncode == 0 and "synthetic: ok" in verified.stdout


def test_fetch_options_revision_and_no_openai(models, hub, root):
    result = models("fetch", "synthetic", "--no-openai", "--revision", hub.ct2.commit)
    assert result.returncode == 0, result.stderr
    assert not (root / "synthetic" / "openai-whisper.pt").exists()
    manifest = json.loads((root / "synthetic" / "manifest.json").read_text())
    assert manifest["sources"][0]["revision"] == hub.ct2.commit and len(manifest["sources"]) == 1
    assert not hub.gets(hub.pt_path)
    assert not [r for r in hub.requests if r.path.endswith("/revision/main")]

    models("remove", "synthetic")
    missing = models("fetch", "synthetic", "--revision", "f" * 40)
    assert missing.returncode == 1 and "has no revision" in missing.stderr
    unknown = models("fetch", "no-such-model")
    assert unknown.returncode == 2 and "not in the catalogue" in unknown.stderr and "synthetic" in unknown.stderr
    both = models("fetch", "synthetic", "pipeline", "--revision", "main")
    assert both.returncode == 2 and "one NAME" in both.stderr


def test_a_dropped_hub_connection_resumes_with_range(models, hub, root):
    # huggingface_hub writes in 10 MiB blocks and resumes from the last whole block it wrote.
    big = payload(13 * MB, "a bigger model")
    hub.ct2 = hub.add_repo(CT2_REPO, {**SYNTHETIC_CT2, "model.bin": big})
    cut = 11 * MB + 12345
    hub.drop_once(hub.resolve_path(CT2_REPO, "model.bin", hub.ct2.commit), after=cut)
    result = models("fetch", "synthetic")
    assert result.returncode == 0, result.stderr
    first, resumed = hub.gets("/model.bin")
    assert first.range is None and resumed.range.startswith("bytes=")
    offset = int(resumed.range[len("bytes="):].rstrip("-"))
    assert 0 < offset <= cut
    assert (root / "synthetic" / "model.bin").read_bytes() == big


def test_a_dropped_checkpoint_download_resumes_with_range(models, hub, root):
    cut = 777_777
    hub.drop_once(hub.pt_path, after=cut)
    result = models("fetch", "synthetic")
    assert result.returncode == 0, result.stderr
    assert [g.range for g in hub.gets(hub.pt_path)] == [None, f"bytes={cut}-"]
    assert "resuming from byte 777777" in result.stdout
    assert (root / "synthetic" / "openai-whisper.pt").read_bytes() == SYNTHETIC_PT


def test_a_killed_fetch_resumes_where_it_stopped(models, hub, root):
    cut = 1_234_567
    fault = hub.stall(hub.pt_path, after=cut)
    process = models.start("fetch", "synthetic")
    partial = root / ".staging" / "synthetic" / "openai-whisper.pt.partial"
    try:
        wait_for(fault.reached.is_set, "the checkpoint download to start")
        wait_for(lambda: partial.is_file() and partial.stat().st_size == cut, "the first bytes on disk")
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.communicate()
        fault.release.set()
    assert not (root / "synthetic").exists()

    listing = json.loads(models("list", "--json").stdout)
    interrupted = next(a for a in listing["available"] if a["name"] == "synthetic")
    assert interrupted["partial_bytes"] >= cut + len(SYNTHETIC_CT2["model.bin"])
    assert "interrupted at" in models("list").stdout

    result = models("fetch", "synthetic")
    assert result.returncode == 0, result.stderr
    assert [g.range for g in hub.gets(hub.pt_path)] == [None, f"bytes={cut}-"]
    assert len(hub.gets("/model.bin")) == 1  # the finished hub files were kept, not fetched again
    assert (root / "synthetic" / "openai-whisper.pt").read_bytes() == SYNTHETIC_PT
    assert models("verify", "synthetic").returncode == 0


# -- checksums and verify ---------------------------------------------------------------------------

def test_a_wrong_checkpoint_checksum_is_refused(tmp_path, models, hub, root):
    wrong = hashlib.sha256(b"something else").hexdigest()
    models.catalogue = write_catalogue(tmp_path / "wrong.toml", hub, pt_sha256=wrong)
    result = models("fetch", "synthetic")
    assert result.returncode == 1
    assert "SHA-256" in result.stderr and wrong in result.stderr and hub.pt_path in result.stderr
    assert not (root / "synthetic").exists()
    assert not list(root.rglob("*.pt")) and not list(root.rglob("*.partial"))  # the bad bytes are deleted
    assert "synthetic" not in [m["name"] for m in json.loads(models("list", "--json").stdout)["models"]]


def test_a_hub_file_that_differs_from_the_listing_is_refused(models, hub, root):
    forged = bytearray(SYNTHETIC_CT2["model.bin"])
    forged[len(forged) // 2] ^= 0xFF
    hub.tamper(CT2_REPO, "model.bin", bytes(forged))
    result = models("fetch", "synthetic")
    assert result.returncode == 1
    assert "model.bin: SHA-256 differs" in result.stderr and "refused" in result.stderr
    assert not (root / "synthetic").exists()
    assert not (root / ".staging" / "synthetic" / "model.bin").exists()
    assert not hub.gets(hub.pt_path)  # nothing more is fetched for a refused model


def test_verify_names_corrupt_missing_and_unexpected_files(models, root):
    assert models("fetch", "synthetic").returncode == 0
    staged = root / "synthetic"
    staged.chmod(0o755)
    for path in staged.iterdir():
        path.chmod(0o644)
    flipped = bytearray((staged / "model.bin").read_bytes())
    flipped[100] ^= 1
    (staged / "model.bin").write_bytes(bytes(flipped))
    (staged / "tokenizer.json").write_bytes(b"{}")
    (staged / "vocabulary.txt").unlink()
    (staged / "extra.txt").write_text("added later")
    (staged / "config.json").chmod(0o666)

    result = models("verify")
    assert result.returncode == 1
    assert "model.bin: SHA-256 differs from the manifest" in result.stderr
    assert "tokenizer.json: size 2 bytes" in result.stderr
    assert "vocabulary.txt: missing" in result.stderr
    assert "extra.txt: not in the manifest" in result.stderr
    assert "config.json: writable by group or others" in result.stderr
    assert "openai-whisper.pt" not in result.stderr

    quick = models("verify", "synthetic", "--sizes-only")
    assert quick.returncode == 1 and "vocabulary.txt: missing" in quick.stderr and "model.bin" not in quick.stderr

    assert models("remove", "synthetic").returncode == 0
    assert models("fetch", "synthetic").returncode == 0
    assert models("verify").returncode == 0
    assert models("verify", "nothing-here").returncode == 1


# -- the gated pipeline and its token ---------------------------------------------------------------

def test_gated_pipeline_token_is_used_and_never_shown_or_written(tmp_path, models, hub, root, home):
    hub.echo_credentials = True  # even a server that repeats the token must not make us print it
    debug = {"HF_HUB_VERBOSITY": "debug", "HF_DEBUG": "1"}

    missing = models("fetch", "pipeline")
    assert missing.returncode == 1 and "gated" in missing.stderr and "HF_TOKEN" in missing.stderr

    wrong = "hf_WrongToken9876543210zyxwvuSECRET"
    refused = models("fetch", "pipeline", env={"HF_TOKEN": wrong, **debug})
    assert refused.returncode == 1 and "has no access" in refused.stderr
    assert any(r.authorization == f"Bearer {wrong}" for r in hub.requests)  # the server did echo it
    assert wrong not in refused.stdout + refused.stderr

    loose = tmp_path / "loose-token"
    loose.write_text(TOKEN + "\n")
    loose.chmod(0o644)
    unsafe = models("fetch", "pipeline", "--token-file", str(loose))
    assert unsafe.returncode == 2 and "chmod 600" in unsafe.stderr

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    hub.requests.clear()
    result = models("fetch", "synthetic", "pipeline", "--token-file", str(token_file), env=debug)
    assert result.returncode == 0, result.stderr
    staged = root / "diarization" / "pipeline"
    assert sorted(p.relative_to(staged).as_posix() for p in files_below(staged)) == sorted(
        ["README.md", "config.yaml", "embedding/pytorch_model.bin", "manifest.json", "plda/plda.npz",
         "plda/xvec_transform.npz", "segmentation/pytorch_model.bin"])
    assert all(mode(p) == 0o444 for p in files_below(staged)) and mode(staged / "plda") == 0o555
    check_pipeline(staged, downloaded=True)
    pipeline_requests = [r for r in hub.requests if PIPELINE_REPO in r.path and "/resolve/" in r.path]
    assert pipeline_requests and all(r.authorization == f"Bearer {TOKEN}" for r in pipeline_requests)
    assert all(r.authorization is None for r in hub.requests if CT2_REPO in r.path)  # public repo: no token
    assert models("verify", "pipeline").returncode == 0

    # The token never appears: outputs (debug logging on), the model root, HOME, the scratch folder.
    for secret in (TOKEN, wrong):
        for text in models.outputs:
            assert secret not in text
        for folder in (root, home, models.scratch):
            for path in files_below(folder):
                assert secret.encode() not in path.read_bytes(), path


def test_pipeline_config_must_stay_inside_its_folder(tmp_path):
    folder = tmp_path / "pipeline"
    for relative, data in SYNTHETIC_PIPELINE.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(data)
    check_pipeline(folder, downloaded=True)
    (folder / "config.yaml").write_bytes(PIPELINE_CONFIG.replace(b"$model/embedding", b"pyannote/wespeaker-voxceleb-resnet34-LM"))
    with pytest.raises(DiarizationError, match="embedding names the Hugging Face hub id"):
        check_pipeline(folder, downloaded=True)
    (folder / "config.yaml").write_bytes(PIPELINE_CONFIG.replace(b"$model/embedding", str(folder / "embedding").encode()))
    with pytest.raises(DiarizationError, match="embedding = .* is outside the pipeline folder"):
        check_pipeline(folder, downloaded=True)
    check_pipeline(folder)  # a site's own pipeline may name absolute paths
    (folder / "config.yaml").write_bytes(PIPELINE_CONFIG + b"preprocessors:\n  audio:\n    name: os.system\n    params: {command: id}\n")
    with pytest.raises(DiarizationError, match="os.system"):
        check_pipeline(folder, downloaded=True)
    (folder / "config.yaml").write_bytes(PIPELINE_CONFIG.replace(b"$model/plda", b"$model/missing"))
    with pytest.raises(DiarizationError, match="plda is missing \\(missing/"):
        check_pipeline(folder, downloaded=True)


def test_token_is_hidden_from_repr_environment_and_log_records(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    token = credentials.read_token(None)
    assert token.reveal() == TOKEN and TOKEN not in repr(token) + str(token) + f"{token}"
    assert "HF_TOKEN" not in os.environ  # no child process inherits it
    previous = logging.getLogRecordFactory()
    credentials.scrub_all_logging()
    try:
        with caplog.at_level(logging.WARNING):
            logging.getLogger("huggingface_hub.test").warning("sent Authorization: Bearer %s", TOKEN)
            try:
                raise RuntimeError(f"server said {TOKEN}")
            except RuntimeError:
                logging.getLogger("httpx2").exception("failed")
    finally:
        logging.setLogRecordFactory(previous)
        logging.captureWarnings(False)
    assert len(caplog.records) == 2 and TOKEN not in caplog.text and credentials.HIDDEN in caplog.text

    directory = tmp_path / "not-a-file"
    directory.mkdir()
    with pytest.raises(credentials.TokenError, match="not a regular file"):
        credentials.read_token(directory)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    with pytest.raises(credentials.TokenError, match="one token"):
        credentials.read_token(empty)


# -- remove -----------------------------------------------------------------------------------------

def test_remove_restores_write_permission_and_stays_inside_the_root(tmp_path, models, root):
    assert models("fetch", "synthetic", "--no-openai").returncode == 0
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    (root / "evil").symlink_to(outside, target_is_directory=True)

    for name in ("../outside", "diarization", ".staging", "evil", "never-staged"):
        result = models("remove", name)
        assert result.returncode in (1, 2) and name in result.stderr
    assert (outside / "precious").read_text() == "keep"

    removed = models("remove", "synthetic")
    assert removed.returncode == 0, removed.stderr
    assert not (root / "synthetic").exists() and not list((root / ".staging").glob("**/model.bin"))
    assert (root / "diarization").is_dir()


def test_convert_works_on_staged_models_only_and_fails_cleanly(tmp_path, models, root):
    assert models("fetch", "synthetic", "--no-openai").returncode == 0
    result = models("convert", "synthetic")  # the synthetic model.bin is not a CTranslate2 file
    assert result.returncode == 1
    assert "cannot convert synthetic" in result.stderr and "not a CTranslate2 model file" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in (root / "synthetic").iterdir()) == [
        "config.json", "manifest.json", "model.bin", "tokenizer.json", "vocabulary.txt"]
    assert models("verify", "synthetic").returncode == 0  # still read-only and unchanged

    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(root / "synthetic", elsewhere)
    outside = models("convert", str(elsewhere))
    assert outside.returncode == 1 and "not in the model root" in outside.stderr
    assert not (elsewhere / "openai-whisper.pt").exists()


# -- a staged tree, read-only, for an unprivileged user -----------------------------------------------

@pytest.fixture(scope="module")
def real_staged_root(model_root):
    """One real fetch: the tiny.en CTranslate2 files served by the local hub, the openai-whisper
    checkpoint converted from them (`fetch --convert`), in a folder every user can traverse."""
    need(os.geteuid() == 0 and shutil.which("runuser") is not None, "needs root and runuser to act as an unprivileged user")
    base = Path(tempfile.mkdtemp(prefix="whisper-models-ro-", dir="/tmp"))
    base.chmod(0o755)
    try:
        with HubServer() as server:
            source = model_root / "tiny.en"
            server.add_repo("Systran/faster-whisper-tiny.en",
                            {name: source / name for name in ("config.json", "model.bin", "tokenizer.json", "vocabulary.txt")})
            catalogue = base / "catalogue.toml"
            catalogue.write_text(f"""[[whisper]]
name = "tiny.en"
openai_url = "{server.url}/unused/{'0' * 64}/tiny.en.pt"
openai_sha256 = "{'0' * 64}"
ctranslate2_repo = "Systran/faster-whisper-tiny.en"
ctranslate2_revision = "main"
""")
            home = base / "admin-home"
            home.mkdir()
            env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", "TMPDIR": str(base),
                   "HF_ENDPOINT": server.url, "WHISPER_HPC_CATALOGUE": str(catalogue)}
            root = base / "models"
            result = subprocess.run([str(BIN / "whisper-models"), "--root", str(root), "fetch", "tiny.en", "--convert"],
                                    env=env, capture_output=True, text=True, timeout=900)
            assert result.returncode == 0, result.stderr
            assert not server.gets("/tiny.en.pt")
        yield root
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(base)], check=False)
        shutil.rmtree(base, ignore_errors=True)


def run_as_nobody(command: list[str], env: dict, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "nobody", "--", "env", "-i", *[f"{k}={v}" for k, v in env.items()], *command],
                          capture_output=True, text=True, timeout=900, cwd=cwd or "/")


def nobody_workspace(root: Path, name: str) -> tuple[Path, dict]:
    work = root.parent / name
    for sub in ("home", "tmp", "out"):
        (work / sub).mkdir(parents=True)
    shutil.chown(work, "nobody")
    for sub in work.iterdir():
        shutil.chown(sub, "nobody")
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(work / "home"), "TMPDIR": str(work / "tmp"),
           "LANG": "C.UTF-8", "WHISPER_MODELS": str(root), "SLURM_CPUS_PER_TASK": "2"}
    return work, env


def program_for_nobody(program: str, module: str) -> list[str]:
    """An installed program (`program`, whose code is `python -m module`), as an unprivileged user
    can start it.

    A venv made from an interpreter under /root (pyenv) cannot be executed by other users; then
    the same site-packages are loaded into the system's Python of the same version."""
    import whisper_hpc

    code = Path(whisper_hpc.__file__)
    readable = run_as_nobody(["test", "-r", str(code)], {"PATH": "/usr/bin:/bin"}).returncode == 0
    need(readable, f"{code} is not readable by other users: clone the project where every user can read it")
    interpreter = Path(sys.executable).resolve()
    if run_as_nobody(["test", "-x", str(interpreter)], {"PATH": "/usr/bin:/bin"}).returncode == 0:
        return [str(BIN / program)]
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    need(system.is_file(), f"{interpreter} is not executable by other users and there is no {system}")
    site_packages = next(p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix))
    loader = (f"import runpy, site, sys; site.addsitedir({site_packages!r}); sys.argv[0] = {program!r}; "
              f"runpy.run_module({module!r}, run_name='__main__')")
    return [str(system), "-c", loader]


def snapshot(root: Path) -> list[tuple[str, int, int]]:
    return [(p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))]


@pytest.mark.system
@pytest.mark.engine
@pytest.mark.parametrize("backend", ["faster-whisper", "openai-whisper"])
def test_staged_tree_works_read_only_for_an_unprivileged_user(real_staged_root, shared_data, references, backend):
    root = real_staged_root
    before = snapshot(root)
    work, env = nobody_workspace(root, f"nobody-{backend}")
    denied = run_as_nobody(["touch", str(root / "tiny.en" / "intruder")], env)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr

    result = run_as_nobody([*program_for_nobody("whisper-hpc", "whisper_hpc"), str(shared_data / "jfk.flac"), "--model", "tiny.en",
                            "--backend", backend, "-o", str(work / "out")], env)
    assert result.returncode == 0, result.stderr
    transcript = json.loads((work / "out" / "jfk.json").read_text())
    assert word_error_rate(references["jfk.flac"], transcript["text"]) <= 0.10
    assert snapshot(root) == before  # nothing written into the model root
    assert list((work / "tmp").iterdir()) == []  # no caches left behind


@pytest.mark.system
@pytest.mark.engine
def test_staged_tree_works_read_only_through_the_wrapper_and_image(real_staged_root, shared_data, references):
    wrapper = ROOT / "wrapper" / "singularity_wrapper"
    image = ROOT / "build" / "images" / "whisper.sif"
    need(wrapper.is_file() and image.is_file(), f"the wrapper ({wrapper}) and the image ({image}) are not built")
    root = real_staged_root
    before = snapshot(root)
    work, env = nobody_workspace(root, "nobody-wrapper")
    site = work / "site.toml"  # the wrapper binds the data areas, the model root (read-only) and the cwd
    site.write_text(f"[wrapper]\ndata_areas = [{json.dumps(str(work))}, {json.dumps(str(shared_data))}]\n"
                    "native_fallback = false\n")
    env.update({"CONTAINER_IMAGE": str(image), "WHISPER_HPC_SITE": str(site),
                "PATH": f"{ROOT / 'wrapper'}:/usr/local/bin:/usr/bin:/bin"})
    result = run_as_nobody([str(wrapper), "--verbose", "run", str(shared_data / "jfk.flac"), "--model", "tiny.en",
                            "-o", str(work / "out")], env, cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "apptainer run" in result.stderr and f"--bind {root}:/models:ro" in result.stderr  # the image, not natively
    transcript = json.loads((work / "out" / "jfk.json").read_text())
    assert word_error_rate(references["jfk.flac"], transcript["text"]) <= 0.10
    assert snapshot(root) == before
