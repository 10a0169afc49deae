"""Code health: no dead definitions or unused imports, and the comments and docs
that state facts about mlx or the planner state the true ones."""

import ast
import json
import re
import struct
from pathlib import Path

import mlx.core as mx
import pytest

from sanitrace.plan import VERSION
from sanitrace.plan.infer import LOAD_DTYPES
from sanitrace.planner.chunking import LARGE_CHUNK_UNITS
from sanitrace.safetensors_format import DTYPE_SIZES

REPO = Path(__file__).resolve().parent.parent
PACKAGE = sorted((REPO / "sanitrace").rglob("*.py"))
EVERYTHING = PACKAGE + sorted(p for d in ("tests", "bench", "examples") for p in (REPO / d).rglob("*.py"))


def _source(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_every_top_level_definition_is_used():
    """A function or class of the package that nothing names (the package, tests,
    benches, examples) is dead code."""
    words = {}
    for path in EVERYTHING:
        for word in re.findall(r"\w+", _source(path)):
            words[word] = words.get(word, 0) + 1
    dead = []
    for path in PACKAGE:
        for node in ast.parse(_source(path)).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and words[node.name] == 1:
                dead.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert dead == []


def test_no_unused_imports():
    """Each imported name is used in its module (or exported, or marked ``noqa: F401``)."""
    unused = []
    for path in EVERYTHING:
        text = _source(path)
        tree = ast.parse(text)
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        lines = text.splitlines()
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or "F401" in lines[node.lineno - 1]:
                continue
            for alias in node.names:
                name = (alias.asname or alias.name).split(".")[0]
                if name != "*" and name not in used and name not in strings:
                    unused.append(f"{path.relative_to(REPO)}:{node.lineno} {name}")
    assert unused == []


@pytest.mark.parametrize("dtype", sorted(DTYPE_SIZES))
def test_load_dtypes_are_what_mx_load_gives(dtype, tmp_path):
    """safetensors_format.DTYPE_SIZES names every dtype a header may have;
    plan.infer.LOAD_DTYPES (its comment) what mx.load gives for those it reads."""
    raw = json.dumps({"t": {"dtype": dtype, "shape": [2], "data_offsets": [0, 2 * DTYPE_SIZES[dtype]]}}).encode()
    path = tmp_path / "t.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(2 * DTYPE_SIZES[dtype]))
    try:
        loaded = str(mx.load(str(path))["t"].dtype).rsplit(".", 1)[-1]
    except (RuntimeError, ValueError):
        loaded = None
    assert loaded == LOAD_DTYPES.get(dtype)


def test_plan_format_doc_states_the_version_and_the_fit():
    doc = _source(REPO / "docs" / "plan-format.md")
    assert f"# Plan format (version {VERSION})" in doc and f"| `version` | `{VERSION}` |" in doc
    # chunking.peak_lines: the second line is fitted at m and 2m units, m at most LARGE_CHUNK_UNITS
    assert f"at most {LARGE_CHUNK_UNITS}" in doc and "`m` and `2m` units" in doc


def test_public_api_docstrings_state_args_and_returns():
    """The public API (``sanitrace.__all__``, the executor's ``execute``, the public
    functions of the modules users call) documents its contract in Google style:
    "Args:" when a function takes parameters, "Returns:" when it returns a value
    (annotated other than None, or a ``return`` with a value); each public result
    class names every field under "Attributes:"."""
    import dataclasses
    import inspect
    import textwrap

    import sanitrace
    from sanitrace import api, check, collapse, compare, diff, executor, hub, hub_download, lint, retrace, show, verify

    functions = [getattr(api, name) for name in sanitrace.__all__] + [executor.execute]
    for module in (verify, check, compare, hub, hub_download, retrace, diff, show, collapse, lint):
        functions += [
            obj
            for name, obj in vars(module).items()
            if not name.startswith("_") and inspect.isfunction(obj) and obj.__module__ == module.__name__
        ]
    problems = []
    for func in functions:
        doc, code = inspect.getdoc(func) or "", inspect.unwrap(func)
        label = f"{func.__module__}.{func.__qualname__}"
        if inspect.signature(code).parameters and "\nArgs:\n" not in doc:
            problems.append(f"{label}: no Args:")
        stack, returns = [ast.parse(textwrap.dedent(inspect.getsource(code))).body[0]], False
        while stack:  # the function's own statements, not those of functions defined in it
            node = stack.pop()
            returns |= isinstance(node, ast.Return) and node.value is not None
            stack += [
                n
                for n in ast.iter_child_nodes(node)
                if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef))
            ]
        annotated = inspect.signature(code).return_annotation not in (None, "None", inspect.Signature.empty)
        if (annotated or returns) and "\nReturns:\n" not in doc:
            problems.append(f"{label}: no Returns:")
    for cls in (api.ConvertSummary, verify.VerifyReport, check.CheckResult):
        doc = inspect.getdoc(cls) or ""
        attributes = doc.split("\nAttributes:\n", 1)[1] if "\nAttributes:\n" in doc else ""
        problems += [
            f"{cls.__qualname__}.{f.name}: not under Attributes:"
            for f in dataclasses.fields(cls)
            if not re.search(rf"^\s+{f.name}:", attributes, re.M)
        ]
    assert len(functions) > 30 and problems == []
