"""Re-run a plan's trace with the installed libraries, from the plan alone.

A plan's manifest holds every header fact a trace reads (tensor names, dtypes,
shapes, offsets, header lengths and metadata) and the small files the library
read (config.json, ...). ``rebuild_source`` writes a header-only model folder
from it; ``retrace`` traces that folder with the plan's library and options,
so a sanitize change upstream shows up as a plan diff. The model card of a
plan traced from a Hub repo id is kept as recorded (see ``hub_card``), and so
are the files made from the source's tokenizer and side files (see
``keep_side_files``): the plan does not carry the files they are made from.

The rebuilt headers are the same facts in sanitrace's own JSON spelling, so
their sha256 differs from the originals: the re-traced plan keeps the recorded
hashes (they identify the real files the executor will read).
"""

import dataclasses
import json
import os
import struct
import tempfile
from typing import Any, Dict, List, Optional

from . import plan as plan_ir
from .plan.checks import check_name
from .planner import build_plan
from .tracer import CUSTOM_PREDICATE, WRITTEN_FILES, ConvertOptions, trace


# what a plan's recorded small files may be: data the library reads, never code
DATA_SUFFIXES = (".json", ".jinja", ".txt", ".model", ".tiktoken")


def _check_names(source: plan_ir.Source) -> None:
    """Every file rebuild_source would write is a plain relative path inside the
    folder: a .safetensors source or a recorded data file; PlanError otherwise."""
    for f in source.files:
        check_name(f.name, "source file")
        if not f.name.endswith(".safetensors"):
            raise plan_ir.PlanError(f"source file {f.name!r:.120} is not a .safetensors file")
    for name in source.read_files:
        check_name(name, "recorded source file")
        if not name.endswith(DATA_SUFFIXES):
            raise plan_ir.PlanError(
                f"recorded source file {name!r:.120} is not a data file ({', '.join(DATA_SUFFIXES)}); "
                "a plan carries no code"
            )


def _check_no_model_file(source: plan_ir.Source) -> None:
    """A model built by code from its own folder cannot be re-traced from a plan,
    which carries no code."""
    try:
        config = json.loads(source.read_files.get("config.json", b"{}"))
    except (ValueError, RecursionError) as e:
        raise plan_ir.PlanError(f"the plan's config.json is not valid JSON: {e}") from None
    if isinstance(config, dict) and config.get("model_file") is not None:
        raise plan_ir.PlanError(
            f"the plan's config.json names model_file {config['model_file']!r:.120}: the model "
            "needs remote code, which a plan does not carry; retrace cannot rebuild it from the "
            "plan alone (re-trace the source folder with `sanitrace trace --trust-remote-code`)"
        )


def rebuild_source(plan: plan_ir.Plan, folder: str) -> None:
    """Write the plan's source as traced: header-only safetensors files and
    the recorded small files; only plain relative paths inside ``folder``,
    and no code.

    Args:
        plan: the plan whose manifest to rebuild.
        folder: an existing folder to write into.

    Raises:
        PlanError: a recorded file name is not a plain relative path, not a
            .safetensors source or recorded data file, or a header does not
            fit its recorded length.
    """
    source = plan.source
    _check_names(source)
    by_file: Dict[int, List[plan_ir.SourceTensor]] = {i: [] for i in range(len(source.files))}
    for t in source.tensors:
        by_file[t.file].append(t)
    for i, f in enumerate(source.files):
        data_start = 8 + f.header_length
        doc: Dict[str, Any] = {} if f.metadata is None else {"__metadata__": f.metadata}
        for t in by_file[i]:
            doc[t.name] = {
                "dtype": t.dtype,
                "shape": list(t.shape),
                "data_offsets": [t.begin - data_start, t.end - data_start],
            }
        raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
        if len(raw) > f.header_length:
            raise plan_ir.PlanError(f"{f.name}: cannot rebuild its header in {f.header_length} bytes")
        path = os.path.join(folder, f.name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as out:
            out.write(struct.pack("<Q", f.header_length) + raw.ljust(f.header_length))
    for name, data in source.read_files.items():
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as out:
            out.write(data)


def retrace(plan: plan_ir.Plan, trust_remote_code: bool = False) -> plan_ir.Plan:
    """The plan the installed libraries produce for the same source and options.

    Args:
        plan: the plan to re-trace, from its manifest alone.
        trust_remote_code: passed to the trace; it comes from the caller,
            never from the plan.

    Returns:
        The fresh Plan: equal to ``plan`` (same digest) when nothing changed.

    Raises:
        PlanError: the plan cannot be re-traced from itself: its model needs
            remote code (config.json names a model_file), it was traced with a
            custom ``quant_predicate``, its options name unknown flags, or its
            manifest is not rebuildable (see ``rebuild_source``).
        TraceError: the installed libraries cannot trace it.
    """
    _check_no_model_file(plan.source)
    names = {f.name for f in dataclasses.fields(ConvertOptions)}
    unknown = sorted(set(plan.options) - names)
    if unknown:
        raise plan_ir.PlanError(f"the plan's options name unknown flags {unknown}")
    predicate = plan.options.get("quant_predicate")
    if isinstance(predicate, str) and predicate.startswith(CUSTOM_PREDICATE):
        raise plan_ir.PlanError(
            f"the plan was traced with a custom quant_predicate ({predicate[len(CUSTOM_PREDICATE) :]:.200}) "
            "given through the Python API; retrace cannot reproduce it: trace again with the same predicate"
        )
    options = ConvertOptions(**dict(plan.options, trust_remote_code=trust_remote_code))
    with tempfile.TemporaryDirectory(prefix="sanitrace-retrace-") as folder:
        rebuild_source(plan, folder)
        with plan_ir.gc_paused():
            result = trace(folder, options, plan.library)
            # recorded as the plan has it: without a model_file the flag changes nothing
            result.options = dataclasses.replace(
                options, trust_remote_code=plan.options.get("trust_remote_code", False)
            )
            fresh = build_plan(result, plan.memory.budget)
    recorded = {f.name: f.header_sha256 for f in plan.source.files}
    files = tuple(f._replace(header_sha256=recorded.get(f.name, f.header_sha256)) for f in fresh.source.files)
    fresh = dataclasses.replace(fresh, source=fresh.source._replace(files=files))
    fresh = keep_side_files(fresh, plan)
    card = hub_card(plan)
    if card is not None:
        outputs = tuple(
            f._replace(data=card, size=len(card)) if f.name == "README.md" and f.kind == "text" else f
            for f in fresh.files
        )
        fresh = dataclasses.replace(fresh, files=outputs)
    return fresh


def keep_side_files(fresh: plan_ir.Plan, plan: plan_ir.Plan) -> plan_ir.Plan:
    """``fresh`` with ``plan``'s recorded side files and tokenizer note.

    Args:
        fresh: a re-traced plan.
        plan: the plan it was re-traced from.

    Returns:
        ``fresh`` with ``plan``'s files besides the shards and the ones convert
        generates (config.json, the index, README.md), and its tokenizer note.
    """
    shards = [f for f in fresh.files if f.kind == "safetensors"]
    generated = [f for f in fresh.files if f.kind != "safetensors" and f.name in WRITTEN_FILES]
    recorded = [f for f in plan.files if f.kind != "safetensors" and f.name not in WRITTEN_FILES]
    files = tuple(shards + sorted(generated + recorded, key=lambda f: f.name))
    accounting = fresh.accounting._replace(tokenizer=plan.accounting.tokenizer)
    return dataclasses.replace(fresh, files=files, accounting=accounting)


def hub_card(plan: plan_ir.Plan) -> Optional[bytes]:
    """The plan's model card for a Hub repo id, which a retrace keeps as recorded.

    The library builds it from the repo's own card on the Hub, which a retrace
    from the plan alone cannot fetch.

    Args:
        plan: a plan.

    Returns:
        The bytes of its README.md when that is the library's model card for a
        Hub repo id (its front matter names a ``base_model``; a local folder's
        card never does), else None.
    """
    card = next((f.data for f in plan.files if f.name == "README.md" and f.kind == "text"), None)
    if card is None or not card.startswith(b"---\n"):
        return None
    front = card[4:].split(b"\n---", 1)[0]
    return card if any(line.startswith(b"base_model:") for line in front.split(b"\n")) else None
