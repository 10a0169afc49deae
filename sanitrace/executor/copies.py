"""What execute copies from the source folder besides the plan's own files.

Like the libraries' convert: the top-level non-weight files (tokenizer, chat
template, generation config, licence, ...) and, for mlx_vlm, every sub-folder.
Listed before any work, so their size counts in the free-space check and a
special file is refused before anything is created.
"""

import os
import stat
from typing import List, Tuple

from ..plan import Plan
from .sources import SourceMismatch

# never copied: weights, and the files the libraries' save code writes itself
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".npz", ".msgpack")
WRITTEN = frozenset(["model.safetensors.index.json", "config.json", "README.md"])


def copies(source_dir: str, plan: Plan) -> Tuple[List[str], List[Tuple[str, int]]]:
    """The source's sub-folders and (file, size) to copy: top-level files that are
    neither weights nor written by the plan, and every sub-folder whole when the
    plan's library copies them. Symlinks are followed (dangling ones skipped); a
    special file or a symlink loop is refused (SourceMismatch, never opened)."""
    subfolders = plan.copy_subdirectories
    written = {f.name for f in plan.files} | WRITTEN
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
            elif rel or not (name.endswith(_WEIGHT_SUFFIXES) or name in written):
                files.append((sub, regular_size(path, st)))

    walk("", frozenset())
    return dirs, files


def regular_size(path: str, st: os.stat_result) -> int:
    """The size of a regular file; SourceMismatch for anything else."""
    if not stat.S_ISREG(st.st_mode):
        raise SourceMismatch(f"{path}: not a regular file (a FIFO, socket or device); remove it from the source")
    return st.st_size
