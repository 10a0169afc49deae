"""Trace a conversion: run the library's own convert() on shape-only proxies.

``trace()`` calls ``mlx_lm.convert.convert`` (or ``mlx_vlm.convert.convert``)
itself: load_model, sanitize (and mlx-vlm's pre-sanitize transforms and second
sanitize passes), the legacy-quantization handling, load_weights, the dtype
cast with the model's cast_predicate, quantize_model with its predicates and
recipes, the sharding, save_config, the model card; with mlx patched by
``tracing()``. What it would have written is captured instead: the shards as
graph references, and the small text files verbatim.
"""

import contextlib
import dataclasses
import functools
import io
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import mlx.core as mx

from ..plan import Node, Ref, call, const_array
from ..safetensors_format import Header
from .patching import LoadMismatch, tracing
from .proxy import Recorder, TraceError
from .libraries import LIBRARIES, choose_library
from .sources import SourceSet

_REAL_LOAD = mx.load
# files save() writes itself; everything else in its output is copied from the source
WRITTEN_FILES = ("config.json", "model.safetensors.index.json", "README.md")


@dataclass
class ConvertOptions:
    """mlx_lm.convert's flags: field names are its keyword arguments."""

    quantize: bool = False
    q_group_size: Optional[int] = None
    q_bits: Optional[int] = None
    q_mode: str = "affine"
    quant_predicate: Optional[str] = None
    dtype: Optional[str] = None
    dequantize: bool = False
    trust_remote_code: bool = False

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TraceResult:
    library: str  # "mlx_lm" or "mlx_vlm"
    options: ConvertOptions
    nodes: List[Node]
    guards: List[dict]
    headers: Dict[str, Header]
    shards: List[tuple]  # (file name, [(tensor name, Ref)], metadata)
    text_files: Dict[str, bytes]
    copy_subdirectories: bool = False  # what the library copies besides top-level files
    loaded_keys: List[str] = field(default_factory=list)
    read_files: Dict[str, bytes] = field(default_factory=dict)  # small files the library read


def _evaluate(recorder: Recorder, sources: SourceSet, cache: dict, ref: Ref):
    """A traced value evaluated from the real source data (for guards), or None
    when the source files hold headers only."""
    if not sources.has_data():
        return None
    if ref.node not in cache:
        node = recorder.nodes[ref.node]
        if node.op == "load":
            path = os.path.join(sources.model_dir, node.args[0])
            cache[ref.node] = [_REAL_LOAD(path)[node.args[1]]]
        elif node.op == "const":
            cache[ref.node] = [const_array(node)]
        else:
            result = call(node, [_evaluate(recorder, sources, cache, r) for r in node.inputs])
            cache[ref.node] = list(result) if isinstance(result, (list, tuple)) else [result]
    return cache[ref.node][ref.out]


MAX_READ_FILE_BYTES = 4 << 20


def _read_files(model_dir: str, names) -> Dict[str, bytes]:
    """The bytes of the files the library read while converting (config.json,
    generation_config.json, ...), plus a remote-code model file, for re-tracing."""
    names = set(names)
    with open(os.path.join(model_dir, "config.json")) as f:
        model_file = json.load(f).get("model_file")
    if model_file:
        names.add(model_file)
    result = {}
    for name in sorted(names):
        path = os.path.join(model_dir, name)
        if os.path.isfile(path) and os.path.getsize(path) <= MAX_READ_FILE_BYTES:
            with open(path, "rb") as f:
                result[name] = f.read()
    return result


def trace(model_dir: str, options: ConvertOptions, library: Optional[str] = None) -> TraceResult:
    """Trace the conversion of ``model_dir`` with ``options`` by ``library``
    ("mlx_lm" or "mlx_vlm"; chosen from config.json when None). Reads headers only."""
    model_dir = os.path.abspath(model_dir)
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise TraceError(f"{model_dir}: no config.json; not a Hugging Face model folder")
    lib = LIBRARIES[library or choose_library(model_dir)]
    if options.quant_predicate is not None and options.quant_predicate not in lib.recipes():
        raise TraceError(f"{lib.name} has no quantization recipe {options.quant_predicate!r}")
    convert = lib.convert()
    lib.import_model_module(model_dir)
    recorder = Recorder(os.path.basename(model_dir))
    sources = SourceSet(model_dir)
    recorder.value_source = functools.partial(_evaluate, recorder, sources, {})
    try:
        with tempfile.TemporaryDirectory(prefix="sanitrace-out-") as tmp:
            out = os.path.join(tmp, "out")
            with tracing(recorder, sources, lib.stubs()) as capture:
                with contextlib.redirect_stdout(io.StringIO()):
                    convert(hf_path=model_dir, mlx_path=out, **options.as_dict())
            text_files = {}
            for name in WRITTEN_FILES:
                path = os.path.join(out, name)
                if os.path.exists(path):
                    with open(path, "rb") as f:
                        text_files[name] = f.read()
        shards = []
        for file_name, items, metadata in capture.shards:
            refs = [(key, recorder.ref(value)) for key, value in items]
            shards.append((file_name, refs, metadata))
    finally:
        sources.close()
        recorder.value_source = None  # a cycle through the graph: let refcounting free it
    return TraceResult(
        library=lib.name,
        options=options,
        nodes=recorder.nodes,
        guards=recorder.guards,
        headers=dict(sources.headers),
        shards=shards,
        text_files=text_files,
        copy_subdirectories=lib.copies_subdirectories,
        loaded_keys=sorted(capture.loaded_weights),
        read_files=_read_files(model_dir, capture.read_files),
    )


__all__ = ["trace", "ConvertOptions", "TraceResult", "TraceError", "LoadMismatch", "LIBRARIES", "choose_library"]
