"""Tracer behaviour: strict accounting, value-dependent sanitize, unsupported ops,
and patching that leaves the process's mlx unchanged.

Test model classes are injected the way mlx-lm supports: config.json names a
``model_file`` in the checkpoint folder, loaded with trust_remote_code.
"""

import dataclasses
import json
import os
import textwrap

import mlx.core as mx
import mlx.nn as nn
import pytest
from conftest import copy_tree, sanitrace_convert

from sanitrace import plan as plan_ir
from sanitrace.cli import main as sanitrace_main
from sanitrace.compare import compare_folders
from sanitrace.executor import GuardFailed, execute
from sanitrace.planner import build_plan
from sanitrace.safetensors_format import read_header
from sanitrace.show import render
from sanitrace.tracer import ConvertOptions, LoadMismatch, TraceError, trace
from test_plan import strip_data

BASE = """
import mlx.core as mx
from mlx_lm.models.qwen3_moe import Model as Base, ModelArgs

class Model(Base):
"""


def custom(checkpoint, tmp_path, body: str):
    folder = copy_tree(checkpoint, tmp_path / "custom")
    (folder / "custom_model.py").write_text(BASE + textwrap.indent(textwrap.dedent(body), "    "))
    config = json.loads((folder / "config.json").read_text())
    config["model_file"] = "custom_model.py"
    (folder / "config.json").write_text(json.dumps(config))
    return folder


TRUST = ConvertOptions(trust_remote_code=True)


def test_sanitize_that_forgets_one_expert_fails_naming_it(checkpoints, tmp_path):
    folder = custom(
        checkpoints["qwen3_moe"],
        tmp_path,
        """
        def sanitize(self, weights):
            n = self.args.num_experts - 1  # off by one: forgets the last expert
            for l in range(self.args.num_hidden_layers):
                p = f"model.layers.{l}.mlp"
                for m in ["gate_proj", "up_proj", "down_proj"]:
                    w = [weights.pop(f"{p}.experts.{e}.{m}.weight") for e in range(n)]
                    weights[f"{p}.switch_mlp.{m}.weight"] = mx.stack(w)
            return weights
    """,
    )
    with pytest.raises(LoadMismatch) as error:
        trace(str(folder), TRUST)
    message = str(error.value)
    assert "6 unexpected parameters" in message
    # grouped by cause, the names of each collapsed as show collapses them (mismatch.py)
    assert "\n  model.layers.{0..1}.mlp.experts.7.down_proj.weight\n" in message
    assert "model.layers.{0..1}.mlp.switch_mlp.gate_proj.weight: shape [7, 64, 64], model has [8, 64, 64]" in message


def test_sanitize_that_drops_a_tensor_fails_naming_the_missing_parameter(checkpoints, tmp_path, capsys):
    folder = custom(
        checkpoints["qwen3_moe"],
        tmp_path,
        """
        def sanitize(self, weights):
            weights = super().sanitize(weights)
            weights.pop("model.layers.1.mlp.switch_mlp.down_proj.weight")
            return weights
    """,
    )
    rc = sanitrace_main(["trace", str(folder), "-o", str(tmp_path / "p.msgpack"), "--trust-remote-code"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "1 missing parameters" in err and "model.layers.1.mlp.switch_mlp.down_proj.weight" in err
    assert not (tmp_path / "p.msgpack").exists()


def test_proxies_are_mx_arrays_inside_sanitize(checkpoints, tmp_path, eager):
    folder = custom(
        checkpoints["qwen3_moe"],
        tmp_path,
        """
        def sanitize(self, weights):
            assert all(isinstance(v, mx.array) for v in weights.values())
            weights = {k: mx.array(v) for k, v in weights.items()}  # wraps every value
            return super().sanitize(weights)
    """,
    )
    plan = build_plan(trace(str(folder), TRUST))
    assert any(node.op == "mx.array" for node in plan.nodes)
    out = tmp_path / "out"
    execute(plan, str(folder), str(out), progress=False)
    assert compare_folders(str(eager(folder, ["--trust-remote-code"])), str(out)) == []


VALUE_CHECK = """
    def sanitize(self, weights):
        norm = weights["model.norm.weight"]
        if mx.all(norm.astype(mx.float32) < 100.0).item():  # a value check, like prism's
            weights = super().sanitize(weights)
        return weights
"""


def test_value_check_without_data_fails_with_file_and_line(checkpoints, tmp_path):
    folder = custom(checkpoints["qwen3_moe"], tmp_path, VALUE_CHECK)
    strip_data(folder, sparse=False)
    with pytest.raises(TraceError) as error:
        trace(str(folder), TRUST)
    message = str(error.value)
    assert "custom_model.py:" in message and ".item" in message and "headers only" in message


def test_value_check_with_data_is_a_guard_checked_at_execute(checkpoints, tmp_path):
    folder = custom(checkpoints["qwen3_moe"], tmp_path, VALUE_CHECK)
    plan = plan_ir.loads(plan_ir.dumps(build_plan(trace(str(folder), TRUST))))
    assert [(g.method, g.value) for g in plan.guards] == [("item", True)]
    execute(plan, str(folder), str(tmp_path / "ok"), progress=False)
    # same header, different values: the guard must stop the run before writing
    path = folder / "model.safetensors"
    header = __import__("sanitrace.safetensors_format", fromlist=["x"]).read_header(str(path))
    norm = header.tensors["model.norm.weight"]
    with open(path, "r+b") as f:
        f.seek(norm.begin)
        f.write(b"\x00\x7f" * (norm.nbytes // 2))  # bf16 +inf everywhere
    with pytest.raises(GuardFailed):
        execute(plan, str(folder), str(tmp_path / "bad"), progress=False)
    assert not (tmp_path / "bad").exists()


def test_item_assignment_fails_with_file_and_line(checkpoints, tmp_path):
    folder = custom(
        checkpoints["qwen3_moe"],
        tmp_path,
        """
        def sanitize(self, weights):
            weights["model.norm.weight"][0] = 1.0
            return super().sanitize(weights)
    """,
    )
    with pytest.raises(TraceError, match=r"custom_model\.py:\d+"):
        trace(str(folder), TRUST)


def test_untracked_computation_is_caught(checkpoints, tmp_path):
    folder = custom(
        checkpoints["qwen3_moe"],
        tmp_path,
        """
        def sanitize(self, weights):
            weights = super().sanitize(weights)
            w = weights["model.norm.weight"]
            weights["model.norm.weight"] = mx.fast.rms_norm(w, None, 1e-5)  # mx.fast is not traced
            return weights
    """,
    )
    with pytest.raises(TraceError, match="untracked"):
        trace(str(folder), TRUST)


def test_untracked_computation_on_a_derived_value_is_caught(checkpoints, tmp_path):
    """Ops run on poisoned leaves, not on the sources' chain: still never evaluable."""
    folder = custom(
        checkpoints["qwen3_moe"],
        tmp_path,
        """
        def sanitize(self, weights):
            weights = super().sanitize(weights)
            w = (weights["model.norm.weight"] * 2).astype(mx.float32)
            weights["model.norm.weight"] = mx.fast.rms_norm(w, None, 1e-5).astype(mx.bfloat16)
            return weights
    """,
    )
    with pytest.raises(TraceError, match="untracked"):
        trace(str(folder), TRUST)


def _patched_state():
    import mlx_lm.utils

    return (
        mx.stack,
        mx.load,
        mx.save_safetensors,
        mx.eval,
        mx.array,
        mx.quantize,
        mx.linalg.norm,
        nn.Module.load_weights,
        mlx_lm.utils.load_tokenizer,
    )


def test_patching_is_undone_after_success_and_failure(checkpoints, tmp_path):
    before = _patched_state()
    trace(str(checkpoints["deepseek_v3"]), ConvertOptions(quantize=True))
    assert _patched_state() == before
    folder = custom(
        checkpoints["qwen3_moe"],
        tmp_path,
        """
        def sanitize(self, weights):
            raise RuntimeError("boom")
    """,
    )
    with pytest.raises(TraceError, match=r"custom_model.py:\d+ \(sanitize\): RuntimeError: boom"):
        trace(str(folder), TRUST)
    assert _patched_state() == before
    assert type(mx.array([1])) is mx.array and mx.stack([mx.array([1])]).shape == (1, 1)


def test_custom_model_needs_trust_remote_code(checkpoints, tmp_path):
    folder = custom(
        checkpoints["qwen3_moe"],
        tmp_path,
        """
        pass
    """,
    )
    with pytest.raises(TraceError, match="--trust-remote-code"):
        trace(str(folder), ConvertOptions())


def test_not_a_model_folder(tmp_path, capsys):
    assert sanitrace_main(["trace", str(tmp_path), "-o", str(tmp_path / "p")]) == 1
    assert "no config.json" in capsys.readouterr().err


def test_bad_safetensors_header_names_the_file(checkpoints, tmp_path, capsys):
    folder = copy_tree(checkpoints["llama"], tmp_path / "bad")
    with open(folder / "model.safetensors", "r+b") as f:
        f.seek(8)
        f.write(b"[not json")
    assert sanitrace_main(["trace", str(folder), "-o", str(tmp_path / "p")]) == 1
    err = capsys.readouterr().err
    assert "model.safetensors" in err and "not valid JSON" in err


def test_convert_via_cli_matches_eager_with_custom_model(checkpoints, tmp_path, eager):
    folder = custom(
        checkpoints["qwen3_moe"],
        tmp_path,
        """
        def sanitize(self, weights):
            return super().sanitize(weights)
    """,
    )
    out = sanitrace_convert(folder, tmp_path / "out", ["-q", "--trust-remote-code"])
    assert compare_folders(str(eager(folder, ["-q", "--trust-remote-code"])), str(out)) == []
    assert os.path.exists(out / "custom_model.py")  # *.py files are copied, as eager does


def test_trace_leaves_nothing_alive(checkpoints):
    """Not even for the cyclic collector: reference counting frees the whole graph
    (`convert` executes right after tracing; a giant's graph is hundreds of MB)."""
    import gc

    from sanitrace.plan import Node
    from sanitrace.tracer.proxy import Recorder

    gc.collect()
    gc.disable()
    try:
        trace(str(checkpoints["deepseek_v3"]), ConvertOptions(quantize=True))
        alive = [o for o in gc.get_objects() if isinstance(o, (Node, Recorder))]
    finally:
        gc.enable()
    assert alive == []


def test_stand_ins_captured_during_a_trace_stay_correct(tmp_path):
    from sanitrace.tracer.patching import tracing
    from sanitrace.tracer.proxy import Recorder
    from sanitrace.tracer.sources import SourceSet

    first = Recorder("first")
    with tracing(first, SourceSet(str(tmp_path))):
        captured_stack, captured_array = mx.stack, mx.array  # e.g. a module imported mid-trace
    assert captured_stack([mx.array([1, 2])]).tolist() == [[1, 2]]
    assert isinstance(mx.zeros((1,)), captured_array)
    second = Recorder("second")
    with tracing(second, SourceSet(str(tmp_path))):
        proxy = second.sources("f", {"w": mx.zeros((2, 3))})["w"]
        captured_stack([proxy, proxy])
    assert [n.op for n in second.nodes] == ["load", "mx.stack"] and first.nodes == []


NONZERO_CHECK = """
    def sanitize(self, weights):
        if mx.any(weights["model.norm.weight"] != 0).item():  # zeros: an unconverted checkpoint
            weights = super().sanitize(weights)
        return weights
"""


def test_value_check_on_a_sparse_header_only_copy_says_headers_only(checkpoints, tmp_path, capsys):
    """A copy that is the header plus a hole up to the file's size reads as zeros:
    the trace must say the file has no data, not take the zeros as values."""
    folder = custom(checkpoints["qwen3_moe"], tmp_path, NONZERO_CHECK)
    strip_data(folder, sparse=True)
    shard = folder / "model.safetensors"
    assert shard.stat().st_size > shard.stat().st_blocks * 512  # really sparse
    rc = sanitrace_main(["trace", str(folder), "-o", str(tmp_path / "p.msgpack"), "--trust-remote-code"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "\n" not in err and "Traceback" not in err, err
    assert f"{shard} is headers only" in err and "'model.norm.weight'" in err and "custom_model.py:" in err


NAN_CHECK = """
    def sanitize(self, weights):
        norm = weights["model.norm.weight"]
        peak = norm.max().item()
        if peak != peak:  # NaN: a damaged norm
            weights["model.norm.weight"] = mx.nan_to_num(norm)
        return super().sanitize(weights)
"""


def _set_first(folder, name: str, value: bytes) -> None:
    path = folder / "model.safetensors"
    t = read_header(str(path)).tensors[name]
    with open(path, "r+b") as f:
        f.seek(t.begin)
        f.write(value)


def test_nan_guard_passes_on_the_same_data_and_refuses_a_change(checkpoints, tmp_path, eager):
    folder = custom(checkpoints["qwen3_moe"], tmp_path, NAN_CHECK)
    _set_first(folder, "model.norm.weight", b"\xc0\x7f")  # bf16 NaN
    plan = plan_ir.loads(plan_ir.dumps(build_plan(trace(str(folder), TRUST))))
    [guard] = plan.guards
    assert guard.method == "item" and guard.value != guard.value
    execute(plan, str(folder), str(tmp_path / "ok"), progress=False)
    assert compare_folders(str(eager(folder, ["--trust-remote-code"])), str(tmp_path / "ok")) == []
    _set_first(folder, "model.norm.weight", b"\x80\x3f")  # 1.0: no NaN any more
    with pytest.raises(GuardFailed, match="nan"):
        execute(plan, str(folder), str(tmp_path / "bad"), progress=False)
    assert not (tmp_path / "bad").exists()


FORMAT_CHECK = """
    def sanitize(self, weights):
        norm = weights["model.norm.weight"]
        if f"{norm.max():.3f}" != "0.000":  # __format__('.3f')
            weights = super().sanitize(weights)
        return weights
"""


def test_guard_arguments_are_kept_and_used(checkpoints, tmp_path):
    folder = custom(checkpoints["qwen3_moe"], tmp_path, FORMAT_CHECK)
    path = tmp_path / "plan.msgpack"
    plan_ir.save(build_plan(trace(str(folder), TRUST)), str(path))
    plan = plan_ir.load(str(path))
    assert [(g.method, g.args) for g in plan.guards] == [("__format__", (".3f",))]
    assert "model.norm.weight.max().__format__('.3f') == '0.0" in render(plan)
    execute(plan, str(folder), str(tmp_path / "ok"), progress=False)
    # the executor calls the method with the recorded arguments: others give another value
    coarse = plan_ir.loads(plan_ir.dumps(dataclasses.replace(plan, guards=(plan.guards[0]._replace(args=(".1f",)),))))
    with pytest.raises(GuardFailed, match=r"__format__\('.1f'\)"):
        execute(coarse, str(folder), str(tmp_path / "coarse"), progress=False)
    # a spec mlx's __format__ would crash the process on is refused in one line
    crash = dataclasses.replace(plan, guards=(plan.guards[0]._replace(args=("d",)),))
    with pytest.raises(plan_ir.PlanError, match="Unknown format code 'd'"):
        execute(crash, str(folder), str(tmp_path / "crash"), progress=False)
