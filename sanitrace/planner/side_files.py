"""The files the library writes besides the shards, as plan entries.

The files convert generates (config.json, the index, README.md) and small
files are stored whole ("text"). A file that is a copy or a re-save of the
source file of the same name (``*.py``, generation_config.json, a tokenizer's
tokenizer.json) is stored as that file plus the library's edits ("source",
see plan/edits.py) once that is smaller: a plan for a model with a 30 MB
tokenizer stays small, and the executor writes the library's bytes.
"""

from typing import Dict, List

from ..plan import OutputFile
from ..plan.edits import diff_edits, edited_size, sha256
from ..tracer import WRITTEN_FILES

INLINE_BYTES = 16 << 10  # files up to this size are stored whole, readable in `show`


def side_files(written: Dict[str, bytes], bases: Dict[str, bytes]) -> List[OutputFile]:
    """One entry per written file, in name order. ``bases``: the source files
    named like a written file, their bytes as traced."""
    files = []
    for name in sorted(written):
        data, base = written[name], bases.get(name)
        entry = OutputFile(name, "text", len(data), data=data)
        if base is not None and name not in WRITTEN_FILES and (data == base or len(data) > INLINE_BYTES):
            edits = tuple(diff_edits(base, data))
            if sum(len(e[2]) for e in edits) < len(data):
                entry = OutputFile(
                    name,
                    "source",
                    edited_size(len(base), edits),
                    base=name,
                    base_size=len(base),
                    edits=edits,
                    sha256=sha256(data),
                )
        files.append(entry)
    return files
