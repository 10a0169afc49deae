"""Plan lints: the silent-corruption patterns of checkpoint conversion, found
in a plan's graph before a byte is written (docs/lints.md).

Lints read the plan only; they never change it. Each finding has a severity
(error / warning / note), a stable rule id, the tensors concerned (collapsed
as ``show`` collapses them) and one line of why.
"""

from typing import Iterable, List

from ..plan import Plan
from .experts import expert_stacks
from .finding import RULES, SEVERITIES, Finding
from .graph import PlanGraph
from .outputs import bits_per_weight, dropped_families, quantized_sensitive, unquantized
from .sources import block_scales, fp8_as_integer, reconverted_mlx

__all__ = ["Finding", "RULES", "bits_per_weight", "blocking", "lint", "summary"]

_CHECKS = (
    fp8_as_integer,
    block_scales,
    reconverted_mlx,
    expert_stacks,
    unquantized,
    dropped_families,
    quantized_sensitive,
)


def lint(plan: Plan) -> List[Finding]:
    """The findings of every rule on ``plan``.

    Args:
        plan: a traced or loaded plan.

    Returns:
        The findings, errors first, then warnings, then notes (each rule's in
        a stable order).
    """
    g = PlanGraph(plan)
    findings = [f for check in _CHECKS for f in check(g)]
    return sorted(findings, key=lambda f: SEVERITIES.index(f.severity))


def blocking(findings: Iterable[Finding], allowed: Iterable[str] = ()) -> List[Finding]:
    """The error findings not allowed by rule id.

    Args:
        findings: from ``lint``.
        allowed: rule ids to let through (``--allow-lint RULE``).

    Returns:
        The errors whose rule is not in ``allowed``.
    """
    allowed = set(allowed)
    return [f for f in findings if f.severity == "error" and f.rule not in allowed]


def summary(findings: List[Finding]) -> str:
    """'1 error, 2 notes', or 'none'.

    Args:
        findings: from ``lint``.

    Returns:
        The count of each severity present.
    """
    counts = [(sum(f.severity == s for f in findings), s) for s in SEVERITIES]
    return ", ".join(f"{n} {s}{'s' if n > 1 else ''}" for n, s in counts if n) or "none"
