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
