"""Plain HTTPS download of one file, resumable with HTTP Range, accepted only with the right SHA-256."""

from __future__ import annotations

import http.client
import re
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from whisper_hpc.errors import WhisperHpcError
from whisper_hpc.files import sha256_file

CHUNK = 1 << 20
PARTIAL_SUFFIX = ".partial"
USER_AGENT = "whisper-models (whisper-hpc)"
CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class DownloadError(WhisperHpcError):
    """The file could not be fetched; the message names the address and what to do."""

    exit_code = 1  # one model failed; the others are still done


class ChecksumMismatch(DownloadError):
    """The bytes arrived but are not the expected ones; they were deleted."""


def partial_path(target: Path) -> Path:
    return target.with_name(target.name + PARTIAL_SUFFIX)


def download_verified(
    url: str,
    target: Path,
    sha256: str,
    *,
    retries: int = 5,
    timeout: float = 60.0,
    say: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> Path:
    """Fetch `url` into `target`: resume `target.partial` if an earlier run left one, retry dropped
    connections from where they stopped, then accept the file only if its SHA-256 is `sha256`."""
    if target.is_file() and sha256_file(target) == sha256:
        return target
    partial = partial_path(target)
    failures = 0
    while True:
        try:
            if _transfer(url, partial, timeout):
                break
        except urllib.error.HTTPError as error:
            raise DownloadError(f"{url}: the server answered HTTP {error.code} {error.reason}")
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError) as error:
            failures += 1
            reason = getattr(error, "reason", None) or error
            if failures > retries:
                raise DownloadError(
                    f"{url}: {reason}; gave up after {retries} retries. {partial.stat().st_size if partial.exists() else 0} "
                    f"bytes are kept in {partial}: run the same fetch again to resume"
                )
            say(f"  connection lost ({reason}); resuming from byte {partial.stat().st_size if partial.exists() else 0}")
            time.sleep(min(2 ** (failures - 1), 30))
    actual = sha256_file(partial)
    if actual != sha256:
        partial.unlink()
        raise ChecksumMismatch(
            f"{url}: SHA-256 is {actual}, the catalogue expects {sha256}; the download was deleted "
            "(a wrong mirror, a proxy rewriting it, or a corrupt transfer)"
        )
    partial.replace(target)
    return target


def _transfer(url: str, partial: Path, timeout: float) -> bool:
    """One request: append to `partial` from its current size. True when the whole file is there."""
    have = partial.stat().st_size if partial.exists() else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # nothing left past our end: the partial file is complete
            return True
        raise
    with response:
        mode = "ab"
        if response.status == 206:
            match = CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != have:  # a range we did not ask for: start again
                response.close()
                return _restart(url, partial, timeout)
            total = None if match.group(3) == "*" else int(match.group(3))
        else:
            mode, have = "wb", 0  # the server ignored the Range header: it sends the whole file
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        # Unbuffered, and whatever has arrived is written at once: a killed fetch keeps every byte it got.
        meter = Meter(total) if sys.stderr.isatty() else None
        with partial.open(mode, buffering=0) as sink:
            for block in iter(lambda: response.read1(CHUNK), b""):
                sink.write(block)
                have += len(block)
                if meter:
                    meter.show(have)
        if meter:
            meter.done()
    if total is not None and have < total:
        raise http.client.IncompleteRead(b"", total - have)
    return True


def _restart(url: str, partial: Path, timeout: float) -> bool:
    partial.unlink(missing_ok=True)
    return _transfer(url, partial, timeout)


class Meter:
    """A one-line progress display for an administrator at a terminal."""

    def __init__(self, total: int | None) -> None:
        self.total, self.shown = total, -1

    def show(self, have: int) -> None:
        percent = int(100 * have / self.total) if self.total else have >> 24
        if percent != self.shown:
            self.shown = percent
            of = f" of {self.total / 1e6:.0f} MB ({percent}%)" if self.total else " MB"
            print(f"\r  {have / 1e6:.0f}{of}", end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        print(file=sys.stderr, flush=True)
