"""Plans as reviewable artifacts: show --full / json, diff, retrace and the
committed plans' freshness, and the seeded reviewer cases (checkpoints a
sanitize does not handle must fail loudly, naming every parameter)."""

import dataclasses
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx_lm.models.qwen3_moe as qwen3_moe
import pytest
from conftest import REPO, make_checkpoint

from sanitrace import plan as plan_ir
from sanitrace.cli import main as sanitrace_main
from sanitrace.diff import diff
from sanitrace.plan import Dropped
from sanitrace.planner import build_plan
from sanitrace.show import render, render_json
from sanitrace.tracer import ConvertOptions, TraceError, trace

PLANS = sorted((REPO / "plans").glob("*.msgpack"))
REFUSALS = sorted((REPO / "plans").glob("*.refused.txt"))
EXAMPLE_PLAN = REPO / "plans" / "tiny-qwen3-moe-q4.msgpack"
GIANTS = REPO.parent / "shared" / "giants"


def regenerate_module():
    """plans/regenerate.py, the one list of what is committed and how."""
    spec = importlib.util.spec_from_file_location("regenerate", REPO / "plans" / "regenerate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def traced(model_dir: Path, **options) -> plan_ir.Plan:
    return build_plan(trace(str(model_dir), ConvertOptions(**options)))


def cli(*argv) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sanitrace", *map(str, argv)], capture_output=True, text=True, cwd=REPO
    )


# --- committed plans ------------------------------------------------------


def test_plans_folder_holds_the_flagships_with_renderings():
    names = {p.stem for p in PLANS}
    for model in (
        "deepseek-v3",
        "kimi-k2-instruct",
        "qwen3-235b-a22b",
        "gpt-oss-120b",
        "minimax-m2",
        "glm-4.5",
        "mixtral-8x22b",
        "qwen3-next-80b-a3b-instruct",
    ):
        assert {f"{model}-bf16", f"{model}-q4"} <= names
    regenerate = regenerate_module()
    for name, entry in regenerate.SOURCES.items():  # the 2026 flagships among them (issue 16)
        assert {f"{name}-{variant}" for variant in entry.variants} <= names, name
    assert {p.name for p in REFUSALS} == {f"{name}.refused.txt" for name in regenerate.REFUSED}
    for path in PLANS:
        assert path.with_suffix(".txt").read_text() == render(plan_ir.load(str(path))), path.name
    assert sum(p.stat().st_size for p in (REPO / "plans").iterdir()) <= 60 << 20


@pytest.mark.parametrize("path", PLANS, ids=[p.stem for p in PLANS])
def test_committed_plan_is_fresh(path):
    """The CI staleness check: re-tracing from the plan alone gives the same bytes."""
    proc = cli("retrace", path)
    assert proc.returncode == 0 and f"{path}: fresh" in proc.stdout, proc.stdout + proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("path", REFUSALS, ids=[p.name.split(".refused")[0] for p in REFUSALS])
def test_committed_refusal_is_fresh(path, tmp_path):
    """A release a library refuses is kept as what the trace says: an upstream fix is a diff."""
    if not (GIANTS / "materialize.py").exists():
        pytest.skip("../shared/giants is absent")
    regenerate = regenerate_module()
    description, refused = regenerate.REFUSED[path.name.split(".refused")[0]]
    source = regenerate.materialized(str(GIANTS), description, str(tmp_path))
    assert regenerate.refusal_text(description, source, refused) == path.read_text()


class ShiftedNormModel(qwen3_moe.Model):
    """An upstream sanitize change of the kind that corrupted real conversions:
    norm weights shifted by one."""

    def sanitize(self, weights):
        weights = super().sanitize(weights)
        return {k: v + 1.0 if k.endswith("norm.weight") else v for k, v in weights.items()}


def test_a_sanitize_change_makes_retrace_fail_with_a_readable_diff(tmp_path, monkeypatch, capsys):
    plan = tmp_path / EXAMPLE_PLAN.name
    shutil.copy(EXAMPLE_PLAN, plan)
    shutil.copy(EXAMPLE_PLAN.with_suffix(".txt"), plan.with_suffix(".txt"))
    monkeypatch.setattr(qwen3_moe, "Model", ShiftedNormModel)

    assert sanitrace_main(["retrace", str(plan)]) == 1
    report = capsys.readouterr().out
    assert f"{plan}: stale" in report and "outputs changed" in report
    assert "model.norm.weight" in report and "+ 1.0" in report
    assert "model.layers.{0..1}.input_layernorm.weight" in report  # collapsed across layers
    assert "does not match the plan's rendering" in report

    assert sanitrace_main(["retrace", str(plan), "--write"]) == 0
    assert plan.read_bytes() != EXAMPLE_PLAN.read_bytes()
    assert sanitrace_main(["retrace", str(plan)]) == 0  # fresh under the changed sanitize
    monkeypatch.undo()
    assert sanitrace_main(["retrace", str(plan)]) == 1


# --- diff -----------------------------------------------------------------


def test_diff_of_another_group_size_names_each_change_and_exits_one(tmp_path):
    """`-q --q-group-size 32` against the committed `-q` plan (group size 64): every
    4-bit weight's scales and biases double their groups, the 8-bit MoE gates
    (mlx_lm's predicate fixes their group size) do not change; nothing is added
    or removed. A re-trace with the committed plan's options diffs empty."""
    config = json.loads((REPO / "examples" / "tiny-qwen3-moe" / "config.json").read_text())
    committed = plan_ir.load(str(EXAMPLE_PLAN))
    quantized = {o.name[: -len(".scales")] for o in committed.outputs if o.name.endswith(".scales")}
    changed = sorted(
        f"{prefix}.{part}"
        for prefix in quantized
        if not prefix.endswith(".mlp.gate")
        for part in ("biases", "scales", "weight")
    )
    assert len(changed) == 3 * (2 + config["num_hidden_layers"] * 7)  # embed, head; per layer 4 attn + 3 experts

    other = tmp_path / "q32.msgpack"
    assert cli("trace", REPO / "examples" / "tiny-qwen3-moe", "-o", other, "-q", "--q-group-size", 32).returncode == 0
    proc = cli("diff", EXAMPLE_PLAN, other)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "options.q_group_size: None -> 32"
    assert f"outputs changed ({len(changed)}):" in lines
    assert sorted(n for line in lines if line.startswith("  ! ") for n in expand(line[4:-1])) == changed
    assert not [line for line in lines if line.startswith(("outputs added", "outputs removed", "outputs renamed"))]
    vocab, groups = config["vocab_size"], config["hidden_size"] // 64
    expr = "quantize(lm_head.weight.astype(bfloat16), {}, 4, mode='affine')[1]"
    start = lines.index("  ! lm_head.scales:")
    assert lines[start + 1 : start + 3] == [
        f"      - bfloat16[{vocab}, {groups}] = " + expr.format(64),
        f"      + bfloat16[{vocab}, {2 * groups}] = " + expr.format(32),
    ]
    layers = "{0..%d}" % (config["num_hidden_layers"] - 1)
    assert f"  ! model.layers.{layers}.mlp.switch_mlp.down_proj.biases:" in lines  # collapsed across layers
    assert ".mlp.gate." not in proc.stdout
    assert "config.json: content changed" in lines  # its quantization section

    again = tmp_path / "q4.msgpack"
    assert cli("trace", REPO / "examples" / "tiny-qwen3-moe", "-o", again, "-q").returncode == 0
    assert again.read_bytes() == EXAMPLE_PLAN.read_bytes()
    proc = cli("diff", EXAMPLE_PLAN, again)
    assert proc.returncode == 0 and proc.stdout == "no differences\n"


def test_diff_reports_quantization_and_dtype_changes(checkpoints):
    bf16 = traced(checkpoints["deepseek_v3"])
    q4 = traced(checkpoints["deepseek_v3"], quantize=True)
    lines = diff(bf16, q4)
    assert "options.quantize: False -> True" in lines
    changed = "\n".join(lines[lines.index(next(line for line in lines if line.startswith("outputs changed"))) :])
    assert "quantize(" in changed and "uint32" in changed
    assert any(line.startswith("outputs added") for line in lines)  # the .scales / .biases
    printed = "\n".join(lines).splitlines()  # as `sanitrace diff` prints them
    start = printed.index("  ! lm_head.weight:")  # vocab 256 x hidden 64, packed 8 values per uint32
    assert printed[start + 1 : start + 3] == [
        "      - bfloat16[256, 64] = lm_head.weight.astype(bfloat16)",
        "      + uint32[256, 8] = quantize(lm_head.weight.astype(bfloat16), 64, 4, mode='affine')[0]",
    ]
    assert (
        "  + lm_head.scales: bfloat16[256, 1] = quantize(lm_head.weight.astype(bfloat16), 64, 4, "
        "mode='affine')[1]" in printed
    )
    assert diff(q4, traced(checkpoints["deepseek_v3"], quantize=True)) == []  # a second, independent trace


def test_diff_names_renamed_removed_and_newly_dropped_outputs():
    old = plan_ir.load(str(EXAMPLE_PLAN))
    outputs = list(old.outputs)
    outputs[0] = outputs[0]._replace(name="renamed.weight")
    removed = outputs.pop(1)
    dropped = old.accounting.dropped + (Dropped("model.safetensors", "model.extra.weight", "not used by sanitize"),)
    new = dataclasses.replace(old, outputs=tuple(outputs), accounting=old.accounting._replace(dropped=dropped))
    lines = diff(old, new)
    text = "\n".join(lines)
    assert f"~ {old.outputs[0].name} -> renamed.weight" in text
    assert f"- {removed.name}:" in text
    assert "sources newly dropped (1):" in text and "model.extra.weight (not used by sanitize)" in text


# --- show -----------------------------------------------------------------


def test_show_full_and_json_list_every_tensor_with_its_place():
    plan = plan_ir.load(str(EXAMPLE_PLAN))
    full = cli("show", EXAMPLE_PLAN, "--full").stdout
    for out in plan.outputs:
        assert f"{out.name}: {out.dtype}{list(out.shape)} {plan.files[out.file].name}@{out.offset}" in full
    doc = json.loads(cli("show", EXAMPLE_PLAN, "--format", "json").stdout)
    assert [o["name"] for o in doc["outputs"]] == [o.name for o in plan.outputs]
    assert doc["options"] == plan.options and doc["header"] == render(plan).splitlines()[: len(doc["header"])]
    assert "loads: yes (mlx_lm.load, strict)" in doc["header"]
    assert doc["digest"] == plan.digest and f"digest: {plan.digest}" in full


def test_rendering_of_a_correct_plan_accounts_for_every_source(checkpoints):
    plan = traced(checkpoints["deepseek_v3_fp8"], quantize=True)
    names = [t.name for t in plan.source.tensors]
    acc = plan.accounting
    assert acc.used_sources + len(acc.dropped) == acc.source_tensors == len(names)
    assert f"{len(names)} source tensors = {acc.used_sources} used + {len(acc.dropped)} dropped" in render(plan)
    shown = "\n".join(line for text in render(plan).splitlines() for line in expand(text))
    assert [n for n in names if n not in shown] == []  # the collapsed view names every source
    assert "weight_scale_inv" in shown  # the FP8 scales are used, not silently dropped
    doc = render_json(plan)
    listed = " ".join(o["expr"] for o in doc["outputs"]) + " " + " ".join(d["name"] for d in doc["dropped"])
    assert [n for n in names if n not in listed] == []


def expand(line: str) -> list:
    """A rendered line with its number sets ({1..2}, {0..7}, {3..59..4}, {0,2..3}, {001..003})
    spelled out; the same set twice in a line is one number (a layer's in a name and its source)."""
    match = re.search(r"\{([0-9.,]+)\}", line)
    if not match:
        return [line]
    values = []
    for part in match.group(1).split(","):
        first, _, rest = part.partition("..")
        last, _, step = rest.partition("..")
        width = len(first) if first.startswith("0") else 0
        values += [str(v).zfill(width) for v in range(int(first), int(last or first) + 1, int(step or 1))]
    return [e for v in values for e in expand(line.replace(match.group(0), v))]


# --- seeded reviewer cases: what the DeepSeek V4 port dropped silently -----


def _rewrite(folder: Path, change) -> Path:
    """Load every tensor of ``folder`` (real data), apply ``change`` to the dict
    and write it back as one model.safetensors (index removed)."""
    weights = {}
    for shard in sorted(folder.glob("*.safetensors")):
        weights.update(mx.load(str(shard)))
        shard.unlink()
    (folder / "model.safetensors.index.json").unlink(missing_ok=True)
    change(weights)
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "pt"})
    return folder


def test_pre_stacked_experts_fail_naming_every_missing_and_unexpected_parameter(tmp_path):
    folder = make_checkpoint(tmp_path / "dsv3", "deepseek_v3", layers=3)

    def stack_experts(weights):
        for key in [k for k in weights if ".mlp.experts.0." in k]:
            prefix, rest = key.split(".experts.0.")
            experts = sorted(
                (k for k in weights if k.startswith(prefix + ".experts.") and k.endswith("." + rest)),
                key=lambda k: int(k[len(prefix) + 9 :].split(".")[0]),
            )
            weights[f"{prefix}.experts.{rest}"] = mx.stack([weights.pop(k) for k in experts])

    _rewrite(folder, stack_experts)
    with pytest.raises(TraceError) as error:
        trace(str(folder), ConvertOptions())
    message = str(error.value)
    for proj in ("gate_proj", "up_proj", "down_proj"):  # layers 1 and 2 (first_k_dense_replace = 1)
        assert f"model.layers.{{1..2}}.mlp.switch_mlp.{proj}.weight" in message.split("unexpected")[0]
        assert f"model.layers.{{1..2}}.mlp.experts.{proj}.weight" in message.split("unexpected")[1]
    assert "6 missing parameters" in message and "6 unexpected parameters" in message


def test_quantized_embed_and_head_without_quantization_config_fail_naming_them(tmp_path):
    folder = make_checkpoint(tmp_path / "dsv3", "deepseek_v3", layers=3)

    def quantize_embed_and_head(weights):
        for name in ("model.embed_tokens", "lm_head"):
            w, scales, biases = mx.quantize(weights[f"{name}.weight"].astype(mx.float32), 64, 4)
            weights.update(
                {
                    f"{name}.weight": w,
                    f"{name}.scales": scales.astype(mx.bfloat16),
                    f"{name}.biases": biases.astype(mx.bfloat16),
                }
            )

    _rewrite(folder, quantize_embed_and_head)
    with pytest.raises(TraceError) as error:
        trace(str(folder), ConvertOptions(quantize=True))
    message = str(error.value)
    assert "4 unexpected parameters" in message
    for name in ("model.embed_tokens", "lm_head"):
        assert f"{name}.scales" in message and f"{name}.biases" in message
        assert f"{name}.weight: shape" in message
