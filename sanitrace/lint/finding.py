"""A lint finding and the rules that make them."""

import math
from typing import Iterable, List, NamedTuple, Optional, Tuple

from ..collapse import collapse_numbers, ranges, skeletons, zero_padding

_FAST = 64  # names of one skeleton from which a full product is rendered column by column

SEVERITIES = ("error", "warning", "note")

# rule id -> (severity, what it catches); docs/lints.md explains each
RULES = {
    "fp8-as-integer": ("error", "float8 bytes read as integers (no from_fp8)"),
    "scale-dropped": ("error", "a block-quantized weight used while its scale is dropped"),
    "scale-mismatch": ("error", "a weight multiplied by another weight's block scale"),
    "reconverted-mlx": ("error", "an MLX checkpoint transformed again (norm shift, transpose, stack)"),
    "expert-set-incomplete": ("error", "an expert stack with experts missing or repeated"),
    "expert-parts-dropped": ("error", "stacked experts whose other parts (scales, biases, ...) are dropped"),
    "left-unquantized": ("warning", "-q left a layer unquantized: its last dimension does not fit the group size"),
    "unquantized-by-predicate": ("note", "-q left a layer unquantized by the model's choice"),
    "dropped-family": ("note", "a family of source tensors dropped (MTP head, vision tower, indexers, ...)"),
    "quantized-router": ("note", "a router / expert gate quantized"),
    "quantized-mla-low-rank": ("note", "an MLA low-rank projection quantized"),
}


class Finding(NamedTuple):
    severity: str  # "error", "warning" or "note"
    rule: str  # a key of RULES
    tensors: str  # the tensors concerned, collapsed as show collapses them
    why: str  # one line, for a reviewer who has not read the code

    def text(self) -> str:
        return f"{self.severity} {self.rule}: {self.tensors}: {self.why}"


def finding(rule: str, tensors: str, why: str) -> Finding:
    """A finding of ``rule``, at the rule's severity."""
    return Finding(RULES[rule][0], rule, tensors, why)


def pattern(names: Iterable[str]) -> str:
    """Names collapsed as ``show`` collapses them (``layers.{0..60}.mlp.gate.weight``), comma-separated."""
    ordered = sorted(set(names))
    lines: List[str] = []
    rest: List[str] = []
    for skeleton, rows in skeletons(ordered).items():
        line = _product_line(skeleton, [numbers for _, numbers in rows])
        if line is None:
            rest += [ordered[i] for i, _ in rows]
        else:
            lines.append(line)
    return ", ".join(sorted(lines + collapse_numbers(rest)))


def _product_line(skeleton: Tuple[str, ...], rows: List[Tuple[str, ...]]) -> Optional[str]:
    """The one line ``collapse_numbers`` gives for names that are every combination
    of their numbers (Kimi-K2.6's 69,120 expert tensors: 60 layers x 384 x 3),
    computed per column; None when they are not, or a column is zero-padded or
    shows the set another does (collapse_numbers decides those)."""
    if len(rows) < _FAST or not rows[0]:
        return None
    written = [{row[c] for row in rows} for c in range(len(rows[0]))]
    if any(zero_padding(values) != 0 for values in written):
        return None
    columns = [sorted(int(v) for v in values) for values in written]
    if math.prod(len(c) for c in columns) != len(rows):
        return None
    texts = [str(c[0]) if len(c) == 1 else "{" + ranges(c) + "}" for c in columns]
    if len({t for t in texts if t.startswith("{")}) != sum(t.startswith("{") for t in texts):
        return None
    return "".join(p + t for p, t in zip(skeleton, texts + [""]))
