"""Turn a trace into an executable plan (see docs/plan-format.md).

The executor imports ``planner.memory``, so importing this package stays light:
nothing of the tracer (``side_files`` reads its list of written files) is
imported until ``build_plan`` runs.
"""

import dataclasses
from typing import TYPE_CHECKING, Dict

from .. import __version__
from ..plan import VERSION, Graph, Guard, Memory, Plan, Ref, Source
from ..load_check import load_verdict
from ..plan.format import encode_graph
from ..versions import installed_version
from .accounting import account
from .chunking import plan_groups
from .graph import canonical_order, source_table
from .layout import output_files
from .memory import baseline_bytes, predicted_peak

if TYPE_CHECKING:
    from ..tracer import TraceResult

DEFAULT_MEMORY_BUDGET = 1 << 30


def library_versions() -> Dict[str, str]:
    versions = {"sanitrace": __version__}
    for dist in ("mlx", "mlx-lm", "mlx-vlm"):
        versions[dist] = installed_version(dist) or "absent"
    return versions


def build_plan(result: "TraceResult", memory_budget: int = DEFAULT_MEMORY_BUDGET) -> Plan:
    """The plan of a trace: canonical graph, shard layout, groups, memory and accounting."""
    from .side_files import side_files  # imports the tracer

    files, tensors, tensor_index = source_table(result.headers)

    def raw_aval(ref: Ref):
        return result.nodes[ref.node].outs[ref.out]

    out_files, outputs = output_files(result.shards, raw_aval)
    roots = [o.ref for o in outputs] + [g["ref"] for g in result.guards]
    order, remap = canonical_order(result.nodes, roots)
    signatures, rows, nodes = encode_graph(result.nodes, order, remap, tensor_index)
    accounting = account(result.nodes, remap, tensor_index, result.loaded_keys, outputs)
    outputs = [o._replace(ref=Ref(remap[o.ref.node], o.ref.out)) for o in outputs]
    groups = plan_groups(nodes, outputs, [row[0] for row in rows])
    guards = [
        Guard(Ref(remap[g["ref"].node], g["ref"].out), g["method"], g["value"], tuple(g["args"])) for g in result.guards
    ]
    out_files += side_files(result.text_files, result.side_bases)
    accounting = accounting._replace(tokenizer=_tokenizer_note(result))
    baseline = baseline_bytes(len(rows), len(tensors))
    peak, worst = predicted_peak(groups, memory_budget, baseline)
    plan = Plan(
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
        memory=Memory(memory_budget, baseline, peak, worst),
        accounting=accounting,
    )
    plan = dataclasses.replace(plan, accounting=accounting._replace(loads=load_verdict(plan)))
    plan.__dict__["nodes"] = nodes  # the cached_property, without decoding the graph just encoded
    return plan


def _tokenizer_note(result: "TraceResult") -> str:
    """Why no tokenizer/processor files are written ("" when they are)."""
    if not result.tokenizer_error:
        return ""
    loader = "load_tokenizer" if result.library == "mlx_lm" else "load_processor"
    return (
        f"{result.library}.utils.{loader} cannot load this source's tokenizer ({result.tokenizer_error}); "
        f"{result.library}.convert fails the same way before writing anything"
    )
