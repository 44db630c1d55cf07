"""`whisper-models fetch NAME...`: download, check and publish catalogue entries into the model root.

A Whisper model becomes ROOT/<name>/: the faster-whisper CTranslate2 files from the hub plus the
official openai-whisper checkpoint (or one converted from the CTranslate2 weights). A diarization
pipeline becomes ROOT/diarization/<name>/ with its config.yaml. Everything is downloaded into
ROOT/.staging/ first (an interrupted fetch resumes from there), checked, given a manifest, made
read-only and moved into place with one rename.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from whisper_hpc.diarization.staged import check_pipeline
from whisper_hpc.errors import WhisperHpcError
from whisper_hpc import runtime
from whisper_hpc.model_store import CTRANSLATE2_FILES, MANIFEST, OPENAI_CHECKPOINT
from whisper_hpc.staging import hub
from whisper_hpc.staging.catalogue import PipelineEntry, WhisperEntry, check_download_url
from whisper_hpc.staging.credentials import Token
from whisper_hpc.staging.download import PARTIAL_SUFFIX, download_verified
from whisper_hpc.staging.checksums import write_manifest
from whisper_hpc.staging.tree import DIARIZATION, ensure_root, exclusive, publish, staging_dir, tree_size

class FetchError(WhisperHpcError):
    """A fetch that cannot go on; the message names the model and what to do."""

    exit_code = 1  # one model failed; the others are still done


@dataclass
class FetchOptions:
    openai: str = "download"
    revision: str | None = None
    token: Token | None = None
    openai_mirror: str | None = None
    say: Callable[[str], None] = field(default=print)


def final_path(entry: WhisperEntry | PipelineEntry, root: Path) -> Path:
    return root / DIARIZATION / entry.name if entry.kind == "diarization" else root / entry.name


def fetch_entry(entry: WhisperEntry | PipelineEntry, root: Path, options: FetchOptions) -> Path:
    final = final_path(entry, root)
    if (final / MANIFEST).is_file():
        options.say(f"{entry.name}: already staged in {final} (`whisper-models verify {entry.name}` checks it)")
        return final
    if final.exists() or final.is_symlink():
        raise FetchError(f"{final} exists but has no {MANIFEST}; `whisper-models remove {entry.name}` first")
    if entry.kind == "diarization" and entry.gated and options.token is None:
        raise FetchError(
            f"{entry.repo} is gated: accept its conditions on the hub with your account, create a read token, "
            "and give it once with HF_TOKEN=... or --token-file FILE"
        )
    ensure_root(root)
    relative = f"{DIARIZATION}/{entry.name}" if entry.kind == "diarization" else entry.name
    with exclusive(root, relative):
        work = staging_dir(root, relative)
        if entry.kind == "diarization":
            origin, sources = _stage_pipeline(entry, work, options)
        else:
            origin, sources = _stage_whisper(entry, work, options)
        hub.drop_bookkeeping(work)
        for leftover in work.glob(f"*{PARTIAL_SUFFIX}"):  # from an earlier attempt in another mode
            leftover.unlink()
        write_manifest(work, origin, sources)
        publish(work, final)
    options.say(f"{entry.name}: staged in {final} ({tree_size(final) / 1e6:.1f} MB, read-only)")
    return final


def hub_files(entry_repo: str, revision: str, work: Path, options: FetchOptions, *, token: Token | None,
               allow: list[str] | None = None, ignore: list[str] | None = None) -> dict:
    options.say(f"  {entry_repo} at {revision} from {hub.endpoint()}")
    snapshot = hub.resolve(entry_repo, revision, token, allow, ignore)
    options.say(f"  commit {snapshot.commit}: {len(snapshot.files)} files, {sum(f.size for f in snapshot.files) / 1e6:.1f} MB")
    hub.prune(snapshot, work, keep=(OPENAI_CHECKPOINT, OPENAI_CHECKPOINT + PARTIAL_SUFFIX))
    hub.download(snapshot, work, token, runtime.run_scratch() / "hub-cache")
    hub.check_download(snapshot, work)
    return {
        "kind": "huggingface",
        "endpoint": snapshot.endpoint,
        "repo": snapshot.repo,
        "revision": snapshot.revision,
        "commit": snapshot.commit,
        "files": [f.path for f in snapshot.files],
    }


def _stage_whisper(entry: WhisperEntry, work: Path, options: FetchOptions) -> tuple[str, list[dict]]:
    options.say(f"{entry.name}: fetching")
    revision = options.revision or entry.ctranslate2_revision
    sources = [hub_files(entry.ctranslate2_repo, revision, work, options, token=None, allow=list(entry.ctranslate2_patterns))]
    missing = [f for f in CTRANSLATE2_FILES if not (work / f).is_file()]
    if missing:
        raise FetchError(f"{entry.ctranslate2_repo} has no {', '.join(missing)}: not a faster-whisper model repository")
    checkpoint = work / OPENAI_CHECKPOINT
    if options.openai == "download":
        url = mirrored(entry.openai_url, options.openai_mirror)
        options.say(f"  openai-whisper checkpoint {url}")
        download_verified(url, checkpoint, entry.openai_sha256, say=options.say)
        sources.append({"kind": "https", "url": url, "sha256": entry.openai_sha256, "file": OPENAI_CHECKPOINT})
        how = "the official openai-whisper checkpoint"
    elif options.openai == "convert":
        from whisper_hpc.convert import convert_ctranslate2_to_openai

        options.say(f"  converting model.bin to {OPENAI_CHECKPOINT}")
        try:
            convert_ctranslate2_to_openai(work, checkpoint)
        except ValueError as error:
            raise FetchError(f"cannot convert {entry.name}: {error}") from None
        sources.append({"kind": "converted", "file": OPENAI_CHECKPOINT, "from": "model.bin", "by": "whisper_hpc.convert"})
        how = "an openai-whisper checkpoint converted from it"
    else:
        checkpoint.unlink(missing_ok=True)
        how = "no openai-whisper checkpoint"
    origin = f"openai/whisper {entry.name}: CTranslate2 {entry.ctranslate2_repo}@{sources[0]['commit'][:12]}, {how}"
    return origin, sources


def _stage_pipeline(entry: PipelineEntry, work: Path, options: FetchOptions) -> tuple[str, list[dict]]:
    options.say(f"{entry.name}: fetching the diarization pipeline")
    revision = options.revision or entry.revision
    token = options.token if entry.gated else None
    source = hub_files(entry.repo, revision, work, options, token=token, ignore=list(entry.ignore_patterns))
    if entry.license:
        source["license"] = entry.license
    check_pipeline(work, downloaded=True)
    return f"pyannote pipeline {entry.repo}@{source['commit'][:12]}", [source]


def mirrored(url: str, mirror: str | None) -> str:
    """The official address, or the same <sha256>/<file> under an administrator's mirror."""
    if not mirror:
        return url
    digest, filename = url.rstrip("/").split("/")[-2:]
    moved = f"{mirror.rstrip('/')}/{digest}/{filename}"
    check_download_url(moved, "--openai-mirror")
    return moved
