"""Load check: does the library's own loader accept the output a plan writes?

The plan's output is written as a header-only folder (text files whole, each
shard its exact header in a sparse file of its size) and loaded with the
library's loader, lazily and strictly, as ``mlx_lm.load`` / ``mlx_vlm.load``
do: the model is built with per-module quantization from the plan's
config.json, then the planned tensors' names and shapes are checked against
it. Nothing is evaluated; only headers are read.

This reports what eager conversion will do: an output the library cannot load
is the library's (e.g. mlx_vlm keeping int4 experts at group size 32 while its
config.json says 64), and sanitrace writes it bit-identically when asked to.
"""

import contextlib
import importlib
import json
import os
import tempfile
from pathlib import Path
from typing import Optional

from .mismatch import causes
from .plan import Plan

# how mlx.nn.Module.load_weights words a strict-load failure
_LOAD_FAILURES = ("Received ", "Missing ", "Expected shape ")


class LoadCheckFailed(Exception):
    """The check itself could not run (not a verdict on the output)."""


def load_error(plan: Plan) -> Optional[str]:
    """None when ``plan.library``'s loader accepts the plan's output; else one
    line naming the first mismatching parameters and why. LoadCheckFailed when
    the loader fails for another reason."""
    import mlx.nn as nn

    captured = {}
    original = nn.Module.load_weights

    def capture(self, weights, strict=True):
        if isinstance(weights, list):
            captured["model"], captured["weights"] = self, dict(weights)
        return original(self, weights, strict=strict)

    with tempfile.TemporaryDirectory(prefix="sanitrace-load-") as folder:
        _write_header_only(plan, folder)
        nn.Module.load_weights = capture  # type: ignore[method-assign]  # spy on the loader's weights
        try:
            importlib.import_module(f"{plan.library}.utils").load_model(Path(folder), lazy=True)
        except ValueError as e:
            message = (str(e).strip().splitlines() or [""])[0]
            if not message.startswith(_LOAD_FAILURES) or "model" not in captured:
                raise LoadCheckFailed(f"{type(e).__name__}: {message[:300]}") from None
            return _explain(captured["model"], captured["weights"], _config(plan)) or message[:300]
        except Exception as e:  # noqa: BLE001  the library's loader, whatever it raises
            raise LoadCheckFailed(f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}") from None
        finally:
            nn.Module.load_weights = original  # type: ignore[method-assign]  # undo the spy
    return None


def load_verdict(plan: Plan) -> str:
    """What a plan records: "yes", "no: <load_error>" or "unchecked: <why>"."""
    try:
        problem = load_error(plan)
    except LoadCheckFailed as e:
        return f"unchecked: {e}"
    return "yes" if problem is None else f"no: {problem}"


def _write_header_only(plan: Plan, folder: str) -> None:
    """The plan's text files and shard headers (sparse, full size); no source-made files."""
    for f in plan.files:
        if f.kind == "source":
            continue
        path = os.path.join(folder, f.name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as out:
            if f.kind == "text":
                out.write(f.data)
            else:
                out.write(f.header)
                out.truncate(f.size)


def _config(plan: Plan) -> dict:
    data = next((f.data for f in plan.files if f.name == "config.json"), b"{}")
    with contextlib.suppress(ValueError):
        return json.loads(data)
    return {}


def _explain(model, weights: dict, config: dict) -> str:
    """The problems grouped by cause (mismatch.py), one clause per cause, the
    cause that explains most first: its count, reason and first parameter."""
    from mlx.utils import tree_flatten

    expected = dict(tree_flatten(model.parameters()))
    clauses = []
    for cause in causes(model, expected, weights, config):
        first = cause.names[0]
        if cause.kind == "shape" and first in weights and hasattr(weights[first], "shape"):
            clause = (
                f"{len(cause.names)} parameters of the wrong shape, first {first}: the model expects "
                f"{tuple(expected[first].shape)}, the output has {tuple(weights[first].shape)}"
            )
            clause += f" ({cause.why})" if cause.why else ""
        elif cause.kind == "missing":
            clause = f"{len(cause.names)} model parameters not in the output, first {first}"
        else:
            clause = f"{len(cause.names)} output tensors not in the model, first {first}"
        clauses.append(clause)
    return "; ".join(clauses)
