"""The files the library writes besides the shards: re-saved tokenizers, copies,
generated files, stored in the plan as text or as a source file plus edits."""

import json
import subprocess
import sys

import pytest
from conftest import copy_tree

from sanitrace import plan as plan_ir
from sanitrace.check import eager_convert
from sanitrace.compare import compare_folders
from sanitrace.executor import execute
from sanitrace.fixtures import write_checkpoint
from sanitrace.plan.edits import apply_edits, diff_edits
from sanitrace.plan.format import pack, unpack
from sanitrace.planner import build_plan
from sanitrace.planner.side_files import INLINE_BYTES, side_files
from sanitrace.tracer import ConvertOptions, trace


def _tokenizer_json(words: int) -> bytes:
    vocab = {f"word{i}": i for i in range(words)}
    return json.dumps({"version": "1.0", "post_processor": None, "model": {"vocab": vocab}}, indent=2).encode()


def test_edits_reproduce_the_file_and_stay_small():
    base = _tokenizer_json(5000)
    doc = json.loads(base)
    doc["post_processor"] = {"type": "TemplateProcessing", "single": ["<s>", "$A"]}
    doc["model"]["vocab"]["word2500"] = -1
    new = json.dumps(doc, indent=2).encode()
    edits = diff_edits(base, new)
    assert apply_edits(base, edits) == new
    assert len(edits) == 2 and sum(len(e[2]) for e in edits) < 300
    assert diff_edits(base, base) == [] and apply_edits(b"", diff_edits(b"", b"x\ny")) == b"x\ny"


def test_large_resaves_are_edits_and_small_or_generated_files_are_text():
    big = _tokenizer_json(5000)
    resaved = big.replace(b'"post_processor": null', b'"post_processor": {"type": "ByteLevel"}')
    written = {
        "tokenizer.json": resaved,
        "tokenizer_config.json": b"{}",
        "config.json": big,
        "generation_config.json": b'{"a": 1}',
        "chat_template.jinja": b"{{ x }}",
    }
    bases = {
        "tokenizer.json": big,
        "tokenizer_config.json": b'{"old": 1}',
        "config.json": big,
        "generation_config.json": b'{"a": 1}',
    }
    files = {f.name: f for f in side_files(written, bases)}
    assert len(big) > INLINE_BYTES
    assert files["tokenizer.json"].kind == "source" and len(files["tokenizer.json"].edits) == 1
    assert files["generation_config.json"].kind == "source" and files["generation_config.json"].edits == ()
    for name in ("tokenizer_config.json", "config.json", "chat_template.jinja"):
        assert files[name].kind == "text" and files[name].data == written[name]


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda f: f.update(edits=[[5, 2, b""]]), "ascending range"),
        (lambda f: f.update(edits=[[0, 10**9, b""]]), "ascending range"),
        (lambda f: f.update(sha256="zz"), "not a hex digest"),
        (lambda f: f.update(base="../../etc/passwd"), "'..' component"),
        (lambda f: f.update(name="/tmp/x"), "plain relative path"),
    ],
)
def test_a_tampered_source_made_file_is_refused(tamper, message, checkpoints, tmp_path):
    plan = build_plan(trace(str(checkpoints["llama"]), ConvertOptions()))
    raw = unpack(plan_ir.dumps(plan))
    entry = next(f for f in raw["files"] if f["kind"] == "source")
    tamper(entry)
    with pytest.raises(plan_ir.PlanError, match=message):
        plan_ir.loads(pack(raw))


@pytest.mark.parametrize("library", ["mlx_lm", "mlx_vlm"])
def test_a_large_tokenizer_resave_is_written_as_the_library_writes_it(library, tmp_path):
    """A tokenizer.json over INLINE_BYTES: the plan holds the library's edits
    only, and the output is byte-equal to eager's."""
    src = write_checkpoint(str(tmp_path / "src"), "llama", vocab=4000)
    eager_failed = eager_convert(src, str(tmp_path / "eager"), library, [])
    assert eager_failed is None
    plan = build_plan(trace(src, ConvertOptions(), library))
    tok = next(f for f in plan.files if f.name == "tokenizer.json")
    assert tok.kind == "source" and tok.size > INLINE_BYTES
    assert sum(len(e[2]) for e in tok.edits) < tok.size // 4
    execute(plan, src, str(tmp_path / "out"), progress=False)
    assert compare_folders(str(tmp_path / "eager"), str(tmp_path / "out")) == []


def test_a_source_without_a_tokenizer_converts_with_a_line(checkpoints, tmp_path):
    src = copy_tree(checkpoints["llama"], tmp_path / "src")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (src / name).unlink()
    assert eager_convert(str(src), str(tmp_path / "eager"), "mlx_lm", []) is not None  # eager fails
    proc = subprocess.run(
        [sys.executable, "-m", "sanitrace", "convert", "--hf-path", str(src), "--mlx-path", str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "tokenizer" in line]
    assert len(lines) == 1 and "no tokenizer files will be written" in lines[0], proc.stderr
    assert "mlx_lm.convert fails the same way" in lines[0]
    names = set(p.name for p in (tmp_path / "out").iterdir())
    assert not any(n.startswith("tokenizer") for n in names) and "model.safetensors" in names
