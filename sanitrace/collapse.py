"""Compact text for people: lists of numbered names collapsed to ranges, byte counts in binary units.

Lines that differ only in numbers (``layers.0.mlp``, ``layers.1.mlp``, ...) become
one line with each varying number replaced by the set of values it takes, in
braces: runs ``{0..3}``, strides ``{3..59..4}`` (first..last..step, as in bash),
lists of them ``{0..2,4..6}``. The same set twice in a line is one number (a
layer's index in an output's name and in its source's); different sets stand for
every combination (``layers.{1..60}.experts.{0..383}``). Spelling the sets out
gives back exactly the lines collapsed; lines whose numbers are not one such
product (the shapes of two layer types) become a few products that cover them.
"""

import itertools
import re
from typing import Dict, FrozenSet, List, Optional, Set, Tuple

# a number, or a set collapsed already (a list's items in a line), which is text
_TOKEN = re.compile(r"\{[\d.,]+\}|\d+")
_NUMBER = re.compile(r"(\d+)")
_DIGITS_ONLY = bytes(c if 48 <= c <= 57 else 32 for c in range(256))  # ASCII digits kept, other bytes -> space
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
_ORDERS = 4  # with more varying numbers than this, one collapsing order instead of every one
_PERIODS = 64  # the longest period of a repeating pattern of numbers looked for

Family = Tuple[FrozenSet[str], ...]


def human_bytes(n: float) -> str:
    """A byte count for people.

    Args:
        n: a number of bytes.

    Returns:
        e.g. "512 B", "1.5 KiB", "154.2 MiB" (binary units, one decimal).
    """
    i = 0
    while abs(n) >= 1024 and i < len(_UNITS) - 1:
        n /= 1024
        i += 1
    return f"{n:.0f} B" if i == 0 else f"{n:.1f} {_UNITS[i]}"


def _runs(values: List[int], width: int) -> List[str]:
    """Sorted distinct integers as runs, left to right: "0..2", "3..11..4" (three values or more), "5"."""
    text = lambda v: str(v).zfill(width)  # noqa: E731
    parts: List[str] = []
    i = 0
    while i < len(values):
        j = i + 1
        step = values[j] - values[i] if j < len(values) else 0
        while j + 1 < len(values) and values[j + 1] - values[j] == step:
            j += 1
        if step == 1 or j - i >= 2:
            parts.append(f"{text(values[i])}..{text(values[j])}" + (f"..{step}" if step > 1 else ""))
            i = j + 1
        else:
            parts.append(text(values[i]))
            i += 1
    return parts


def ranges(values: List[int], width: int = 0) -> str:
    """Integers as runs and strides: [0, 1, 2, 5, 7, 8] -> "0..2,5,7..8", [3, 7, 11] -> "3..11..4",
    0..23 but 3..23..4 -> "0..20..4,1..21..4,2..22..4" (a pattern that repeats every few
    numbers, as one stride per residue, when that is shorter than the runs).

    Args:
        values: non-empty; duplicates and order do not matter.
        width: zero-pad each number to this many digits.

    Returns:
        The runs, comma-separated; a run with a step other than one has at least three values.
    """
    values = sorted(set(values))
    best = ",".join(_runs(values, width))
    if best.count(",") > 1:  # every fourth layer of another type, say: one stride per residue
        for period in range(2, min(len(values) // 3, _PERIODS) + 1):
            classes: Dict[int, List[int]] = {}
            for v in values:
                classes.setdefault(v % period, []).append(v)
            strides = sorted(classes.values())
            if all(len(c) >= 3 and c == list(range(c[0], c[-1] + 1, period)) for c in strides):
                text = ",".join(_runs(c, width)[0] for c in strides)
                best = text if len(text) < len(best) else best
    return best


def number_columns(line: str) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """A line's text between its numbers, and its numbers.

    Args:
        line: the line; a set already shown (``{0..3}``) is text, not a number.

    Returns:
        (the texts before, between and after the numbers; the numbers as written).
    """
    if "{" not in line:
        pieces = _NUMBER.split(line)
        return tuple(pieces[::2]), tuple(pieces[1::2])
    parts, numbers, last = [], [], 0
    for match in _TOKEN.finditer(line):
        if match.group()[0] != "{":
            parts.append(line[last : match.start()])
            numbers.append(match.group())
            last = match.end()
    parts.append(line[last:])
    return tuple(parts), tuple(numbers)


def one_skeleton(lines: List[str]) -> Optional[Tuple[Tuple[str, ...], List[Tuple[str, ...]]]]:
    """``number_columns`` of lines that all have one skeleton, in a few passes
    over their joined text instead of a regex call per line.

    Args:
        lines: the lines (Kimi-K2.6's 69,120 expert names, say).

    Returns:
        (the skeleton, each line's numbers as written), or None when the lines
        are not all of the first line's skeleton, or are not plain ASCII
        without braces and newlines (then ``number_columns`` each).
    """
    joined = "\n".join(lines)
    if not lines or not joined.isascii() or "{" in joined or joined.count("\n") != len(lines) - 1:
        return None
    skeleton, first = number_columns(lines[0])
    width, count = len(first), len(lines)
    numbers = joined.encode().translate(_DIGITS_ONLY).decode().split()
    if len(numbers) != width * count:
        return None
    step = 2 * width + 2  # a line rebuilt: its skeleton and numbers interleaved, then a newline
    pieces = [""] * (step * count)
    for k, text in enumerate(skeleton):
        pieces[2 * k :: step] = [text] * count
    for k in range(width):
        pieces[2 * k + 1 :: step] = numbers[k::width]
    pieces[step - 1 :: step] = ["\n"] * count
    if "".join(pieces) != joined + "\n":
        return None
    return skeleton, list(zip(*[iter(numbers)] * width)) if width else [()] * count


def skeletons(lines: List[str]) -> Dict[Tuple[str, ...], List[Tuple[int, Tuple[str, ...]]]]:
    """``number_columns`` of every line, grouped by skeleton. Lines with the same
    letters are tried as one skeleton (``one_skeleton``), else split one by one.

    Args:
        lines: the lines.

    Returns:
        skeleton -> (the line's position in ``lines``, its numbers as written),
        skeletons in the order of their first line, each one's lines in order.
    """
    by_letters: Dict[bytes, List[int]] = {}
    for i, line in enumerate(lines):
        by_letters.setdefault(line.encode().translate(None, b"0123456789"), []).append(i)
    grouped: Dict[Tuple[str, ...], List[Tuple[int, Tuple[str, ...]]]] = {}
    for positions in by_letters.values():
        found = one_skeleton([lines[i] for i in positions])
        if found is not None:
            grouped.setdefault(found[0], []).extend(zip(positions, found[1]))
            continue
        for i in positions:
            skeleton, numbers = number_columns(lines[i])
            grouped.setdefault(skeleton, []).append((i, numbers))
    for rows in grouped.values():  # one skeleton's lines can have different letters: other digits than ASCII
        rows.sort()
    return dict(sorted(grouped.items(), key=lambda item: item[1][0][0]))


def zero_padding(values: Set[str]) -> Optional[int]:
    """The zero-padding of a column's numbers.

    Args:
        values: the numbers as written.

    Returns:
        0 when none is zero-padded, their common width when all are, else None.
    """
    if all(v[0] != "0" or v == "0" for v in values):
        return 0
    lengths = {len(v) for v in values}
    return lengths.pop() if len(lengths) == 1 else None


def _factor(families: Dict[Family, int], order: Tuple[int, ...]) -> Dict[Family, int]:
    """Merge families that differ in one column only, column by column in ``order``.

    Each family is a combination of sets (one per column) and stands for their
    product; two that agree on every other column merge into one with the union,
    so the families stay disjoint and together stand for the same lines. The
    values are the first line each family stands for.
    """
    for c in order:
        merged: Dict[tuple, Tuple[Set[str], List[int]]] = {}
        for family, first in families.items():
            values, firsts = merged.setdefault(family[:c] + family[c + 1 :], (set(), []))
            values.update(family[c])
            firsts.append(first)
        families = {key[:c] + (frozenset(v),) + key[c:]: min(f) for key, (v, f) in merged.items()}
    return families


def _collapse_bucket(skeleton: Tuple[str, ...], rows: Dict[Tuple[str, ...], int]) -> List[Tuple[int, str]]:
    """The lines of one skeleton (text between numbers), collapsed: (first line index, text) each."""
    columns = list(zip(*rows))
    distinct = [set(c) for c in columns]
    n = len(columns)
    leader = list(range(n))  # a varying number that equals an earlier one on every line is that one again
    for j in range(n):
        if len(distinct[j]) > 1:
            leader[j] = next((i for i in range(j) if leader[i] == i and columns[i] == columns[j]), j)
    widths = [zero_padding(d) for d in distinct]
    keys = [i for i in range(n) if leader[i] == i]
    free = [k for k, i in enumerate(keys) if widths[i] is not None and len(distinct[i]) > 1]
    if len(free) <= 1 and all(len(distinct[i]) == 1 or widths[i] is not None for i in keys):
        families = {tuple(frozenset(distinct[i]) for i in keys): min(rows.values())}  # one number varies
    else:
        start = {tuple(frozenset([numbers[i]]) for i in keys): first for numbers, first in rows.items()}
        orders = list(itertools.permutations(reversed(free))) if len(free) <= _ORDERS else [tuple(reversed(free))]
        families = min((_factor(start, order) for order in orders), key=len)
    literal = {m.group() for part in skeleton for m in _TOKEN.finditer(part) if m.group()[0] == "{"}
    result = []
    pending = list(families.items())
    while pending:
        family, first = pending.pop(0)
        texts = [_set_text(values, widths[i]) for values, i in zip(family, keys)]
        clash = _clash(texts, literal)
        if clash is not None:  # two numbers would read as one: one line per value of the second
            values = sorted(family[clash], key=int)
            pending[:0] = [(family[:clash] + (frozenset([v]),) + family[clash + 1 :], first) for v in values]
            continue
        shown = [texts[keys.index(leader[i])] for i in range(n)]
        result.append((first, "".join(p + (shown[i] if i < n else "") for i, p in enumerate(skeleton))))
    return result


def _clash(texts: List[str], literal: Set[str]) -> Optional[int]:
    """The first of ``texts`` that is a set shown already (in ``literal`` or before it)."""
    seen = set(literal)
    for k, text in enumerate(texts):
        if text[0] == "{":
            if text in seen:
                return k
            seen.add(text)
    return None


def _set_text(values: FrozenSet[str], width: Optional[int]) -> str:
    """A column's values in a line: the one value, or the set in braces."""
    if len(values) == 1:
        return next(iter(values))
    return "{" + ranges([int(v) for v in values], width or 0) + "}"


def collapse_numbers(lines: List[str]) -> List[str]:
    """Collapse lines that differ only in numbers into one line per family, each
    varying number replaced by its set (``{0..60}``, ``{3..59..4}``, ``{0..2,4..6}``).

    A number that equals another on every line (a layer index in the name and in
    its source) is one number, shown as the same set twice; so the same set
    twice in a line is one number, and two numbers never show the same set (nor
    one shown in the lines already, a list's). A line stands for every
    combination of its sets, so expanding them gives back exactly the lines
    collapsed; a line that occurs more than once is kept as often.

    Args:
        lines: the lines.

    Returns:
        The collapsed lines, in the order of their first appearance.
    """
    buckets: Dict[tuple, Dict[tuple, int]] = {}
    placed: List[Tuple[int, int, str]] = []
    for index, line in enumerate(lines):
        skeleton, numbers = number_columns(line)
        rows = buckets.setdefault(skeleton, {})
        if numbers in rows:
            placed.append((index, len(placed), line))  # a repeat of a line: kept, not merged into its family
        else:
            rows[numbers] = index
    for skeleton, rows in buckets.items():
        placed += [(first, len(placed) + k, text) for k, (first, text) in enumerate(_collapse_bucket(skeleton, rows))]
    return [line for _, _, line in sorted(placed)]


def collapse(items: List[str]) -> str:
    """Join a list of expressions, collapsed to patterns where they differ only in numbers.

    Args:
        items: the expressions.

    Returns:
        The comma-separated expressions (collapsed when there are more than two).
    """
    lines = collapse_numbers(items) if len(items) > 2 else items
    return ", ".join(lines)
