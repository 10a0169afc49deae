"""The one place where mlx is patched for tracing.

``tracing()`` swaps in recording versions of every mlx.core function (and
mx.linalg), a proxy-returning ``mx.load``, a capturing ``mx.save_safetensors``,
a no-op ``mx.eval``, an ``mx.array`` that also accepts proxies, a strict
``nn.Module.load_weights`` that reports every mismatch at once, and an ``open``
that notes which files of the model folder the library reads (so a plan can
hold them for re-tracing). The library's tokenizer/processor loaders run for
real (their files are saved as the library saves them); one that fails is
noted and stands in as a tokenizer that saves nothing. ``shutil.copytree``
of a source sub-folder is not run (the executor copies sub-folders), and a
file ``shutil`` copies is not noted as read.
Everything is restored on exit, also when the trace fails.
"""

import builtins
import contextlib
import io
import os
import shutil
import warnings
from typing import Callable, List, Sequence, Tuple

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..mismatch import causes, report_lines
from .proxy import Recorder, TraceError, find_proxy
from .sources import SourceSet

_REAL_ARRAY = mx.array
# handled specially below, or never given a proxy by a conversion
_NOT_WRAPPED = {"load", "save_safetensors", "eval", "async_eval", "array"}


class LoadMismatch(TraceError):
    """The sanitized weights do not match the model's parameters."""


class _ArrayMeta(type):
    def __instancecheck__(cls, obj):
        return isinstance(obj, _REAL_ARRAY)

    def __subclasscheck__(cls, sub):
        return issubclass(sub, _REAL_ARRAY)

    def __getattr__(cls, name):
        return getattr(_REAL_ARRAY, name)


# The stand-ins below hold no trace state: a call with a proxy records into that
# proxy's own recorder, a call without one is the original. So a stand-in that a
# module captured while a trace was running (an annotation, `f = mx.stack`)
# stays correct afterwards and keeps nothing alive.


class array(metaclass=_ArrayMeta):
    """Stands in for mx.array: isinstance works as usual; mx.array(proxy) is recorded."""

    def __new__(cls, *args, **kwargs):
        proxy = find_proxy((args, kwargs))
        if proxy is not None:
            return proxy._st_recorder.call("mx.array", _REAL_ARRAY, args, kwargs)
        return _REAL_ARRAY(*args, **kwargs)


def _recording(op: str, original: Callable) -> Callable:
    def wrapper(*args, **kwargs):
        proxy = find_proxy(args)
        if proxy is None and kwargs:
            proxy = find_proxy(kwargs)
        if proxy is not None:
            return proxy._st_recorder.call(op, original, args, kwargs)
        return original(*args, **kwargs)

    wrapper.__name__ = getattr(original, "__name__", op)
    wrapper.__doc__ = getattr(original, "__doc__", None)
    return wrapper


def _stand_ins() -> List[tuple]:
    """(module, name, recording stand-in) for every mlx.core / mx.linalg function."""
    result = []
    for module, prefix in ((mx, "mx"), (mx.linalg, "mx.linalg")):
        for name in dir(module):
            value = getattr(module, name)
            if name.startswith("_") or name in _NOT_WRAPPED or type(value).__name__ != "nb_func":
                continue
            result.append((module, name, _recording(f"{prefix}.{name}", value)))
    return result


_STAND_INS = _stand_ins()


class Capture:
    """What the conversion did besides ops: the shards it tried to write (name,
    value) in save order, the weights it loaded, the files it read."""

    def __init__(self) -> None:
        self.shards: List[Tuple[str, list, dict]] = []
        self.loaded_weights: dict = {}
        self.read_files: set = set()  # relative to the model folder, safetensors excluded
        self.watching = True  # False while a tokenizer loads: its files are not recorded as read
        self.tokenizer_error = ""  # why the library's tokenizer/processor loader failed


class _NoTokenizer:
    """Stands in for a tokenizer/processor the library could not load: saves nothing."""

    def save_pretrained(self, path):
        pass


def _check_load(recorder: Recorder, model: nn.Module, weights: list):
    """The strict check of load_weights, but listing every problem at once,
    grouped by cause (mismatch.py), the cause that explains most first."""
    found = causes(model, dict(tree_flatten(model.parameters())), dict(weights))
    if found:
        raise LoadMismatch(
            f"{recorder.model_name}: the sanitized checkpoint does not load strictly into "
            f"{type(model).__module__}.{type(model).__name__}:\n" + "\n".join(report_lines(found))
        )


@contextlib.contextmanager
def tracing(recorder: Recorder, sources: SourceSet, loaders: Sequence[tuple] = ()):
    """Patch mlx for one trace; ``loaders``: the library's (module, name)
    tokenizer/processor loaders, which run unwatched and never fail the trace."""
    capture = Capture()
    saved = []

    def patch(obj, name, value):
        saved.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    original_load = mx.load
    original_load_weights = nn.Module.load_weights
    original_open = builtins.open

    def watched_open(file, mode="r", *args, **kwargs):
        if capture.watching and isinstance(file, (str, os.PathLike)) and not any(c in mode for c in "wax+"):
            path = os.path.abspath(os.fspath(file))
            if path.startswith(sources.model_dir + os.sep) and not path.endswith(".safetensors"):
                capture.read_files.add(os.path.relpath(path, sources.model_dir))
        return original_open(file, mode, *args, **kwargs)

    def load(file, *args, **kwargs):
        path = os.fspath(file)
        if not path.endswith(".safetensors"):
            raise TraceError(f"{recorder.model_name}: cannot trace mx.load of {path}")
        name = sources.relative_name(path)
        arrays = recorder.sources(name, sources.placeholders(path, original_load))
        if kwargs.get("return_metadata") or (len(args) > 1 and args[1]):
            return arrays, dict(sources.headers[name].metadata or {})
        return arrays

    def save_safetensors(file, arrays, metadata=None):
        capture.shards.append((os.path.basename(os.fspath(file)), list(arrays.items()), metadata))

    def side_file_loader(original: Callable) -> Callable:
        def load(*args, **kwargs):
            capture.watching = False
            try:
                with warnings.catch_warnings():  # transformers' deprecation notes: the trace prints one line
                    warnings.simplefilter("ignore")
                    return original(*args, **kwargs)
            except (TraceError, MemoryError):
                raise
            except Exception as e:  # noqa: BLE001  the library's loader, whatever it raises
                message = " ".join(str(e).split())
                if args and isinstance(args[0], (str, os.PathLike)):  # the model folder: the plan names it, not where
                    folder = os.fspath(args[0]).rstrip(os.sep)
                    message = message.replace(folder, os.path.basename(folder))
                capture.tokenizer_error = f"{type(e).__name__}: {message[:300]}"
                return _NoTokenizer()
            finally:
                capture.watching = True

        return load

    original_copytree, original_copyfile = shutil.copytree, shutil.copyfile

    def copytree(src, dst, *args, **kwargs):
        if os.path.abspath(os.fspath(src)).startswith(sources.model_dir + os.sep):
            return dst
        return original_copytree(src, dst, *args, **kwargs)

    def copyfile(*args, **kwargs):  # shutil.copy / copy2: a file the output copies is not one the library reads
        watching, capture.watching = capture.watching, False
        try:
            return original_copyfile(*args, **kwargs)
        finally:
            capture.watching = watching

    def no_eval(*args, **kwargs):
        return None

    def load_weights(self, file_or_weights, strict=True):
        if isinstance(file_or_weights, list) and find_proxy(file_or_weights) is not None:
            capture.loaded_weights = dict(file_or_weights)
            if strict:
                _check_load(recorder, self, file_or_weights)
        return original_load_weights(self, file_or_weights, strict=strict)

    try:
        for module, name, stand_in in _STAND_INS:
            patch(module, name, stand_in)
        patch(mx, "load", load)
        patch(mx, "save_safetensors", save_safetensors)
        patch(mx, "eval", no_eval)
        patch(mx, "async_eval", no_eval)
        patch(mx, "array", array)
        patch(nn.Module, "load_weights", load_weights)
        patch(builtins, "open", watched_open)
        patch(io, "open", watched_open)
        patch(shutil, "copytree", copytree)
        patch(shutil, "copyfile", copyfile)
        for module, name in loaders:
            patch(module, name, side_file_loader(getattr(module, name)))
        yield capture
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)
