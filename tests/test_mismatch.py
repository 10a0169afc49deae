"""Strict-load mismatches grouped by cause (sanitrace/mismatch.py), on a real mlx model."""

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from sanitrace.mismatch import MAX_LINES, causes, report_lines


def model_and_weights():
    """Three 8-bit quantized layers given 4-bit tensors, plus one stray tensor."""
    model = nn.Module()
    model.layers = [nn.QuantizedLinear(64, 32, bias=False, group_size=32, bits=8) for _ in range(3)]
    expected = dict(tree_flatten(model.parameters()))
    given = {}
    for i in range(3):
        w, scales, biases = mx.quantize(mx.zeros((32, 64)), group_size=32, bits=4)
        given.update({f"layers.{i}.weight": w, f"layers.{i}.scales": scales, f"layers.{i}.biases": biases})
    given["stray.weight"] = mx.zeros((2,))
    return model, expected, given


def test_the_explained_cause_leads_and_its_names_collapse():
    model, expected, given = model_and_weights()
    found = causes(model, expected, given)
    assert [(c.kind, len(c.names)) for c in found] == [("shape", 3), ("unexpected", 1)]
    assert found[0].why == (
        "the model builds these modules affine, group_size 32, bits 8 (as the library reads the checkpoint's "
        "quantization config); their tensors imply group_size 32, bits 4, with biases"
    )
    assert report_lines(found) == [
        f"3 shape/dtype mismatches: {found[0].why}:",
        "  layers.{0..2}.weight: shape [32, 8], model has [32, 16]",
        "1 unexpected parameters (not in the model):",
        "  stray.weight",
    ]


def test_a_config_names_the_quantization_entry_and_long_causes_are_cut():
    model, expected, given = model_and_weights()
    config = {"quantization": {"group_size": 32, "bits": 8, "layers.1": {"group_size": 32, "bits": 8}}}
    whys = {c.why for c in causes(model, expected, given, config) if c.kind == "shape"}
    assert any("(config.json quantization, the global entry)" in w for w in whys)
    assert any("(config.json quantization, its own entry)" in w for w in whys)
    strays = {f"stray_{chr(97 + i)}.weight": mx.zeros((1,)) for i in range(MAX_LINES + 3)}
    lines = report_lines(causes(model, expected, {**expected, **strays}))
    assert lines[0] == f"{MAX_LINES + 3} unexpected parameters (not in the model):"
    assert lines[-1] == "  ... and 3 more lines of this kind" and len(lines) == MAX_LINES + 2
