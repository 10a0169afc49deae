"""Re-run a plan's trace with the installed libraries, from the plan alone.

A plan's manifest holds every header fact a trace reads (tensor names, dtypes,
shapes, offsets, header lengths and metadata) and the small files the library
read (config.json, ...). ``rebuild_source`` writes a header-only model folder
from it; ``retrace`` traces that folder with the plan's library and options,
so a sanitize change upstream shows up as a plan diff.

The rebuilt headers are the same facts in sanitrace's own JSON spelling, so
their sha256 differs from the originals: the re-traced plan keeps the recorded
hashes (they identify the real files the executor will read).
"""

import json
import os
import struct
import tempfile

from . import plan as plan_ir
from .planner import build_plan
from .tracer import ConvertOptions, trace


def rebuild_source(plan: dict, folder: str) -> None:
    """Header-only safetensors files and the recorded small files, as traced."""
    source = plan["source"]
    by_file = {i: [] for i in range(len(source["files"]))}
    for file, name, dtype, shape, begin, end in source["tensors"]:
        by_file[file].append((name, dtype, shape, begin, end))
    for i, f in enumerate(source["files"]):
        data_start = 8 + f["header_length"]
        doc = {} if f["metadata"] is None else {"__metadata__": f["metadata"]}
        for name, dtype, shape, begin, end in by_file[i]:
            doc[name] = {"dtype": dtype, "shape": shape,
                         "data_offsets": [begin - data_start, end - data_start]}
        raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
        if len(raw) > f["header_length"]:
            raise plan_ir.PlanError(f"{f['name']}: cannot rebuild its header in {f['header_length']} bytes")
        path = os.path.join(folder, f["name"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as out:
            out.write(struct.pack("<Q", f["header_length"]) + raw.ljust(f["header_length"]))
    for name, data in source["read_files"].items():
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as out:
            out.write(data)


def retrace(plan: dict) -> dict:
    """The plan the installed libraries produce for the same source and options."""
    with tempfile.TemporaryDirectory(prefix="sanitrace-retrace-") as folder:
        rebuild_source(plan, folder)
        with plan_ir.gc_paused():
            result = trace(folder, ConvertOptions(**plan["options"]), plan["library"])
            fresh = build_plan(result, plan["memory"]["budget"])
    recorded = {f["name"]: f["header_sha256"] for f in plan["source"]["files"]}
    for f in fresh["source"]["files"]:
        f["header_sha256"] = recorded.get(f["name"], f["header_sha256"])
    return fresh
