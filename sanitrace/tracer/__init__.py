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
import os
import stat
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Union

import mlx.core as mx

from ..plan import Node, Ref, call, const_array
from ..safetensors_format import Header, SafetensorsError, check_regular, file_kind, open_regular
from .patching import LoadMismatch, tracing
from .proxy import NoValue, Recorder, TraceError
from .libraries import LIBRARIES, choose_library, read_config
from .sources import SourceSet
from .upstream import UpstreamError, upstream_failure
from ..versions import VersionError, check_installed

_REAL_LOAD = mx.load
# the files convert generates itself (the one list); the rest of its output is the
# source's files, copied or re-saved by the tokenizer/processor (planner/side_files.py)
WRITTEN_FILES = ("config.json", "model.safetensors.index.json", "README.md")


# how a plan records a quant_predicate that was a Python callable (API only)
CUSTOM_PREDICATE = "callable:"


@dataclass
class ConvertOptions:
    """mlx_lm.convert's flags that shape the output: field names are its keyword
    arguments. ``quant_predicate`` is a recipe name or, through the Python API,
    a callable ``(path, module) -> bool | dict``."""

    quantize: bool = False
    q_group_size: Optional[int] = None
    q_bits: Optional[int] = None
    q_mode: str = "affine"
    quant_predicate: Optional[Union[str, Callable]] = None
    dtype: Optional[str] = None
    dequantize: bool = False
    trust_remote_code: bool = False

    def as_dict(self) -> dict:
        """The keyword arguments of the library's convert()."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def recorded(self) -> dict:
        """What a plan records: a callable predicate as ``callable:module.name``."""
        options = self.as_dict()
        predicate = options["quant_predicate"]
        if callable(predicate):
            name = getattr(predicate, "__qualname__", type(predicate).__qualname__)
            options["quant_predicate"] = f"{CUSTOM_PREDICATE}{getattr(predicate, '__module__', '?')}.{name}"
        return options


@dataclass
class TraceResult:
    library: str  # "mlx_lm" or "mlx_vlm"
    options: ConvertOptions
    nodes: List[Node]
    guards: List[dict]
    headers: Dict[str, Header]
    shards: List[tuple]  # (file name, [(tensor name, Ref)], metadata)
    text_files: Dict[str, bytes]  # every file the library wrote besides the shards
    side_bases: Dict[str, bytes] = field(default_factory=dict)  # source files named like a written file
    tokenizer_error: str = ""  # why the tokenizer/processor (and so its files) could not be loaded
    copy_subdirectories: bool = False  # what the library copies besides top-level files
    loaded_keys: List[str] = field(default_factory=list)
    read_files: Dict[str, bytes] = field(default_factory=dict)  # small files the library read
    messages: List[str] = field(default_factory=list)  # what the library printed (``[INFO] ...``)


def _evaluate(recorder: Recorder, sources: SourceSet, cache: dict, ref: Ref):
    """A traced value evaluated from the real source data (for guards). Raises
    NoValue when a source tensor it needs has no data in its file (headers only)."""
    if ref.node not in cache:
        node = recorder.nodes[ref.node]
        if node.op == "load":
            name, tensor = node.args
            missing = sources.missing_data(name, tensor)
            if missing is not None:
                raise NoValue(tensor, missing)
            cache[ref.node] = [_REAL_LOAD(os.path.join(sources.model_dir, name))[tensor]]
        elif node.op == "const":
            cache[ref.node] = [const_array(node)]
        else:
            result = call(node, [_evaluate(recorder, sources, cache, r) for r in node.inputs])
            cache[ref.node] = list(result) if isinstance(result, (list, tuple)) else [result]
    return cache[ref.node][ref.out]


MAX_READ_FILE_BYTES = 4 << 20
# files the libraries read or glob in the model folder: these must be regular files
_READ_SUFFIXES = (".safetensors", ".json", ".jinja", ".txt", ".model", ".py", ".tiktoken")


def _read_files(model_dir: str, names) -> Dict[str, bytes]:
    """The bytes of the files the library read while converting (config.json,
    generation_config.json, ...), for re-tracing. Never Python source: a plan
    carries no code that anything would run."""
    result = {}
    for name in sorted(names):
        path = os.path.join(model_dir, name)
        if name.endswith(".py") or not os.path.isfile(path):
            continue
        with open_regular(path, TraceError) as f:
            data = f.read(MAX_READ_FILE_BYTES + 1)
        if len(data) <= MAX_READ_FILE_BYTES:
            result[name] = data
    return result


def _written_files(out: str) -> Dict[str, bytes]:
    """Every file under ``out`` (what the library wrote besides the shards), by relative name."""
    written = {}
    for folder, _, names in os.walk(out):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                written[os.path.relpath(path, out).replace(os.sep, "/")] = f.read()
    return written


def _same_named(model_dir: str, names: List[str]) -> Dict[str, bytes]:
    """The regular files of ``model_dir`` with these relative names (those a written
    file may be a copy or a re-save of), by name."""
    found = {}
    for name in names:
        path = os.path.join(model_dir, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                found[name] = f.read()
    return found


def _check_folder(model_dir: str) -> None:
    """Refuse, before the library opens anything, a top-level entry that is not a
    regular file or a folder (a FIFO would block the reader forever), or a
    folder where the library reads or globs a file (``*.json``, ...)."""
    if not os.path.isdir(model_dir):
        raise TraceError(f"{model_dir}: not a folder")
    try:
        entries = sorted(os.scandir(model_dir), key=lambda e: e.name)
    except OSError as e:
        raise TraceError(f"{model_dir}: cannot list: {e.strerror}") from None
    for entry in entries:
        try:
            mode = os.stat(entry.path).st_mode
        except OSError as e:
            raise TraceError(f"{entry.path}: cannot read: {e.strerror}") from None
        if stat.S_ISREG(mode) or (stat.S_ISDIR(mode) and not entry.name.endswith(_READ_SUFFIXES)):
            continue
        raise TraceError(f"{entry.path}: is {file_kind(mode)}, not a regular file")
    if not os.path.lexists(os.path.join(model_dir, "config.json")):
        raise TraceError(f"{model_dir}: no config.json; not a Hugging Face model folder")


def _read_config(model_dir: str, options: ConvertOptions) -> dict:
    """config.json, checked for what the conversion needs before it starts."""
    path = os.path.join(model_dir, "config.json")
    config = read_config(model_dir)
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise TraceError(f"{path}: no model_type (a string naming the architecture)")
    model_file = config.get("model_file")
    if model_file is None:
        return config
    if not options.trust_remote_code:
        raise TraceError(
            f"{path}: model_file {model_file!r:.120} is code from the model folder that the "
            "conversion would run; pass --trust-remote-code if you trust this model"
        )
    if not isinstance(model_file, str) or ".." in model_file.split("/") or os.path.isabs(model_file):
        raise TraceError(f"{path}: model_file {model_file!r:.120} is not a file in the model folder")
    check_regular(os.path.join(model_dir, model_file), TraceError)
    return config


def trace(
    model_dir: str, options: ConvertOptions, library: Optional[str] = None, hf_repo: Optional[str] = None
) -> TraceResult:
    """Trace the conversion of ``model_dir`` with ``options`` by ``library``
    ("mlx_lm" or "mlx_vlm"; chosen from config.json when None). Reads headers only.
    ``hf_repo``: the Hub repo ``model_dir`` holds the headers of; the README.md
    is then the library's model card for that repo, as its convert writes
    when given a repo id (``base_model``, the repo's card metadata)."""
    given = model_dir
    model_dir = os.path.abspath(model_dir)
    _check_folder(model_dir if os.path.lexists(model_dir) else given)
    config = _read_config(model_dir, options)
    lib = LIBRARIES[library or choose_library(model_dir, config)]
    try:
        check_installed(lib.name)
    except VersionError as e:
        raise TraceError(str(e)) from None
    if isinstance(options.quant_predicate, str) and options.quant_predicate not in lib.recipes():
        raise TraceError(f"{lib.name} has no quantization recipe {options.quant_predicate!r}")
    convert = lib.convert()
    recorder = Recorder(os.path.basename(model_dir))
    sources = SourceSet(model_dir)
    recorder.value_source = functools.partial(_evaluate, recorder, sources, {})
    printed = io.StringIO()
    try:
        with tempfile.TemporaryDirectory(prefix="sanitrace-out-") as tmp:
            out = os.path.join(tmp, "out")
            failure = None
            try:
                lib.import_model_module(model_dir, config)
                with tracing(recorder, sources, lib.loaders()) as capture:
                    with contextlib.redirect_stdout(printed):
                        convert(hf_path=model_dir, mlx_path=out, **options.as_dict())
            except (TraceError, SafetensorsError, MemoryError):
                raise
            except Exception as e:  # noqa: BLE001  reported in one line unless sanitrace's own
                checkpoint = [header.tensors for header in sources.headers.values()]
                failure = upstream_failure(e, lib.name, model_dir, config, checkpoint, hf_repo)
                if failure is None:
                    raise
            if failure is not None:  # raised here, without the library's frames (its weights, its model)
                raise failure
            if hf_repo is not None:
                lib.create_model_card(out, hf_repo)
            text_files = _written_files(out)
        bases = _same_named(model_dir, [name for name in text_files if name not in WRITTEN_FILES])
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
        side_bases=bases,
        tokenizer_error=capture.tokenizer_error,
        copy_subdirectories=lib.copies_subdirectories,
        loaded_keys=sorted(capture.loaded_weights),
        read_files=_read_files(model_dir, capture.read_files),
        messages=[line for line in printed.getvalue().splitlines() if line.strip()],
    )


__all__ = [
    "trace",
    "ConvertOptions",
    "WRITTEN_FILES",
    "CUSTOM_PREDICATE",
    "TraceResult",
    "TraceError",
    "UpstreamError",
    "LoadMismatch",
    "LIBRARIES",
    "choose_library",
]
