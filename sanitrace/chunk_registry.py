"""The registry of chunk rules: op name -> ``ChunkRule`` subclass (chunk_rules.py,
chunk_rules_shapes.py), and ``rule()``, which builds the rule of one node's
output along one axis. Ops with no rule are computed whole."""

from typing import Dict, List, Sequence, Tuple, Type

from .chunk_rules import BroadcastTo, ChunkRule, Elementwise, Norm, NotChunkable, Quantized, Reduction, Scan, Transpose
from .chunk_rules_index import aval_shape
from .chunk_rules_shapes import GetItem, Pad, Repeat, Reshape, Split, StackConcat
from .plan import Node


def _names(prefix: str, names: str) -> List[str]:
    return [prefix + name for name in names.split()]


def _registry(table: List[Tuple[Type[ChunkRule], List[str]]]) -> Dict[str, Type[ChunkRule]]:
    """Op name -> rule class, from (rule class, op names) rows; an op named twice is a mistake."""
    rules = {op: rule_class for rule_class, ops in table for op in ops}
    if len(rules) < sum(len(ops) for _, ops in table):
        raise ValueError("an op is given two chunk rules")
    return rules


_REDUCTIONS = "sum max min mean prod all any logsumexp argmax argmin"
_SCANS = "cumsum cumprod cummax cummin logcumsumexp"

# Every op with a chunk rule (each must be in the replay allowlist, plan.OPS).
RULES: Dict[str, Type[ChunkRule]] = _registry(
    [
        (
            Elementwise,
            _names(
                "mx.",
                """
        abs add arccos arccosh arcsin arcsinh arctan arctan2 arctanh array astype bitwise_and bitwise_invert
        bitwise_left_shift bitwise_or bitwise_right_shift bitwise_xor ceil clip conj conjugate contiguous cos
        cosh degrees divide equal erf erfinv exp expm1 floor floor_divide from_fp8 greater greater_equal imag
        isclose isfinite isinf isnan isneginf isposinf left_shift less less_equal log log10 log1p log2
        logaddexp logical_and logical_not logical_or logical_xor maximum minimum multiply nan_to_num negative
        not_equal positive pow power radians real reciprocal remainder right_shift round rsqrt sigmoid sign
        sin sinh sqrt square stop_gradient subtract tan tanh to_fp8 trunc view where""",
            ),
        ),
        (
            Elementwise,
            _names(
                "array.",
                """
        abs astype conj cos exp log log10 log1p log2 reciprocal round rsqrt sin sqrt square view real imag
        __copy__ __abs__ __add__ __and__ __eq__ __floordiv__ __ge__ __gt__ __invert__ __le__ __lshift__ __lt__
        __mod__ __mul__ __ne__ __neg__ __or__ __pos__ __pow__ __radd__ __rfloordiv__ __rmod__ __rmul__
        __rpow__ __rshift__ __rsub__ __rtruediv__ __sub__ __truediv__ __xor__""",
            ),
        ),
        (BroadcastTo, ["mx.broadcast_to"]),
        (
            Transpose,
            _names("mx.", "transpose swapaxes moveaxis permute_dims matrix_transpose")
            + _names("array.", "transpose swapaxes moveaxis T mT"),
        ),
        (
            Reshape,
            _names("mx.", "reshape flatten squeeze expand_dims unflatten atleast_1d atleast_2d atleast_3d")
            + _names("array.", "reshape flatten squeeze"),
        ),
        (GetItem, ["array.__getitem__"]),
        (StackConcat, ["mx.stack", "mx.concatenate", "mx.concat"]),
        (Split, ["mx.split", "array.split"]),
        (Pad, ["mx.pad"]),
        (Quantized, ["mx.quantize", "mx.dequantize"]),
        (Repeat, ["mx.repeat"]),
        (Reduction, _names("mx.", _REDUCTIONS) + _names("array.", _REDUCTIONS)),
        (Norm, ["mx.linalg.norm"]),
        (Scan, _names("mx.", _SCANS + " softmax sort argsort") + _names("array.", _SCANS)),
    ]
)


def rule(node: Node, out: int, axis: int, avals: Sequence[list]) -> ChunkRule:
    """The chunk rule of ``node``'s output ``out`` along ``axis``; ``avals`` are
    the [dtype, shape] of its inputs. Raises NotChunkable when there is none."""
    rule_class = RULES.get(node.op)
    if rule_class is None:
        raise NotChunkable(f"{node.op} has no chunk rule")
    if len(aval_shape(node.outs[out])) <= axis:
        raise NotChunkable("scalar output")
    return rule_class(node, out, axis, avals)
