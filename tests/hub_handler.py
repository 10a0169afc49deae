"""The HTTP side of the local Hub server (hub_server.py): routing, endpoints, and file
bodies with the injected faults (hub_faults.py). Every request is logged in the server."""

import hashlib
import json
import socket
import time
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Optional
from urllib.parse import parse_qs, quote, unquote, urlsplit

from hub_files import FileEntry, Repo, Snapshot, parse_range

if TYPE_CHECKING:
    from hub_server import HubServer

_CHUNK = 1 << 16


class Handler(BaseHTTPRequestHandler):
    """One connection to a HubServer (``self.server.hub``): logs, faults, then the endpoint."""

    protocol_version = "HTTP/1.1"
    server_version = "LocalHub/1.0"
    timeout = 30
    disable_nagle_algorithm = True  # else each small response waits ~40 ms for a delayed ACK

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
        hub: "HubServer" = self.server.hub
        # logged now and updated before each write: complete by the time the client has the response
        self._entry = hub._begin(method, self.path, self.headers.get("Range"))
        time.sleep(hub.faults.take_delay(method, self.path, self.headers.get("Range") is not None))
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
        hub: "HubServer" = self.server.hub
        split = urlsplit(self.path)
        path = unquote(split.path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}

        if path.startswith("/__cdn__/") and hub.redirect_lfs:
            return self._cdn(path[len("/__cdn__/") :])
        if path.startswith("/api/models/"):
            rest = path[len("/api/models/") :]
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
                return self._model_info(repo, tail[len("/revision/") :], query)
            if tail.startswith("/tree/"):
                rev, _, sub = tail[len("/tree/") :].partition("/")
                return self._tree(repo, rev, sub.strip("/"), query)
            return self._error(404, None, "Not found")
        repo, tail = hub._match_repo(path.lstrip("/"))
        if repo is not None and tail.startswith("/resolve/"):
            if not self._authorized(repo):
                return self._gated()
            rev, _, filename = tail[len("/resolve/") :].partition("/")
            return self._resolve(repo, rev, filename)
        if tail.startswith("/resolve/") or path.count("/resolve/"):
            return self._error(401, "RepoNotFound", "Repository not found")
        return self._error(404, None, "Not found")

    def _authorized(self, repo: Repo) -> bool:
        hub: "HubServer" = self.server.hub
        if repo.repo_id not in hub.gated:
            return True
        token = hub.token
        return token is not None and self.headers.get("Authorization") == f"Bearer {token}"

    def _gated(self) -> None:
        self._error(
            401, "GatedRepo", "Access to this repository is restricted. You must be authenticated to access it."
        )

    def _snapshot(self, repo: Repo, revision: str) -> Optional[Snapshot]:
        snap = repo.resolve(revision)
        if snap is None:
            self._error(404, "RevisionNotFound", "Invalid rev id: " + revision)
        return snap

    # ------------------------------------------------------------------ endpoints
    def _model_info(self, repo: Repo, revision: str, query: dict) -> None:
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
        hub: "HubServer" = self.server.hub
        self._json(
            {
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
            }
        )

    def _tree(self, repo: Repo, revision: str, sub: str, query: dict) -> None:
        snap = self._snapshot(repo, revision)
        if snap is None:
            return
        recursive = query.get("recursive", "").lower() == "true"
        dirs = snap.dirs()
        if sub and sub not in dirs:
            return self._error(
                404, "EntryNotFound", f'{sub} does not exist on "{revision}"', {"X-Repo-Commit": snap.sha}
            )
        prefix = sub + "/" if sub else ""

        def wanted(p: str) -> bool:
            if not p.startswith(prefix):
                return False
            return recursive or "/" not in p[len(prefix) :]

        items = [
            {"type": "directory", "oid": hashlib.sha1(d.encode() + snap.sha.encode()).hexdigest(), "size": 0, "path": d}
            for d in dirs
            if wanted(d)
        ]
        for rel, e in snap.files.items():
            if wanted(rel):
                item = {"type": "file", "oid": e.blob_id, "size": e.size, "path": rel}
                if e.sha256:
                    item["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": e.pointer_size}
                items.append(item)
        self._json(items)

    def _resolve(self, repo: Repo, revision: str, filename: str) -> None:
        hub: "HubServer" = self.server.hub
        snap = self._snapshot(repo, revision)
        if snap is None:
            return
        entry = snap.files.get(filename)
        if entry is None:
            return self._error(
                404, "EntryNotFound", f'{filename} does not exist on "{revision}"', {"X-Repo-Commit": snap.sha}
            )
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
        hub: "HubServer" = self.server.hub
        entry = hub._blob(sha256)
        if entry is None:
            return self._error(404, None, "Not found")
        self._file(entry, {"ETag": f'"{entry.sha256}"'})

    def _file(self, entry: FileEntry, headers: dict) -> None:
        hub: "HubServer" = self.server.hub
        size = entry.size
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng and not (self.command == "GET" and hub.faults.take_ignore_range(self.path)):
            parsed = parse_range(rng, size)
            if parsed is None:
                return self._send(416, {**headers, "Content-Range": f"bytes */{size}"})
            if parsed != "ignore":
                start, end = parsed
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = max(0, end - start + 1)
        headers.update(
            {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes", "Content-Length": str(length)}
        )
        if self.command == "HEAD":
            return self._send(status, headers)
        drop = hub.faults.take_drop(self.path, length)
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
