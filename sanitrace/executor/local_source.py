"""A model folder on disk as the executor's source: every file read in place."""

import os
from typing import Dict, List, Tuple

from ..plan import Plan
from .copies import copies, made_file
from .sources import verify_sources


class LocalSource:
    """A model folder on disk: every source file is read in place.

    The interface the executor uses for any source (see hub_source.HubSource):
    ``paths`` (where file i is read), ``check()`` before anything is created,
    ``identity()`` for the resume journal, ``copies()`` / ``copy_path()`` for
    the files copied beside the output, ``space_needed`` beside the output,
    and ``acquire()`` / ``ready()`` / ``release()`` around a file's reads (no-ops here).
    """

    streams = False
    identity_fields = ("size", "mtime", "inode", "device")
    space_needed = 0  # bytes needed beside the output
    sizes: Dict[int, int] = {}  # bytes to download per file: nothing
    downloaded = source_bytes = peak_held = 0

    def __init__(self, plan: Plan, folder: str):
        self.plan = plan
        self.folder = folder
        self.paths = [os.path.join(folder, f.name) for f in plan.source.files]

    def check(self) -> None:
        verify_sources(self.plan, self.paths)
        for f in self.plan.files:
            if f.kind == "source":
                made_file(f, self.copy_path(f.base))

    def identity(self) -> Dict[str, List]:
        """[size, mtime_ns, inode, device] of each source file the plan reads."""
        ids = {}
        for f, path in zip(self.plan.source.files, self.paths):
            st = os.stat(path)
            ids[f.name] = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev]
        return ids

    def copies(self) -> Tuple[List[str], List[Tuple[str, int]]]:
        return copies(self.folder, self.plan)

    def copy_path(self, rel: str) -> str:
        return os.path.join(self.folder, rel)

    def resume_hint(self, recorded: Dict[str, list]) -> str:
        return ""

    def start(self, order) -> None:
        pass  # nothing to download (the executor calls it only when ``streams``)

    def acquire(self, files) -> None:
        pass

    def ready(self, files) -> bool:
        return True

    def release(self, files) -> None:
        pass

    def stop(self) -> None:
        pass

    def close(self, finished: bool) -> None:
        pass
