"""Download a repository from the Hugging Face hub with huggingface_hub, and check every byte of it.

`snapshot_download(local_dir=...)` writes the repository's files as they are in the repository,
which is the layout both engines read; its `.cache/huggingface` bookkeeping lets an interrupted
fetch skip the files it already has. huggingface_hub checks sizes only, so every file is then
compared with the hub's own listing: SHA-256 for files in LFS, the git object id for the others.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

from whisper_hpc.errors import WhisperHpcError
from whisper_hpc.staging.credentials import Token, redactor
from whisper_hpc.files import sha256_file
from whisper_hpc.staging.checksums import git_blob_sha1, tree_files

BOOKKEEPING = ".cache"  # huggingface_hub's metadata folder inside local_dir


class HubError(WhisperHpcError):
    """The hub refused or could not be reached; the message says what to do (and never holds a token)."""

    exit_code = 1  # one model failed; the others are still done


class HubChecksumError(HubError):
    """Downloaded files differ from the hub's listing; they were deleted."""


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None  # LFS files
    git_oid: str


@dataclass(frozen=True)
class Snapshot:
    repo: str
    revision: str
    commit: str
    endpoint: str
    files: tuple[RemoteFile, ...]


def huggingface_hub():
    """Import huggingface_hub allowed online (whisper-models starts offline like every command)."""
    os.environ["HF_HUB_OFFLINE"] = "0"
    os.environ["TRANSFORMERS_OFFLINE"] = "0"
    import huggingface_hub as hub
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = False
    return hub


def endpoint() -> str:
    """The hub address in use ($HF_ENDPOINT or huggingface.co), without any user:password part."""
    constants = huggingface_hub().constants

    parts = urlsplit(constants.ENDPOINT)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _token_argument(token: Token | None) -> str | bool:
    return token.reveal() if token is not None else False  # False: never send a token implicitly


def resolve(repo: str, revision: str, token: Token | None, allow: list[str] | None, ignore: list[str] | None) -> Snapshot:
    """Ask the hub which commit `revision` is and which files (sizes, checksums) it holds."""
    hub = huggingface_hub()
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects

    with hub_errors(repo, revision, token):
        api = hub.HfApi(token=_token_argument(token))
        commit = api.repo_info(repo, revision=revision).sha
        listing = [f for f in api.list_repo_tree(repo, revision=commit, recursive=True) if isinstance(f, RepoFile)]
    wanted = list(filter_repo_objects(listing, allow_patterns=allow, ignore_patterns=ignore, key=lambda f: f.path))
    if not wanted:
        raise HubError(f"{repo}@{revision}: no file matches {allow or ignore}; is this the right repository?")
    files = tuple(
        RemoteFile(f.path, f.size, f.lfs.sha256 if f.lfs is not None else None, f.blob_id) for f in wanted
    )
    return Snapshot(repo, revision, commit, endpoint(), files)


def download(snapshot: Snapshot, local_dir: Path, token: Token | None, cache_dir: Path, workers: int = 4) -> None:
    """snapshot_download into local_dir at the resolved commit; files already complete are kept."""
    hub = huggingface_hub()
    with hub_errors(snapshot.repo, snapshot.revision, token):
        hub.snapshot_download(
            snapshot.repo,
            revision=snapshot.commit,
            local_dir=local_dir,
            cache_dir=cache_dir,
            token=_token_argument(token),
            allow_patterns=[f.path for f in snapshot.files],
            max_workers=workers,
        )


def check_download(snapshot: Snapshot, local_dir: Path) -> None:
    """Every file as the hub lists it, or HubChecksumError (the bad files are deleted, so a new fetch
    downloads them again)."""
    bad = []
    for remote in snapshot.files:
        path = local_dir / remote.path
        if not path.is_file():
            bad.append(f"{remote.path}: missing after the download")
            continue
        if path.stat().st_size != remote.size:
            bad.append(f"{remote.path}: {path.stat().st_size} bytes, the hub lists {remote.size}")
        elif remote.sha256 is not None and sha256_file(path) != remote.sha256:
            bad.append(f"{remote.path}: SHA-256 differs from the hub's {remote.sha256}")
        elif remote.sha256 is None and git_blob_sha1(path) != remote.git_oid:
            bad.append(f"{remote.path}: git object id differs from the hub's {remote.git_oid}")
        else:
            continue
        forget(local_dir, remote.path)
    if bad:
        raise HubChecksumError(
            f"{snapshot.repo}@{snapshot.commit[:12]} from {snapshot.endpoint}: refused, "
            + "; ".join(bad) + " (deleted; run the fetch again to download them anew)"
        )


def prune(snapshot: Snapshot, local_dir: Path, keep: tuple[str, ...] = ()) -> None:
    """Delete files an earlier attempt (at another revision) left that this snapshot does not have."""
    wanted = {f.path for f in snapshot.files} | set(keep)
    for relative in tree_files(local_dir):
        if not relative.startswith(f"{BOOKKEEPING}/") and relative not in wanted:
            forget(local_dir, relative)


def forget(local_dir: Path, relative: str) -> None:
    """Delete a downloaded file and huggingface_hub's record of it."""
    (local_dir / relative).unlink(missing_ok=True)
    (local_dir / BOOKKEEPING / "huggingface" / "download" / f"{relative}.metadata").unlink(missing_ok=True)


def drop_bookkeeping(local_dir: Path) -> None:
    shutil.rmtree(local_dir / BOOKKEEPING, ignore_errors=True)


@contextlib.contextmanager
def hub_errors(repo: str, revision: str, token: Token | None) -> Iterator[None]:
    """Turn huggingface_hub and network exceptions into one clear line each."""
    import httpx2
    from huggingface_hub import errors

    where = f"{endpoint()}/{repo}"
    try:
        yield
    except errors.GatedRepoError:
        if token is None:
            raise HubError(
                f"{repo} is gated: accept its conditions at {where} with your hub account, create a read "
                "token, and give it to whisper-models with HF_TOKEN=... or --token-file FILE"
            ) from None
        raise HubError(
            f"{repo} is gated and the token from {token.source} has no access to it: accept the conditions at "
            f"{where} with that token's account"
        ) from None
    except errors.RevisionNotFoundError:
        raise HubError(f"{repo} has no revision {revision!r} on {endpoint()}") from None
    except errors.RepositoryNotFoundError:
        hint = "" if token else " (or it is private: give a token)"
        raise HubError(f"{repo} is not on {endpoint()}{hint}") from None
    except (errors.OfflineModeIsEnabled, errors.LocalEntryNotFoundError, httpx2.ConnectError, httpx2.TimeoutException) as error:
        cause = error.__cause__ or error
        raise HubError(
            f"cannot reach {endpoint()} for {repo} ({redactor(type(cause).__name__)}: {redactor(cause)}); fetch on a "
            "machine with internet access (compute nodes usually have none) or set HF_ENDPOINT to a mirror"
        ) from None
    except errors.HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        first_line = redactor(str(error).splitlines()[0] if str(error) else type(error).__name__)
        raise HubError(f"{endpoint()} answered HTTP {status} for {repo}: {first_line}") from None
    except (httpx2.HTTPError, OSError) as error:
        if isinstance(error, HubError):
            raise
        raise HubError(
            f"downloading {repo} from {endpoint()} failed: {redactor(error)}; run the same fetch again to resume"
        ) from None
