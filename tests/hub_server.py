"""A local, stdlib-only HTTP server that serves model folders like the Hugging Face Hub.

Tests point the real ``huggingface_hub`` client at it (``endpoint=hub.endpoint``,
or ``HF_ENDPOINT`` in a subprocess: the client reads ``HF_ENDPOINT`` at import).
Only what ``huggingface_hub`` 2.4.0 requests for repo type "model" is served:

    GET  /api/models/{repo_id}[/revision/{rev}][?blobs=true]   model_info / repo_info
    GET  /api/models/{repo_id}/tree/{rev}[/{path}][?recursive=] list_repo_tree / snapshot_download
    HEAD /{repo_id}/resolve/{rev}/{filename}                     get_hf_file_metadata
    GET  /{repo_id}/resolve/{rev}/{filename}  (Range: bytes=..)  http_get
    GET  /__cdn__/{sha256}                    (redirect_lfs=True only: the "CDN" an LFS file redirects to)

``rev`` is a revision name or a commit sha. Each revision's commit sha is derived
from its folder's contents; :meth:`HubServer.set_revision` moves a revision to
another folder (the old commit stays resolvable by sha, as on the Hub).

Errors carry the ``X-Error-Code`` the client maps to its exceptions:
unknown repo -> 401 RepoNotFound, gated repo without the token -> 401 GatedRepo,
unknown revision -> 404 RevisionNotFound, unknown file -> 404 EntryNotFound.

Faults (``hub.faults``) are deterministic and consumed in request order:
``fail_next(k, status, retry_after)``, ``drop_after(nbytes, k)``, ``corrupt(filename)``.
"""

import fnmatch
import hashlib
import json
import os
import socket
import threading
from collections import namedtuple
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional
from urllib.parse import parse_qs, quote, unquote, urlsplit

Request = namedtuple("Request", "method path range status nbytes")

LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf", "*.npz", "*.h5", "*.msgpack")
_CHUNK = 1 << 16


class FileEntry:
    """One file of a snapshot: its disk path and the hashes the Hub advertises."""

    def __init__(self, rel: str, disk_path: str, lfs: bool):
        self.rel = rel
        self.disk_path = disk_path
        self.size = os.path.getsize(disk_path)
        sha1 = hashlib.sha1(b"blob %d\0" % self.size)
        sha256 = hashlib.sha256()
        with open(disk_path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                sha1.update(chunk)
                sha256.update(chunk)
        self.sha256 = sha256.hexdigest() if lfs else None
        if lfs:
            pointer = (
                "version https://git-lfs.github.com/spec/v1\n"
                f"oid sha256:{self.sha256}\nsize {self.size}\n"
            ).encode()
            self.pointer_size = len(pointer)
            self.blob_id = hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()
        else:
            self.pointer_size = None
            self.blob_id = sha1.hexdigest()

    @property
    def etag(self) -> str:
        """The client names cache blobs by this: sha256 for LFS files, git blob sha1 otherwise."""
        return self.sha256 or self.blob_id


class Snapshot:
    """The files of one commit: a folder read at snapshot time (hashes fixed then)."""

    def __init__(self, folder: str, lfs_patterns=LFS_PATTERNS):
        self.folder = os.path.abspath(folder)
        self.files: Dict[str, FileEntry] = {}
        for root, dirs, names in os.walk(self.folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                if name.startswith("."):
                    continue
                path = os.path.join(root, name)
                rel = os.path.relpath(path, self.folder).replace(os.sep, "/")
                lfs = any(fnmatch.fnmatch(name, p) for p in lfs_patterns)
                self.files[rel] = FileEntry(rel, path, lfs)
        listing = "".join(f"{rel}\0{e.blob_id}\n" for rel, e in sorted(self.files.items()))
        self.sha = hashlib.sha1(listing.encode()).hexdigest()

    def dirs(self) -> List[str]:
        out = set()
        for rel in self.files:
            parts = rel.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                out.add("/".join(parts[:i]))
        return sorted(out)


class Faults:
    """Deterministic fault injection; every method is thread-safe and consumed in request order."""

    def __init__(self):
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self._status: List[dict] = []
            self._drops: List[dict] = []
            self._corrupt: Dict[str, Optional[int]] = {}

    def fail_next(self, k: int = 1, status: int = 503, retry_after: Optional[int] = None,
                  method: Optional[str] = None, match: Optional[str] = None) -> None:
        """Answer the next ``k`` requests (optionally only those with ``method`` / whose path
        contains ``match``) with ``status``, plus ``Retry-After: retry_after`` if given."""
        with self._lock:
            self._status.append(dict(left=k, status=status, retry_after=retry_after, method=method, match=match))

    def drop_after(self, nbytes: int, k: int = 1, match: Optional[str] = None) -> None:
        """For the next ``k`` file GET responses (resolve or CDN; path containing ``match`` if
        given), send the headers and ``nbytes`` body bytes, then close the connection."""
        with self._lock:
            self._drops.append(dict(left=k, nbytes=nbytes, match=match))

    def corrupt(self, filename: str, offset: Optional[int] = None) -> None:
        """Serve ``filename`` (a repo-relative path, any repo and revision) with the byte at
        ``offset`` (default: the last byte) flipped; the advertised sizes and hashes stay."""
        with self._lock:
            self._corrupt[filename] = offset

    def uncorrupt(self, filename: str) -> None:
        with self._lock:
            self._corrupt.pop(filename, None)

    @staticmethod
    def _take(rules: List[dict], method: str, path: str) -> Optional[dict]:
        for rule in rules:
            if rule.get("method") not in (None, method):
                continue
            if rule["match"] is not None and rule["match"] not in path:
                continue
            rule["left"] -= 1
            if rule["left"] <= 0:
                rules.remove(rule)
            return rule
        return None

    def take_status(self, method: str, path: str) -> Optional[dict]:
        with self._lock:
            return self._take(self._status, method, path)

    def take_drop(self, path: str) -> Optional[int]:
        with self._lock:
            rule = self._take(self._drops, "GET", path)
            return None if rule is None else rule["nbytes"]

    def corrupt_offset(self, filename: str, size: int) -> Optional[int]:
        with self._lock:
            if filename not in self._corrupt or size == 0:
                return None
            offset = self._corrupt[filename]
            return size - 1 if offset is None else offset


class _Repo:
    def __init__(self, repo_id: str):
        self.repo_id = repo_id
        self.refs: Dict[str, str] = {}  # revision name -> commit sha
        self.commits: Dict[str, Snapshot] = {}

    def resolve(self, revision: str) -> Optional[Snapshot]:
        sha = self.refs.get(revision, revision)
        return self.commits.get(sha)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LocalHub/1.0"
    timeout = 30

    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

    def setup(self):
        super().setup()
        self.server.hub._track(self.connection, True)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.hub._track(self.connection, False)

    # ------------------------------------------------------------------ plumbing
    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_GET(self):
        self._dispatch("GET")

    def _dispatch(self, method: str) -> None:
        hub: HubServer = self.server.hub
        # logged now and updated before each write: complete by the time the client has the response
        self._entry = hub._begin(method, self.path, self.headers.get("Range"))
        fault = hub.faults.take_status(method, self.path)
        if fault is not None:
            headers = {"X-Error-Message": "injected fault"}
            if fault["retry_after"] is not None:
                headers["Retry-After"] = str(fault["retry_after"])
            self._error(fault["status"], None, "injected fault", headers)
        else:
            self._route(method)

    def _send(self, status: int, headers: dict, body: bytes = b"") -> None:
        self.server.hub._update(self._entry, status=status)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self._count(len(body))
            self.wfile.write(body)

    def _count(self, n: int) -> None:
        """Account ``n`` body bytes about to be written."""
        self.server.hub._update(self._entry, sent=n)

    def _json(self, obj, headers: Optional[dict] = None) -> None:
        body = json.dumps(obj).encode()
        self._send(200, {"Content-Type": "application/json; charset=utf-8", **(headers or {})}, body)

    def _error(self, status: int, code: Optional[str], message: str, headers: Optional[dict] = None) -> None:
        h = {"Content-Type": "application/json; charset=utf-8", "X-Error-Message": message, **(headers or {})}
        if code:
            h["X-Error-Code"] = code
        self._send(status, h, json.dumps({"error": message}).encode())

    # ------------------------------------------------------------------ routing
    def _route(self, method: str) -> None:
        hub: HubServer = self.server.hub
        split = urlsplit(self.path)
        path = unquote(split.path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}

        if path.startswith("/__cdn__/") and hub.redirect_lfs:
            return self._cdn(path[len("/__cdn__/"):])
        if path.startswith("/api/models/"):
            rest = path[len("/api/models/"):]
            repo, tail = hub._match_repo(rest)
            if repo is None:
                return self._error(401, "RepoNotFound", "Repository not found")
            if not self._authorized(repo):
                return self._gated()
            if method != "GET":
                return self._error(405, None, "Method not allowed")
            if tail == "":
                return self._model_info(repo, "main", query)
            if tail.startswith("/revision/"):
                return self._model_info(repo, tail[len("/revision/"):], query)
            if tail.startswith("/tree/"):
                rev, _, sub = tail[len("/tree/"):].partition("/")
                return self._tree(repo, rev, sub.strip("/"), query)
            return self._error(404, None, "Not found")
        repo, tail = hub._match_repo(path.lstrip("/"))
        if repo is not None and tail.startswith("/resolve/"):
            if not self._authorized(repo):
                return self._gated()
            rev, _, filename = tail[len("/resolve/"):].partition("/")
            return self._resolve(repo, rev, filename)
        if tail.startswith("/resolve/") or path.count("/resolve/"):
            return self._error(401, "RepoNotFound", "Repository not found")
        return self._error(404, None, "Not found")

    def _authorized(self, repo: _Repo) -> bool:
        hub: HubServer = self.server.hub
        if repo.repo_id not in hub.gated:
            return True
        token = hub.token
        return token is not None and self.headers.get("Authorization") == f"Bearer {token}"

    def _gated(self) -> None:
        self._error(401, "GatedRepo", "Access to this repository is restricted. You must be authenticated to access it.")

    def _snapshot(self, repo: _Repo, revision: str) -> Optional[Snapshot]:
        snap = repo.resolve(revision)
        if snap is None:
            self._error(404, "RevisionNotFound", "Invalid rev id: " + revision)
        return snap

    # ------------------------------------------------------------------ endpoints
    def _model_info(self, repo: _Repo, revision: str, query: dict) -> None:
        snap = self._snapshot(repo, revision)
        if snap is None:
            return
        blobs = query.get("blobs", "").lower() == "true"
        siblings = []
        for rel, e in snap.files.items():
            sib = {"rfilename": rel}
            if blobs:
                sib.update(size=e.size, blobId=e.blob_id)
                if e.sha256:
                    sib["lfs"] = {"sha256": e.sha256, "size": e.size, "pointerSize": e.pointer_size}
            siblings.append(sib)
        hub: HubServer = self.server.hub
        self._json({
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
            "sha": snap.sha,
            "private": False,
            "gated": "auto" if repo.repo_id in hub.gated else False,
            "disabled": False,
            "tags": [],
            "siblings": siblings,
        })

    def _tree(self, repo: _Repo, revision: str, sub: str, query: dict) -> None:
        snap = self._snapshot(repo, revision)
        if snap is None:
            return
        recursive = query.get("recursive", "").lower() == "true"
        dirs = snap.dirs()
        if sub and sub not in dirs:
            return self._error(404, "EntryNotFound", f"{sub} does not exist on \"{revision}\"",
                               {"X-Repo-Commit": snap.sha})
        prefix = sub + "/" if sub else ""

        def wanted(p: str) -> bool:
            if not p.startswith(prefix):
                return False
            return recursive or "/" not in p[len(prefix):]

        items = [{"type": "directory", "oid": hashlib.sha1(d.encode() + snap.sha.encode()).hexdigest(),
                  "size": 0, "path": d} for d in dirs if wanted(d)]
        for rel, e in snap.files.items():
            if wanted(rel):
                item = {"type": "file", "oid": e.blob_id, "size": e.size, "path": rel}
                if e.sha256:
                    item["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": e.pointer_size}
                items.append(item)
        self._json(items)

    def _resolve(self, repo: _Repo, revision: str, filename: str) -> None:
        hub: HubServer = self.server.hub
        snap = self._snapshot(repo, revision)
        if snap is None:
            return
        entry = snap.files.get(filename)
        if entry is None:
            return self._error(404, "EntryNotFound", f"{filename} does not exist on \"{revision}\"",
                               {"X-Repo-Commit": snap.sha})
        headers = {"X-Repo-Commit": snap.sha, "ETag": f'"{entry.etag}"'}
        if entry.sha256:
            headers["X-Linked-Etag"] = f'"{entry.sha256}"'
            headers["X-Linked-Size"] = str(entry.size)
            if hub.redirect_lfs:
                # A different origin (localhost vs 127.0.0.1), so the client treats it as a CDN:
                # the HEAD stops at this 302 and reads X-Linked-*; the GET goes to Location.
                location = f"http://localhost:{hub.port}/__cdn__/{entry.sha256}?file={quote(filename)}"
                return self._send(302, {**headers, "Location": location})
        self._file(entry, headers)

    def _cdn(self, sha256: str) -> None:
        hub: HubServer = self.server.hub
        entry = hub._blob(sha256)
        if entry is None:
            return self._error(404, None, "Not found")
        self._file(entry, {"ETag": f'"{entry.sha256}"'})

    def _file(self, entry: FileEntry, headers: dict) -> None:
        hub: HubServer = self.server.hub
        size = entry.size
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng:
            parsed = _parse_range(rng, size)
            if parsed is None:
                return self._send(416, {**headers, "Content-Range": f"bytes */{size}"})
            if parsed != "ignore":
                start, end = parsed
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = max(0, end - start + 1)
        headers.update({"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes",
                        "Content-Length": str(length)})
        if self.command == "HEAD":
            return self._send(status, headers)
        drop = hub.faults.take_drop(self.path)
        flip = hub.faults.corrupt_offset(entry.rel, size)
        self._send(status, headers)
        budget = length if drop is None else min(drop, length)
        pos = start
        with open(entry.disk_path, "rb") as f:
            f.seek(start)
            while pos < start + budget:
                chunk = f.read(min(_CHUNK, start + budget - pos))
                if not chunk:
                    break
                if flip is not None and pos <= flip < pos + len(chunk):
                    b = bytearray(chunk)
                    b[flip - pos] ^= 0xFF
                    chunk = bytes(b)
                self._count(len(chunk))
                self.wfile.write(chunk)
                pos += len(chunk)
        if drop is not None and budget < length:
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _parse_range(value: str, size: int):
    """(start, end) for one ``bytes=`` range, "ignore" for forms we answer with 200, None if unsatisfiable."""
    unit, _, spec = value.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return "ignore"
    first, sep, last = spec.strip().partition("-")
    try:
        if not sep:
            return "ignore"
        if first == "":
            n = int(last)
            if n <= 0:
                return None
            return max(0, size - n), size - 1
        start = int(first)
        end = size - 1 if last == "" else min(int(last), size - 1)
    except ValueError:
        return "ignore"
    if start >= size or end < start:
        return None
    return start, end


class HubServer:
    """Serve ``{repo_id: folder}`` (revision "main") like the Hub, on 127.0.0.1, in a thread.

    ``revisions``: extra ``{repo_id: {revision_name: folder}}``. ``gated``: repo ids that
    answer 401 GatedRepo unless ``Authorization: Bearer {token}`` is sent.
    ``redirect_lfs``: LFS files' resolve answers 302 to a "CDN" origin (http://localhost:PORT),
    as the real Hub does.
    """

    def __init__(self, repos: Dict[str, str], revisions: Optional[Dict[str, Dict[str, str]]] = None,
                 gated=(), token: Optional[str] = None, redirect_lfs: bool = False,
                 lfs_patterns=LFS_PATTERNS):
        self.lfs_patterns = tuple(lfs_patterns)
        self.gated = set(gated)
        self.token = token
        self.redirect_lfs = redirect_lfs
        self.faults = Faults()
        self._lock = threading.Lock()
        self._requests: List[Request] = []
        self._bytes_sent = 0
        self._repos: Dict[str, _Repo] = {}
        self._conns = set()
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        for repo_id, folder in repos.items():
            self.set_revision(repo_id, "main", folder)
        for repo_id, revs in (revisions or {}).items():
            for name, folder in revs.items():
                self.set_revision(repo_id, name, folder)

    # ------------------------------------------------------------------ repo state
    def set_revision(self, repo_id: str, revision: str, folder: str) -> str:
        """Point ``revision`` of ``repo_id`` at ``folder`` (re-read now); return its commit sha.
        Moving a revision keeps the previous commit resolvable by its sha."""
        snap = Snapshot(folder, self.lfs_patterns)
        with self._lock:
            repo = self._repos.setdefault(repo_id, _Repo(repo_id))
            repo.commits[snap.sha] = snap
            repo.refs[revision] = snap.sha
        return snap.sha

    def sha(self, repo_id: str, revision: str = "main") -> str:
        return self._repos[repo_id].resolve(revision).sha

    def _match_repo(self, rest: str):
        """Longest known repo id that ``rest`` starts with, and the remaining path."""
        for repo_id in sorted(self._repos, key=len, reverse=True):
            if rest == repo_id or rest.startswith(repo_id + "/"):
                return self._repos[repo_id], rest[len(repo_id):]
        return None, rest

    def _blob(self, sha256: str) -> Optional[FileEntry]:
        for repo in list(self._repos.values()):
            for snap in list(repo.commits.values()):
                for e in snap.files.values():
                    if e.sha256 == sha256:
                        return e
        return None

    # ------------------------------------------------------------------ accounting
    def _begin(self, method: str, path: str, range_header: Optional[str]) -> list:
        """A new log entry [method, path, range, status, bytes sent], for _update."""
        entry = [method, path, range_header, None, 0]
        with self._lock:
            self._requests.append(entry)
        return entry

    def _update(self, entry: list, status: Optional[int] = None, sent: int = 0) -> None:
        with self._lock:
            if status is not None:
                entry[3] = status
            entry[4] += sent
            self._bytes_sent += sent

    def _track(self, conn, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)

    @property
    def requests(self) -> List[Request]:
        """A copy of the request log: (method, path, range header or None, status, body bytes sent)."""
        with self._lock:
            return [Request(*entry) for entry in self._requests]

    @property
    def bytes_sent(self) -> int:
        with self._lock:
            return self._bytes_sent

    def reset_log(self) -> None:
        with self._lock:
            self._requests.clear()
            self._bytes_sent = 0

    # ------------------------------------------------------------------ lifecycle
    @property
    def port(self) -> int:
        return self._port

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "HubServer":
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.hub = self
        self._server = server
        self._port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"HubServer:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop this server: the accept loop, the listening socket and its open connections."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
