"""Executor: refuses bad input before writing, resumes interrupted runs, copies files."""

import os
import subprocess
import sys

import pytest
from conftest import REPO, copy_tree

from sanitrace import plan as plan_ir
from sanitrace.compare import compare_folders
from sanitrace.executor import OutputExists, SourceMismatch, execute, plan_chunks
from sanitrace.executor.local_source import LocalSource
from sanitrace.executor.writer import OutputWriter
from sanitrace.planner import build_plan
from sanitrace.safetensors_format import read_header
from sanitrace.tracer import ConvertOptions, trace


@pytest.fixture
def qplan(checkpoints):
    return build_plan(trace(str(checkpoints["split_experts"]), ConvertOptions(quantize=True)))


def test_refuses_existing_output(qplan, checkpoints, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(OutputExists, match="already exists"):
        execute(qplan, str(checkpoints["split_experts"]), str(tmp_path / "out"), progress=False)


@pytest.mark.parametrize("damage", ["missing", "truncated", "other_header"])
def test_source_mismatch_names_the_file_and_writes_nothing(damage, qplan, checkpoints, tmp_path):
    src = copy_tree(checkpoints["split_experts"], tmp_path / "src")
    shard = src / "model-00002-of-00002.safetensors"
    if damage == "missing":
        shard.unlink()
    elif damage == "truncated":
        os.truncate(shard, os.path.getsize(shard) - 1)
    else:
        raw = bytearray(shard.read_bytes())
        i = raw.index(b'"format":"pt"')
        raw[i : i + 13] = b'"format":"PT"'
        shard.write_bytes(bytes(raw))
    with pytest.raises(SourceMismatch, match="model-00002-of-00002.safetensors"):
        execute(qplan, str(src), str(tmp_path / "out"), progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_resume_after_interruption(qplan, checkpoints, eager, tmp_path, monkeypatch):
    src = str(checkpoints["split_experts"])
    out = tmp_path / "out"
    calls = {"n": 0}
    original = OutputWriter.group_done

    def crash_after_three(self, group, sums):
        original(self, group, sums)
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(OutputWriter, "group_done", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        execute(qplan, src, str(out), memory_budget=1, progress=False)
    monkeypatch.setattr(OutputWriter, "group_done", original)
    assert not out.exists() and (tmp_path / "out.partial").exists()

    with pytest.raises(OutputExists, match="--resume"):
        execute(qplan, src, str(out), progress=False)

    # damage one finished tensor: resume must notice and redo its group
    first = qplan.outputs[qplan.groups[0].outputs[0]]
    shard = tmp_path / "out.partial" / qplan.files[first.file].name
    with open(shard, "r+b") as f:
        f.seek(first.offset)
        f.write(b"\xff\xff\xff\xff")
    summary = execute(qplan, src, str(out), memory_budget=1, resume=True, progress=False)
    assert summary.skipped_groups == 2
    assert compare_folders(str(eager(checkpoints["split_experts"], ["-q"])), str(out)) == []
    assert not (tmp_path / "out.partial").exists()
    assert not (out / ".sanitrace-journal.jsonl").exists()


def test_resume_refuses_a_partial_from_another_plan(qplan, checkpoints, tmp_path):
    src = str(checkpoints["split_experts"])
    (tmp_path / "out.partial").mkdir()
    (tmp_path / "out.partial" / ".sanitrace-journal.jsonl").write_text('{"plan": "0000"}\n')
    with pytest.raises(OutputExists, match="different plan"):
        execute(qplan, src, str(tmp_path / "out"), resume=True, progress=False)


@pytest.mark.parametrize("library", ["mlx_lm", "mlx_vlm"])
def test_writes_the_files_the_library_writes(library, checkpoints, tmp_path):
    """The same file set as eager, every file byte-equal but the shard layout
    (compare_folders): mlx_lm copies *.py and generation_config.json and re-saves
    the tokenizer; mlx_vlm copies every *.py / *.json and re-saves the processor.
    Neither copies a licence; the tokenizer's re-save is a plan edit, not a copy."""
    from sanitrace.check import eager_convert

    src = copy_tree(checkpoints["llama"], tmp_path / "src")
    (src / "LICENSE").write_text("license text")
    (src / "chat_template.jinja").write_text("{{ messages }}")
    (src / "pytorch_model.bin").write_bytes(b"\0" * 16)
    (src / "README.md").write_text("the hub's card, replaced by the mlx card")
    (src / "helper.py").write_text("# remote code the library copies\n")
    (src / "extra.json").write_text('{"copied by": "mlx_vlm"}')
    assert eager_convert(str(src), str(tmp_path / "eager"), library, []) is None
    plan = build_plan(trace(str(src), ConvertOptions(), library))
    made = {f.name: f for f in plan.files if f.kind == "source"}
    assert "helper.py" in made and not made["helper.py"].edits
    execute(plan, str(src), str(tmp_path / "out"), progress=False)
    names = set(os.listdir(tmp_path / "out"))
    assert names == set(os.listdir(tmp_path / "eager"))
    assert "LICENSE" not in names and "pytorch_model.bin" not in names
    assert ("extra.json" in names) == (library == "mlx_vlm")
    assert compare_folders(str(tmp_path / "eager"), str(tmp_path / "out")) == []
    assert "library_name: mlx" in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.parametrize("change", ["edit", "truncate", "delete"])
def test_a_changed_side_file_is_refused_before_anything_is_written(change, checkpoints, tmp_path):
    src = copy_tree(checkpoints["llama"], tmp_path / "src")
    plan = build_plan(trace(str(src), ConvertOptions()))
    assert any(f.kind == "source" and f.base == "generation_config.json" for f in plan.files)
    path = src / "generation_config.json"
    if change == "delete":
        path.unlink()
    else:
        data = path.read_bytes()
        path.write_bytes(data.replace(b"1", b"2", 1) if change == "edit" else data[:-1])
    with pytest.raises(SourceMismatch, match="generation_config.json: "):
        execute(plan, str(src), str(tmp_path / "out"), progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_shards_are_aligned_and_readable_by_safetensors(qplan, checkpoints, tmp_path):
    execute(qplan, str(checkpoints["split_experts"]), str(tmp_path / "out"), progress=False)
    from safetensors import safe_open

    path = str(tmp_path / "out" / "model.safetensors")
    header = read_header(path)
    assert header.metadata == {"format": "mlx"}
    assert all(t.begin % 8 == 0 for t in header.tensors.values())
    with safe_open(path, framework="np") as f:
        assert set(f.keys()) == set(header.tensors)


def test_executor_never_imports_mlx_lm(qplan, checkpoints, tmp_path):
    plan_path = tmp_path / "plan.msgpack"
    plan_ir.save(qplan, str(plan_path))
    code = (
        "import sys; from sanitrace import plan; from sanitrace.executor import execute; "
        f"execute(plan.load({str(plan_path)!r}), {str(checkpoints['split_experts'])!r}, "
        f"{str(tmp_path / 'out')!r}, progress=False); "
        "bad = [m for m in sys.modules if m.startswith(('mlx_lm', 'mlx_vlm', 'transformers'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.mark.parametrize("library, copied", [("mlx_vlm", True), ("mlx_lm", False)])
def test_subfolders_are_copied_as_the_library_does(library, copied, checkpoints, tmp_path):
    from sanitrace.check import eager_convert

    src = copy_tree(checkpoints["llama"], tmp_path / "src")
    (src / "extra").mkdir()
    (src / "extra" / "notes.txt").write_text("kept by mlx_vlm.convert")
    assert eager_convert(str(src), str(tmp_path / "eager"), library, []) is None
    plan = build_plan(trace(str(src), ConvertOptions(), library))
    execute(plan, str(src), str(tmp_path / "out"), progress=False)
    assert (tmp_path / "eager" / "extra" / "notes.txt").exists() == copied
    assert (tmp_path / "out" / "extra" / "notes.txt").exists() == copied
    assert compare_folders(str(tmp_path / "eager"), str(tmp_path / "out")) == []


def test_chunks_run_in_the_order_files_are_closed_in(checkpoints, tmp_path):
    """A source file's descriptor is closed after its last reader in the schedule
    (``_release``); the chunks must run in that same order, or a read races the
    close ("Bad file descriptor", or another file's bytes under a reused number).
    DeepSeek-V3 FP8 in two shards: output order interleaves the shards' groups."""
    src = checkpoints["deepseek_v3_fp8"]
    plan = build_plan(trace(str(src), ConvertOptions()))
    source = LocalSource(plan, str(src))
    writer = OutputWriter(plan, source, str(tmp_path / "out"), False)
    chunks, _, order = plan_chunks(plan, plan.memory.budget, plan.memory.baseline, writer, source)
    ran = [c.group for c in chunks if c.last]
    assert ran == order.groups
    files_in_output_order = [min(order.reads[g], default=-1) for g in ran]
    assert files_in_output_order != sorted(files_in_output_order)  # the case the streaming order would reorder
    for position, g in enumerate(ran):
        assert all(order.last_use[f] >= position for f in order.reads[g])
