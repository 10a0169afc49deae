"""Failures of the library's own conversion code during a trace, in one line.

A trace runs the library's own convert (mlx_lm / mlx_vlm, and the model
folder's code when config.json names a ``model_file``), so an exception raised
there is one eager conversion raises too. ``upstream_failure`` turns it into an
``UpstreamError`` naming the library and its version, the innermost frame of
that code (file:line and function), the exception and, for a KeyError on a
weight name, the tensor. An exception raised by sanitrace's own code is a bug in
sanitrace: it is left to keep its traceback.
"""

import importlib.util
import os
import re
import traceback
from typing import Dict, Iterable, Optional

from ..versions import installed_version
from .libraries import LIBRARIES
from .proxy import TraceError


class UpstreamError(TraceError):
    """The library's own conversion code raised: eager conversion fails the same way.

    Attributes:
        library: "mlx_lm" or "mlx_vlm".
        version: its installed version.
        where: the file of the innermost frame in the library (``mlx_lm/utils.py``)
            or in the model folder (``custom_model.py``), else the innermost
            frame outside sanitrace.
        line: the line number in ``where``.
        error: the name of the exception type (``KeyError``).
        tensor: the weight name of a KeyError, else None.
    """

    def __init__(
        self, message: str, library: str, version: str, where: str, line: int, error: str, tensor: Optional[str] = None
    ):
        super().__init__(message)
        self.library, self.version, self.where, self.line = library, version, where, line
        self.error, self.tensor = error, tensor


def _package_dir(name: str) -> Optional[str]:
    spec = importlib.util.find_spec(name)
    return os.path.dirname(spec.origin) if spec is not None and spec.origin else None


_LIBRARY_DIRS = [d + os.sep for d in map(_package_dir, LIBRARIES) if d]
_SANITRACE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
# the lines where a stand-in calls the real mlx function or open(): an error there is the caller's
_FORWARDING_LINES = frozenset(
    [
        "result = fn(*args, **kwargs)",
        "return original(*args, **kwargs)",
        "return _REAL_ARRAY(*args, **kwargs)",
        "return original_open(file, mode, *args, **kwargs)",
        "return getattr(array, method)(*args)",  # plan.checks.call_guard: a value method
        "format(array.item(), *args)",
    ]
)
# a weight name: dotted, no spaces ("lm_head.weight", "model.layers.0.self_attn.kv_b_proj.biases")
_WEIGHT_NAME = re.compile(r"[\w\-]+(\.[\w\-]+)+")


def _in_sanitrace(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_SANITRACE_DIR)


def _library_path(filename: str) -> Optional[str]:
    """``mlx_lm/models/llama.py`` for a file of an installed library, else None."""
    for d in _LIBRARY_DIRS:
        if filename.startswith(d):
            return os.path.relpath(filename, os.path.dirname(os.path.dirname(d)))
    return None


def _what(error: Exception, checkpoint: Iterable[Dict]) -> tuple:
    """(``KeyError: tensor 'x.y.z' (not in the checkpoint)`` or ``Type: first line``,
    the tensor's name or None). ``checkpoint``: the tensors of each file opened."""
    arg = error.args[0] if len(error.args) == 1 else None
    if isinstance(error, KeyError) and isinstance(arg, str) and _WEIGHT_NAME.fullmatch(arg):
        has = any(arg in tensors for tensors in checkpoint)
        return f"KeyError: tensor {arg!r:.200} ({'in' if has else 'not in'} the checkpoint)", arg
    lines = str(error).strip().splitlines() or [""]
    return f"{type(error).__name__}: {lines[0][:200]}".rstrip(": "), None


def upstream_failure(
    error: Exception,
    library: str,
    model_dir: str,
    config: dict,
    checkpoint: Iterable[Dict] = (),
    hf_repo: Optional[str] = None,
) -> Optional[UpstreamError]:
    """A one-line UpstreamError for an exception the conversion raised, or None when
    it was raised by sanitrace's own code (a bug: it keeps its traceback).
    ``checkpoint``: the tensor names of each file opened; ``hf_repo``: the Hub
    repo ``model_dir`` holds the headers of (named instead of that folder).

    An error of a real mlx function that a stand-in forwarded is the caller's.
    Names the innermost frame in the library or the model folder's own code
    (else outside sanitrace) and, for model construction (ModelArgs.from_dict,
    a model's __init__), config.json."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return None
    innermost = frames[-1]
    if _in_sanitrace(innermost.filename) and (innermost.line or "").strip() not in _FORWARDING_LINES:
        return None
    outside = [f for f in frames if not _in_sanitrace(f.filename)]
    in_library = [f for f in outside if _library_path(f.filename)]
    model_code = model_dir + os.sep
    converting = [f for f in outside if _library_path(f.filename) or f.filename.startswith(model_code)]
    site = (converting or outside or frames)[-1]
    where = _library_path(site.filename) or site.filename
    own_code = where.startswith(model_code)
    if own_code:
        where = os.path.relpath(where, model_dir)
    what, tensor = _what(error, checkpoint)
    version = installed_version(library.replace("_", "-")) or "?"
    source = hf_repo or model_dir
    details = (library, version, where, site.lineno or 0, type(error).__name__, tensor)
    constructing = any(
        f.name in ("from_dict", "__post_init__") or (f.name == "__init__" and "/models/" in f.filename)
        for f in in_library
    ) or (site.filename == "<string>" and site.name == "__init__")  # a dataclass's generated __init__
    if constructing:
        return UpstreamError(
            f"{os.path.join(source, 'config.json')}: {library} cannot build model_type "
            f"{config.get('model_type')!r} from this config: {what} ({where}:{site.lineno})",
            *details,
        )
    at = f"{where}:{site.lineno} ({site.name})"
    if not converting:
        return UpstreamError(f"{source}: {library}.convert fails at {at}: {what}", *details)
    whose = f"the model folder's own code in {library} {version}'s" if own_code else f"{library} {version}'s own"
    flag = " --trust-remote-code" if config.get("model_file") is not None else ""
    return UpstreamError(
        f"{source}: {whose} conversion fails at {at}: {what}; "
        f"eager conversion ({library}.convert{flag}) fails the same way on this checkpoint",
        *details,
    )
