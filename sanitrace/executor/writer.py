"""Output folder: preallocated shards written in place, a resume journal, the final rename.

Everything is written to ``OUT.partial``. Each shard is created at its final
size with its header first; tensors are written at their plan offsets. After
each output group, a journal line records the sha256 of every tensor it wrote;
``--resume`` skips groups whose bytes still match. ``finish()`` writes the text
files, copies the source's non-weight files (and its sub-folders, for
libraries that do) and renames to ``OUT``.
"""

import hashlib
import json
import os
import shutil
from typing import Dict, List

JOURNAL = ".sanitrace-journal.jsonl"
# never copied from the source folder: weights, and files the plan writes itself
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".npz", ".msgpack")
_SKIPPED = {"model.safetensors.index.json", "config.json", "README.md"}


class OutputExists(ValueError):
    pass


class OutputWriter:
    def __init__(self, plan: dict, out_dir: str, plan_digest: str, resume: bool):
        self.plan = plan
        self.out_dir = os.path.abspath(out_dir)
        self.partial = self.out_dir + ".partial"
        self.digest = plan_digest
        if os.path.exists(self.out_dir):
            raise OutputExists(
                f"Cannot save to the path {self.out_dir} as it already exists. "
                "Please delete the file/directory or specify a new path to save to."
            )
        if os.path.exists(self.partial) and not resume:
            raise OutputExists(
                f"{self.partial} holds an interrupted run: pass --resume to continue "
                "it, or delete it"
            )
        os.makedirs(self.partial, exist_ok=True)
        self.done: Dict[int, Dict[str, str]] = self._read_journal() if resume else {}
        self._fds: Dict[int, int] = {}
        for i, f in enumerate(plan["files"]):
            if f["kind"] == "safetensors":
                self._fds[i] = self._open_shard(f)
        mode = "a" if resume else "w"
        self._journal = open(os.path.join(self.partial, JOURNAL), mode)
        if not self.done:
            self._journal.seek(0)
            self._journal.truncate()
            self._journal.write(json.dumps({"plan": plan_digest}) + "\n")
            self._journal.flush()

    def _open_shard(self, f: dict) -> int:
        path = os.path.join(self.partial, f["name"])
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if os.fstat(fd).st_size != f["size"] or os.pread(fd, len(f["header"]), 0) != f["header"]:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f["header"], 0)
            os.ftruncate(fd, f["size"])
        return fd

    def _read_journal(self) -> Dict[int, Dict[str, str]]:
        path = os.path.join(self.partial, JOURNAL)
        if not os.path.exists(path):
            return {}
        with open(path) as fh:
            lines = [line for line in fh.read().splitlines() if line.strip()]
        if not lines or json.loads(lines[0]).get("plan") != self.digest:
            raise OutputExists(f"{self.partial} was written by a different plan; delete it")
        done = {}
        for line in lines[1:]:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                break  # a line cut short by the interruption
            done[entry["group"]] = entry["sha256"]
        return done

    def verified_done(self, group_index: int, outputs: List[dict]) -> bool:
        """True when the journal lists this group and its bytes still match."""
        sums = self.done.get(group_index)
        if sums is None:
            return False
        for out in outputs:
            fd = self._fds[out["file"]]
            digest = hashlib.sha256()
            for pos in range(0, out["nbytes"], 64 << 20):
                n = min(64 << 20, out["nbytes"] - pos)
                digest.update(os.pread(fd, n, out["offset"] + pos))
            if sums.get(out["name"]) != digest.hexdigest():
                return False
        return True

    def write(self, out: dict, row_start: int, data: memoryview) -> None:
        rows = out["shape"][0] if out["shape"] else 1
        offset = out["offset"] + row_start * (out["nbytes"] // max(rows, 1))
        fd = self._fds[out["file"]]
        done = 0
        while done < len(data):
            done += os.pwrite(fd, data[done:], offset + done)

    def group_done(self, group_index: int, sums: Dict[str, str]) -> None:
        self._journal.write(json.dumps({"group": group_index, "sha256": sums}) + "\n")
        self._journal.flush()

    def finish(self, source_dir: str) -> None:
        for fd in self._fds.values():
            os.fsync(fd)
            os.close(fd)
        self._fds.clear()
        self._journal.close()
        os.remove(os.path.join(self.partial, JOURNAL))
        for f in self.plan["files"]:
            if f["kind"] == "text":
                with open(os.path.join(self.partial, f["name"]), "wb") as fh:
                    fh.write(f["data"])
        for name in sorted(os.listdir(source_dir)):
            path = os.path.join(source_dir, name)
            if name.startswith("."):
                continue
            if os.path.isfile(path) and not name.endswith(_WEIGHT_SUFFIXES) and name not in _SKIPPED:
                shutil.copyfile(path, os.path.join(self.partial, name))
            elif os.path.isdir(path) and self.plan["copy_subdirectories"]:
                shutil.copytree(path, os.path.join(self.partial, name))
        os.rename(self.partial, self.out_dir)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if not self._journal.closed:
            self._journal.close()
