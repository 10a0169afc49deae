"""Trace a small function with the real tracer and replay its graph, for unit tests."""

import mlx.core as mx

from sanitrace.executor.replay import Replayer
from sanitrace.plan import format
from sanitrace.tracer.patching import tracing
from sanitrace.tracer.proxy import Recorder
from sanitrace.tracer.sources import SourceSet


def record(fn, arrays, tmp_path):
    """Trace fn(*proxies) with the real tracer; returns (nodes, output refs)."""
    recorder = Recorder("test")
    sources = SourceSet(str(tmp_path))
    try:
        with tracing(recorder, sources):
            proxies = list(recorder.sources("f", {str(i): a for i, a in enumerate(arrays)}).values())
            result = fn(*proxies)
    finally:
        sources.close()
    results = list(result) if isinstance(result, (list, tuple)) else [result]
    nodes = [n._replace(args=[int(n.args[1])]) if n.op == "load" else n for n in recorder.nodes]
    return nodes, [r._st_ref for r in results]


def through_plan_file(nodes, num_sources):
    """``nodes`` after the plan file's encoding and decoding (literals must survive it)."""
    identity = list(range(len(nodes)))
    signatures, rows, _ = format.encode_graph(nodes, identity, identity)
    return format.decode_graph(*format.unpack(format.pack([signatures, rows])), num_sources)


def replay(nodes, refs, arrays, region):
    return replay_chunk(Replayer(nodes, refs), refs, arrays, region)


def replay_chunk(replayer, refs, arrays, region) -> list:
    """Replay ``refs`` at ``region`` as the executor does: the source pieces
    reads() lists, then value(), then clear() (which checks the invariants)."""
    replayer.requests = replayer.reads(refs, region)
    for index, reg in replayer.requests:
        piece = arrays[index]
        if reg is not None:
            axis, a, b = reg
            piece = piece[(slice(None),) * axis + (slice(a, b),)]
        replayer.sources[(index, reg)] = piece
    values = [replayer.value(r, region) for r in refs]
    mx.eval(values)
    replayer.clear()
    return values


def same_bits(a, b) -> bool:
    def raw(x):
        return bytes(memoryview(mx.contiguous(x.reshape(-1)).view(mx.uint8)))

    return a.dtype == b.dtype and a.shape == b.shape and raw(a) == raw(b)
