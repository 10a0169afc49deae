"""Plans are canonical (same input, same bytes; header-only = full) and safe to load."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest
from conftest import SHARED, copy_tree, make_checkpoint

from sanitrace import plan as plan_ir
from sanitrace.plan.format import EXT_REF
from sanitrace.planner import build_plan
from sanitrace.safetensors_format import read_header
from sanitrace.tracer import ConvertOptions, trace


def plan_bytes(src, **options) -> bytes:
    return plan_ir.dumps(build_plan(trace(str(src), ConvertOptions(**options))))


def strip_data(folder, sparse: bool):
    """Keep every shard's header; drop its data (truncate, or punch it back as a hole)."""
    for name in os.listdir(folder):
        if name.endswith(".safetensors"):
            path = os.path.join(folder, name)
            header = read_header(path)
            os.truncate(path, header.data_start)
            if sparse:
                os.truncate(path, header.expected_size)


@pytest.mark.parametrize("fixture", ["deepseek_v3", "split_experts"])
@pytest.mark.parametrize("sparse", [False, True])
def test_header_only_trace_gives_same_plan(fixture, sparse, checkpoints, tmp_path):
    src = checkpoints[fixture]
    full = plan_bytes(src, quantize=True)
    headers_only = copy_tree(src, tmp_path / "headers")
    strip_data(headers_only, sparse)
    assert plan_bytes(headers_only, quantize=True) == full


def test_two_traces_are_byte_identical(checkpoints, tmp_path):
    src = checkpoints["mixtral"]
    first = plan_bytes(src, quantize=True, quant_predicate="mixed_3_6")
    assert plan_bytes(src, quantize=True, quant_predicate="mixed_3_6") == first
    moved = copy_tree(src, tmp_path / "elsewhere")
    assert plan_bytes(moved, quantize=True, quant_predicate="mixed_3_6") == first
    assert str(tmp_path).encode() not in first and str(src).encode() not in first


def test_tokenizer_note_names_the_model_folder_not_where_it_is(tmp_path):
    """A source whose processor the library cannot load: the plan says why, in
    the library's words, with the folder's name in place of its path."""
    case = SHARED / "corpus" / "cases" / "vlm-paligemma"
    if not case.is_dir():
        pytest.skip("../shared/corpus is not present")
    plans = []
    for place in ("one", "two/deeper"):
        folder = copy_tree(case, tmp_path / place / "model")
        for name in os.listdir(folder):
            if name.startswith(("tokenizer", "processor", "preprocessor", "chat_template")):
                os.remove(folder / name)
        plans.append(plan_ir.dumps(build_plan(trace(str(folder), ConvertOptions(), library="mlx_vlm"))))
    assert plans[0] == plans[1]
    assert str(tmp_path).encode() not in plans[0]
    assert "Can't load image processor for 'model'" in plan_ir.loads(plans[0]).accounting.tokenizer


@pytest.mark.parametrize("fixture", ["deepseek_v3", "split_experts", "deepseek_v3_fp8", "gpt_oss_mxfp4"])
def test_traced_plan_nodes_are_what_decoding_its_bytes_gives(fixture, checkpoints):
    """build_plan gives a traced plan its nodes from the trace (no decoding pass); they must be the loaded plan's."""
    plan = build_plan(trace(str(checkpoints[fixture]), ConvertOptions(quantize=True)))
    assert "nodes" in plan.__dict__
    assert plan.nodes == plan_ir.loads(plan_ir.dumps(plan)).nodes


def test_round_trip(checkpoints):
    data = plan_bytes(checkpoints["deepseek_v3"], quantize=True)
    assert plan_ir.dumps(plan_ir.loads(data)) == data


def _tamper(data: bytes, change) -> bytes:
    raw = msgpack.unpackb(data, raw=False, strict_map_key=False)
    change(raw)
    return msgpack.packb(raw, use_bin_type=True)


def _last_computed(p):
    return next(row for row in reversed(p["nodes"]) if p["signatures"][row[0]][0] != "load")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: p["signatures"][-1].__setitem__(0, "os.system"), "not in the replay allowlist"),
        (lambda p: p["signatures"][-1].__setitem__(0, "mx.load"), "not in the replay allowlist"),
        (lambda p: p.__setitem__("version", 99), "format version"),
        (lambda p: p.__setitem__("format", "pickle"), "not a sanitrace plan"),
        (lambda p: p["nodes"][0].__setitem__(1, 10**6), "out of range"),
        (lambda p: _last_computed(p).__setitem__(1, 10**6), "not earlier"),
        (lambda p: _last_computed(p).append(1), "slots"),
        (lambda p: p["source"]["tensors"][0].__setitem__(1, 10**4), "malformed source tensor"),
    ],
)
def test_loading_rejects_bad_plans(change, message, checkpoints):
    data = plan_bytes(checkpoints["llama"])
    with pytest.raises(plan_ir.PlanError, match=message):
        plan_ir.loads(_tamper(data, change))


def _guard(method: str, args) -> dict:
    return {"args": args, "method": method, "ref": msgpack.ExtType(EXT_REF, plan_ir.format.pack([0, 0])), "value": 1.0}


def test_guard_arguments_round_trip(checkpoints):
    data = _tamper(plan_bytes(checkpoints["llama"]), lambda p: p["guards"].append(_guard("__format__", [".3f"])))
    plan = plan_ir.loads(data)
    assert [(g.method, g.args) for g in plan.guards] == [("__format__", (".3f",))]
    assert plan_ir.dumps(plan) == data


@pytest.mark.parametrize(
    "method, args",
    [
        ("item", [0]),  # item() takes none
        ("__format__", [".3f", ".2f"]),  # one spec at most
        ("__format__", [{"a": 1}]),  # literals only
        ("__format__", ["100000f"]),  # a gigabyte-wide field
        ("__array__", ["x" * 65]),
    ],
)
def test_loading_rejects_guard_arguments_the_method_does_not_take(method, args, checkpoints):
    data = _tamper(plan_bytes(checkpoints["llama"]), lambda p: p["guards"].append(_guard(method, args)))
    with pytest.raises(plan_ir.PlanError, match="which it does not take"):
        plan_ir.loads(data)


def test_repeated_structure_is_stored_once(tmp_path):
    """Experts repeat the same chains and names: the file stores each once, so the
    number of signatures and name templates does not grow with the expert count."""
    sizes = {}
    for experts in (6, 40):  # sizes that coincide with no other dimension
        src = make_checkpoint(tmp_path / f"e{experts}", "deepseek_v3", layers=3, experts=experts)
        raw = msgpack.unpackb(plan_bytes(src, quantize=True), raw=False, strict_map_key=False)
        sizes[experts] = (len(raw["signatures"]), len(raw["source"]["names"]), len(raw["nodes"]))
    assert sizes[6][:2] == sizes[40][:2]
    # while each added expert adds its 3 projection loads in each of the 2 MoE layers
    assert sizes[40][2] == sizes[6][2] + (40 - 6) * 3 * 2


def test_loading_rejects_garbage_and_oversize():
    with pytest.raises(plan_ir.PlanError):
        plan_ir.loads(b"\xc1 not msgpack")
    with pytest.raises(plan_ir.PlanError, match="exceeds"):
        plan_ir.loads(b"\0" * (plan_ir.MAX_PLAN_BYTES + 1))


def test_gc_paused_leaves_no_young_backlog_and_keeps_a_callers_freeze():
    """Objects made while paused must not all be scanned at the next allocation
    (a full young-generation scan of a plan's million objects); objects a
    caller froze stay frozen."""
    import gc

    gc.collect()
    with plan_ir.gc_paused():
        kept = [[i] for i in range(100_000)]
        assert gc.get_count()[0] >= 100_000  # counted as young while paused
    young = gc.get_objects(generation=0) + gc.get_objects(generation=1)
    assert not any(o is kept or o is kept[-1] for o in young)  # old, without a scan
    gc.freeze()
    frozen = gc.get_freeze_count()
    try:
        with plan_ir.gc_paused():
            more = [[i] for i in range(1_000)]
        assert gc.get_freeze_count() == frozen and len(more) == 1_000
    finally:
        gc.unfreeze()


PLAN_PACKAGE = Path(plan_ir.__file__).parent


def test_plan_package_is_a_facade_its_modules_never_import():
    """plan/__init__.py only re-exports (imports at the top, then ``__all__``: no
    definitions, so no module-level cycle), and no module of the package imports
    from the package itself (``from . import x``) but from the module defining x."""
    init = ast.parse((PLAN_PACKAGE / "__init__.py").read_text())
    body = init.body[1:]  # after the docstring
    imports = [n for n in body if isinstance(n, ast.ImportFrom)]
    assert body[: len(imports)] == imports and len(body) == len(imports) + 1
    (all_names,) = body[len(imports) :]
    assert [t.id for t in all_names.targets] == ["__all__"]
    assert sorted(ast.literal_eval(all_names.value)) == sorted(a.asname or a.name for n in imports for a in n.names)
    for path in sorted(PLAN_PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                assert node.module, f"{path.name}:{node.lineno} imports from the package itself"


@pytest.mark.parametrize(
    "module",
    sorted(
        [f"sanitrace.plan.{p.stem}" for p in PLAN_PACKAGE.glob("*.py") if p.stem != "__init__"]
        + ["sanitrace.planner.memory"]
    ),
)
def test_module_imports_alone_without_the_tracer(module):
    """Each plan module imports first in a fresh process (no import cycle), and
    none, nor the memory model the executor uses, imports the tracer or mlx-lm."""
    code = (
        f"import sys, importlib; importlib.import_module({module!r}); "
        "bad = [m for m in sys.modules if m.startswith(('sanitrace.tracer', 'mlx.nn', 'mlx_lm', 'mlx_vlm'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)


def test_source_names_round_trip_with_any_digit_runs():
    """Names are stored as a template with a hole per number; runs with a
    leading zero ("007", "00") are text (a hole is a plain %d), and the fast
    split falls back to the exact one when it cut such a run."""
    from sanitrace.plan.source_tensors import decode_tensors, encode_tensors, split_numbers
    from sanitrace.plan.types import SourceFile, SourceTensor

    names = ["a.0.b", "a.007.b", "x00", "0", "10.20", "layer01.w", "e.100.0.1x05", "", "w.9", "9.w.0"]
    for name in names:
        parts = split_numbers(name)
        assert "".join(parts) == name
        assert all(n == "0" or n[0] != "0" for n in parts[1::2]), name
    assert split_numbers("a.007.b") == ["a.007.b"] and split_numbers("e.100.0.1x05") == [
        "e.",
        "100",
        ".",
        "0",
        ".",
        "1",
        "x05",
    ]
    files = (SourceFile("m.safetensors", 8 + 8 + 2 * len(names), "", 8, None),)
    tensors = [SourceTensor(0, name, "BF16", (1,), 16 + 2 * i, 18 + 2 * i) for i, name in enumerate(names)]
    templates, rows = encode_tensors(tensors, files)
    assert decode_tensors(templates, rows, files) == tensors
