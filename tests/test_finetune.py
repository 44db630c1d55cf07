"""whisper-finetune with real tiny.en weights: prepare a manifest of real and synthesised speech,
train (1 process and 2 gloo ranks through torchrun), kill and resume, export and transcribe with
both engines. CPU-sized: tiny.en, a handful of clips, few steps."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, IN_CI, ROOT, need
from wer import word_error_rate
import cluster_fixtures  # noqa: F401,E402 - puts tests/infra on sys.path
from cluster import free_ports  # noqa: E402

pytestmark = [pytest.mark.system, pytest.mark.engine]

PYTHON = str(BIN / "python")
INVENTED = ("Zorbleck", "Quintaran")
SENTENCES = (
    "The Zorbleck engine is running again.",
    "Please send the Quintaran report to the office.",
    "We met the Zorbleck team on Monday.",
    "Quintaran samples arrived this morning.",
    "Our Zorbleck array needs more memory.",
    "The Quintaran cluster finished the job.",
    "Zorbleck and Quintaran are both ready.",
    "I asked the Zorbleck group for help.",
    "The new Quintaran data looks very clean.",
    "Nobody knows where the Zorbleck files went.",
    "She wrote a Quintaran paper last year.",
    "A Zorbleck model learns very quickly.",
    "Take the Quintaran road to the station.",
    "The Zorbleck meeting starts at noon.",
    "We need three Quintaran licences.",
    "His Zorbleck results were surprising.",
)
NEW_SENTENCE = "Tomorrow the Zorbleck server will be replaced."  # never in training
LORA_STEPS = 10  # measured: the loss falls from about 1.7 to under 0.1, and Zorbleck comes out right
FULL_STEPS = 8
JFK_WER_BOUND = 0.25  # tiny.en alone: 0.0 on jfk.flac (greedy)


def environment(home: Path, scratch: Path, root: Path | None = None, **extra: str) -> dict[str, str]:
    env = {"PATH": f"{BIN}:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(home), "TMPDIR": str(scratch),
           "LANG": "C.UTF-8", "OMP_NUM_THREADS": "2", "GLOO_SOCKET_IFNAME": "lo"}
    if root is not None:
        env["WHISPER_MODELS"] = str(root)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, model_root: Path):
    """An empty HOME, a scratch TMPDIR and a model root holding tiny.en (linked)."""
    home, scratch = tmp_path_factory.mktemp("ft-home"), tmp_path_factory.mktemp("ft-tmp")
    root = tmp_path_factory.mktemp("ft-root")
    (root / "tiny.en").symlink_to(model_root / "tiny.en")
    yield {"home": home, "scratch": scratch, "root": root, "model_root": model_root}
    assert list(home.iterdir()) == []  # nothing written in $HOME


def finetune(sandbox, *arguments: str, check: bool = True, timeout: float = 600, prefix: tuple[str, ...] = (),
             **extra: str) -> subprocess.CompletedProcess:
    result = subprocess.run([*prefix, PYTHON, "-m", "whisper_hpc.finetune", *arguments], capture_output=True, text=True,
                            env=environment(sandbox["home"], sandbox["scratch"], sandbox["root"], **extra),
                            timeout=timeout, cwd=ROOT)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def torchrun(sandbox, processes: int, *arguments: str, **extra: str) -> subprocess.CompletedProcess:
    launcher = (PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--rdzv_backend", "c10d",
                "--rdzv_endpoint", f"127.0.0.1:{free_ports(1)[0]}", "-m", "whisper_hpc.finetune")
    result = subprocess.run([*launcher, *arguments], capture_output=True, text=True, cwd=ROOT, timeout=600,
                            env=environment(sandbox["home"], sandbox["scratch"], sandbox["root"], OMP_NUM_THREADS="1",
                                            **extra))
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def speak(text: str, output: Path) -> Path:
    """`text` spoken by espeak-ng, as 16 kHz mono WAV."""
    raw = output.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), text], check=True, stdin=subprocess.DEVNULL)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(raw), "-ar", "16000", "-ac", "1",
                    str(output)], check=True)
    raw.unlink()
    return output


@pytest.fixture(scope="module")
def speech(tmp_path_factory, shared_data: Path, references: dict[str, str]) -> Path:
    """The synthesised sentences, jfk.flac and a manifest of them all (train.tsv)."""
    need(shutil.which("espeak-ng") is not None and shutil.which("ffmpeg") is not None,
         "espeak-ng and ffmpeg are needed (scripts/system-deps.sh installs them)")
    folder = tmp_path_factory.mktemp("ft-speech")
    lines = []
    for index, sentence in enumerate(SENTENCES):
        speak(sentence, folder / f"s{index:02d}.wav")
        lines.append(f"s{index:02d}.wav\t{sentence}")
    shutil.copyfile(shared_data / "jfk.flac", folder / "jfk.flac")
    lines.append(f"jfk.flac\t{references['jfk.flac']}")
    (folder / "train.tsv").write_text("\n".join(lines) + "\n")
    (folder / "small.tsv").write_text("\n".join(lines[:6]) + "\n")
    speak(NEW_SENTENCE, folder / "new.wav")
    return folder


@pytest.fixture(scope="module")
def small_run(sandbox, speech: Path, tmp_path_factory) -> Path:
    """Six synthesised clips prepared against tiny.en, no eval split: the template other runs copy."""
    run = tmp_path_factory.mktemp("ft-runs") / "small"
    finetune(sandbox, "prepare", str(speech / "small.tsv"), "--model", "tiny.en", "--output", str(run),
             "--eval_fraction", "0")
    return run


def copy_run(template: Path, target: Path) -> Path:
    """A fresh run directory with the template's data (its base model folder linked)."""
    target.mkdir(parents=True)
    shutil.copyfile(template / "run.json", target / "run.json")
    shutil.copytree(template / "data", target / "data")
    (target / "base").symlink_to(template / "base")
    return target


def final_weights(run: Path) -> dict:
    from safetensors.torch import load_file

    from whisper_hpc.finetune.checkpoint import latest

    folder = latest(run)
    assert folder is not None, f"no complete checkpoint in {run}"
    files = list(folder.glob("*.safetensors"))
    assert len(files) == 1
    return load_file(str(files[0]))


def relative_update_difference(a: dict, b: dict) -> float:
    """|a - b| over |a| for the LoRA B matrices (they start at zero: their values are the update)."""
    names = [name for name in a if "lora_B" in name]
    assert names and set(a) == set(b)
    difference = sum(float(((a[name] - b[name]) ** 2).sum()) for name in names) ** 0.5
    size = sum(float((a[name] ** 2).sum()) for name in names) ** 0.5
    assert size > 1e-3, "the compared weights did not move"
    return difference / size


# ----- bad inputs --------------------------------------------------------------------------------

def test_a_bad_manifest_names_each_refused_clip_and_prepares_and_trains_the_rest(sandbox, speech, shared_data,
                                                                                   tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("s00.wav", "s01.wav", "s02.wav"):
        shutil.copyfile(speech / name, data / name)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(shared_data / "jfk.flac"), "-af",
                    "apad=pad_dur=25", str(data / "long.wav")], check=True)  # 11 s of speech + 25 s of silence
    (data / "noise.wav").write_bytes(b"RIFF this is not audio at all" * 10)
    rows = [("sentence", "path"),  # a header, in the other order
            (SENTENCES[0], "s00.wav"), ("Nobody recorded this.", "missing.wav"), ("Far too long.", "long.wav"),
            ("", "s01.wav"), (SENTENCES[2], "s02.wav"), ("Not a sound file.", "noise.wav")]
    manifest = data / "manifest.tsv"
    manifest.write_bytes("".join(f"{text}\t{audio}\r\n" for text, audio in rows).encode())  # CRLF line ends
    run = tmp_path / "run"
    result = finetune(sandbox, "prepare", str(manifest), "--model", "tiny.en", "--output", str(run),
                      "--eval_fraction", "0")
    lines = result.stdout.splitlines()
    assert "skip missing.wav: no such file" in lines
    assert any(line.startswith("skip long.wav: 3") and "over Whisper's 30 s window" in line for line in lines), lines
    assert "skip s01.wav: empty text" in lines
    assert any(line.startswith("skip noise.wav: cannot decode it") for line in lines), result.stdout
    assert any(line.startswith("2 clips, 0.00 hours usable (4 refused)") for line in lines), result.stdout
    clips = json.loads((run / "data" / "clips.json").read_text())["clips"]
    assert [(clip["audio"], clip["text"]) for clip in clips] == [("s00.wav", SENTENCES[0]), ("s02.wav", SENTENCES[2])]
    meta = json.loads((run / "run.json").read_text())
    assert meta["base"]["name"] == "tiny.en" and len(meta["data"]["sha256"]) == 64 and meta["data"]["refused"] == 4
    trained = finetune(sandbox, "train", str(run), "--max_steps", "1", "--batch_size", "2")
    assert "step 1/1 loss " in trained.stdout

    nothing = data / "nothing.tsv"
    nothing.write_text("missing.wav\tNobody recorded this.\n\tno audio named\n")
    refused = finetune(sandbox, "prepare", str(nothing), "--model", "tiny.en", "--output", str(tmp_path / "empty"),
                       check=False)
    assert refused.returncode != 0 and "no usable clips" in refused.stderr


# ----- distribution ------------------------------------------------------------------------------

SGD = ("--method", "lora", "--optimizer", "sgd", "--lr", "0.05", "--max_steps", "3", "--save_every", "0",
       "--seed", "7", "--log_every", "1")


@pytest.fixture(scope="module")
def one_process(sandbox, small_run, tmp_path_factory) -> dict:
    """The reference: one process, a global batch of 4."""
    run = copy_run(small_run, tmp_path_factory.mktemp("ft-dist") / "one")
    finetune(sandbox, "train", str(run), *SGD, "--batch_size", "4")
    return final_weights(run)


def test_two_gloo_ranks_give_the_weights_of_one_process_at_the_same_global_batch(sandbox, small_run, one_process,
                                                                                 tmp_path):
    run = copy_run(small_run, tmp_path / "two")
    result = torchrun(sandbox, 2, "train", str(run), *SGD, "--batch_size", "2")
    assert "2 per rank x 2 ranks x 1 accumulation" in result.stdout
    assert relative_update_difference(one_process, final_weights(run)) < 1e-5


def test_two_ranks_with_gradient_accumulation_give_the_same_weights(sandbox, small_run, one_process, tmp_path):
    run = copy_run(small_run, tmp_path / "two-accum")
    result = torchrun(sandbox, 2, "train", str(run), *SGD, "--batch_size", "1", "--grad_accum", "2")
    assert "1 per rank x 2 ranks x 2 accumulation" in result.stdout
    assert relative_update_difference(one_process, final_weights(run)) < 1e-5


def test_the_per_micro_batch_mean_fails_the_equivalence_check(sandbox, small_run, one_process, tmp_path):
    run = copy_run(small_run, tmp_path / "wrong")
    torchrun(sandbox, 2, "train", str(run), *SGD, "--batch_size", "1", "--grad_accum", "2",
             WHISPER_HPC_FINETUNE_WRONG_SCALING="1")
    assert relative_update_difference(one_process, final_weights(run)) > 1e-2  # the check catches the trap


# ----- kill and resume ---------------------------------------------------------------------------

RESUMABLE = ("--method", "lora", "--max_steps", "5", "--batch_size", "2", "--save_every", "1", "--seed", "3",
             "--log_every", "1")


def test_a_run_killed_anywhere_even_in_a_save_resumes_to_the_same_weights(sandbox, small_run, tmp_path):
    straight = copy_run(small_run, tmp_path / "straight")
    finetune(sandbox, "train", str(straight), *RESUMABLE)
    killed = copy_run(small_run, tmp_path / "killed")

    died = finetune(sandbox, "train", str(killed), *RESUMABLE, check=False, WHISPER_HPC_FINETUNE_KILL_IN_SAVE="2")
    assert died.returncode == -signal.SIGKILL, died.stderr
    checkpoints = killed / "checkpoints"
    assert [p.name for p in checkpoints.iterdir() if p.name.startswith(".tmp-step-000002-")]  # the half save
    assert sorted(p.name for p in checkpoints.iterdir() if not p.name.startswith(".")) == ["step-000001"]

    command = [PYTHON, "-m", "whisper_hpc.finetune", "train", str(killed), *RESUMABLE]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                               env=environment(sandbox["home"], sandbox["scratch"], sandbox["root"]))
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith("step 4/5"):  # killed between a step and its save
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert any("removed the incomplete checkpoint .tmp-step-000002" in line for line in seen), seen
    assert any("resuming from step-000001" in line for line in seen), seen

    resumed = finetune(sandbox, "train", str(killed), *RESUMABLE)
    assert "resuming from step-000003" in resumed.stdout
    assert "step 5/5 loss" in resumed.stdout
    a, b = final_weights(straight), final_weights(killed)
    assert set(a) == set(b)
    assert all(float((a[name] - b[name]).abs().max()) <= 1e-7 for name in a)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-000004", "step-000005"]  # the newest two

    # And at moments nobody chose: two SIGKILLs at random times (the delays are printed on failure).
    shuffled = copy_run(small_run, tmp_path / "random")
    delays = [round(random.Random().uniform(0.5, 12.0), 2) for _ in range(2)]
    for delay in delays:
        process = subprocess.Popen([PYTHON, "-m", "whisper_hpc.finetune", "train", str(shuffled), *RESUMABLE],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
                                   env=environment(sandbox["home"], sandbox["scratch"], sandbox["root"]))
        try:
            process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
    finished = finetune(sandbox, "train", str(shuffled), *RESUMABLE)
    assert "step 5/5 loss" in finished.stdout or "resuming from step-000005" in finished.stdout, (delays, finished.stdout)
    c = final_weights(shuffled)
    assert set(c) == set(a), delays
    assert all(float((a[name] - c[name]).abs().max()) <= 1e-7 for name in a), delays


# ----- one trainer per run directory, one base model per run ---------------------------------------

def test_a_second_trainer_and_a_checkpoint_of_another_base_model_are_refused(sandbox, small_run, speech, tmp_path):
    run = copy_run(small_run, tmp_path / "locked")
    first = subprocess.Popen([PYTHON, "-m", "whisper_hpc.finetune", "train", str(run), "--max_steps", "1000",
                              "--batch_size", "1", "--save_every", "1", "--log_every", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                             env=environment(sandbox["home"], sandbox["scratch"], sandbox["root"]))
    try:
        for line in first.stdout:
            if line.startswith("saved checkpoints/step-000001"):
                break
        second = finetune(sandbox, "train", str(run), "--max_steps", "2", check=False)
        assert second.returncode == 1
        assert second.stderr.strip().splitlines() == [
            f"whisper-finetune: {run} is being trained by another job (pid {first.pid} on {socket.gethostname()}); "
            "wait for it or use another RUN_DIR"]
    finally:
        first.kill()
        first.wait()

    other = tmp_path / "other-base"
    if not (sandbox["root"] / "base").exists():
        (sandbox["root"] / "base").symlink_to(sandbox["model_root"] / "base")
    (tmp_path / "two.tsv").write_text("\n".join(
        f"{speech / f's0{index}.wav'}\t{SENTENCES[index]}\ten" for index in range(2)) + "\n")
    finetune(sandbox, "prepare", str(tmp_path / "two.tsv"), "--model", "base", "--output", str(other),
             "--eval_fraction", "0")
    (other / "checkpoints").mkdir()
    from whisper_hpc.finetune.checkpoint import latest

    saved = latest(run)  # the first trainer went on saving (and pruning) until it was killed
    shutil.copytree(saved, other / "checkpoints" / saved.name)
    refused = finetune(sandbox, "train", str(other), "--max_steps", "2", check=False)
    assert refused.returncode == 1
    message = refused.stderr.strip().splitlines()
    assert len(message) == 1 and "was trained from tiny.en" in message[0] and "prepared from base" in message[0]
    assert "refusing to resume" in message[0]


# ----- real learning -----------------------------------------------------------------------------

def transcribe(sandbox, audio: Path, model: str, backend: str, out: Path) -> str:
    result = subprocess.run([str(BIN / "whisper-hpc"), str(audio), "--model", model, "--backend", backend,
                             "-o", str(out), "-f", "txt", "--overwrite"], capture_output=True, text=True, timeout=600,
                            env=environment(sandbox["home"], sandbox["scratch"], sandbox["root"],
                                            SLURM_CPUS_PER_TASK="2"))
    assert result.returncode == 0, result.stderr
    return (out / f"{audio.stem}.txt").read_text()


def losses(output: str) -> list[float]:
    return [float(line.split(" loss ")[1].split()[0]) for line in output.splitlines() if line.startswith("step ")]


@pytest.fixture(scope="module")
def learning_run(sandbox, speech, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ft-learn") / "run"
    result = finetune(sandbox, "prepare", str(speech / "train.tsv"), "--model", "tiny.en", "--output", str(run))
    assert "17 clips" in result.stdout and "(0 refused)" in result.stdout
    return run


@pytest.mark.parametrize("method", ["lora", "full"])
def test_fine_tuning_learns_invented_words_that_both_engines_then_transcribe(sandbox, speech, references,
                                                                            learning_run, method, tmp_path):
    run = copy_run(learning_run, tmp_path / method)
    if method == "lora":
        flags = ("--method", "lora", "--max_steps", str(LORA_STEPS), "--lr", "1e-3")
    else:
        flags = ("--method", "full", "--freeze_encoder", "--max_steps", str(FULL_STEPS), "--lr", "1e-4")
    result = finetune(sandbox, "train", str(run), *flags, "--batch_size", "8", "--log_every", "1", "--save_every", "0")
    curve = losses(result.stdout)
    assert curve[-1] < curve[0] / 3, result.stdout  # the training loss falls
    assert "eval wer " in result.stdout
    name = f"tiny-zorbleck-{method}"
    finetune(sandbox, "export", str(run), "--name", name)
    manifest = json.loads((sandbox["root"] / name / "manifest.json").read_text())
    record = manifest["sources"][-1]
    assert record["kind"] == "finetune" and record["base_model"]["name"] == "tiny.en"
    assert record["steps"] == int(flags[flags.index("--max_steps") + 1]) and record["method"] == method
    assert record["data_manifest_sha256"] == json.loads((run / "run.json").read_text())["data"]["sha256"]
    assert "eval_wer" in record
    base_text = transcribe(sandbox, speech / "new.wav", "tiny.en", "faster-whisper", tmp_path / "base")
    assert "Zorbleck" not in base_text  # tiny.en alone cannot know it
    for backend in ("faster-whisper", "openai-whisper"):
        text = transcribe(sandbox, speech / "new.wav", name, backend, tmp_path / f"new-{backend}")
        assert "Zorbleck" in text, (backend, text)
        jfk = transcribe(sandbox, speech / "jfk.flac", name, backend, tmp_path / f"jfk-{backend}")
        assert word_error_rate(references["jfk.flac"], jfk) <= JFK_WER_BOUND, (backend, jfk)


# ----- offline -----------------------------------------------------------------------------------

def test_prepare_train_and_export_run_with_no_network_and_write_nothing_in_home(sandbox, speech, tmp_path):
    prefix = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
    probe = subprocess.run([*prefix, "true"], capture_output=True)
    if probe.returncode != 0:
        reason = f"cannot create a network namespace here ({probe.stderr.decode().strip()})"
        if IN_CI:
            pytest.fail(f"CI must run this test, but: {reason}")
        pytest.skip(reason=reason)
    home, scratch = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    scratch.mkdir()
    offline = dict(sandbox, home=home, scratch=scratch)
    (tmp_path / "three.tsv").write_text("\n".join(
        f"{speech / f's0{index}.wav'}\t{SENTENCES[index]}" for index in range(3)) + "\n")
    run = tmp_path / "run"
    finetune(offline, "prepare", str(tmp_path / "three.tsv"), "--model", "tiny.en", "--output", str(run),
             prefix=tuple(prefix))
    finetune(offline, "train", str(run), "--max_steps", "2", "--batch_size", "2", prefix=tuple(prefix))
    # Two ranks resume it for a third step: torchrun's c10d rendezvous on the namespace's own loopback.
    ranks = subprocess.run(
        [*prefix, "sh", "-c", 'ip link set lo up && exec "$@"', "sh", PYTHON, "-m", "torch.distributed.run",
         "--nproc_per_node", "2", "--rdzv_backend", "c10d", "--rdzv_endpoint", "127.0.0.1:29511",
         "--log_dir", str(tmp_path / "torchrun-logs"),  # torchrun's own, else a torchelastic_* folder in TMPDIR
         "-m", "whisper_hpc.finetune", "train", str(run), "--max_steps", "3", "--batch_size", "1"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
        env=environment(home, scratch, sandbox["root"], OMP_NUM_THREADS="1"))
    assert ranks.returncode == 0, ranks.stdout + ranks.stderr
    assert "resuming from step-000002" in ranks.stdout and "step 3/3" in ranks.stdout, ranks.stdout
    finetune(offline, "export", str(run), "--name", "tiny-offline", "--quantization", "int8", prefix=tuple(prefix))
    assert (sandbox["root"] / "tiny-offline" / "model.bin").is_file()
    assert list(home.iterdir()) == [] and list(scratch.iterdir()) == []
