"""Execute a plan: write the MLX model one output group at a time, in bounded memory.

This package reads only the plan and the source files; it never imports
mlx-lm or mlx-vlm.
"""

import hashlib
import sys
from dataclasses import dataclass
from typing import List, Optional

import mlx.core as mx

from .. import plan as plan_ir
from .replay import Replayer
from .sources import SourceMismatch, SourceReader, verify_sources
from .writer import OutputExists, OutputWriter, tensor_bytes


class GuardFailed(ValueError):
    pass


@dataclass
class ExecuteSummary:
    outputs: int
    bytes_written: int
    groups: int
    chunks: int
    skipped_groups: int


def _check_guards(plan: dict, replayer: Replayer) -> None:
    for guard in plan["guards"]:
        value = getattr(replayer.value(guard["ref"], None), guard["method"])()
        if hasattr(value, "tolist"):
            value = value.tolist()
        if value != guard["value"]:
            raise GuardFailed(
                f"sanitize read a value ({guard['method']}) that differs from the one "
                f"seen at trace time: {value!r} != {guard['value']!r}; re-trace on this data"
            )
        replayer.clear()


def execute(
    plan: dict,
    source_dir: str,
    out_dir: str,
    memory_budget: Optional[int] = None,
    resume: bool = False,
    progress: bool = True,
) -> ExecuteSummary:
    """Write the plan's output into ``out_dir`` (via ``out_dir.partial``)."""
    budget = memory_budget or plan["memory"]["budget"]
    verify_sources(plan, source_dir)
    digest = hashlib.sha256(plan_ir.dumps(plan)).hexdigest()
    writer = OutputWriter(plan, out_dir, digest, resume)
    reader = SourceReader(plan, source_dir)
    replayer = Replayer(plan, reader)
    outputs: List[dict] = plan["outputs"]
    order = sorted(
        range(len(plan["groups"])),
        key=lambda g: min((outputs[i]["file"], outputs[i]["offset"]) for i in plan["groups"][g]["outputs"]),
    )
    total = sum(o["nbytes"] for o in outputs)
    bar = _progress(total, progress)
    chunks = skipped = 0
    mx.set_cache_limit(max(budget - plan_ir.BASELINE_BYTES, 0))
    try:
        _check_guards(plan, replayer)
        for g in order:
            group = plan["groups"][g]
            members = [outputs[i] for i in group["outputs"]]
            if writer.verified_done(g, members):
                skipped += 1
                bar.update(sum(o["nbytes"] for o in members))
                continue
            rows = plan_ir.chunk_rows(group, budget)
            hashes = {o["name"]: hashlib.sha256() for o in members}
            starts = range(0, group["rows"], rows) if rows else [None]
            for start in starts:
                region = None if start is None else (0, start, min(start + rows, group["rows"]))
                arrays = [replayer.value(o["ref"], region) for o in members]
                replayer.clear()
                mx.eval(arrays)
                for out, array in zip(members, arrays):
                    _check_piece(out, array, region)
                    data = tensor_bytes(array)
                    writer.write(out, start or 0, data)
                    hashes[out["name"]].update(data)
                    bar.update(len(data))
                del arrays, data
                chunks += 1
            writer.group_done(g, {name: h.hexdigest() for name, h in hashes.items()})
            mx.clear_cache()
        writer.finish(source_dir)
    finally:
        bar.close()
        reader.close()
        writer.close()
    return ExecuteSummary(len(outputs), total, len(order), chunks, skipped)


def _check_piece(out: dict, array: mx.array, region) -> None:
    shape = list(out["shape"])
    if region is not None:
        shape[0] = region[2] - region[1]
    if list(array.shape) != shape or plan_ir.dtype_name(array.dtype) != out["dtype"]:
        raise RuntimeError(
            f"replay of {out['name']} gave {array.dtype}{list(array.shape)}, "
            f"the plan says {out['dtype']}{shape}"
        )


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc="execute",
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
    )


__all__ = ["execute", "ExecuteSummary", "SourceMismatch", "OutputExists", "GuardFailed"]
