"""The Lmod modulefiles and `make install`, with the real Lmod: avail, help, whatis, load, unload."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from whisper_hpc import sizing
from whisper_hpc.runtime import CACHE_VARIABLES

from cluster_fixtures import LMOD_INIT, MODULE_VERSION, SYSTEM_PATH, installed_prefix, lmod, write_site  # noqa: F401

TINY_MEM = sizing.format_memory(sizing.Workload(39).memory_mb())
from conftest import ROOT, need

pytestmark = pytest.mark.system
LMOD_BOOKKEEPING = re.compile(r"^(_ModuleTable\d+_|__LMOD_REF_COUNT_|__LMOD_STACK_)")


def environment_of(output: str) -> dict[str, str]:
    """`env -0` output as a dict."""
    return dict(item.split("=", 1) for item in output.split("\0") if "=" in item)


def without_lmod_bookkeeping(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not LMOD_BOOKKEEPING.match(k)}


def between(output: str, start: str, end: str) -> str:
    return output.split(start, 1)[1].split(end, 1)[0]


def test_avail_lists_both_modules(lmod):
    result = lmod("module -t avail")
    assert result.returncode == 0, result.stderr
    listed = result.stderr.split()
    assert f"whisper/{MODULE_VERSION}" in listed and f"whisper-diarization/{MODULE_VERSION}" in listed


def test_help_gives_copy_paste_examples_memory_advice_and_where_outputs_go(lmod, installed_prefix):
    result = lmod("module help whisper")
    assert result.returncode == 0, result.stderr
    text = result.stderr
    slurm = installed_prefix.prefix / "slurm"
    for line in (
        "$tiny_en", "$base",
        f"srun --mem={TINY_MEM} singularity_wrapper run talk.wav --model_directory $tiny_en --language en",
        "srun --gres=gpu:1 --mem=8G singularity_wrapper run talk.wav --model_directory $base --device cuda",
        f"sbatch {slurm}/whisper-cpu.sbatch talk.wav --language en",
        f"sbatch {slurm}/whisper-gpu.sbatch talk.wav",
        f"sbatch --array=1-$(wc -l < files.txt)%4 {slurm}/whisper-array.sbatch files.txt",
        "whisper-batch submit recordings/",
        "Open OnDemand",
        "Transcripts appear in the current folder: talk.txt, talk.srt",
        f"sbatch --gres=gpu:4 --cpus-per-task=8 --mem=32G {slurm}/whisper-gpu.sbatch recordings/ --output_dir transcripts/",
        "SEVERAL GPUS IN ONE JOB (one worker per GPU", "--device_index 0,1", "--gpu_workers N",
        "FINE-TUNING (your own recordings",
        f"module load whisper-diarization/{MODULE_VERSION}",
        "singularity_wrapper exec whisper-finetune prepare data.tsv --model tiny.en --output my-run",
        f"sbatch {slurm}/whisper-finetune.sbatch my-run --method lora --max_steps 1000 --save_every 100",
        "singularity_wrapper exec whisper-finetune export my-run --name my-model --root my-models",
        "WHISPER_MODELS=$PWD/my-models singularity_wrapper run talk.wav --model my-model",
    ):
        assert line in text, line
    memory = between(text, "MEMORY (--mem) PER MODEL SIZE", "GOOD TO KNOW")
    assert re.search(rf"tiny\s+39 M\s+0\.3 GB\s+measured\s+--mem={TINY_MEM}", memory)
    # the same rounding as whisper-batch's own requests (whisper_hpc.sizing), for every size
    large = sizing.format_memory(sizing.Workload(1550).memory_mb())
    assert re.search(rf"large\s+1550 M\s+\d+\.\d GB\s+estimated\s+--mem={large}\s", memory)


def test_diarization_help_uses_the_same_command_with_diarize(lmod):
    text = lmod("module help whisper-diarization").stderr
    assert f"srun --mem={TINY_MEM} singularity_wrapper run talk.wav --model_directory $tiny_en --language en --diarize" \
        in text
    assert "talk.rttm" in text


def test_whatis_names_the_models(lmod):
    text = lmod("module whatis whisper").stderr
    assert "Models: base tiny.en" in text and "Version: " + MODULE_VERSION in text


def test_load_sets_image_models_offline_caches_and_path(lmod, installed_prefix):
    result = lmod("module load whisper && echo \"names=$model_names\" && command -v singularity_wrapper whisper-batch"
                  " && env -0 > loaded.env", cwd=lmod.home)
    assert result.returncode == 0, result.stderr
    assert "whisper/0.1.0 loaded. Models: $base $tiny_en." in " ".join(result.stderr.split())
    assert "names=base tiny_en" in result.stdout
    assert f"{installed_prefix.bin}/singularity_wrapper\n{installed_prefix.bin}/whisper-batch" in result.stdout
    env = environment_of((lmod.home / "loaded.env").read_text())
    assert env["CONTAINER_IMAGE"] == str(installed_prefix.images / "whisper.sif")
    assert env["WHISPER_MODELS"] == str(installed_prefix.model_root)
    assert env["WHISPER_HPC_SITE"] == str(installed_prefix.prefix / "etc" / "site.toml")
    assert env["tiny_en"] == str(installed_prefix.model_root / "tiny.en")
    assert env["base"] == str(installed_prefix.model_root / "base")
    assert env["HF_HUB_OFFLINE"] == "1" and env["PYANNOTE_METRICS_ENABLED"] == "0"
    for cache in ("HF_HOME", "TORCH_HOME"):
        assert not env[cache].startswith(str(lmod.home)), cache
    assert env["PATH"].split(":")[0] == str(installed_prefix.bin)


def test_unload_restores_the_environment_exactly(lmod):
    """Also the values a user had before: pushenv restores them, prepend_path removes only its own."""
    own = {"HF_HOME": "/mine/hf", "CONTAINER_IMAGE": "/mine/other.sif", "tiny_en": "/mine/tiny",
           "PATH": f"/mine/bin:{SYSTEM_PATH}"}
    result = lmod("env -0 > before.env; module load whisper; module load whisper-diarization; module unload "
                  "whisper-diarization; env -0 > after.env; module -t list 2> list.txt", env=own, cwd=lmod.home)
    assert result.returncode == 0, result.stderr
    before = environment_of((lmod.home / "before.env").read_text())
    after = environment_of((lmod.home / "after.env").read_text())
    assert without_lmod_bookkeeping(after) == without_lmod_bookkeeping(before)
    assert after["HF_HOME"] == "/mine/hf" and after["tiny_en"] == "/mine/tiny"
    assert "whisper" not in (lmod.home / "list.txt").read_text()  # nothing loaded


OTHER_USER = 65534  # nobody: the owner of what another user planted


def folder(path: Path, mode: int, owner: int | None = None) -> Path:
    path.mkdir()
    path.chmod(mode)
    if owner is not None:
        os.chown(path, owner, owner)
    return path


def caches_after_load(lmod, env: dict[str, str]) -> dict[str, str]:
    result = lmod("module load whisper && env -0 > loaded.env", env=env, cwd=lmod.home)
    assert result.returncode == 0, result.stderr
    loaded = environment_of((lmod.home / "loaded.env").read_text())
    assert loaded["HF_HUB_OFFLINE"] == "1"
    return {name: loaded[name] for name in CACHE_VARIABLES if name in loaded}


def test_caches_go_in_a_folder_only_the_user_can_write_to(lmod, tmp_path):
    job = folder(tmp_path / "job-tmp", 0o700)
    caches = caches_after_load(lmod, {"TMPDIR": str(job)})
    assert caches == {name: str(job / "whisper-hpc-cache" / relative) for name, relative in CACHE_VARIABLES.items()}
    runtime_dir = folder(tmp_path / "run-user", 0o700)  # systemd's /run/user/UID comes first
    caches = caches_after_load(lmod, {"TMPDIR": str(job), "XDG_RUNTIME_DIR": str(runtime_dir)})
    assert all(path.startswith(f"{runtime_dir}/whisper-hpc-cache/") for path in caches.values()), caches


@pytest.mark.skipif(os.geteuid() != 0, reason="planting a folder owned by another user needs root")
def test_a_tmpdir_that_others_can_write_to_gets_no_caches(lmod, tmp_path):
    """A shared /tmp, where another user has planted the folders under names known in advance; a
    folder of another user's; a symbolic link to a private folder. The libraries keep their defaults."""
    shared = folder(tmp_path / "shared-tmp", 0o1777)
    for name in ("whisper-hpc-cache", "whisper-hpc-cache-root"):
        folder(shared / name, 0o777, owner=OTHER_USER)
    foreign = folder(tmp_path / "foreign", 0o700, owner=OTHER_USER)
    group_writable = folder(tmp_path / "group-writable", 0o770)
    link = tmp_path / "link"
    link.symlink_to(folder(tmp_path / "target", 0o700))
    for tmpdir in (shared, foreign, group_writable, link):
        assert caches_after_load(lmod, {"TMPDIR": str(tmpdir), "XDG_RUNTIME_DIR": str(shared)}) == {}, tmpdir


def test_unload_undoes_the_caches_that_the_load_chose(lmod, tmp_path):
    """Loaded on a login node (shared /tmp), unloaded in a job with a private TMPDIR, and back."""
    shared, job = folder(tmp_path / "shared", 0o1777), folder(tmp_path / "job", 0o700)
    mine = {"HF_HOME": "/mine/hf"}
    for at_load, at_unload in ((shared, job), (job, shared)):
        result = lmod(f"module load whisper; export TMPDIR={job if at_unload is job else shared}; "
                      "module unload whisper; env -0 > after.env", env={**mine, "TMPDIR": str(at_load)})
        assert result.returncode == 0, result.stderr
        after = environment_of((lmod.home / "after.env").read_text())
        assert after["HF_HOME"] == "/mine/hf" and "XDG_CACHE_HOME" not in after, (at_load, at_unload)
        assert "WHISPER_HPC_MODULE_CACHE" not in after


def test_whisper_and_diarization_replace_each_other(lmod, installed_prefix):
    result = lmod("module load whisper; module load whisper-diarization; echo \"image=$CONTAINER_IMAGE\"; "
                  "module -t list 2> list.txt", cwd=lmod.home)
    assert result.returncode == 0, result.stderr
    assert f"image={installed_prefix.images / 'whisper-diarization.sif'}" in result.stdout
    loaded = (lmod.home / "list.txt").read_text().split()
    assert loaded[-1:] == [f"whisper-diarization/{MODULE_VERSION}"] and f"whisper/{MODULE_VERSION}" not in loaded


def fake_model(root: Path, name: str) -> None:
    """A directory that looks staged (for rendering only; nothing loads it)."""
    folder = root / name
    folder.mkdir(parents=True)
    for file in ("model.bin", "config.json", "tokenizer.json"):
        (folder / file).write_text("{}")


def install_with(tmp_path: Path, models: list[str], site_text: str | None = None, model_root: Path | None = None):
    from whisper_hpc.install import install

    root = model_root or tmp_path / "models"
    root.mkdir(parents=True, exist_ok=True)
    for name in models:
        fake_model(root, name)
    prefix = tmp_path / "prefix"
    site = tmp_path / "site.toml"
    write_site(site, prefix, root, native=True)
    text = site.read_text().replace('default = "tiny.en"\n', "")  # the examples pick a model themselves
    site.write_text(site_text + text.split("\n\n", 1)[1] if site_text else text)
    messages = []
    install(site, prefix, tmp_path / "no-images", venv=Path(sys.prefix), say=messages.append)
    return prefix, root, messages


def run_lmod(prefix: Path, snippet: str, cwd: Path) -> subprocess.CompletedProcess:
    need(LMOD_INIT.is_file(), "Lmod is not installed; run tests/infra/install-cluster.sh")
    env = {"PATH": SYSTEM_PATH, "HOME": str(cwd), "USER": "root", "LANG": "C.UTF-8"}
    return subprocess.run(["bash", "-c", f"source {LMOD_INIT}; module use {prefix}/modulefiles; {snippet}"],
                          env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_model_variables_follow_what_is_staged_and_help_shows_the_peer_commands(tmp_path):
    prefix, root, messages = install_with(tmp_path, ["medium.en", "large-v3", "tiny.en", "3b-odd"])
    (root / "not-a-model").mkdir()
    result = run_lmod(prefix, 'module load whisper; echo "$model_names"; echo "$medium_en|$large_v3|$tiny_en"; '
                      "module help whisper", tmp_path)
    assert result.returncode == 0, result.stderr
    names, paths = result.stdout.splitlines()[:2]
    assert names == "large_v3 medium_en tiny_en"
    assert paths == f"{root}/medium.en|{root}/large-v3|{root}/tiny.en"
    assert any("3b-odd" in m and "cannot be a module variable" in m for m in messages)
    # The peer deployment's commands, as its users type them (less the ignored --local_files_only True):
    medium = sizing.format_memory(sizing.Workload(769).memory_mb())
    assert f"srun --mem={medium} singularity_wrapper run talk.wav --model_directory $medium_en --language en\n" \
        in result.stderr
    assert "srun --gres=gpu:1 --mem=8G singularity_wrapper run talk.wav --model_directory $large_v3 --device cuda\n" \
        in result.stderr


def test_a_name_without_a_size_is_advised_by_its_weights_as_whisper_batch_sizes_it(tmp_path, model_root):
    """An imported fine-tune named without a size: the module's advice, the batch tool's request and
    the app's come from the one rule (whisper_hpc.sizing), which counts the staged weights."""
    root = tmp_path / "models"
    root.mkdir()
    (root / "my-model").symlink_to(model_root / "tiny.en", target_is_directory=True)
    prefix, _, _ = install_with(tmp_path, [], model_root=root)
    result = run_lmod(prefix, "module help whisper", tmp_path)
    assert result.returncode == 0, result.stderr
    parameters, _ = sizing.model_parameters_m("my-model", root / "my-model")
    assert 30 < parameters < 45  # tiny's weights, not the largest model's
    assert f"ask for --mem={sizing.workload_memory(parameters)}" in result.stderr
    assert sizing.workload_memory(parameters) == sizing.workload_memory(39)


def test_hostile_site_values_and_paths_cannot_break_or_run_anything(tmp_path):
    hostile = 'Uni "Q" ]==] $(touch pwned) `touch pwned2` \\ end'
    site_text = (f'[site]\nname = {json_string(hostile)}\nsupport = "help \\"desk\\" ]]"\nmodule_version = "{MODULE_VERSION}"\n\n')
    model_root = tmp_path / 'models "x" $(touch pwned3)'
    prefix, root, _ = install_with(tmp_path, ["tiny.en"], site_text, model_root=model_root)
    result = run_lmod(prefix, 'module load whisper; printf "%s\\n" "$tiny_en"; module help whisper', tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"{model_root}/tiny.en"
    assert hostile in result.stderr and 'help "desk" ]]' in result.stderr
    assert not [p for p in tmp_path.rglob("pwned*")]


@pytest.mark.parametrize("shared", [False, True])
def test_help_says_where_results_are_cached_when_the_site_caches_them(tmp_path, shared):
    prefix, _, _ = install_with(tmp_path, ["tiny.en"])
    plain = run_lmod(prefix, "module help whisper", tmp_path)
    assert plain.returncode == 0 and "cached" not in plain.stderr
    site = tmp_path / "site.toml"
    site.write_text(site.read_text() + f'\n[cache]\ndirectory = "/scratch/results"\nshared = {str(shared).lower()}\n')
    from whisper_hpc.install import install

    install(site, prefix, tmp_path / "no-images", venv=Path(sys.prefix), say=lambda line: None)
    result = run_lmod(prefix, "module help whisper", tmp_path)
    assert result.returncode == 0, result.stderr
    where = "/scratch/results (shared by its group" if shared else "/scratch/results/$USER (yours alone)"
    assert f"Results are cached in {where}" in result.stderr and "--no_cache" in result.stderr


def test_the_multi_gpu_example_keeps_the_sites_gpu_type(tmp_path):
    prefix, _, _ = install_with(tmp_path, ["tiny.en"])
    site = tmp_path / "site.toml"
    site.write_text(site.read_text().replace('gpu_gres = "gpu:1"', 'gpu_gres = "gpu:a100:1"'))
    from whisper_hpc.install import install

    install(site, prefix, tmp_path / "no-images", venv=Path(sys.prefix), say=lambda line: None)
    result = run_lmod(prefix, "module help whisper", tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"sbatch --gres=gpu:a100:4 --cpus-per-task=8 --mem=32G {prefix}/slurm/whisper-gpu.sbatch recordings/" \
        in result.stderr
    script = (prefix / "slurm" / "whisper-gpu.sbatch").read_text()
    assert "#SBATCH --gres=gpu:a100:4" in script and "#SBATCH --gres=gpu:a100:1\n" in script


def json_string(text: str) -> str:
    import json

    return json.dumps(text)


def test_install_command_lays_out_a_prefix_and_can_run_again(tmp_path, model_root):
    site = tmp_path / "site.toml"
    prefix = tmp_path / "opt"
    write_site(site, Path("/elsewhere"), model_root, native=True)
    for _ in range(2):
        result = subprocess.run([sys.executable, "-m", "whisper_hpc.install", "--prefix", str(prefix), "--site", str(site),
                                 "--images", str(tmp_path / "none")], capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert result.returncode == 0, result.stderr
    assert "image whisper.sif not built" in result.stderr
    installed = tomllib.loads((prefix / "etc" / "site.toml").read_text())
    assert installed["paths"]["prefix"] == str(prefix) and installed["paths"]["images"] == str(prefix / "images")
    assert installed["wrapper"]["native_fallback"] is True
    wrapper = prefix / "bin" / "singularity_wrapper"
    assert os.access(wrapper, os.X_OK) and re.match(r"#!/\S+python3\S* -I\n", wrapper.read_text())
    for name in ("whisper-batch", "whisper-hpc"):
        assert (prefix / "bin" / name).resolve() == (Path(sys.prefix) / "bin" / name).resolve()
    for module in ("whisper", "whisper-diarization"):
        assert (prefix / "modulefiles" / module / f"{MODULE_VERSION}.lua").is_file()
    for script in ("whisper-cpu.sbatch", "whisper-gpu.sbatch", "whisper-array.sbatch", "whisper-finetune.sbatch"):
        path = prefix / "slurm" / script
        assert os.access(path, os.X_OK)
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    gpu_script = (prefix / "slurm" / "whisper-gpu.sbatch").read_text()
    assert "one worker per GPU" in gpu_script and "#SBATCH --gres=gpu:4" in gpu_script
    assert f"sbatch --gres=gpu:4 --cpus-per-task=8 --mem=32G {prefix}/slurm/whisper-gpu.sbatch recordings/" in gpu_script
    assert [line for line in gpu_script.splitlines() if line.startswith("#SBATCH --gres")] == ["#SBATCH --gres=gpu:1"]
    assert (prefix / "ondemand" / "whisper" / "form.yml").is_file()
    assert not list(prefix.rglob(".*.partial"))


def test_the_installed_site_file_keeps_every_value(tmp_path):
    import dataclasses

    from whisper_hpc.install import installed_site, installed_site_text
    from whisper_hpc.site import load_site

    original = tmp_path / "site.toml"
    original.write_text('[site]\nname = "Ünï \\"q\\" \\\\ \\u0001 tab\\t \\u007f"\n'
                        '[wrapper]\ndata_areas = ["/a b", "/c d"]\nnative_fallback = true\n', encoding="utf-8")
    site = installed_site(load_site(original), tmp_path / "prefix")
    written = tmp_path / "written.toml"
    written.write_text(installed_site_text(site), encoding="utf-8")
    again = load_site(written)
    assert dataclasses.replace(again, source=None) == dataclasses.replace(site, source=None)
    assert again.site.name == 'Ünï "q" \\ \x01 tab\t \x7f' and again.wrapper.data_areas == ("/a b", "/c d")
    assert again.paths.prefix == str(tmp_path / "prefix") and again.paths.images == str(tmp_path / "prefix" / "images")
