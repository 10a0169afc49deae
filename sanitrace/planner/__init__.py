"""Turn a trace into an executable plan (see docs/plan-format.md)."""

from typing import Dict

from .. import __version__
from ..plan import BASELINE_BYTES, VERSION, Graph, Guard, Memory, OutputFile, Plan, Ref, Source
from ..plan.format import encode_graph
from ..tracer import TraceResult
from ..versions import installed_version
from .accounting import account
from .chunking import plan_groups, predicted_peak
from .graph import canonical_order, source_table
from .layout import output_files

DEFAULT_MEMORY_BUDGET = 1 << 30


def library_versions() -> Dict[str, str]:
    versions = {"sanitrace": __version__}
    for dist in ("mlx", "mlx-lm", "mlx-vlm"):
        versions[dist] = installed_version(dist) or "absent"
    return versions


def build_plan(result: TraceResult, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> Plan:
    """The plan of a trace: canonical graph, shard layout, groups, memory and accounting."""
    files, tensors, tensor_index = source_table(result.headers)

    def raw_aval(ref: Ref):
        return result.nodes[ref.node].outs[ref.out]

    out_files, outputs = output_files(result.shards, raw_aval)
    groups = plan_groups(result.nodes, outputs)  # numbering-independent: on the trace's graph
    roots = [o.ref for o in outputs] + [g["ref"] for g in result.guards]
    order, remap = canonical_order(result.nodes, roots)
    signatures, rows = encode_graph(result.nodes, order, remap, tensor_index)
    accounting = account(result.nodes, remap, tensor_index, result.loaded_keys, outputs)
    outputs = [o._replace(ref=Ref(remap[o.ref.node], o.ref.out)) for o in outputs]
    guards = [Guard(Ref(remap[g["ref"].node], g["ref"].out), g["method"], g["value"]) for g in result.guards]
    for name in sorted(result.text_files):
        data = result.text_files[name]
        out_files.append(OutputFile(name, "text", len(data), data=data))
    peak, worst = predicted_peak(groups, memory_budget)
    return Plan(
        version=VERSION,
        versions=library_versions(),
        library=result.library,
        options=result.options.recorded(),
        source=Source(tuple(files), tuple(tensors), result.read_files),
        graph=Graph(signatures, rows),
        outputs=tuple(outputs),
        files=tuple(out_files),
        groups=tuple(groups),
        guards=tuple(guards),
        copy_subdirectories=result.copy_subdirectories,
        memory=Memory(memory_budget, BASELINE_BYTES, peak, worst),
        accounting=accounting,
    )
