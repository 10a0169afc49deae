"""Replay: build the lazy mx graph of one output group, whole or for a row range.

Values are requested as (Ref, region) where region is None (whole) or
(axis, start, stop). Chunked requests are pushed down to the sources through
the chunk rules of regions.py, so only the source rows a chunk needs are read.
"""

from typing import Dict, List, Optional, Tuple

import mlx.core as mx
import numpy as np

from .. import regions
from ..plan import Ref, apply, iter_refs, map_refs
from .sources import SourceReader

Region = Optional[Tuple[int, int, int]]


class Replayer:
    def __init__(self, plan: dict, reader: SourceReader):
        self.nodes: List[list] = plan["nodes"]
        self.reader = reader
        self.rules = regions.Rules(self.nodes)
        self.memo: Dict[tuple, object] = {}

    def clear(self):
        self.memo.clear()

    def value(self, ref: Ref, region: Region) -> mx.array:
        op, args, kwargs, outs = self.nodes[ref.node]
        if op == "load":
            key = (ref.node, 0, region)
            if key not in self.memo:
                self.memo[key] = self.reader.read(args[0], region)
            return self.memo[key]
        if op == "const":
            key = (ref.node, 0, None)
            if key not in self.memo:
                dtype, shape = outs[0]
                data = mx.array(np.frombuffer(args[0], dtype=np.uint8))
                self.memo[key] = data.view(getattr(mx, dtype)).reshape(shape)
            whole = self.memo[key]
            if region is None:
                return whole
            axis, a, b = region
            return whole[(slice(None),) * axis + (slice(a, b),)]
        if region is None:
            key = (ref.node, -1, None)
            if key not in self.memo:
                resolve = lambda r: self.value(r, None)  # noqa: E731
                result = apply(op, map_refs(args, resolve), map_refs(kwargs, resolve))
                self.memo[key] = list(result) if isinstance(result, (list, tuple)) else [result]
            return self.memo[key][ref.out]
        axis, start, stop = region
        rule = self.rules(ref, axis)
        key = (ref.node, -1 if rule.all_outputs else ref.out, region)
        if key not in self.memo:
            pieces = []
            ranges = self.rules.input_ranges(ref, axis, start, stop)
            for r, rng in zip(iter_refs((args, kwargs)), ranges):
                pieces.append(None if rng == regions.SKIP else self.value(r, rng))
            self.memo[key] = rule.call(pieces, start, stop)
        result = self.memo[key]
        return result[ref.out] if rule.all_outputs else result
