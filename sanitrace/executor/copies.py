"""What execute takes from the source folder besides the tensors.

- The files the plan makes from source files ("source" entries: a copied
  ``*.py``, a re-saved tokenizer.json): ``made_file`` builds their bytes and
  checks them against the plan's digest.
- For mlx_vlm, every sub-folder of the source, copied whole as its convert
  does. Listed before any work, so their size counts in the free-space check
  and a special file is refused before anything is created.
"""

import hashlib
import os
import stat
from typing import List, Tuple

from ..plan import OutputFile, Plan
from ..plan.edits import apply_edits
from .sources import SourceMismatch


def made_file(f: OutputFile, path: str) -> bytes:
    """The bytes of plan file ``f`` (kind "source"), made from the source file at
    ``path``; SourceMismatch when that file is not the one the plan was traced from."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO is refused, never waited on
    except OSError as e:
        raise SourceMismatch(f"{path}: {e.strerror}; the output's {f.name} is made from it") from None
    try:
        regular_size(path, os.fstat(fd))
        with os.fdopen(fd, "rb", closefd=False) as src:
            base = src.read(f.base_size + 1)
    except OSError as e:
        raise SourceMismatch(f"{path}: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(base) != f.base_size:
        raise SourceMismatch(f"{path}: {len(base)} bytes, the plan was traced from a {f.base_size}-byte file")
    data = apply_edits(base, f.edits)
    if hashlib.sha256(data).hexdigest() != f.sha256:
        raise SourceMismatch(
            f"{path}: differs from the file the plan was traced from (the output's {f.name} would not be the library's)"
        )
    return data


def copies(source_dir: str, plan: Plan) -> Tuple[List[str], List[Tuple[str, int]]]:
    """The source's sub-folders and the (file, size) in them, when the plan's
    library copies sub-folders whole (else nothing). Symlinks are followed
    (dangling ones skipped); a special file or a symlink loop is refused
    (SourceMismatch, never opened)."""
    subfolders = plan.copy_subdirectories
    dirs: List[str] = []
    files: List[Tuple[str, int]] = []

    def walk(rel: str, seen: frozenset) -> None:
        folder = os.path.join(source_dir, rel)
        try:
            names = sorted(os.listdir(folder))
        except OSError as e:
            raise SourceMismatch(f"{folder}: {e.strerror}") from None
        for name in names:
            path, sub = os.path.join(folder, name), f"{rel}/{name}" if rel else name
            if not rel and name.startswith("."):
                continue
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise SourceMismatch(f"{path}: {e.strerror}") from None
            if stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) in seen:
                    raise SourceMismatch(f"{path}: a symlink loop; remove it from the source")
                if rel or subfolders:
                    dirs.append(sub)
                    walk(sub, seen | {(st.st_dev, st.st_ino)})
            elif rel:
                files.append((sub, regular_size(path, st)))

    walk("", frozenset())
    return dirs, files


def regular_size(path: str, st: os.stat_result) -> int:
    """The size of a regular file; SourceMismatch for anything else."""
    if not stat.S_ISREG(st.st_mode):
        raise SourceMismatch(f"{path}: not a regular file (a FIFO, socket or device); remove it from the source")
    return st.st_size
