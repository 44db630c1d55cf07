"""A local stand-in for the Hugging Face hub and for openai's download host, for the staging tests.

It answers exactly what huggingface_hub (2.4) asks for `snapshot_download`:

    GET  /api/models/{org}/{name}/revision/{rev}          repo info: id, sha (the commit), gated
    GET  /api/models/{org}/{name}/tree/{rev}?recursive=   file listing: size, git oid, lfs sha256
    HEAD /{org}/{name}/resolve/{rev}/{path}               X-Repo-Commit, ETag, X-Linked-Etag/-Size
    GET  /{org}/{name}/resolve/{rev}/{path}               the bytes, with Range support

and plain files at any other path (the openai .pt checkpoints), also with Range support.
Gated repositories want `Authorization: Bearer <token>` on /resolve (401 without, 403 with a
wrong one, X-Error-Code: GatedRepo), like the real hub. Faults for the tests: drop the connection
once after N bytes of a file, stall after N bytes until released, or serve other bytes than the
listing says. Every request is recorded (method, path, Range, whether a token came and which).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".bin", ".pt", ".npz", ".onnx", ".safetensors")
CHUNK = 1 << 16


def content_of(source: bytes | Path) -> bytes:
    return source if isinstance(source, bytes) else Path(source).read_bytes()


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class HubFile:
    path: str
    source: bytes | Path
    size: int
    sha256: str
    oid: str
    lfs: bool
    served: bytes | Path | None = None  # other bytes than the listing's (a tampered file)

    @classmethod
    def make(cls, path: str, source: bytes | Path) -> "HubFile":
        data = content_of(source)
        lfs = path.endswith(LFS_SUFFIXES)
        return cls(path, source, len(data), hashlib.sha256(data).hexdigest(), git_oid(data), lfs)


@dataclass
class HubRepo:
    repo_id: str
    files: dict[str, HubFile]
    commit: str
    gated_token: str | None = None


@dataclass
class Fault:
    kind: str  # "drop" or "stall"
    after: int
    times: int = 1
    release: threading.Event = field(default_factory=threading.Event)
    reached: threading.Event = field(default_factory=threading.Event)


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    authorization: str | None


class HubServer:
    """Start with `with HubServer() as hub:`; `hub.url` is the address for HF_ENDPOINT."""

    def __init__(self) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.plain: dict[str, bytes | Path] = {}
        self.faults: dict[str, Fault] = {}
        self.requests: list[Request] = []
        self.echo_credentials = False  # a badly behaved server that repeats the token in its errors
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "HubServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for fault in self.faults.values():
            fault.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def add_repo(self, repo_id: str, files: dict[str, bytes | Path], gated_token: str | None = None) -> HubRepo:
        entries = {path: HubFile.make(path, source) for path, source in files.items()}
        commit = hashlib.sha1(json.dumps(sorted((p, f.oid) for p, f in entries.items())).encode()).hexdigest()
        repo = HubRepo(repo_id, entries, commit, gated_token)
        self.repos[repo_id] = repo
        return repo

    def add_file(self, path: str, source: bytes | Path) -> str:
        self.plain[path] = source
        return self.url + path

    def drop_once(self, path: str, after: int) -> Fault:
        """Close the connection after `after` bytes of the next GET of `path` (a URL path)."""
        self.faults[path] = Fault("drop", after)
        return self.faults[path]

    def stall(self, path: str, after: int) -> Fault:
        """Send `after` bytes of the next GET of `path`, then hang until `fault.release` is set."""
        self.faults[path] = Fault("stall", after)
        return self.faults[path]

    def tamper(self, repo_id: str, path: str, served: bytes) -> None:
        self.repos[repo_id].files[path].served = served

    def resolve_path(self, repo_id: str, path: str, revision: str = "main") -> str:
        return f"/{repo_id}/resolve/{revision}/{path}"

    def gets(self, path_suffix: str) -> list[Request]:
        return [r for r in self.requests if r.method == "GET" and r.path.endswith(path_suffix)]

    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def take_fault(self, path: str) -> Fault | None:
        with self._lock:
            fault = self.faults.get(path)
            if fault is None or fault.times <= 0:
                return None
            fault.times -= 1
            return fault


def _handler(hub: HubServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def do_HEAD(self) -> None:
            self._dispatch(head=True)

        def do_GET(self) -> None:
            self._dispatch(head=False)

        # routing ----------------------------------------------------------------------------

        def _dispatch(self, head: bool) -> None:
            url = urlsplit(self.path)
            path = unquote(url.path)
            hub.record(Request(self.command, path, self.headers.get("Range"), self.headers.get("Authorization")))
            if path.startswith("/api/models/"):
                return self._api(path[len("/api/models/"):], url.query)
            if "/resolve/" in path:
                return self._resolve(path, head)
            if path in hub.plain:
                return self._send_bytes(path, content_of(hub.plain[path]), head, {})
            self._error(404, "EntryNotFound", f"{path} not found")

        def _api(self, rest: str, query: str) -> None:
            for marker in ("/revision/", "/tree/"):
                if marker in rest:
                    repo_id, revision = rest.split(marker, 1)
                    break
            else:
                return self._error(404, "RepoNotFound", "unknown API call")
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self._error(401, "RepoNotFound", f"Repository {repo_id} not found")
            if revision.split("/")[0] not in ("main", repo.commit):
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            if marker == "/revision/":
                body = {"id": repo_id, "sha": repo.commit, "private": False,
                        "gated": "auto" if repo.gated_token else False,
                        "siblings": [{"rfilename": p} for p in repo.files]}
            else:
                body = _tree(repo)
            data = json.dumps(body).encode()
            self._respond(200, {"Content-Type": "application/json", "Content-Length": str(len(data))}, data)

        def _resolve(self, path: str, head: bool) -> None:
            repo_id, rest = path.lstrip("/").split("/resolve/", 1)
            revision, filename = rest.split("/", 1)
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self._error(401, "RepoNotFound", f"Repository {repo_id} not found")
            if repo.gated_token is not None:
                given = self.headers.get("Authorization")
                if given is None:
                    return self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must be authenticated")
                if given != f"Bearer {repo.gated_token}":
                    echoed = f" (you sent {given})" if hub.echo_credentials else ""
                    return self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted and you are not in the authorized list{echoed}")
            if revision not in ("main", repo.commit):
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            entry = repo.files.get(filename)
            if entry is None:
                return self._error(404, "EntryNotFound", f"{filename} does not exist", commit=repo.commit)
            headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{entry.sha256 if entry.lfs else entry.oid}"'}
            if entry.lfs:
                headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
            data = content_of(entry.served if entry.served is not None else entry.source)
            self._send_bytes(path, data, head, headers)

        # responses ---------------------------------------------------------------------------

        def _send_bytes(self, path: str, data: bytes, head: bool, headers: dict) -> None:
            start, status = 0, 200
            requested = self.headers.get("Range")
            headers = {**headers, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
            if requested and requested.startswith("bytes="):
                first, _, last = requested[len("bytes="):].partition("-")
                start = int(first or 0)
                end = int(last) if last else len(data) - 1
                if start >= len(data):
                    return self._respond(416, {"Content-Range": f"bytes */{len(data)}", "Content-Length": "0"}, b"")
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                data = data[start:end + 1]
            headers["Content-Length"] = str(len(data))
            if head:
                return self._respond(status, headers, b"")
            fault = hub.take_fault(path)
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if fault is None:
                self._write(data)
                return
            self._write(data[:fault.after])
            fault.reached.set()
            if fault.kind == "stall":
                fault.release.wait(timeout=120)
            self.close_connection = True
            try:
                self.wfile.flush()
                self.connection.shutdown(2)
            except OSError:
                pass

        def _write(self, data: bytes) -> None:
            try:
                for offset in range(0, len(data), CHUNK):
                    self.wfile.write(data[offset:offset + CHUNK])
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
            body = json.dumps({"error": message}).encode()
            headers = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json",
                       "Content-Length": str(len(body))}
            if commit:
                headers["X-Repo-Commit"] = commit
            self._respond(status, headers, body)

        def _respond(self, status: int, headers: dict, body: bytes) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if body and self.command != "HEAD":
                self._write(body)

    return Handler


def _tree(repo: HubRepo) -> list[dict]:
    listing, folders = [], set()
    for path, entry in sorted(repo.files.items()):
        parts = path.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            folders.add("/".join(parts[:depth]))
        item = {"type": "file", "oid": entry.oid, "size": entry.size, "path": path}
        if entry.lfs:
            item["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": 134}
        listing.append(item)
    for folder in sorted(folders):
        listing.append({"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(), "size": 0, "path": folder})
    return listing
