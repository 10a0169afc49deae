"""What the lint rules ask of a plan's graph: the source a value
comes from, source names split into their numbers, and how outputs are quantized."""

import collections
import functools
import itertools
import re
from typing import Dict, List, Optional, Set, Tuple

from ..collapse import one_skeleton
from ..plan import Node, Plan

_NUMBER = re.compile(r"(\d+)")


def letters(name: str) -> bytes:
    """A name with its digits taken out (fast: bytes.translate)."""
    return name.encode().translate(None, b"0123456789")


# ops that move, select or copy bytes without reading them as numbers
LAYOUT_OPS = frozenset(
    {
        "array.__getitem__",
        "array.reshape",
        "array.flatten",
        "array.squeeze",
        "array.transpose",
        "array.swapaxes",
        "array.moveaxis",
        "array.split",
        "array.T",
        "array.mT",
        "mx.reshape",
        "mx.flatten",
        "mx.squeeze",
        "mx.expand_dims",
        "mx.transpose",
        "mx.swapaxes",
        "mx.moveaxis",
        "mx.stack",
        "mx.concatenate",
        "mx.split",
        "mx.contiguous",
        "mx.broadcast_to",
        "mx.pad",
        "mx.take",
    }
)

PERMUTE_OPS = frozenset(
    {
        "array.transpose",
        "array.swapaxes",
        "array.moveaxis",
        "array.T",
        "array.mT",
        "mx.transpose",
        "mx.swapaxes",
        "mx.moveaxis",
    }
)


def split_numbers(name: str) -> Tuple[Tuple[str, ...], Tuple[int, ...]]:
    """A name's text between its numbers, and its numbers: 'a.3.b' -> (('a.', '.b'), (3,))."""
    pieces = _NUMBER.split(name)
    return tuple(pieces[::2]), tuple(int(p) for p in pieces[1::2])


class PlanGraph:
    """Read-only facts about one plan's graph, computed once.

    Args:
        plan: the plan to read.
    """

    def __init__(self, plan: Plan):
        self.plan = plan
        self.nodes: List[Node] = plan.nodes
        self.tensors = plan.source.tensors
        self.output_nodes: Dict[int, List[int]] = {}
        for k, out in enumerate(plan.outputs):
            self.output_nodes.setdefault(out.ref.node, []).append(k)
        self.loaded: Set[int] = {n.args[0] for n in self.nodes if n.op == "load"}
        self.names: Dict[str, int] = {t.name: i for i, t in enumerate(self.tensors)}
        self.dropped: Dict[str, str] = {d.name: d.reason for d in plan.accounting.dropped}
        self.output_names: Dict[str, int] = {o.name: k for k, o in enumerate(plan.outputs)}
        self._split: Dict[int, Tuple[Tuple[str, ...], Tuple[int, ...]]] = {}
        self._letters: Optional[Dict[bytes, List[int]]] = None
        self._families: Dict[Tuple[str, ...], Dict[int, Tuple[int, ...]]] = {}

    @functools.cached_property
    def roots(self) -> List[Optional[int]]:
        """Per node, the one source tensor its value is computed from along a chain
        of single-input ops (casts, reshapes, slices, from_fp8, ...), else None:
        one pass forward, the nodes being in topological order."""
        roots: List[Optional[int]] = []
        for n in self.nodes:
            if n.op == "load":
                roots.append(n.args[0])
            else:
                roots.append(roots[n.inputs[0].node] if len(n.inputs) == 1 else None)
        return roots

    def root(self, node: int) -> Optional[int]:
        """``roots`` of one node."""
        return self.roots[node]

    def split(self, tensor: int) -> Tuple[Tuple[str, ...], Tuple[int, ...]]:
        """``split_numbers`` of a source tensor's name (computed once)."""
        if tensor not in self._split:
            self._split[tensor] = split_numbers(self.tensors[tensor].name)
        return self._split[tensor]

    def family(self, skeleton: Tuple[str, ...]) -> Dict[int, Tuple[int, ...]]:
        """Source tensor -> the numbers of its name, for every source tensor whose
        name has ``skeleton`` (the text between its numbers, ``split_numbers``);
        computed once per skeleton."""
        found = self._families.get(skeleton)
        if found is None:
            found = self._families[skeleton] = self._numbered(skeleton, self.same_letters(skeleton))
        return found

    def _numbered(self, skeleton: Tuple[str, ...], tensors: List[int]) -> Dict[int, Tuple[int, ...]]:
        """``family``'s map over the candidates ``tensors``: split together when all
        of them have ``skeleton`` (``one_skeleton``), else one match per name."""
        names = [self.tensors[t].name for t in tensors]
        together = one_skeleton(names)
        if together is not None and together[0] == skeleton:
            width = len(skeleton) - 1
            numbers = map(int, itertools.chain.from_iterable(together[1]))
            return dict(zip(tensors, zip(*[numbers] * width))) if width else dict.fromkeys(tensors, ())
        text = "".join(re.escape(p) + r"(\d+)" for p in skeleton[:-1]) + re.escape(skeleton[-1])
        matcher = re.compile(text)
        found = {}
        for t, name in zip(tensors, names):
            match = matcher.fullmatch(name)
            if match:
                found[t] = tuple(map(int, match.groups()))
        return found

    def same_letters(self, skeleton: Tuple[str, ...]) -> List[int]:
        """The source tensors whose names have the letters of ``skeleton`` (the
        text between numbers, ``split_numbers``): all of its names, and few others."""
        if self._letters is None:
            self._letters = collections.defaultdict(list)
            names = [t.name for t in self.tensors]
            keys = "\n".join(names).encode().translate(None, b"0123456789").split(b"\n")
            if len(keys) != len(names):  # a name with a newline
                keys = [letters(name) for name in names]
            for t, key in enumerate(keys):
                self._letters[key].append(t)
        return self._letters.get(letters("".join(skeleton)), [])

    def name(self, tensor: int) -> str:
        """A source tensor's name."""
        return self.tensors[tensor].name

    def quantized_outputs(self) -> Dict[int, Tuple[int, int]]:
        """Output index -> (bits, group size) of every weight an ``mx.quantize`` made."""
        result = {}
        for node, outs in self.output_nodes.items():
            n = self.nodes[node]
            if n.op != "mx.quantize":
                continue
            bits, group = quantize_params(n)
            for k in outs:
                if self.plan.outputs[k].ref.out == 0:
                    result[k] = (bits, group)
        return result


_MODE_DEFAULTS = {"affine": (4, 64), "mxfp4": (4, 32), "nvfp4": (4, 16), "mxfp8": (8, 32)}


def quantize_params(node: Node) -> Tuple[int, int]:
    """(bits, group size) of an ``mx.quantize`` node, as mlx defaults them."""
    names = ("group_size", "bits", "mode")
    given = dict(zip(names, node.args[1:]))
    given.update({k: v for k, v in node.kwargs.items() if k in names})
    bits, group = _MODE_DEFAULTS.get(given.get("mode") or "affine", (4, 64))
    return given.get("bits") or bits, given.get("group_size") or group


def default_group_size(options: dict) -> int:
    """The group size ``-q`` quantizes with under the plan's options."""
    return options.get("q_group_size") or _MODE_DEFAULTS.get(options.get("q_mode") or "affine", (4, 64))[1]
