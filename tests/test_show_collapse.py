"""`show` stays short: every family of names that differ only in numbers collapses,
over whatever set of numbers it covers (layer types, strides, several numbered
positions), dropped sources included with their reason once; spelling the sets
out gives back exactly the lines collapsed. Checked on synthetic names and on
real 2026 giant header sets."""

import collections
import dataclasses
import re
import subprocess
import sys

import pytest
from conftest import REPO, SHARED
from test_review import expand

from sanitrace import plan as plan_ir
from sanitrace.collapse import collapse, collapse_numbers, number_columns, one_skeleton, ranges, skeletons
from sanitrace.plan import Dropped
from sanitrace.planner import build_plan
from sanitrace.show import dropped_lines, output_lines, render
from sanitrace.tracer import ConvertOptions, trace

GIANTS = SHARED / "giants"
EXAMPLE_PLAN = REPO / "plans" / "tiny-qwen3-moe-q4.msgpack"


def spelled(lines: list) -> collections.Counter:
    return collections.Counter(e for line in lines for e in expand(line))


def assert_collapses(lines: list, expected: list):
    collapsed = collapse_numbers(lines)
    assert collapsed == expected
    assert spelled(collapsed) == spelled(lines)  # exactly the lines collapsed, each as often


# --- sets of numbers ------------------------------------------------------


def test_ranges_are_runs_strides_or_one_stride_per_residue():
    assert ranges([0, 1, 2, 5, 7, 8]) == "0..2,5,7..8"
    assert ranges([8, 7, 7, 3]) == "3,7..8"
    assert ranges(list(range(3, 60, 4))) == "3..59..4"
    assert ranges([1, 3]) == "1,3"  # a stride has three values or more
    assert ranges([0, 1, 2, 4, 5, 6, 8, 9, 10]) == "0..2,4..6,8..10"  # runs when shorter
    assert ranges([v for v in range(60) if v % 4 != 3]) == "0..56..4,1..57..4,2..58..4"
    assert ranges([v for v in range(30) if v % 6 != 5]) == "0..4,6..10,12..16,18..22,24..28"  # Gemma 4 26B
    assert ranges([v for v in range(60) if v % 6 != 5]) == "0..54..6,1..55..6,2..56..6,3..57..6,4..58..6"  # 31B
    assert ranges([1, 2, 3], width=5) == "00001..00003"


# --- families -------------------------------------------------------------


def test_layer_types_collapse_over_non_contiguous_sets():
    """Every fourth layer full attention, the rest linear (Qwen3.5 / Qwen3-Next); a
    shape that alternates with the layer (DeepSeek-V4's compress ratios)."""
    lines = []
    for i in range(48):
        kind = "self_attn.q_proj" if i % 4 == 3 else "linear_attn.in_proj_qkvz"
        lines.append(f"model.layers.{i}.{kind}.weight: bfloat16[64, 32] = model.layers.{i}.{kind}.weight")
    assert_collapses(
        lines,
        [
            "model.layers.{0..44..4,1..45..4,2..46..4}.linear_attn.in_proj_qkvz.weight: bfloat16[64, 32] = "
            "model.layers.{0..44..4,1..45..4,2..46..4}.linear_attn.in_proj_qkvz.weight",
            "model.layers.{3..47..4}.self_attn.q_proj.weight: bfloat16[64, 32] = model.layers.{3..47..4}.self_attn.q_proj.weight",
        ],
    )
    ape = [f"l.{i}.ape: bfloat16[{4 if i % 2 else 128}, 512] = layers.{i}.ape" for i in range(2, 43)]
    assert_collapses(
        ape,
        [
            "l.{2..42..2}.ape: bfloat16[128, 512] = layers.{2..42..2}.ape",
            "l.{3..41..2}.ape: bfloat16[4, 512] = layers.{3..41..2}.ape",
        ],
    )


def test_two_numbered_positions_collapse_to_one_line():
    """Layers x experts x projections, where layer 0 is dense and has no experts."""
    lines = ["layers.0.mlp.w1.weight"] + [
        f"layers.{i}.experts.{e}.w{p}.weight_shape" for i in range(1, 61) for e in range(16) for p in (1, 2, 3)
    ]
    assert_collapses(lines, ["layers.0.mlp.w1.weight", "layers.{1..60}.experts.{0..15}.w{1..3}.weight_shape"])
    ragged = [f"blocks.{b}.{a}" for b in range(3) for a in range(b + 2)]  # not a product: as few as cover it
    assert_collapses(ragged, ["blocks.0.{0..1}", "blocks.1.{0..2}", "blocks.2.{0..3}"])


def test_two_numbers_never_show_the_same_set():
    """The same set twice in a line is one number (a layer in a name and in its
    source), so independent numbers with equal sets stay apart, and so does a
    number whose set a list collapsed in the line already shows."""
    square = [f"layers.{i}.experts.{e}.weight" for i in range(4) for e in range(4)]
    assert_collapses(square, [f"layers.{{0..3}}.experts.{e}.weight" for e in range(4)])
    lists = [f"o.{i}.w = stack([l.{i}.e.{{0..3}}.w])" for i in range(4)]
    assert_collapses(lists, lists)
    assert_collapses(
        [f"o.{i}.w = stack([l.{i}.e.{{0..7}}.w])" for i in range(4)], ["o.{0..3}.w = stack([l.{0..3}.e.{0..7}.w])"]
    )


def test_numbers_of_other_widths_repeats_and_lists():
    shards = [f"model-{i:05d}-of-00033.safetensors" for i in range(1, 34)]
    assert_collapses(shards, ["model-{00001..00033}-of-00033.safetensors"])
    assert_collapses(["a.7", "a.07", "a.8"], ["a.7", "a.07", "a.8"])  # not one width: kept apart
    assert_collapses(["b.1", "b.2", "b.1"], ["b.{1..2}", "b.1"])  # a repeated line is kept as often
    assert collapse([f"experts.{e}.w" for e in range(8)]) == "experts.{0..7}.w"
    assert collapse(["x.1", "x.2"]) == "x.1, x.2"


@pytest.mark.parametrize(
    "lines",
    [
        [f"layers.{layer}.experts.{e}.w{k}.weight" for layer in range(3) for e in range(40) for k in (1, 3)],
        ["a.07.b", "a.7.b", "a.10.b"],  # zero-padded numbers, as written
        ["a1b2c", "ab1c2", "a3b4c"],  # the same letters, two skeletons
        ["x", "x", "y"],  # no numbers
        ["a.\u0663.b", "a.3.b"],  # a digit other than ASCII
        ["a.{0..3}.b", "a.4.b"],  # a set already shown is text
        ["a.1\nb.2", "a.3"],  # a newline inside a name
        ["7", "8.x"],
    ],
)
def test_names_split_together_as_one_by_one(lines):
    """``skeletons`` groups lines exactly as ``number_columns`` of each line does."""
    expected = {}
    for i, line in enumerate(lines):
        skeleton, numbers = number_columns(line)
        expected.setdefault(skeleton, []).append((i, numbers))
    assert list(skeletons(lines).items()) == list(expected.items())
    plain = all(line.isascii() and "{" not in line and "\n" not in line for line in lines)
    if len(expected) == 1 and plain:  # one skeleton: split together
        ((skeleton, rows),) = expected.items()
        assert one_skeleton(lines) == (skeleton, [numbers for _, numbers in rows])
    else:
        assert one_skeleton(lines) is None


def test_dropped_sources_collapse_by_family_with_the_reason_once():
    plan = plan_ir.load(str(EXAMPLE_PLAN))
    dropped = [
        Dropped("model.safetensors", f"model.layers.{i}.mlp.experts.{e}.{p}.weight_shape", "removed by sanitize")
        for i in range(1, 5)
        for e in range(16)
        for p in ("down_proj", "gate_proj", "up_proj")
    ]
    dropped += [Dropped("model.safetensors", f"mtp.{i}.hc_head_fn", "removed by sanitize") for i in range(3)]
    dropped += [Dropped("model.safetensors", f"mtp.{i}.hc_head_fn.{i}", "read only by discarded ops") for i in range(2)]
    plan = dataclasses.replace(plan, accounting=plan.accounting._replace(dropped=tuple(dropped)))
    lines = dropped_lines(plan)
    assert lines == [
        "model.layers.{1..4}.mlp.experts.{0..15}.down_proj.weight_shape (removed by sanitize)",
        "model.layers.{1..4}.mlp.experts.{0..15}.gate_proj.weight_shape (removed by sanitize)",
        "model.layers.{1..4}.mlp.experts.{0..15}.up_proj.weight_shape (removed by sanitize)",
        "mtp.{0..2}.hc_head_fn (removed by sanitize)",
        "mtp.{0..1}.hc_head_fn.{0..1} (read only by discarded ops)",
    ]
    assert spelled(lines) == collections.Counter(f"{d.name} ({d.reason})" for d in dropped)
    assert len(dropped_lines(plan, full=True)) == len(dropped)


# --- real giants ----------------------------------------------------------


@pytest.mark.skipif(not GIANTS.is_dir(), reason="../shared/giants is not present")
@pytest.mark.parametrize(
    "giant, flags, library",
    [
        ("kimi-k2.6", ["--layers", "4"], None),  # 3,456 per-expert weight_shape tensors dropped, a vision tower
        ("gemma-4-26b-a4b", [], "mlx_lm"),  # sliding / full attention layers, the vision tower dropped
    ],
)
def test_a_giant_renders_short_and_names_every_source(tmp_path, giant, flags, library):
    source = tmp_path / giant
    materialize = [sys.executable, str(GIANTS / "materialize.py"), str(GIANTS / giant), str(source), *flags]
    subprocess.run(materialize, check=True, capture_output=True)
    plan = build_plan(trace(str(source), ConvertOptions(), library=library))
    text = render(plan).splitlines()
    assert len(text) <= 300
    outputs = text[text.index("## outputs") + 1 : text.index("## dropped sources") - 1]
    dropped = text[text.index("## dropped sources") + 1 :]
    assert len(plan.accounting.dropped) > 300 and len(dropped) <= 30
    # exactly the uncollapsed lines, and each source tensor named
    assert spelled(outputs) == spelled(output_lines(plan))
    assert spelled(dropped) == collections.Counter(f"{d.name} ({d.reason})" for d in plan.accounting.dropped)
    words = {w for line in text for e in expand(line) for w in re.findall(r"[\w.]+", e)}
    named = {w.rsplit(".", k)[0] for w in words for k in range(w.count(".") + 1)}  # `name.astype(` names name
    assert [t.name for t in plan.source.tensors if t.name not in named] == []


def test_every_committed_plan_renders_in_300_lines():
    for path in sorted((REPO / "plans").glob("*.txt")):
        assert len(path.read_text().splitlines()) <= 300, path.name
