"""The bytes of a "source" output file: a source file with byte-range edits.

The library writes some files by loading source files and saving them again
(tokenizers, processors) or by copying them (``*.py``, generation_config.json).
A plan stores such a file as its source file's name, size, a few replacements
and the sha256 of the result, so that a 30 MB tokenizer.json costs the plan
only what the library changed. ``apply_edits`` is the one definition of what
those fields mean: the planner builds them with ``diff_edits`` and checks them
with it, the executor writes its result and compares the digest.
"""

import difflib
import hashlib
from typing import List, Sequence, Tuple

from .ops import PlanError

Edit = Tuple[int, int, bytes]  # replace base[begin:end] by bytes

_MATCHED_LINES = 200_000  # beyond this, the changed middle is one replacement (difflib is quadratic)


def edited_size(base_size: int, edits: Sequence[Edit]) -> int:
    """The size of the file ``edits`` make from a ``base_size``-byte source file;
    PlanError when the edits are not ascending, disjoint ranges inside it."""
    size, end = base_size, 0
    for begin, stop, data in edits:
        if not (
            type(begin) is int and type(stop) is int and isinstance(data, bytes) and end <= begin <= stop <= base_size
        ):
            raise PlanError(
                f"an edit ({begin!r:.20}, {stop!r:.20}) is not an ascending range within "
                f"the {base_size}-byte source file"
            )
        size += len(data) - (stop - begin)
        end = stop
    return size


def apply_edits(base: bytes, edits: Sequence[Edit]) -> bytes:
    """``base`` with each edit's range replaced by its bytes."""
    edited_size(len(base), edits)
    parts, pos = [], 0
    for begin, end, data in edits:
        parts += [base[pos:begin], data]
        pos = end
    parts.append(base[pos:])
    return b"".join(parts)


def diff_edits(base: bytes, data: bytes) -> List[Edit]:
    """Line-level edits that turn ``base`` into ``data`` (few and small when the
    library changed few lines). ``apply_edits(base, diff_edits(base, data)) == data``."""
    old, new = base.splitlines(keepends=True), data.splitlines(keepends=True)
    head = 0
    while head < min(len(old), len(new)) and old[head] == new[head]:
        head += 1
    tail = 0
    while tail < min(len(old), len(new)) - head and old[-1 - tail] == new[-1 - tail]:
        tail += 1
    old_mid, new_mid = old[head : len(old) - tail], new[head : len(new) - tail]
    starts = [0]
    for line in old:
        starts.append(starts[-1] + len(line))
    if max(len(old_mid), len(new_mid)) > _MATCHED_LINES:
        opcodes: Sequence[Tuple[str, int, int, int, int]] = [("replace", 0, len(old_mid), 0, len(new_mid))]
    else:
        opcodes = difflib.SequenceMatcher(None, old_mid, new_mid, autojunk=False).get_opcodes()
    edits: List[Edit] = []
    for tag, i1, i2, j1, j2 in opcodes:
        if tag == "equal":
            continue
        edits.append((starts[head + i1], starts[head + i2], b"".join(new_mid[j1:j2])))
    if apply_edits(base, edits) != data:  # the contract, checked where the edits are made
        raise AssertionError("diff_edits does not reproduce the file")
    return edits


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
