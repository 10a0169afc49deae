"""The resume journal in ``OUT.partial``: one JSON object per line.

- Line 1, the header: ``{"plan": digest, "sources": {name: identity}}`` for
  every source file the plan reads, the identity as its source gives it (a
  folder: [size, mtime_ns, inode, device]; the Hub: [size, commit, sha256]).
  It is written to a
  temporary file and renamed into place, so it is whole whenever the journal
  exists.
- One line per finished output group: ``{"group": i, "sha256": {output name:
  hex}}``.
- ``{"finished": digest}`` once every file of the output is written, just
  before ``OUT.partial`` is renamed to ``OUT`` (the journal is removed after
  the rename, from inside ``OUT``).

Lines are appended with one ``write()`` each. A line is never trusted alone:
the executor re-hashes a group's bytes before skipping it, and a malformed
line (cut short, not JSON, wrong types, an unknown group) is ignored, so only
its group is redone.
"""

import json
import os
import stat
from typing import Dict, List, NamedTuple, Optional, Tuple

from ..plan import Plan

JOURNAL = ".sanitrace-journal.jsonl"
_MAX_IDENTITY = 8
_HEX = frozenset("0123456789abcdef")


class Journal(NamedTuple):
    header: Optional[dict]  # None when the first line is damaged
    done: Dict[int, Dict[str, str]]  # group -> {output name: sha256}
    finished: bool
    whole_lines: bool  # the file ends with a newline


def header_line(digest: str, sources: Dict[str, list]) -> bytes:
    return (json.dumps({"plan": digest, "sources": sources}, sort_keys=True) + "\n").encode()


def group_line(group: int, sums: Dict[str, str]) -> bytes:
    return (json.dumps({"group": group, "sha256": sums}, sort_keys=True) + "\n").encode()


def finished_line(digest: str) -> bytes:
    return (json.dumps({"finished": digest}) + "\n").encode()


def read(dir_fd: int) -> Optional[bytes]:
    """The journal's bytes in the folder ``dir_fd``; None when there is none;
    b"" when it is not a regular file (never followed or opened as one)."""
    try:
        fd = os.open(JOURNAL, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError:
        return b""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        chunks: List[bytes] = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def parse(raw: bytes, plan: Plan) -> Journal:
    """The journal's valid lines; every malformed line is dropped."""
    lines = raw.split(b"\n")
    header = _json(lines[0])
    if not isinstance(header, dict) or not isinstance(header.get("plan"), str):
        header = None
    done: Dict[int, Dict[str, str]] = {}
    finished = False
    for line in lines[1:]:
        entry = _json(line)
        if entry == {"finished": plan.digest}:
            finished = True
        elif _valid_group(entry, plan):
            done[entry["group"]] = entry["sha256"]
    return Journal(header, done, finished, raw.endswith(b"\n"))


def recorded_sources(header: dict) -> Optional[Dict[str, list]]:
    """The header's source identities, or None when malformed."""
    sources = header.get("sources")
    if not isinstance(sources, dict):
        return None
    for value in sources.values():
        if not (isinstance(value, list) and len(value) <= _MAX_IDENTITY and all(type(v) in (int, str) for v in value)):
            return None
    return sources


def changed_source(recorded: Dict[str, list], current: Dict[str, list], fields: Tuple[str, ...]) -> Optional[str]:
    """'name (size, mtime)' for the first source whose identity (named by
    ``fields``) differs, else None."""
    for name in sorted(current):
        old = recorded.get(name)
        if old != current[name]:
            old = old if isinstance(old, list) and len(old) == len(fields) else [None] * len(fields)
            changed = [k for k, a, b in zip(fields, old, current[name]) if a != b]
            return f"{name} ({', '.join(changed)})"
    return None


def _json(line: bytes):
    try:
        return json.loads(line.decode())
    except ValueError:  # UnicodeDecodeError and JSONDecodeError
        return None


def _valid_group(entry, plan: Plan) -> bool:
    if not isinstance(entry, dict) or set(entry) != {"group", "sha256"}:
        return False
    group, sums = entry["group"], entry["sha256"]
    if type(group) is not int or not 0 <= group < len(plan.groups) or not isinstance(sums, dict):
        return False
    names = {plan.outputs[i].name for i in plan.groups[group].outputs}
    return set(sums) == names and all(isinstance(s, str) and len(s) == 64 and set(s) <= _HEX for s in sums.values())
