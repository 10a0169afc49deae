"""Output folder: shards preallocated and written in place under ``OUT.partial``,
the resume journal (journal.py), resumable finishing and the final rename.

- Containment: ``OUT.partial`` is opened once (``O_DIRECTORY | O_NOFOLLOW``)
  and locked with ``flock`` on that fd (a second run refuses). Files and
  sub-folders are created relative to it, component by component, with
  ``O_NOFOLLOW``; a symlink, hard link or special file at a name the output
  uses is replaced, never written through.
- Before creating anything: OUT, its parent and the free space (on resume,
  only what is not yet allocated). Shards get ``posix_fallocate``.
- Resume refuses (does not redo) when a source file the plan reads changed
  its identity: size, mtime, inode or device for a folder (source bytes are
  not hashed, that measured ~20% of execute's wall time: an in-place edit
  keeping all four is missed); size, commit or sha256 for the Hub.
- Finishing (fsync shards, text files, copies, a "finished" record, rename,
  then remove the journal from OUT) may be killed at any instant and resumed.
  OS errors on the output raise a one-line ``OutputError``; OUT.partial stays
  resumable.
"""

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
from typing import Dict, Iterable, List, Optional, Tuple

from ..collapse import human_bytes
from ..plan import Output, OutputFile, Plan
from . import journal
from .copies import made_file, regular_size
from .journal import JOURNAL
from .sources import SourceMismatch

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW


class OutputExists(ValueError):
    pass


class OutputError(ValueError):
    """Writing the output failed (no space, read-only, permission, I/O error)."""


class OutputWriter:
    """Writes ``plan``'s output into ``out_dir`` via ``out_dir.partial``.

    Refuses with one line (OutputExists, OutputError, SourceMismatch) before
    creating anything when: OUT exists (a dangling symlink too), OUT.partial
    exists without ``resume`` or is in use, OUT's parent is missing, not a
    folder or not writable, or the disk lacks the space still to write.
    With ``resume``, an OUT holding only this plan's finished journal is
    complete (``complete``): ``finish()`` then just removes the journal.
    """

    def __init__(self, plan: Plan, source, out_dir: str, resume: bool):
        self.plan = plan
        self.source = source  # a LocalSource or HubSource
        self.out_dir = os.path.abspath(out_dir)
        self.partial = self.out_dir + ".partial"
        self.complete = False
        self.done: Dict[int, Dict[str, str]] = {}
        self._dirs: Dict[str, int] = {}  # folder fds by path relative to OUT.partial ("" is it)
        self._fds: Dict[int, int] = {}  # shard fds by file index
        self._journal = -1
        self._left = 0  # bytes still to allocate or write, for the ENOSPC message
        try:
            self._open(resume)
        except BaseException:
            self.close()
            raise

    def _open(self, resume: bool) -> None:
        if os.path.lexists(self.out_dir):
            if resume and not os.path.lexists(self.partial) and self._finished_out():
                self.complete = True
                return
            raise OutputExists(
                f"Cannot save to the path {self.out_dir} as it already exists. "
                "Please delete the file/directory or specify a new path to save to."
            )
        _check_parent(os.path.dirname(self.out_dir))
        self._copy_dirs, self._copy_files = self.source.copies()
        sources = self.source.identity()
        state = None
        if not os.path.lexists(self.partial):
            self._check_space()
            with self._faults(""):
                os.mkdir(self.partial)
            self._dirs[""] = _lock(self.partial)
        elif not resume:
            os.close(_lock(self.partial))  # refuses when in use
            raise OutputExists(f"{self.partial} holds an interrupted run: pass --resume to continue it, or delete it")
        else:
            self._dirs[""] = _lock(self.partial)
            state = self._resume_state(sources)
            self._check_space()
        for i, f in enumerate(self.plan.files):
            if f.kind == "safetensors":
                self._fds[i] = self._open_shard(f)
        with self._faults(JOURNAL):
            if state is None:
                self._replace(JOURNAL + ".tmp", [journal.header_line(self.plan.digest, sources)])
                os.rename(JOURNAL + ".tmp", JOURNAL, src_dir_fd=self._dirs[""], dst_dir_fd=self._dirs[""])
            else:
                self.done = state.done
            self._journal = os.open(JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW, dir_fd=self._dirs[""])
        if state is not None and not state.whole_lines:
            self._append(b"\n")  # end a line cut short by the interruption

    def _finished_out(self) -> bool:
        """OUT holds this plan's journal with its "finished" record (killed
        between the rename and removing the journal); locks OUT then."""
        try:
            fd = os.open(self.out_dir, _DIR)
        except OSError:
            return False
        raw = journal.read(fd)
        os.close(fd)
        if raw is None or not journal.parse(raw, self.plan).finished:
            return False
        self._dirs[""] = _lock(self.out_dir)
        return True

    def _resume_state(self, sources: Dict[str, list]) -> Optional[journal.Journal]:
        """The journal to continue, or None to start over (there is none, or its
        first line is damaged and every shard in OUT.partial is this plan's)."""
        raw = journal.read(self._dirs[""])
        if raw is None:
            return None  # killed before the journal was written
        state = journal.parse(raw, self.plan)
        if state.header is not None and state.header["plan"] != self.plan.digest:
            raise OutputExists(f"{self.partial} was written by a different plan; delete it")
        recorded = journal.recorded_sources(state.header) if state.header else None
        if recorded is None:
            if all(self._is_planned_shard(f) for f in self.plan.shards):
                return None
            raise OutputExists(
                f"{self.partial}: its journal is damaged and nothing shows it belongs to this plan; "
                "delete it to start over"
            )
        changed = journal.changed_source(recorded, sources, self.source.identity_fields)
        if changed:
            raise SourceMismatch(
                f"source {changed} changed since the interrupted run; delete {self.partial} "
                f"or pass the same source{self.source.resume_hint(recorded)}"
            )
        return state

    def _is_planned_shard(self, f: OutputFile) -> bool:
        try:
            fd = os.open(f.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=self._dirs[""])
        except OSError:
            return False
        st, header = os.fstat(fd), os.pread(fd, len(f.header), 0)
        os.close(fd)
        return stat.S_ISREG(st.st_mode) and st.st_size == f.size and header == f.header

    def _check_space(self) -> None:
        """Refuse when the disk lacks the bytes still to allocate or write."""
        need = sum(f.size - self._allocated(f) for f in self.plan.shards)
        need += sum(f.size for f in self.plan.files if f.kind != "safetensors")
        need += sum(size for _, size in self._copy_files)
        need += self.source.space_needed
        where = self.partial if self._dirs else os.path.dirname(self.out_dir)
        with self._faults(""):
            st = os.statvfs(where)
        free = st.f_bavail * st.f_frsize
        if need > free:
            raise OutputError(f"{self.out_dir}: needs {human_bytes(need)} free, has {human_bytes(free)}")
        self._left = need

    def _allocated(self, f: OutputFile) -> int:
        """Bytes already allocated to shard ``f`` in OUT.partial (kept on resume)."""
        if not self._dirs:
            return 0
        try:
            st = os.stat(f.name, dir_fd=self._dirs[""], follow_symlinks=False)
        except OSError:
            return 0
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size != f.size:
            return 0
        return min(st.st_blocks * 512, f.size)

    def _open_shard(self, f: OutputFile) -> int:
        with self._faults(f.name):
            folder, base = self._parent(f.name)
            fd = _open_own(folder, base)
            st = os.fstat(fd)
            if st.st_size != f.size or os.pread(fd, len(f.header), 0) != f.header:
                os.ftruncate(fd, 0)
                _pwrite_all(fd, f.header, 0)
                os.ftruncate(fd, f.size)
                st = os.fstat(fd)
            _allocate(fd, f.size)
            self._left = max(0, self._left - (f.size - min(st.st_blocks * 512, f.size)))
            return fd

    def _folder(self, rel: str) -> int:
        """The fd of sub-folder ``rel`` of OUT.partial, created component by component."""
        if rel in self._dirs:
            return self._dirs[rel]
        parent, _, base = rel.rpartition("/")
        parent_fd = self._folder(parent)
        try:
            fd = os.open(base, _DIR, dir_fd=parent_fd)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):  # a symlink or file where the folder goes
                os.unlink(base, dir_fd=parent_fd)
            elif e.errno != errno.ENOENT:
                raise
            os.mkdir(base, dir_fd=parent_fd)
            fd = os.open(base, _DIR, dir_fd=parent_fd)
        self._dirs[rel] = fd
        return fd

    def _parent(self, name: str) -> Tuple[int, str]:
        folder, _, base = name.rpartition("/")
        return self._folder(folder), base

    def _replace(self, name: str, chunks: Iterable[bytes]) -> None:
        """Write a new regular file ``name`` (whatever was there is removed first)."""
        folder, base = self._parent(name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(base, dir_fd=folder)
        fd = os.open(base, _NEW, 0o644, dir_fd=folder)
        try:
            pos = 0
            for chunk in chunks:
                _pwrite_all(fd, chunk, pos)
                pos += len(chunk)
                self._left = max(0, self._left - len(chunk))
        finally:
            os.close(fd)

    def _copy(self, rel: str) -> None:
        path = self.source.copy_path(rel)
        try:
            src = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            raise SourceMismatch(f"{path}: {e.strerror}") from None
        try:
            regular_size(path, os.fstat(src))
            with self._faults(rel):
                self._replace(rel, iter(lambda: os.read(src, 1 << 20), b""))
        finally:
            os.close(src)

    @contextlib.contextmanager
    def _faults(self, name: str):
        """OS errors on the output as one-line OutputErrors."""
        try:
            yield
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise OutputError(f"no space left on {self.out_dir}: needs {self._left} more bytes") from None
            raise OutputError(f"{os.path.join(self.partial, name)}: {e.strerror}") from None

    def _append(self, line: bytes) -> None:
        with self._faults(JOURNAL):
            done = 0
            while done < len(line):
                done += os.write(self._journal, line[done:])

    def verified_done(self, group_index: int, outputs: List[Output]) -> bool:
        """True when the output is complete, or the journal lists this group and its bytes still match."""
        if self.complete:
            return True
        sums = self.done.get(group_index)
        if sums is None:
            return False
        for out in outputs:
            digest = hashlib.sha256()
            with self._faults(self.plan.files[out.file].name):
                for pos in range(0, out.nbytes, 64 << 20):
                    n = min(64 << 20, out.nbytes - pos)
                    digest.update(os.pread(self._fds[out.file], n, out.offset + pos))
            if sums.get(out.name) != digest.hexdigest():
                return False
        return True

    def write(self, out: Output, row_start: int, data: memoryview) -> None:
        with self._faults(self.plan.files[out.file].name):
            _pwrite_all(self._fds[out.file], data, piece_offset(out, row_start))

    def group_done(self, group_index: int, sums: Dict[str, str]) -> None:
        self._append(journal.group_line(group_index, sums))

    def finish(self) -> None:
        """fsync the shards, write the text files and copies (replacing what an
        interrupted attempt left), journal "finished", rename OUT.partial to
        OUT, then remove the journal from OUT. Each step can be redone."""
        root = self._dirs[""]
        if not self.complete:
            for i, fd in self._fds.items():
                with self._faults(self.plan.files[i].name):
                    os.fsync(fd)
            for f in self.plan.files:
                if f.kind != "safetensors":
                    data = f.data if f.kind == "text" else made_file(f, self.source.copy_path(f.base))
                    with self._faults(f.name):
                        self._replace(f.name, [data])
            with self._faults(""):
                for rel in self._copy_dirs:
                    self._folder(rel)
            for rel, _ in self._copy_files:
                self._copy(rel)
            self._append(journal.finished_line(self.plan.digest))
            if os.path.lexists(self.out_dir):
                raise OutputExists(f"{self.out_dir} appeared while writing; {self.partial} is complete")
            with self._faults(""):
                here, ours = os.stat(self.partial, follow_symlinks=False), os.fstat(root)
                if (here.st_dev, here.st_ino) != (ours.st_dev, ours.st_ino):
                    raise OutputError(f"{self.partial} was replaced while writing")
                os.rename(self.partial, self.out_dir)
            self.complete = True
        with self._faults(JOURNAL):
            os.unlink(JOURNAL, dir_fd=root)

    def close(self) -> None:
        """Close every fd (releases the lock); the folder stays resumable."""
        for fd in [*self._fds.values(), *self._dirs.values(), self._journal]:
            if fd >= 0:
                os.close(fd)
        self._fds.clear()
        self._dirs.clear()
        self._journal = -1


def _check_parent(parent: str) -> None:
    try:
        st = os.stat(parent)
    except OSError as e:
        raise OutputError(f"{parent}: {e.strerror} (the output's parent folder)") from None
    if not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{parent}: not a folder (the output's parent)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{parent}: not writable (the output's parent folder)")


def _lock(path: str) -> int:
    """Open folder ``path`` without following a symlink and lock it for this run."""
    try:
        fd = os.open(path, _DIR)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise OutputError(f"{path}: not a folder (a symlink or a file); delete it") from None
        raise OutputError(f"{path}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise OutputExists(f"{path} is in use by another sanitrace run") from None
    return fd


def _open_own(folder: int, base: str) -> int:
    """Open (or create) regular file ``base`` read-write; a symlink, hard link or
    special file there is replaced by a new empty file."""
    try:
        fd = os.open(base, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644, dir_fd=folder)
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.ENXIO):
            raise
    else:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
            return fd
        os.close(fd)
    os.unlink(base, dir_fd=folder)
    return os.open(base, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=folder)


def _allocate(fd: int, size: int) -> None:
    """Reserve the blocks of a ``size``-byte file; plain ftruncate where unsupported."""
    if size and hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise


def piece_offset(out: Output, row_start: int) -> int:
    """File offset of output ``out``'s rows from ``row_start`` on (a chunk's piece)."""
    rows = out.shape[0] if out.shape else 1
    return out.offset + row_start * (out.nbytes // max(rows, 1))


def _pwrite_all(fd: int, data, offset: int) -> None:
    data = memoryview(data)
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)
