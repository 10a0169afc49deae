"""A lint finding and the rules that make them."""

from typing import Iterable, NamedTuple

from ..collapse import collapse_numbers

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
    return ", ".join(collapse_numbers(sorted(set(names))))
