"""Hostile inputs (issue 11, item 7): unsafe names, edited tables, out-of-range
indices, decoding bombs, interrupted and concurrent runs, output faults. Every
refusal is exit 1 with one line on stderr and no traceback; nothing is written
outside OUT.partial; a resumed run is byte-identical to an uninterrupted one.

Black-box: plans are edited as raw msgpack (tests/hostile.py), sanitrace runs
through its CLI, in process or in a subprocess where it may crash or is killed."""

import copy
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest

import hostile as H
from conftest import make_checkpoint

ARCH = "qwen3_moe"
NORM = "model.layers.0.input_layernorm.weight"  # a bfloat16[64] output = load.astype(bfloat16)


def cli(argv) -> tuple:
    """(exit code, stdout, stderr) of main(argv) in process; an escaping
    exception becomes exit code -1 with its traceback on stderr."""
    import traceback

    try:
        return H.run_cli(argv)
    except BaseException:  # noqa: BLE001 - any escape from main() is a failure
        return -1, "", traceback.format_exc()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    """A qwen3_moe checkpoint, its -q plan, a clean execute and show --full."""
    root = tmp_path_factory.mktemp("hostile")
    src = make_checkpoint(root / "src", ARCH)
    plan = root / "plan.msgpack"
    rc, out, err = cli(["trace", src, "-o", plan, "-q"])
    assert rc == 0, err
    clean = root / "clean"
    rc, out, err = cli(["execute", plan, "--source", src, "--out", clean, "--no-progress"])
    assert rc == 0, err
    rc, show, err = cli(["show", plan, "--full"])
    assert rc == 0, err
    return {"root": root, "src": src, "plan": plan, "clean": clean, "show": show}


@pytest.fixture(scope="module")
def other_source(base) -> Path:
    """Same headers as base's source (same shapes), other weight bytes."""
    src = make_checkpoint(base["root"] / "src_seed1", ARCH, seed=1)
    a = (base["src"] / "model.safetensors").read_bytes()
    b = (src / "model.safetensors").read_bytes()
    n = struct.unpack("<Q", a[:8])[0]
    assert a[: 8 + n] == b[: 8 + n] and a != b
    return src


# ---------------------------------------------------------------- unsafe names

BAD_NAMES = {
    "absolute": None,  # an absolute path inside the test's folder, set per test
    "dotdot": "../escape.safetensors",
    "tmp_next_to_out": "../tmp/x",
    "inner_dotdot": "sub/../../x",
    "empty": "",
    "empty_component": "sub//x",
    "dot": ".",
    "nul": "a\x00b",
    "non_utf8": b"\xff\xfe-x",
}


def _set_name(plan: dict, field: str, marker: str) -> None:
    if field == "shard":
        next(f for f in plan["files"] if f["kind"] == "safetensors")["name"] = marker
    elif field == "text":
        next(f for f in plan["files"] if f["kind"] == "text" and f["name"] == "config.json")["name"] = marker
    elif field == "source":
        plan["source"]["files"][0]["name"] = marker
    elif field == "read_files":
        files = plan["source"]["read_files"]
        files[marker] = files.pop("config.json")


@pytest.mark.parametrize("bad", sorted(BAD_NAMES))
@pytest.mark.parametrize("field", ["shard", "text", "source", "read_files"])
def test_unsafe_names_are_refused(field, bad, base, tmp_path):
    name = BAD_NAMES[bad]
    work = tmp_path / "work"
    work.mkdir()
    if name is None:
        name = str(tmp_path / "absolute-target")
    marker = "@@hostile-name@@"
    plan = H.read_plan(base["plan"])
    _set_name(plan, field, marker)
    raw = H.raw_str(name) if isinstance(name, bytes) else msgpack.packb(name, use_bin_type=True)
    data = H.pack(plan).replace(msgpack.packb(marker, use_bin_type=True), raw)
    path = tmp_path / "plan.msgpack"
    path.write_bytes(data)
    before = H.tree_listing(tmp_path)
    source_before = H.tree_listing(base["src"])
    out = work / "out"
    problems = []
    for argv in (
        ["show", path],
        ["show", path, "--full"],
        ["diff", base["plan"], path],
        ["execute", path, "--source", base["src"], "--out", out, "--no-progress"],
    ):
        rc, _, err = cli(argv)
        try:
            H.assert_refused(rc, err, f"{argv[0]} with {field} name {name!r}")
        except AssertionError as e:
            problems.append(str(e).splitlines()[0])
    after = [p for p in H.tree_listing(tmp_path) if p != "work/out.partial" and not p.startswith("work/out.partial/")]
    if after != before:
        problems.append(f"created outside OUT.partial: {sorted(set(after) ^ set(before))}")
    if (tmp_path / "absolute-target").exists() or out.exists():
        problems.append("wrote the absolute target or OUT")
    if H.tree_listing(base["src"]) != source_before:
        problems.append("changed the source folder")
    assert problems == []


def test_symlink_in_partial_does_not_redirect_writes(base, tmp_path):
    out = tmp_path / "out"
    H.interrupt_after_groups(base["plan"], base["src"], out, 2)
    partial = Path(str(out) + ".partial")
    victims = {}
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        victim = tmp_path / f"victim-{name}"
        victim.write_bytes(b"must stay as it is")
        victims[victim] = victim.read_bytes()
        if (partial / name).exists():
            (partial / name).unlink()
        (partial / name).symlink_to(victim)
    proc = H.run_sub(["execute", base["plan"], "--source", base["src"], "--out", out, "--no-progress", "--resume"])
    for victim, data in victims.items():
        assert victim.read_bytes() == data, f"write through a symlink reached {victim}"
    if proc.returncode == 1:
        H.assert_refused(proc.returncode, proc.stderr, "resume over planted symlinks")
    else:
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert H.folder_difference(base["clean"], out) == []


# ---------------------------------------------------------------- edited tables


def _edit_source_offset(plan: dict) -> None:
    """Move one source tensor 8 bytes down (onto the end of the previous one),
    keeping every later tensor where it was: still inside the file."""
    tensors = plan["source"]["tensors"]
    i = len(tensors) // 2
    assert tensors[i][0] == tensors[i + 1][0] == tensors[i - 1][0]
    tensors[i][3] -= 8
    tensors[i + 1][3] += 8


def _edit_load_index(plan: dict) -> None:
    """Swap the source tensors of two load nodes of the same signature."""
    sigs = plan["signatures"]
    by_sig = {}
    for i, row in enumerate(plan["nodes"]):
        if sigs[row[0]][0] == "load":
            by_sig.setdefault(row[0], []).append(i)
    a, b = next(rows for rows in by_sig.values() if len(rows) > 1)[:2]
    rows = plan["nodes"]
    rows[a][1], rows[b][1] = rows[b][1], rows[a][1]


def _edit_shard_size(plan: dict) -> None:
    next(f for f in plan["files"] if f["kind"] == "safetensors")["size"] += 8


def _edit_output_offset(plan: dict) -> None:
    plan["outputs"][H.output_index(plan, NORM)][5] += 8


EDITS = {
    "source_offset": _edit_source_offset,
    "load_index": _edit_load_index,
    "shard_size": _edit_shard_size,
    "output_offset": _edit_output_offset,
}


def _check_edited(
    original_plan: Path, original_out: Path, original_show: str, edited: Path, src: Path, tmp_path: Path, what: str
) -> None:
    out = tmp_path / "edited-out"
    proc = H.run_sub(["execute", edited, "--source", src, "--out", out, "--no-progress"])
    if proc.returncode == 1:
        H.assert_refused(proc.returncode, proc.stderr, what)
        return
    assert proc.returncode == 0, f"{what}: exit {proc.returncode}: {proc.stderr[-2000:]}"
    if H.folder_difference(original_out, out) == []:
        return
    rc, show, err = cli(["show", edited, "--full"])
    assert rc == 0, err
    full_differs = show != original_show
    print(f"{what}: accepted, output differs; show --full texts differ: {full_differs}")
    assert H.without_digest(show) != H.without_digest(original_show), (
        f"{what}: accepted, wrote a different output, and show --full (digest lines removed) "
        f"is identical to the original's (full texts differ: {full_differs})"
    )


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_edited_tables_are_refused_or_shown(edit, base, tmp_path):
    plan = H.read_plan(base["plan"])
    EDITS[edit](plan)
    edited = H.write_plan(plan, tmp_path / "edited.msgpack")
    _check_edited(base["plan"], base["clean"], base["show"], edited, base["src"], tmp_path, edit)


def test_edited_const_bytes_are_refused_or_shown(base, tmp_path):
    plan = H.splice_take(H.read_plan(base["plan"]), NORM, list(range(63, -1, -1)))
    original = H.write_plan(plan, tmp_path / "take.msgpack")
    clean = tmp_path / "take-out"
    rc, _, err = cli(["execute", original, "--source", base["src"], "--out", clean, "--no-progress"])
    assert rc == 0, err
    rc, show, err = cli(["show", original, "--full"])
    assert rc == 0, err
    edited = H.splice_take(H.read_plan(base["plan"]), NORM, list(range(1, 64)) + [0])
    edited = H.write_plan(edited, tmp_path / "edited.msgpack")
    _check_edited(original, clean, show, edited, base["src"], tmp_path, "const bytes")


# ---------------------------------------------------------------- out-of-range indices


@pytest.mark.parametrize(
    "op, value",
    [("mx.take", 10**6), ("mx.take", -(10**6)), ("mx.take_along_axis", 10**6), ("array.__getitem__", 10**6)],
)
def test_out_of_range_constant_indices_are_refused(op, value, base, tmp_path):
    indices = list(range(64))
    indices[5] = value
    plan = H.write_plan(H.splice_take(H.read_plan(base["plan"]), NORM, indices, op), tmp_path / "take.msgpack")
    out = tmp_path / "out"
    proc = H.run_sub(["execute", plan, "--source", base["src"], "--out", out, "--no-progress"])
    assert proc.returncode >= 0, f"killed by signal {-proc.returncode}"
    H.assert_refused(proc.returncode, proc.stderr, f"{op} with index {value}")
    assert not out.exists()


# ---------------------------------------------------------------- decoding bombs


@pytest.mark.parametrize("depth", [100, 10000])
def test_nested_tuples_do_not_crash_show(depth, base, tmp_path):
    nested = msgpack.ExtType(H.EXT_TUPLE, msgpack.packb([]))
    for _ in range(depth - 1):
        nested = msgpack.ExtType(H.EXT_TUPLE, msgpack.packb([nested]))
    plan = H.read_plan(base["plan"])
    sig = next(s for s in plan["signatures"] if s[0] == "mx.quantize")
    sig[2]["nested"] = nested
    path = H.write_plan(plan, tmp_path / "nested.msgpack")
    for argv in (["show", path, "--full"], ["diff", base["plan"], path]):
        proc = H.run_sub(argv)
        assert proc.returncode in (0, 1), f"{argv[0]}: exit {proc.returncode}: {proc.stderr[-1000:]}"
        assert H.TRACEBACK not in proc.stderr, proc.stderr[-3000:]
        if proc.returncode == 1 and argv[0] == "show":
            H.assert_refused(proc.returncode, proc.stderr, "nested tuples")


def test_huge_declared_output_is_refused_before_writing(base, tmp_path):
    plan = H.read_plan(base["plan"])
    k = H.output_index(plan, "model.norm.weight")
    huge = [1 << 20, 1 << 20]  # 2^40 elements, 2 TiB of bfloat16
    plan["outputs"][k][2] = huge
    node, out = H.ext_payload(plan["outputs"][k][3])
    sig = copy.deepcopy(plan["signatures"][plan["nodes"][node][0]])
    sig[3][out] = ["bfloat16", huge]
    plan["nodes"][node][0] = H.add_signature(plan, sig)
    for group in plan["groups"]:
        if k in group["outputs"]:
            group["rows"] = huge[0]
    H.relayout_shard(plan, plan["outputs"][k][4])
    path = H.write_plan(plan, tmp_path / "huge.msgpack")
    out = tmp_path / "out"
    partial = Path(str(out) + ".partial")
    try:
        proc = H.run_sub(["execute", path, "--source", base["src"], "--out", out, "--no-progress"], timeout=300)
        source_size = (base["src"] / "model.safetensors").stat().st_size
        big = [
            p
            for p in (partial.rglob("*") if partial.exists() else [])
            if p.is_file() and p.stat().st_size > source_size
        ]
        assert big == [], f"left {[(str(p), p.stat().st_size) for p in big]}"
        H.assert_refused(proc.returncode, proc.stderr, "2^40-element output")
        assert not out.exists()
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)


BOMB_BYTES = 16 << 20


def _bomb(kind: str) -> bytes:
    if kind == "empty_lists":
        n = BOMB_BYTES
        return b"\xdd" + struct.pack(">I", n) + b"\x90" * n
    if kind == "empty_maps":
        n = BOMB_BYTES
        return b"\xdd" + struct.pack(">I", n) + b"\x80" * n
    n = BOMB_BYTES // 3  # two-character strings: not cached by CPython
    return b"\xdd" + struct.pack(">I", n) + b"\xa2ab" * n


def _peak_rss_mb(argv) -> tuple:
    """(exit code, stderr, peak RSS in MB) of ``python -m sanitrace argv``."""
    code = (
        "import resource, subprocess, sys; "
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "sys.stderr.write(p.stderr); "
        "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code] + H.sanitrace_cmd(*argv), capture_output=True, text=True, timeout=300
    )
    rc, kb = proc.stdout.split()
    return int(rc), proc.stderr, int(kb) / 1024


@pytest.mark.parametrize("kind", ["empty_lists", "empty_maps", "short_strings"])
def test_many_small_objects_stay_in_memory_bounds(kind, base, tmp_path):
    plan = H.read_plan(base["plan"])
    path = tmp_path / "bomb.msgpack"
    path.write_bytes(H.pack_with_raw(plan, ["guards"], _bomb(kind)))
    assert path.stat().st_size > BOMB_BYTES
    rc, err, peak = _peak_rss_mb(["show", path])
    assert rc in (0, 1) and H.TRACEBACK not in err, f"exit {rc}: {err[-2000:]}"
    if rc == 1:
        H.assert_refused(rc, err, kind)
    _, _, baseline = _peak_rss_mb(["show", base["plan"]])
    size_mb = path.stat().st_size / (1 << 20)
    # the decoding budget is 32 bytes of objects per plan byte (legitimate plans
    # need up to 22); unbounded, these decoded to 64-88 bytes per byte (1.4 GB)
    assert peak - baseline < 40 * size_mb, f"show of a {size_mb:.0f} MB plan peaked at {peak:.0f} MB"


# ---------------------------------------------------------------- resume


def test_resume_against_other_source_with_same_headers(base, other_source, tmp_path):
    out = tmp_path / "out"
    H.interrupt_after_groups(base["plan"], base["src"], out, 3)
    proc = H.run_sub(["execute", base["plan"], "--source", other_source, "--out", out, "--no-progress", "--resume"])
    if proc.returncode == 1:
        H.assert_refused(proc.returncode, proc.stderr, "resume with another source")
        return
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = tmp_path / "expected"
    rc, _, err = cli(["execute", base["plan"], "--source", other_source, "--out", expected, "--no-progress"])
    assert rc == 0, err
    assert H.folder_difference(expected, out) == [], "resumed output mixes both sources"


def _damage(journal: Path, how: str) -> None:
    lines = journal.read_bytes().splitlines(keepends=True)
    assert len(lines) >= 4, "need at least three finished groups"
    if how == "append_text":
        lines.append(b"this is not json\n")
    elif how == "append_binary":
        lines.append(b"\xff\xfe\x00garbage\x80\n")
    elif how == "append_json_list":
        lines.append(b"[1, 2, 3]\n")
    elif how == "append_wrong_types":
        lines.append(b'{"group": "x", "sha256": 5}\n')
    elif how == "middle_garbage":
        lines[2] = b"\x00\x01 not a journal line\n"
    elif how == "middle_cut":
        lines[2] = lines[2][: len(lines[2]) // 2] + b"\n"
    elif how == "middle_wrong_sum":
        entry = json.loads(lines[2])
        entry["sha256"] = {k: "0" * 64 for k in entry["sha256"]}
        lines[2] = json.dumps(entry).encode() + b"\n"
    journal.write_bytes(b"".join(lines))


@pytest.mark.parametrize(
    "how",
    [
        "append_text",
        "append_binary",
        "append_json_list",
        "append_wrong_types",
        "middle_garbage",
        "middle_cut",
        "middle_wrong_sum",
    ],
)
def test_damaged_journal_is_redone(how, base, tmp_path):
    out = tmp_path / "out"
    H.interrupt_after_groups(base["plan"], base["src"], out, 3)
    _damage(Path(str(out) + ".partial") / H.JOURNAL, how)
    rc, _, err = cli(["execute", base["plan"], "--source", base["src"], "--out", out, "--no-progress", "--resume"])
    assert rc == 0, err[-3000:]
    assert H.folder_difference(base["clean"], out) == []


@pytest.fixture(scope="module")
def vlm(base) -> dict:
    """An mlx_vlm conversion of a llama checkpoint with a sub-folder (copied)."""
    src = make_checkpoint(base["root"] / "vlm_src", "llama")
    extra = src / "extra"
    (extra / "deep").mkdir(parents=True)
    for i in range(300):
        (extra / f"notes{i}.txt").write_text("x" * i)
    (extra / "deep" / "a.txt").write_text("a")
    plan = base["root"] / "vlm.msgpack"
    rc, _, err = cli(["trace", src, "-o", plan, "--library", "mlx_vlm"])
    assert rc == 0, err
    clean = base["root"] / "vlm_clean"
    rc, _, err = cli(["execute", plan, "--source", src, "--out", clean, "--no-progress"])
    assert rc == 0, err
    assert (clean / "extra" / "deep" / "a.txt").exists()
    return {"src": src, "plan": plan, "clean": clean}


def _kill_condition(rng: random.Random, out: Path, has_subfolder: bool):
    partial = Path(str(out) + ".partial")
    kinds = ["groups", "delay", "text_file", "copied_file", "journal_gone"]
    if has_subfolder:
        kinds += ["subfolder", "subfolder"]
    kind = rng.choice(kinds)
    if kind == "groups":
        n = rng.randint(1, 20)
        return kind, lambda: H.journal_groups(out) >= n
    if kind == "delay":
        deadline = time.time() + rng.uniform(0.3, 2.5)
        return kind, lambda: time.time() >= deadline
    if kind == "text_file":
        return kind, lambda: (partial / "config.json").exists()
    if kind == "copied_file":
        return kind, lambda: (partial / "tokenizer.json").exists()
    if kind == "journal_gone":
        return kind, lambda: (partial / "model.safetensors").exists() and not (partial / H.JOURNAL).exists()
    return kind, lambda: (partial / "extra").exists()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("which", ["mlx_lm", "mlx_vlm"])
def test_kill_at_random_points_then_resume(which, seed, base, vlm, tmp_path):
    case = {"plan": base["plan"], "src": base["src"], "clean": base["clean"]} if which == "mlx_lm" else vlm
    rng = random.Random(f"{which}-{seed}")
    out = tmp_path / "out"
    partial = Path(str(out) + ".partial")
    for round_ in range(2):  # kill, then kill the resumed run too
        extra = ["--resume"] if round_ else []
        kind, condition = _kill_condition(rng, out, which == "mlx_vlm")
        proc = H.start_execute(case["plan"], case["src"], out, "--memory-budget", "1", *extra)
        try:
            H.wait_for(condition, proc, timeout=60, interval=0.0005)
        finally:
            H.stop(proc)
        if proc.returncode == 0:
            break
        if out.exists() and not partial.exists():
            break  # killed after the final rename
    # killed between the rename and removing the journal: --resume completes it
    if partial.exists() or not out.exists() or (out / ".sanitrace-journal.jsonl").exists():
        proc = H.run_sub(["execute", case["plan"], "--source", case["src"], "--out", out, "--no-progress", "--resume"])
        assert proc.returncode == 0, f"resume after kill ({kind}): {proc.stderr[-3000:]}"
    assert not partial.exists()
    assert H.folder_difference(case["clean"], out) == [], f"after kill ({kind})"


def test_second_resume_refuses_while_first_runs(base, tmp_path):
    out = tmp_path / "out"
    first = H.start_execute(base["plan"], base["src"], out, "--memory-budget", "1", "--resume")
    second = None
    try:
        assert H.wait_for(lambda: H.journal_groups(out) >= 1, first)
        os.kill(first.pid, signal.SIGSTOP)
        second = subprocess.run(
            H.sanitrace_cmd(
                "execute",
                base["plan"],
                "--source",
                base["src"],
                "--out",
                out,
                "--no-progress",
                "--resume",
                "--memory-budget",
                "1",
            ),
            capture_output=True,
            text=True,
            timeout=120,
        )
        os.kill(first.pid, signal.SIGCONT)
        _, first_err = first.communicate(timeout=120)
    finally:
        H.stop(first)
    H.assert_refused(second.returncode, second.stderr, "second --resume on a folder in use")
    assert first.returncode == 0, first_err.decode()[-2000:]
    assert H.folder_difference(base["clean"], out) == []


# ---------------------------------------------------------------- output faults


def _execute(base, out, *extra) -> subprocess.CompletedProcess:
    return H.run_sub(["execute", base["plan"], "--source", base["src"], "--out", out, "--no-progress", *extra])


def test_existing_output_is_refused(base, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = _execute(base, out)
    H.assert_refused(proc.returncode, proc.stderr, "OUT exists")
    assert H.tree_listing(tmp_path) == ["out", "out/keep.txt"]


def test_dangling_symlink_output_is_refused(base, tmp_path):
    out = tmp_path / "out"
    out.symlink_to(tmp_path / "nowhere")
    proc = _execute(base, out)
    H.assert_refused(proc.returncode, proc.stderr, "OUT is a dangling symlink")
    assert out.is_symlink() and not (tmp_path / "nowhere").exists()


def test_output_parent_is_a_file(base, tmp_path):
    parent = tmp_path / "file"
    parent.write_text("not a folder")
    proc = _execute(base, parent / "out")
    H.assert_refused(proc.returncode, proc.stderr, "OUT's parent is a file")
    assert parent.read_text() == "not a folder"


def test_output_parent_not_writable(base, tmp_path):
    parent = tmp_path / "locked"
    parent.mkdir()
    if subprocess.run(["chattr", "+i", parent], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here (root ignores permission bits)")
    try:
        proc = _execute(base, parent / "out")
        H.assert_refused(proc.returncode, proc.stderr, "OUT's parent is immutable")
    finally:
        subprocess.run(["chattr", "-i", parent])
    assert list(parent.iterdir()) == []


def test_not_enough_disk_is_reported_before_work(base, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", mnt], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        out = mnt / "out"
        proc = _execute(base, out)
        line = H.assert_refused(proc.returncode, proc.stderr, "ENOSPC")
        assert "needs" in line and any(c.isdigit() for c in line), line
        assert H.journal_groups(out) == 0, "work started before the space check"
        assert not out.exists()
    finally:
        subprocess.run(["umount", mnt])


def test_ctrl_c_exits_130_with_one_line(base, tmp_path):
    out = tmp_path / "out"
    proc = H.start_execute(base["plan"], base["src"], out, "--memory-budget", "1")
    try:
        assert H.wait_for(lambda: H.journal_groups(out) >= 1, proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        H.stop(proc)
    err = err.decode(errors="replace")
    assert H.TRACEBACK not in err, err[-3000:]
    assert proc.returncode == 130, f"exit {proc.returncode}: {err[-2000:]}"
    lines = H.error_lines(err)
    assert len(lines) == 1 and "--resume" in lines[0], err
    resumed = _execute(base, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert H.folder_difference(base["clean"], out) == []


def test_show_into_closed_pipe(base):
    proc = subprocess.run(
        ["sh", "-c", " ".join(H.sanitrace_cmd("show", base["plan"], "--full")) + " | head -1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.startswith("#")
    assert proc.stderr.strip() == "", proc.stderr[-2000:]


# ---------------------------------------------------------------- trace -o


@pytest.mark.parametrize("existing", [True, False])
def test_failed_trace_keeps_existing_plan(existing, base, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(base["src"] / "model.safetensors", model / "model.safetensors")
    plan = tmp_path / "plan.msgpack"
    if existing:
        shutil.copy(base["plan"], plan)
    rc, _, err = cli(["trace", model, "-o", plan, "-q"])
    H.assert_refused(rc, err, "trace without config.json")
    if existing:
        assert plan.read_bytes() == base["plan"].read_bytes()
    else:
        assert not plan.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model"] + (["plan.msgpack"] if existing else []))


# ---------------------------------------------------------------- digest


def test_show_prints_digest_and_execute_checks_it(base, tmp_path):
    rc, show, err = cli(["show", base["plan"]])
    assert rc == 0, err
    lines = [line for line in show.splitlines() if line.startswith("digest")]
    assert len(lines) == 1, "show prints no digest line"
    digest = lines[0].split()[-1]
    assert len(digest) >= 16 and all(c in "0123456789abcdef" for c in digest.lower()), lines[0]
    rc, full, err = cli(["show", base["plan"], "--full"])
    assert rc == 0 and [line for line in full.splitlines() if line.startswith("digest")] == lines
    wrong = ("0" if digest[0] != "0" else "1") + digest[1:]
    rc, _, err = cli(
        ["execute", base["plan"], "--source", base["src"], "--out", tmp_path / "a", "--no-progress", "--digest", wrong]
    )
    H.assert_refused(rc, err, "wrong --digest")
    assert not (tmp_path / "a").exists() and not (tmp_path / "a.partial").exists()
    rc, _, err = cli(
        ["execute", base["plan"], "--source", base["src"], "--out", tmp_path / "b", "--no-progress", "--digest", digest]
    )
    assert rc == 0, err
    assert H.folder_difference(base["clean"], tmp_path / "b") == []
