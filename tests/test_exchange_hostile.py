"""`whisper-models import` against hostile and broken sources, with real files and the real command.

A real Hugging Face Whisper (tiny.en exported by `whisper-models export --format transformers`) is
served by the local hub (tests/hub_server.py, HF_ENDPOINT pointing at it) and imported through
huggingface_hub: checksummed, resumed after a killed fetch and a dropped connection, staged with
its repo and commit in the manifest, then used by `whisper-hpc` offline. Everything else runs
inside a network namespace without network (`unshare -n`): a BERT and a GPT-2 dressed up with a
Whisper tokenizer and feature extractor, remote code (auto_map, modeling_*.py), truncated and
mismatched weights, an existing name without and with --overwrite, MindSpeed-MM checkpoints that
do not fit their --config or come without one, and a hub repository that does not exist. Each is
refused with one line naming the file or repo and what is wrong, no traceback, nothing staged and
nothing but locks and empty folders left in ROOT/.staging; HOME and TMPDIR stay empty.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import BIN, need
from test_staging import wait_for

pytestmark = [pytest.mark.system, pytest.mark.engine]  # real weights, converters and speech
from hub_server import HubServer

NAME = "imported"
REPO = "test-org/whisper-tiny-en-exported"
MB = 1 << 20
JFK_WORDS = "ask not what your country can do for you"
BASE_DIMENSIONS = {  # openai-whisper's `base`: another Whisper than tiny.en's 384-wide, 4-layer one
    "d_model": 512, "encoder_attention_heads": 8, "decoder_attention_heads": 8, "encoder_layers": 6,
    "decoder_layers": 6, "num_hidden_layers": 6, "encoder_ffn_dim": 2048, "decoder_ffn_dim": 2048, "vocab_size": 51865,
}

# Run by the venv's python in the module fixture: real, tiny, random non-Whisper models and broken
# copies of the exported Whisper, made offline with transformers' own classes.
BUILD_HOSTILE = r"""
import json, shutil, sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from whisper_hpc.staging.hf_format import import_transformers

transformers = import_transformers()
hf, mindspeed, out = (Path(p) for p in sys.argv[1:4])
base_dimensions = json.loads(sys.argv[4])


def dress(folder):  # only the architecture is wrong: the Whisper tokenizer and feature extractor beside it
    for name in ("tokenizer.json", "preprocessor_config.json"):
        shutil.copyfile(hf / name, folder / name)


torch.manual_seed(0)
transformers.BertModel(transformers.BertConfig(
    hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, vocab_size=99,
)).save_pretrained(out / "bert")
dress(out / "bert")
transformers.GPT2LMHeadModel(transformers.GPT2Config(
    n_embd=32, n_layer=1, n_head=2, vocab_size=99, n_positions=64,
)).save_pretrained(out / "gpt2")
dress(out / "gpt2")

# A Whisper config over BERT's weights: the config lies about what the weights are.
lies = out / "whisper-config-bert-weights"
lies.mkdir()
for name in ("config.json", "generation_config.json", "tokenizer.json", "preprocessor_config.json"):
    shutil.copyfile(hf / name, lies / name)
shutil.copyfile(out / "bert" / "model.safetensors", lies / "model.safetensors")

# The exported Whisper with one tensor left out: transformers would fill it with fresh values.
state = load_file(str(hf / "model.safetensors"))
del state["model.decoder.layer_norm.weight"]
missing = out / "missing-tensor"
shutil.copytree(hf, missing, ignore=shutil.ignore_patterns("model.safetensors"))
save_file(state, str(missing / "model.safetensors"), metadata={"format": "pt"})

# MindSpeed-MM: one attention projection cut to half its rows; and a config with base's dimensions.
checkpoint = torch.load(mindspeed / "model_optim_rng.pt", map_location="cpu", weights_only=True)
cut = "model.encoder.layers.0.self_attn.proj_q.weight"
assert cut in checkpoint["model"], sorted(checkpoint["model"])[:8]
checkpoint["model"][cut] = checkpoint["model"][cut][: checkpoint["model"][cut].shape[0] // 2].clone()
(out / "mindspeed-cut").mkdir()
torch.save(checkpoint, out / "mindspeed-cut" / "model_optim_rng.pt")
base_config = out / "base-config"
shutil.copytree(mindspeed, base_config, ignore=shutil.ignore_patterns("*.pt"))
config = json.loads((base_config / "config.json").read_text())
config.update(base_dimensions)
(base_config / "config.json").write_text(json.dumps(config, indent=2))
"""


# -- helpers ----------------------------------------------------------------------------------------

def unshare_prefix() -> list[str]:
    prefix = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
    probe = subprocess.run([*prefix, "true"], capture_output=True)
    need(probe.returncode == 0, f"cannot create a network namespace here ({probe.stderr.decode().strip()})")
    return prefix


def clean_environment(home: Path, scratch: Path, extra: dict | None = None) -> dict:
    env = {
        "PATH": f"{BIN}:/usr/bin:/bin:/usr/sbin:/sbin",
        "HOME": str(home),
        "TMPDIR": str(scratch),
        "LANG": "C.UTF-8",
        "SLURM_CPUS_PER_TASK": "2",
    }
    env.update(extra or {})
    return env


class Commands:
    """The installed `whisper-models` and `whisper-hpc`, each run in a clean environment (HOME and
    TMPDIR of its own in tmp_path), offline in a network namespace unless told otherwise; after
    every run HOME and TMPDIR must be empty again."""

    def __init__(self, root: Path, home: Path, scratch: Path, *, offline: bool = True, env: dict | None = None) -> None:
        self.root, self.home, self.scratch = root, home, scratch
        self.wrap = unshare_prefix() if offline else []
        self.env = env or {}

    def _run(self, command: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run([*self.wrap, *command], env=clean_environment(self.home, self.scratch, self.env),
                                capture_output=True, text=True, timeout=600, cwd=cwd or self.home.parent)
        self.assert_clean()
        return result

    def assert_clean(self) -> None:
        assert list(self.home.rglob("*")) == [], "whisper-models wrote into HOME"
        assert list(self.scratch.rglob("*")) == [], "whisper-models left files in TMPDIR"

    def models_command(self, *arguments: str) -> list[str]:
        return [str(BIN / "whisper-models"), "--root", str(self.root), *arguments]

    def models(self, *arguments: str) -> subprocess.CompletedProcess:
        return self._run(self.models_command(*arguments))

    def start_models(self, *arguments: str) -> subprocess.Popen:
        return subprocess.Popen([*self.wrap, *self.models_command(*arguments)],
                                env=clean_environment(self.home, self.scratch, self.env),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def transcribe(self, audio: Path, name: str, output: Path) -> str:
        """`whisper-hpc AUDIO --model NAME` offline (always: the model must not need the hub); the text."""
        command = [*unshare_prefix(), str(BIN / "whisper-hpc"), str(audio), "--model", name, "-o", str(output)]
        result = subprocess.run(command, env=clean_environment(self.home, self.scratch, {"WHISPER_MODELS": str(self.root)}),
                                capture_output=True, text=True, timeout=600, cwd=self.home.parent)
        self.assert_clean()
        assert result.returncode == 0, result.stderr
        assert f"faster-whisper {name}" in result.stderr
        return (output / f"{audio.stem}.txt").read_text(encoding="utf-8")


@pytest.fixture
def commands(tmp_path) -> Commands:
    home, scratch = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    scratch.mkdir()
    return Commands(tmp_path / "models", home, scratch)


def words_of(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def hashes(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file below `folder`: its SHA-256 and mode (byte for byte, permissions too)."""
    return {p.relative_to(folder).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def staging_leftovers(root: Path) -> list[str]:
    """What ROOT/.staging holds besides locks and empty folders."""
    staging = root / ".staging"
    if not staging.exists():
        return []
    return sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*")
                  if (p.is_file() or p.is_symlink()) and not (p.parent.name == ".locks" and p.suffix == ".lock"))


def assert_refused(result: subprocess.CompletedProcess, root: Path, name: str, *expected: str, status: int = 1) -> str:
    """Refused with `status`, one line on stderr naming what is wrong, no traceback, nothing staged."""
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("whisper-models: "), line
    for fragment in expected:
        assert fragment in line, (fragment, line)
    assert not (root / name).exists() and not (root / name).is_symlink(), f"{name} was staged"
    assert staging_leftovers(root) == [], staging_leftovers(root)
    return line


# -- the real files, built once ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(model_root, tmp_path_factory) -> dict[str, Path]:
    """tiny.en exported by the real command, as transformers and as MindSpeed-MM (both at once,
    offline), and the hostile folders made from them."""
    place = tmp_path_factory.mktemp("exported")
    home, scratch = place / "home", place / "tmp"
    home.mkdir()
    scratch.mkdir()
    wrap = unshare_prefix()
    env = clean_environment(home, scratch)
    folders = {"transformers": place / "transformers", "mindspeed": place / "mindspeed"}
    running = [(fmt, subprocess.Popen([*wrap, str(BIN / "whisper-models"), "--root", str(model_root), "export", "tiny.en",
                                       "--format", fmt, "--output", str(folder)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
               for fmt, folder in folders.items()]
    for fmt, process in running:
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, (fmt, stderr)
        assert f"tiny.en: exported as {fmt}" in stdout
    assert list(home.rglob("*")) == [] and list(scratch.rglob("*")) == []
    assert (folders["transformers"] / "model.safetensors").is_file()
    assert (folders["mindspeed"] / "model_optim_rng.pt").is_file()

    hostile = place / "hostile"
    hostile.mkdir()
    build = subprocess.run([*wrap, str(BIN / "python"), "-c", BUILD_HOSTILE, str(folders["transformers"]),
                            str(folders["mindspeed"]), str(hostile), json.dumps(BASE_DIMENSIONS)],
                           env=clean_environment(home, scratch), capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    shutil.rmtree(scratch)  # torch may leave its own folders there; not the command under test
    scratch.mkdir()

    transformers = folders["transformers"]
    auto_map = hostile / "auto-map"
    shutil.copytree(transformers, auto_map)
    config = json.loads((auto_map / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSpeechSeq2Seq": "modeling_evil.EvilWhisper"}
    (auto_map / "config.json").write_text(json.dumps(config, indent=2))

    modeling = hostile / "modeling-file"
    shutil.copytree(transformers, modeling)
    (modeling / "modeling_whisper_evil.py").write_text(  # leaves a mark beside itself if anything ever runs it
        "from pathlib import Path\nPath(__file__).with_name('ran').write_text('remote code ran')\n")

    truncated = hostile / "truncated"
    shutil.copytree(transformers, truncated)
    weights = truncated / "model.safetensors"
    weights.chmod(0o644)
    with open(weights, "r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)

    return {**folders, **{p.name: p for p in hostile.iterdir()}}


# -- 1. from the (local) hub, resumed, then transcribing --------------------------------------------

def hub_repo_files(folder: Path) -> dict[str, bytes | Path]:
    files: dict[str, bytes | Path] = {p.name: p for p in sorted(folder.iterdir()) if p.is_file()}
    files["README.md"] = b"---\nlicense: mit\n---\n# tiny.en, exported by whisper-models\n"
    files[".gitattributes"] = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    return files


@pytest.fixture
def hub(exported):
    with HubServer() as server:
        server.repo = server.add_repo(REPO, hub_repo_files(exported["transformers"]))
        yield server


@pytest.fixture
def online(tmp_path, hub) -> Commands:
    """whisper-models with HF_ENDPOINT at the local hub (not in a namespace: it must reach 127.0.0.1)."""
    home, scratch = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    scratch.mkdir()
    return Commands(tmp_path / "models", home, scratch, offline=False, env={"HF_ENDPOINT": hub.url})


def test_import_from_the_hub_resumes_checks_and_transcribes(online, hub, exported, shared_data, tmp_path):
    root = online.root
    commit = hub.repo.commit
    weights_url = hub.resolve_path(REPO, "model.safetensors", commit)
    download = root / ".staging" / ".sources" / NAME
    small = [p for p in hub.repo.files if p != "model.safetensors"]

    # Killed while the weights come in: nothing is staged, the finished small files stay for the next run.
    fault = hub.stall(weights_url, after=3 * MB + 4321)
    process = online.start_models("import", REPO, "--name", NAME)
    try:
        wait_for(fault.reached.is_set, "the weights download to start")
        # Each finished file and huggingface_hub's record of it (written right after the file).
        records = download / ".cache" / "huggingface" / "download"
        wait_for(lambda: all((download / p).is_file() and (records / f"{p}.metadata").is_file()
                             and (records / f"{p}.metadata").stat().st_size > 0 for p in small), "the small files on disk")
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.communicate()
        fault.release.set()
    assert not (root / NAME).exists()
    assert not (download / "model.safetensors").exists()
    assert list(online.home.rglob("*")) == []
    # A SIGKILLed process cannot remove its per-run cache folder; that folder is all it left.
    assert [p.name.startswith("whisper-hpc-") for p in online.scratch.iterdir()] == [True]
    shutil.rmtree(online.scratch)
    online.scratch.mkdir()

    # Run again, and the connection drops once more mid-way: resumed with Range within the run.
    cut = 11 * MB + 12345  # huggingface_hub writes 10 MiB blocks and resumes from the last whole one
    hub.drop_once(weights_url, after=cut)
    result = online.models("import", REPO, "--name", NAME)
    assert result.returncode == 0, result.stderr
    assert f"{REPO} at main from {hub.url}" in result.stdout and f"commit {commit}" in result.stdout
    assert f"{NAME}: staged in {root / NAME}" in result.stdout

    for path in small:  # complete before the kill: not asked for again
        assert len(hub.gets(f"/{path}")) == 1, (path, hub.gets(f"/{path}"))
    weight_gets = hub.gets("/model.safetensors")
    assert len(weight_gets) == 3 and weight_gets[0].range is None  # stalled, started again, resumed
    resumed = weight_gets[-1].range
    assert resumed is not None and resumed.startswith("bytes=")
    assert 0 < int(resumed[len("bytes="):].rstrip("-")) <= cut
    assert ("GET", f"/api/models/{REPO}/revision/main") in {(r.method, r.path) for r in hub.requests}
    assert not any(r.authorization for r in hub.requests)  # a public repo: no token sent

    staged = root / NAME
    manifest = json.loads((staged / "manifest.json").read_text())
    source = manifest["sources"][0]
    assert source["kind"] == "huggingface" and source["repo"] == REPO and source["revision"] == "main"
    assert source["commit"] == commit and source["endpoint"] == hub.url
    assert f"{REPO}@{commit[:12]}" in manifest["origin"]
    assert manifest["sources"][1]["kind"] == "converted" and manifest["sources"][1]["quantization"] == "int8"
    for name, recorded in manifest["files"].items():
        data = (staged / name).read_bytes()
        assert recorded == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}, name
    assert {"model.bin", "config.json", "tokenizer.json", "preprocessor_config.json", "openai-whisper.pt"} <= set(manifest["files"])
    assert not download.exists()  # the hub download is gone once the import succeeded
    assert staging_leftovers(root) == []
    verified = online.models("verify", NAME)
    assert verified.returncode == 0 and f"{NAME}: ok" in verified.stdout, verified.stdout + verified.stderr

    text = online.transcribe(shared_data / "jfk.flac", NAME, tmp_path / "out")
    assert JFK_WORDS in words_of(text), text


def test_an_abandoned_import_download_is_listed_and_removed(online, hub, tmp_path):
    """A killed import keeps its hub download for the next one to resume; `list` shows it with its
    size, and `remove NAME` discards it (not while an import of that name runs)."""
    root = online.root
    download = root / ".staging" / ".sources" / NAME
    fault = hub.stall(hub.resolve_path(REPO, "model.safetensors", hub.repo.commit), after=2 * MB)
    process = online.start_models("import", REPO, "--name", NAME)
    try:
        wait_for(fault.reached.is_set, "the weights download to start")
        wait_for(lambda: (download / "config.json").is_file(), "a finished small file")
        (tmp_path / "busy-tmp").mkdir()
        busy = subprocess.run(online.models_command("remove", NAME), capture_output=True, text=True, timeout=60,
                              env=clean_environment(online.home, tmp_path / "busy-tmp", online.env))
        assert busy.returncode == 1 and "staging" in busy.stderr and download.is_dir(), busy.stderr
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.communicate()
        fault.release.set()
    assert [p.name.startswith("whisper-hpc-") for p in online.scratch.iterdir()] == [True]  # a kill's only trace
    shutil.rmtree(online.scratch)
    online.scratch.mkdir()
    listed = online.models("list")
    assert "left by interrupted imports" in listed.stdout and str(download) in listed.stdout, listed.stdout
    leftovers = {entry["name"]: entry for entry in json.loads(online.models("list", "--json").stdout)["interrupted_imports"]}
    assert set(leftovers) <= {NAME, f"{NAME}.prepared"}  # the download, and what the kill left half-made
    assert leftovers[NAME]["size"] >= (download / "config.json").stat().st_size
    removed = online.models("remove", NAME)
    assert removed.returncode == 0 and str(download) in removed.stdout, removed.stderr
    assert not download.exists() and not (root / NAME).exists()
    assert "interrupted imports" not in online.models("list").stdout


def test_a_hub_file_that_differs_from_the_listing_is_refused(online, hub):
    forged = bytearray((hub.repo.files["tokenizer.json"].source).read_bytes())
    forged[len(forged) // 2] ^= 0x01
    hub.tamper(REPO, "tokenizer.json", bytes(forged))
    result = online.models("import", REPO, "--name", NAME)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and REPO in lines[0] and "tokenizer.json: git object id differs" in lines[0], result.stderr
    assert not (online.root / NAME).exists()
    assert not (online.root / ".staging" / ".sources" / NAME / "tokenizer.json").exists()  # the bad bytes are deleted


def test_a_hub_repo_that_does_not_exist_is_refused(online, hub):
    result = online.models("import", "test-org/no-such-whisper", "--name", NAME)
    assert_refused(result, online.root, NAME, "test-org/no-such-whisper", f"is not on {hub.url}")
    assert not hub.gets("/resolve/")


# -- 2. refused, offline ----------------------------------------------------------------------------

# id: (SOURCE and options, with {name} for a folder of `exported`; --name; what the one line says; exit status)
REFUSALS = {
    "bert": (["{bert}"], NAME, ["{bert}", "is a 'bert' model (BertModel), not a Whisper encoder-decoder"], 1),
    "gpt2": (["{gpt2}"], NAME, ["{gpt2}", "is a 'gpt2' model (GPT2LMHeadModel), not a Whisper encoder-decoder"], 1),
    "auto_map": (["{auto-map}"], NAME, ["{auto-map}", "needs remote code", "never runs code that comes with a model"], 1),
    "modeling_py": (["{modeling-file}"], NAME, ["{modeling-file}", "needs remote code"], 1),
    "truncated_safetensors": (["{truncated}"], NAME, ["{truncated}", "its weights cannot be read",
                                                       "re-download or re-export them"], 1),
    "missing_tensor": (["{missing-tensor}"], NAME, ["{missing-tensor}", "its weights do not fit its config.json "
                                                     "(missing model.decoder.layer_norm.weight)"], 1),
    "whisper_config_over_bert_weights": (["{whisper-config-bert-weights}"], NAME, [
        "{whisper-config-bert-weights}", "its weights do not fit its config.json", "unknown embeddings."], 1),
    "mindspeed_with_base_config": (["{mindspeed}/model_optim_rng.pt", "--config", "{base-config}"], NAME, [
        "{mindspeed}/model_optim_rng.pt does not fit --config {base-config}",
        "(384, 80, 3) where the config wants (512, 80, 3)"], 1),
    "mindspeed_one_tensor_cut": (["{mindspeed-cut}", "--config", "{mindspeed}"], NAME, [
        "{mindspeed-cut}/model_optim_rng.pt does not fit --config {mindspeed}",
        "model.encoder.layers.0.self_attn.q_proj.weight (192, 384) where the config wants (384, 384)"], 1),
    "mindspeed_without_config": (["{mindspeed}"], NAME, [
        "{mindspeed}/model_optim_rng.pt is a MindSpeed-MM checkpoint: give --config DIR"], 1),
    "hub_repo_offline": (["test-org/whisper-anything"], NAME, ["test-org/whisper-anything", "cannot reach"], 1),
    "name_not_a_model_name": (["{transformers}"], "../escaped", ["--name '../escaped'", "use letters, digits"], 2),
}


@pytest.fixture(scope="module")
def refused(exported, tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Commands, list[str]]]:
    """Every REFUSALS case, each with its own empty model root, HOME and TMPDIR, two at a time (most of
    the time goes into importing torch and transformers, one core each)."""
    folders = {name: str(path) for name, path in exported.items()}

    def run(case: str):
        arguments, name, fragments, _ = REFUSALS[case]
        place = tmp_path_factory.mktemp(case)
        home, scratch = place / "home", place / "tmp"
        home.mkdir()
        scratch.mkdir()
        commands = Commands(place / "models", home, scratch)
        command = commands.models_command("import", *(a.format(**folders) for a in arguments), "--name", name)
        result = subprocess.run([*commands.wrap, *command], env=clean_environment(home, scratch),
                                capture_output=True, text=True, timeout=600, cwd=place)
        return result, commands, [f.format(**folders) for f in fragments]

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(REFUSALS, pool.map(run, REFUSALS)))


@pytest.mark.parametrize("case", REFUSALS)
def test_a_source_that_is_not_a_safe_whisper_is_refused(refused, case):
    result, commands, fragments = refused[case]
    name, status = REFUSALS[case][1], REFUSALS[case][3]
    assert_refused(result, commands.root, name, *fragments, status=status)
    commands.assert_clean()
    assert not (commands.root.parent / "escaped").exists()


def test_no_code_that_came_with_a_model_ran(refused, exported):
    assert not (exported["modeling-file"] / "ran").exists()


def test_an_existing_name_is_kept_without_overwrite_and_replaced_with_it(commands, model_root, exported, shared_data, tmp_path):
    root = commands.root
    root.mkdir()
    shutil.copytree(model_root / "tiny.en", root / NAME)  # a staged model (read-only, as staged)
    before = hashes(root / NAME)

    kept = commands.models("import", str(exported["transformers"]), "--name", NAME)
    assert kept.returncode == 1 and "Traceback" not in kept.stderr
    lines = [line for line in kept.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"{root / NAME} exists" in lines[0] and "--overwrite" in lines[0], kept.stderr
    assert hashes(root / NAME) == before

    # --overwrite with a bad source: the old model stays as it is.
    bad = commands.models("import", str(exported["bert"]), "--name", NAME, "--overwrite")
    assert bad.returncode == 1 and "not a Whisper" in bad.stderr and "Traceback" not in bad.stderr
    assert hashes(root / NAME) == before and staging_leftovers(root) == []

    replaced = commands.models("import", str(exported["transformers"]), "--name", NAME, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    after = hashes(root / NAME)
    assert after != before and "vocabulary.txt" not in after
    manifest = json.loads((root / NAME / "manifest.json").read_text())
    assert manifest["origin"] == f"transformers folder {exported['transformers'].resolve()}"
    assert staging_leftovers(root) == []  # the old model is not kept aside
    text = commands.transcribe(shared_data / "jfk.flac", NAME, tmp_path / "out")
    assert JFK_WORDS in words_of(text), text
