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
from its folder's listing; :meth:`HubServer.set_revision` moves a revision to
another folder (the old commit stays resolvable by sha, as on the Hub).

Errors carry the ``X-Error-Code`` the client maps to its exceptions:
unknown repo -> 401 RepoNotFound, gated repo without the token -> 401 GatedRepo,
unknown revision -> 404 RevisionNotFound, unknown file -> 404 EntryNotFound.

Modules: hub_server.py (HubServer: repos, request log, lifecycle), hub_handler.py
(the HTTP endpoints), hub_files.py (FileEntry, Snapshot), hub_faults.py (Faults).

Faults (``hub.faults``, hub_faults.py) are deterministic and consumed in request order:
``fail_next(k, status, retry_after)``, ``drop_after(nbytes, k)``, ``drop_randomly(k, match, seed)``,
``ignore_range(k)``, ``delay(seconds, k)``, ``corrupt(filename)``.

Files (hub_files.py) are listed when a revision is set and hashed on first need
(once, thread-safe), so startup reads no file. Test-server shortcut: a *sparse*
file (size > 1 MiB, under half of it allocated on disk: a "giant" header-only
checkpoint made with truncate) is served as if it were not stored in LFS: no
sha256 in model_info or the tree, no ``X-Linked-Etag`` / ``X-Linked-Size``, and a
blob id / ETag hashed from its path, size and mtime instead of its bytes. A
header-only trace never needs the hash, and executing a sparse checkpoint is
then verified by length and header only. Commit shas are derived the same cheap
way, from each file's name, path, size and mtime.
"""

import socket
import threading
from collections import namedtuple
from http.server import ThreadingHTTPServer
from typing import Dict, List, Optional

from hub_faults import Faults
from hub_files import LFS_PATTERNS, FileEntry, Repo, Snapshot
from hub_handler import Handler

Request = namedtuple("Request", "method path range status nbytes")


class HubServer:
    """Serve ``{repo_id: folder}`` (revision "main") like the Hub, on 127.0.0.1, in a thread.

    ``revisions``: extra ``{repo_id: {revision_name: folder}}``. ``gated``: repo ids that
    answer 401 GatedRepo unless ``Authorization: Bearer {token}`` is sent.
    ``redirect_lfs``: LFS files' resolve answers 302 to a "CDN" origin (http://localhost:PORT),
    as the real Hub does.
    """

    def __init__(
        self,
        repos: Dict[str, str],
        revisions: Optional[Dict[str, Dict[str, str]]] = None,
        gated=(),
        token: Optional[str] = None,
        redirect_lfs: bool = False,
        lfs_patterns=LFS_PATTERNS,
    ):
        self.lfs_patterns = tuple(lfs_patterns)
        self.gated = set(gated)
        self.token = token
        self.redirect_lfs = redirect_lfs
        self.faults = Faults()
        self._lock = threading.Lock()
        self._requests: List[Request] = []
        self._bytes_sent = 0
        self._repos: Dict[str, Repo] = {}
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
        """Point ``revision`` of ``repo_id`` at ``folder`` (listed now, hashed on first need);
        return its commit sha. Moving a revision keeps the previous commit resolvable by its sha."""
        snap = Snapshot(folder, self.lfs_patterns)
        with self._lock:
            repo = self._repos.setdefault(repo_id, Repo(repo_id))
            repo.commits[snap.sha] = snap
            repo.refs[revision] = snap.sha
        return snap.sha

    def sha(self, repo_id: str, revision: str = "main") -> str:
        return self._repos[repo_id].resolve(revision).sha

    def _match_repo(self, rest: str):
        """Longest known repo id that ``rest`` starts with, and the remaining path."""
        for repo_id in sorted(self._repos, key=len, reverse=True):
            if rest == repo_id or rest.startswith(repo_id + "/"):
                return self._repos[repo_id], rest[len(repo_id) :]
        return None, rest

    def _blob(self, sha256: str) -> Optional[FileEntry]:
        """The LFS file a CDN link names (hashed when the link was made: nothing is hashed here)."""
        for repo in list(self._repos.values()):
            for snap in list(repo.commits.values()):
                for e in snap.files.values():
                    if e.has_sha256(sha256):
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
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.hub = self
        self._server = server
        self._port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"HubServer:{self.port}", daemon=True
        )
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
