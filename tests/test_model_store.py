"""The model root (whisper_hpc.model_store), with fake staged models built in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from whisper_hpc.model_store import (
    CTRANSLATE2_FILES,
    STAGING_HINT,
    ModelNotFound,
    StagedModel,
    list_staged,
    resolve_model,
    variable_name,
)


def stage_ct2(root: Path, name: str) -> Path:
    directory = root / name
    directory.mkdir(parents=True)
    for file in CTRANSLATE2_FILES:
        (directory / file).write_bytes(b"")
    return directory


def stage_openai(root: Path, name: str) -> Path:
    directory = root / name
    directory.mkdir(parents=True)
    (directory / "openai-whisper.pt").write_bytes(b"")
    return directory


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    stage_ct2(root, "tiny.en")
    stage_ct2(root, "base")
    stage_ct2(root, "large-v3")
    stage_openai(root, "medium")
    incomplete = root / "small"  # a half-finished staging: no tokenizer
    incomplete.mkdir()
    (incomplete / "model.bin").write_bytes(b"")
    (incomplete / "config.json").write_bytes(b"")
    (root / ".partial-download").mkdir()
    (root / "README.txt").write_text("not a model")
    return root


@pytest.mark.parametrize(
    "name, variable",
    [("tiny.en", "tiny_en"), ("large-v3", "large_v3"), ("base", "base"), ("distil-large-v3.5", "distil_large_v3_5")],
)
def test_variable_name(name, variable):
    assert variable_name(name) == variable


def test_list_staged_lists_complete_models_sorted(root):
    assert [m.name for m in list_staged(root)] == ["base", "large-v3", "medium", "tiny.en"]


def test_list_staged_of_missing_root_is_empty(tmp_path):
    assert list_staged(tmp_path / "absent") == []


def test_staged_model_properties(root):
    models = {m.name: m for m in list_staged(root)}
    assert models["tiny.en"].ctranslate2_dir == root / "tiny.en"
    assert models["tiny.en"].openai_checkpoint is None
    assert models["tiny.en"].english_only
    assert not models["large-v3"].english_only
    assert models["medium"].ctranslate2_dir is None
    assert models["medium"].openai_checkpoint == root / "medium" / "openai-whisper.pt"


def test_manifest(root):
    model = resolve_model("base", root)
    assert model.manifest() == {}
    (root / "base" / "manifest.json").write_text(json.dumps({"name": "base", "files": {}}))
    assert model.manifest() == {"name": "base", "files": {}}
    (root / "base" / "manifest.json").write_text("{broken")
    assert model.manifest() == {}


@pytest.mark.parametrize("spec, name", [("tiny.en", "tiny.en"), ("tiny_en", "tiny.en"), ("large_v3", "large-v3"),
                                        ("large-v3", "large-v3"), ("medium", "medium")])
def test_resolve_by_name_or_variable_name(root, spec, name):
    model = resolve_model(spec, root)
    assert model == StagedModel(name, root / name)


def test_resolve_directory_path(root):
    model = resolve_model(str(root / "tiny.en"), root / "elsewhere")
    assert model.name == "tiny.en"
    assert model.path == (root / "tiny.en").resolve()
    assert model.english_only
    assert model.ctranslate2_dir == model.path


def test_resolve_relative_and_checkpoint_paths(root, monkeypatch):
    monkeypatch.chdir(root)
    assert resolve_model("./base", Path("/nonexistent")).path == (root / "base").resolve()
    checkpoint = root / "small.en.pt"
    checkpoint.write_bytes(b"")
    model = resolve_model("small.en.pt", Path("/nonexistent"))
    assert model.name == "small.en" and model.english_only
    assert model.openai_checkpoint == checkpoint.resolve()


def test_missing_path_is_model_not_found(tmp_path):
    with pytest.raises(ModelNotFound, match="does not exist"):
        resolve_model(str(tmp_path / "nope" / "tiny.en"), tmp_path)


def test_unknown_name_lists_staged_models_and_how_to_stage(root):
    with pytest.raises(ModelNotFound) as error:
        resolve_model("large-v2", root)
    message = str(error.value)
    assert "'large-v2'" in message and str(root) in message
    assert "staged: base, large-v3, medium, tiny.en" in message
    assert "whisper-models fetch NAME" in message
    assert STAGING_HINT in message


def test_incomplete_model_is_not_found(root):
    with pytest.raises(ModelNotFound, match="'small' is not staged"):
        resolve_model("small", root)


def test_empty_root_says_none_are_staged(tmp_path):
    with pytest.raises(ModelNotFound) as error:
        resolve_model("tiny", tmp_path)
    assert "(staged: none)" in str(error.value)
    assert "administrator" in str(error.value)
