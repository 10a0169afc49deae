"""What the local Hub server (hub_server.py) serves: folders read as commits.

A file's hashes are computed on first need, once (thread-safe), from the file as it
is then. A sparse file (far fewer bytes allocated than its size: a header-only
"giant" checkpoint) is served as a non-LFS file whose blob id is a hash of its
path, size and mtime, so it is never read whole: see hub_server's docstring.
"""

import fnmatch
import hashlib
import os
import threading
from typing import Dict, List, Optional, Tuple, Union

LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf", "*.npz", "*.h5", "*.msgpack")
SPARSE_MIN_BYTES = 1 << 20  # smaller files are always hashed


class FileEntry:
    """One file of a snapshot: its disk path and the hashes the Hub advertises (lazily)."""

    def __init__(self, rel: str, disk_path: str, lfs: bool):
        st = os.stat(disk_path)
        self.rel = rel
        self.disk_path = disk_path
        self.size = st.st_size
        self.sparse = st.st_size > SPARSE_MIN_BYTES and st.st_blocks * 512 < st.st_size // 2
        self.lfs = lfs and not self.sparse
        self.stamp = f"{disk_path}\0{st.st_size}\0{st.st_mtime_ns}"  # cheap identity
        self._lock = threading.Lock()
        self._hashes: Optional[Tuple[str, Optional[str], Optional[int]]] = None

    def _hashed(self) -> Tuple[str, Optional[str], Optional[int]]:
        """(git blob id, sha256 if LFS, LFS pointer size if LFS), computed once."""
        with self._lock:
            if self._hashes is None:
                self._hashes = self._compute()
            return self._hashes

    def _compute(self) -> Tuple[str, Optional[str], Optional[int]]:
        if self.sparse:
            return hashlib.sha1(f"sparse\0{self.stamp}".encode()).hexdigest(), None, None
        sha1 = hashlib.sha1(b"blob %d\0" % self.size)
        sha256 = hashlib.sha256()
        with open(self.disk_path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                sha1.update(chunk)
                sha256.update(chunk)
        if not self.lfs:
            return sha1.hexdigest(), None, None
        pointer = (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256.hexdigest()}\nsize {self.size}\n"
        ).encode()
        return hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest(), sha256.hexdigest(), len(pointer)

    @property
    def blob_id(self) -> str:
        return self._hashed()[0]

    @property
    def sha256(self) -> Optional[str]:
        """The LFS sha256; None for a file served as not in LFS (small, or sparse)."""
        return self._hashed()[1] if self.lfs else None

    @property
    def pointer_size(self) -> Optional[int]:
        return self._hashed()[2]

    @property
    def etag(self) -> str:
        """The client names cache blobs by this: sha256 for LFS files, git blob sha1 otherwise."""
        return self.sha256 or self.blob_id

    def has_sha256(self, sha256: str) -> bool:
        """Whether this LFS file's sha256, if already computed, is ``sha256`` (never hashes)."""
        with self._lock:
            return self.lfs and self._hashes is not None and self._hashes[1] == sha256


class Snapshot:
    """The files of one commit: a folder listed at snapshot time. Its sha is derived from
    each file's name, path, size and mtime (no file is read)."""

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
        listing = "".join(f"{rel}\0{e.stamp}\n" for rel, e in sorted(self.files.items()))
        self.sha = hashlib.sha1(listing.encode()).hexdigest()

    def dirs(self) -> List[str]:
        out = set()
        for rel in self.files:
            parts = rel.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                out.add("/".join(parts[:i]))
        return sorted(out)


class Repo:
    """A repo's revision names and the commits they pointed at."""

    def __init__(self, repo_id: str):
        self.repo_id = repo_id
        self.refs: Dict[str, str] = {}  # revision name -> commit sha
        self.commits: Dict[str, Snapshot] = {}

    def resolve(self, revision: str) -> Optional[Snapshot]:
        sha = self.refs.get(revision, revision)
        return self.commits.get(sha)


def parse_range(value: str, size: int) -> Union[Tuple[int, int], str, None]:
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
