"""Turn a trace into an executable plan (see docs/plan-format.md)."""

from importlib import metadata as _metadata
from typing import Dict

from .. import __version__
from ..plan import BASELINE_BYTES, FORMAT, VERSION, Ref
from ..plan.format import encode_graph
from ..tracer import TraceResult
from .accounting import account
from .chunking import plan_groups, predicted_peak
from .graph import canonical_order, source_table
from .layout import output_files

DEFAULT_MEMORY_BUDGET = 1 << 30


def library_versions() -> Dict[str, str]:
    versions = {"sanitrace": __version__}
    for dist in ("mlx", "mlx-lm", "mlx-vlm"):
        try:
            versions[dist] = _metadata.version(dist)
        except _metadata.PackageNotFoundError:
            versions[dist] = "absent"
    return versions


def build_plan(result: TraceResult, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> dict:
    files, tensors, tensor_index = source_table(result.headers)

    def raw_aval(ref: Ref):
        return result.nodes[ref.node].outs[ref.out]

    out_files, outputs = output_files(result.shards, raw_aval)
    groups = plan_groups(result.nodes, outputs)  # numbering-independent: on the trace's graph
    roots = [o["ref"] for o in outputs] + [g["ref"] for g in result.guards]
    order, remap = canonical_order(result.nodes, roots)
    signatures, rows = encode_graph(result.nodes, order, remap, tensor_index)
    for out in outputs:
        out["ref"] = Ref(remap[out["ref"].node], out["ref"].out)
    guards = [
        {
            "ref": Ref(remap[g["ref"].node], g["ref"].out),
            "method": g["method"],
            "value": g["value"],
        }
        for g in result.guards
    ]
    for name in sorted(result.text_files):
        out_files.append({"name": name, "kind": "text", "data": result.text_files[name]})
    peak, worst = predicted_peak(groups, memory_budget)
    return {
        "format": FORMAT,
        "version": VERSION,
        "versions": library_versions(),
        "library": result.library,
        "options": result.options.as_dict(),
        "source": {"files": files, "tensors": tensors, "read_files": result.read_files},
        "graph": {"signatures": signatures, "rows": rows},
        "outputs": outputs,
        "files": out_files,
        "copy_subdirectories": result.copy_subdirectories,
        "groups": groups,
        "guards": guards,
        "memory": {
            "budget": memory_budget,
            "baseline": BASELINE_BYTES,
            "predicted_peak": peak,
            "largest_group": worst,
        },
        "accounting": account(
            result.nodes, remap, tensor_index, result.loaded_keys, outputs
        ),
    }
