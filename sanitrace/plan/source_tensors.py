"""The source tensors of a plan file, compact: names stored as a template plus its
numbers ("model.layers.\\0.mlp.experts.\\0..." with [3, 17]), offsets as the gap
after the previous tensor of the file. format.py writes them, loading.py reads them."""

import re
from typing import Dict, List, Sequence, Tuple

from ..safetensors_format import DTYPE_SIZES
from .ops import PlanError
from .types import SourceFile, SourceTensor

_NUMBER = re.compile(r"(?<![0-9])(0|[1-9][0-9]*)(?![0-9])")  # one group: split() keeps the numbers
_NUMBER_FAST = re.compile(r"(0|[1-9][0-9]*)")  # _NUMBER, but a digit run with a leading 0 is cut in pieces
_HOLE = "\0"


def split_numbers(name: str) -> List[str]:
    """``name`` as [text, number, text, ..., text]: the numbers are its digit runs
    without a leading zero (a run like "007" stays text, so a template hole is
    always a plain ``%d``). Half the cost of _NUMBER's lookarounds: _NUMBER_FAST
    splits the same names, unless it cut a digit run (then two numbers touch,
    with an empty text between them)."""
    parts = _NUMBER_FAST.split(name)
    if "" in parts[2:-1:2]:
        return _NUMBER.split(name)
    return parts


def encode_tensors(tensors: Sequence[SourceTensor], files: Sequence[SourceFile]) -> Tuple[list, list]:
    """(templates [name with \\0 holes, dtype, shape], rows [file, template, numbers, gap]).

    Tensors are in data order within each file, so a tensor's offset is stored
    as its gap after the previous one (almost always 0)."""
    index: Dict[tuple, int] = {}
    templates: List[list] = []
    rows: List[list] = []
    ends: Dict[int, int] = {}
    split, join = split_numbers, _HOLE.join
    for file, name, dtype, shape, begin, end in tensors:
        parts = split(name)  # text, number, text, ..., text
        key = (join(parts[::2]), dtype, *shape)
        t = index.get(key)
        if t is None:
            t = index[key] = len(templates)
            templates.append([key[0], dtype, list(shape)])
        start = ends.get(file)
        if start is None:
            start = 8 + files[file].header_length
        rows.append([file, t, list(map(int, parts[1::2])), begin - start])
        ends[file] = end
    return templates, rows


def decode_tensors(templates: list, rows: list, files: Tuple[SourceFile, ...]) -> List[SourceTensor]:
    """Source tensors with absolute offsets; each starts at or after the end of
    the previous one of its file and ends inside the file's size."""
    tensors: List[SourceTensor] = []
    ends: Dict[int, int] = {}
    formats: Dict[int, Tuple[str, int, int]] = {}  # template -> ("...%d...", holes, bytes)
    for row in rows:
        try:
            file, t, numbers, gap = row
            template, dtype, shape = templates[t]
            if t not in formats:
                if not (
                    isinstance(template, str)
                    and isinstance(shape, list)
                    and all(type(d) is int and d >= 0 for d in shape)
                ):
                    raise ValueError
                size = DTYPE_SIZES[dtype]
                for d in shape:
                    size *= d
                formats[t] = (template.replace("%", "%%").replace(_HOLE, "%d"), template.count(_HOLE), size)
            pattern, holes, size = formats[t]
            if len(numbers) != holes or not all(type(n) is int and n >= 0 for n in numbers):
                raise ValueError
            name = pattern % tuple(numbers)
            if type(gap) is not int or gap < 0 or type(file) is not int or file < 0:
                raise ValueError
            begin = ends.get(file, 8 + files[file].header_length) + gap
            if begin + size > files[file].size:
                raise ValueError
        except (ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError):
            raise PlanError(f"malformed source tensor entry {row!r:.80}") from None
        tensors.append(SourceTensor(file, name, dtype, tuple(shape), begin, begin + size))
        ends[file] = begin + size
    return tensors
