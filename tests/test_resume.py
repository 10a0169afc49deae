"""Output side of execute (issue 11): writes stay inside OUT.partial, OUT checks
before any work, resume never mixes sources, a damaged journal costs only its
groups, finishing is resumable, one run per OUT.partial.

Interruptions are real: SIGKILL of `python -m sanitrace execute` at seeded
moments (polling the journal and the files it writes; no test hook in
sanitrace), or a KeyboardInterrupt raised in process after N journaled groups.
A resumed run must be byte-identical, file for file, to an uninterrupted one."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, copy_tree, make_checkpoint

from sanitrace import plan as plan_ir
from sanitrace.compare import compare_folders
from sanitrace.executor import OutputError, OutputExists, SourceMismatch, execute
from sanitrace.executor.journal import JOURNAL
from sanitrace.executor.writer import OutputWriter
from sanitrace.planner import build_plan
from sanitrace.tracer import ConvertOptions, trace


def _case(root: Path, src: Path, library: str, flags: ConvertOptions) -> dict:
    plan = build_plan(trace(str(src), flags, library))
    path = root / f"{library}.msgpack"
    plan_ir.save(plan, str(path))
    clean = root / f"{library}_clean"
    execute(plan, str(src), str(clean), progress=False)
    return {"plan": plan, "path": path, "src": src, "clean": clean}


@pytest.fixture(scope="module")
def lm(tmp_path_factory) -> dict:
    """mlx_lm -q of a qwen3_moe checkpoint with 100 small *.py files to copy (mlx_lm
    copies *.py; the plan makes each from its source file)."""
    root = tmp_path_factory.mktemp("resume_lm")
    src = make_checkpoint(root / "src", "qwen3_moe")
    for i in range(100):
        (src / f"helper{i:03}.py").write_text("#" * i)
    return _case(root, src, "mlx_lm", ConvertOptions(quantize=True))


@pytest.fixture(scope="module")
def vlm(tmp_path_factory) -> dict:
    """mlx_vlm of a llama checkpoint with a sub-folder (copied file by file)."""
    root = tmp_path_factory.mktemp("resume_vlm")
    src = make_checkpoint(root / "src", "llama")
    (src / "extra" / "deep").mkdir(parents=True)
    for i in range(200):
        (src / "extra" / f"notes{i:03}.txt").write_text("x" * i)
    (src / "extra" / "deep" / "a.txt").write_text("a")
    return _case(root, src, "mlx_vlm", ConvertOptions())


def files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_identical(case: dict, out: Path) -> None:
    assert not Path(f"{out}.partial").exists()
    want, got = files(case["clean"]), files(out)
    assert sorted(got) == sorted(want)
    assert [n for n in want if want[n] != got[n]] == []


def interrupt(case: dict, out: Path, groups: int = 3) -> None:
    """Run in process and raise KeyboardInterrupt once ``groups`` groups are journaled."""
    original, calls = OutputWriter.group_done, []

    def stop(self, group, sums):
        original(self, group, sums)
        calls.append(group)
        if len(calls) == groups:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(OutputWriter, "group_done", stop)
        with pytest.raises(KeyboardInterrupt):
            execute(case["plan"], str(case["src"]), str(out), memory_budget=1, progress=False)
    assert Path(f"{out}.partial").is_dir() and not out.exists()


def spawn_execute(case: dict, out: Path) -> subprocess.Popen:
    """`sanitrace execute` of the case's plan into ``out`` in smallest chunks, in
    its own process group (so a test can kill it), stderr captured."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sanitrace",
            "execute",
            str(case["path"]),
            "--source",
            str(case["src"]),
            "--out",
            str(out),
            "--no-progress",
            "--memory-budget",
            "1",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def resume(case: dict, out: Path, src=None):
    return execute(case["plan"], str(src or case["src"]), str(out), memory_budget=1, resume=True, progress=False)


def one_line(error: Exception) -> str:
    text = str(error)
    assert text and "\n" not in text, text
    return text


def journaled_groups(journal: Path) -> set:
    groups = set()
    for line in journal.read_bytes().splitlines()[1:]:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and "group" in entry:
            groups.add(entry["group"])
    return groups


def test_clean_runs_match_eager(lm, eager):
    assert compare_folders(str(eager(lm["src"], ["-q"])), str(lm["clean"])) == []


# ---------------------------------------------------------------- kill -9, then --resume


def _moment(case: dict, out: Path, i: int, rng: random.Random):
    """The i-th kill moment for a run into ``out``: (description, condition)."""
    partial = Path(f"{out}.partial")
    journal = partial / JOURNAL
    groups = len(case["plan"].groups)
    last_copy = "extra/notes150.txt" if case["plan"].copy_subdirectories else "helper050.py"

    def lines():
        try:
            return journal.read_bytes().count(b"\n")
        except OSError:
            return 0

    def finished():
        try:
            return b'"finished"' in journal.read_bytes()
        except OSError:
            return False

    n, deadline = rng.randint(1, groups), time.time() + rng.uniform(0.4, 1.5)
    return [
        (f"after {n} groups", lambda: lines() > n),
        ("a random delay", lambda: time.time() > deadline),
        ("all groups journaled (fsync)", lambda: lines() > groups),
        ("text files written", lambda: (partial / "config.json").exists()),
        ("copying", lambda: (partial / last_copy).exists()),
        ("finished record", finished),
        ("renamed", lambda: out.exists()),
    ][i]


@pytest.mark.parametrize("which", ["lm", "vlm"])
def test_kill_at_seeded_moments_then_resume(which, lm, vlm, tmp_path):
    case = {"lm": lm, "vlm": vlm}[which]
    landed_in_finishing = 0
    for i in range(7):
        out = tmp_path / f"out{i}"
        partial = Path(f"{out}.partial")
        moment, condition = _moment(case, out, i, random.Random(f"{which}-{i}"))
        proc = spawn_execute(case, out)
        deadline = time.time() + 60
        while proc.poll() is None and not condition() and time.time() < deadline:
            time.sleep(0.0005)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (0, -signal.SIGKILL), err.decode()[-2000:]
        journal = partial / JOURNAL if partial.exists() else out / JOURNAL
        in_finishing = (partial / "config.json").exists() or (out / JOURNAL).exists()
        landed_in_finishing += in_finishing and proc.returncode != 0
        if journal.exists():
            done = journaled_groups(journal)
            summary = resume(case, out)
            expected = len(case["plan"].groups) if (out / JOURNAL).exists() else len(done)
            assert summary.skipped_groups == expected, f"{moment}: finished groups were redone"
        elif not out.exists():  # killed before its journal existed (a slow start): --resume starts over
            assert resume(case, out).skipped_groups == 0, moment
        assert not (out / JOURNAL).exists(), moment
        assert_identical(case, out)
        shutil.rmtree(out)
    assert landed_in_finishing >= 1, "no kill landed while finishing"


def test_interrupt_between_rename_and_journal_removal(lm, tmp_path, monkeypatch):
    out = tmp_path / "out"
    unlink = os.unlink

    def interrupted_unlink(path, *args, **kwargs):
        if path == JOURNAL:
            raise KeyboardInterrupt
        return unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", interrupted_unlink)
    with pytest.raises(KeyboardInterrupt):
        execute(lm["plan"], str(lm["src"]), str(out), progress=False)
    monkeypatch.setattr(os, "unlink", unlink)
    assert (out / JOURNAL).exists() and not Path(f"{out}.partial").exists()
    with pytest.raises(OutputExists, match="already exists"):
        execute(lm["plan"], str(lm["src"]), str(out), progress=False)
    summary = resume(lm, out)
    assert summary.skipped_groups == len(lm["plan"].groups)
    assert not (out / JOURNAL).exists()
    assert_identical(lm, out)


def test_resumed_run_counts_only_the_bytes_it_writes(lm, tmp_path):
    out = tmp_path / "out"
    interrupt(lm, out, 3)
    plan = lm["plan"]
    done = journaled_groups(Path(f"{out}.partial") / JOURNAL)
    assert len(done) == 3
    summary = resume(lm, out)
    assert summary.skipped_groups == 3
    assert summary.bytes_written == sum(
        plan.outputs[i].nbytes for g, group in enumerate(plan.groups) if g not in done for i in group.outputs
    )
    assert summary.bytes_written < plan.output_bytes
    assert_identical(lm, out)


# ---------------------------------------------------------------- containment


def test_symlinks_and_links_planted_in_partial_are_not_written_through(vlm, tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    interrupt(vlm, out, 2)
    partial = Path(f"{out}.partial")
    (elsewhere / "x").write_bytes(b"keep")
    (elsewhere / "linked").write_bytes(b"keep too")
    (partial / "model.safetensors").unlink()
    (partial / "model.safetensors").symlink_to(elsewhere / "x")
    (partial / "config.json").symlink_to(elsewhere / "created")
    os.link(elsewhere / "linked", partial / "tokenizer.json")
    (partial / "extra").symlink_to(elsewhere)
    resume(vlm, out)
    assert sorted(os.listdir(elsewhere)) == ["linked", "x"]
    assert (elsewhere / "x").read_bytes() == b"keep" and (elsewhere / "linked").read_bytes() == b"keep too"
    assert_identical(vlm, out)


def test_fifo_in_source_is_refused_not_opened(lm, tmp_path):
    src = copy_tree(lm["src"], tmp_path / "src")
    (src / "generation_config.json").unlink()  # a file the plan makes an output file from
    os.mkfifo(src / "generation_config.json")
    with pytest.raises(SourceMismatch, match="generation_config.json: not a regular file") as e:
        execute(lm["plan"], str(src), str(tmp_path / "out"), progress=False)
    one_line(e.value)
    assert sorted(os.listdir(tmp_path)) == ["src"]


# ---------------------------------------------------------------- resume against another source


@pytest.mark.parametrize("how", ["edited_copy", "touched", "same_mtime_copy"])
def test_resume_refuses_a_changed_source(how, lm, tmp_path):
    src = copy_tree(lm["src"], tmp_path / "src")  # copytree keeps mtimes
    case = {**lm, "src": src}
    out = tmp_path / "out"
    interrupt(case, out, 3)
    shard = src / "model.safetensors"
    if how == "edited_copy":  # other inode and mtime, same size and header
        data = bytearray(shard.read_bytes())
        data[-64:] = bytes(255 - b for b in data[-64:])
        shard.unlink()
        shard.write_bytes(bytes(data))
    elif how == "touched":
        st = shard.stat()
        os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    else:
        shutil.copy2(shard, tmp_path / "tmp")
        os.replace(tmp_path / "tmp", shard)
    with pytest.raises(SourceMismatch, match="model.safetensors .* changed since the interrupted run") as e:
        resume(case, out, src)
    one_line(e.value)
    assert how != "same_mtime_copy" or "(inode)" in str(e.value)
    copy_tree(lm["src"], tmp_path / "again")
    with pytest.raises(SourceMismatch, match="changed since"):
        resume(case, out, tmp_path / "again")
    assert Path(f"{out}.partial").is_dir()


# ---------------------------------------------------------------- damaged journal


def _damage(journal: Path, how: str) -> None:
    lines = journal.read_bytes().splitlines(keepends=True)
    damage = {
        "garbage": lambda: lines.append(b"\xff\xfe\x00garbage\x80\n"),
        "half_line": lambda: lines.__setitem__(-1, lines[-1][:-20]),
        "middle_bad_json": lambda: lines.__setitem__(2, b'{"group": 1, "sha256": {\n'),
        "wrong_types": lambda: lines.append(b'{"group": "1", "sha256": [5]}\n'),
        "unknown_group": lambda: lines.append(b'{"group": 99999, "sha256": {}}\n'),
        "bool_group": lambda: lines.append(b'{"group": true, "sha256": {}}\n'),
        "first_line": lambda: lines.__setitem__(0, b'{"plan": \n'),
    }
    damage[how]()
    journal.write_bytes(b"".join(lines))


@pytest.mark.parametrize(
    "how", ["garbage", "half_line", "middle_bad_json", "wrong_types", "unknown_group", "bool_group", "first_line"]
)
def test_damaged_journal_costs_its_group_only(how, lm, tmp_path):
    out = tmp_path / "out"
    interrupt(lm, out, 3)
    _damage(Path(f"{out}.partial") / JOURNAL, how)
    summary = resume(lm, out)
    assert summary.skipped_groups == {"half_line": 2, "middle_bad_json": 2, "first_line": 0}.get(how, 3)
    assert_identical(lm, out)


def test_damaged_first_line_on_a_folder_not_proven_ours_is_refused(lm, tmp_path):
    out = tmp_path / "out"
    interrupt(lm, out, 3)
    partial = Path(f"{out}.partial")
    (partial / JOURNAL).write_bytes(b"\x00garbage\n")
    with open(partial / "model.safetensors", "r+b") as f:
        f.write(b"\xff")
    with pytest.raises(OutputExists, match="delete it to start over") as e:
        resume(lm, out)
    one_line(e.value)


# ---------------------------------------------------------------- lock


def test_second_run_on_a_folder_in_use_refuses(lm, tmp_path):
    out = tmp_path / "out"
    first = spawn_execute(lm, out)
    try:
        journal = Path(f"{out}.partial") / JOURNAL
        deadline = time.time() + 60
        while first.poll() is None and time.time() < deadline:
            if journal.exists() and journal.read_bytes().count(b"\n") > 1:
                break
            time.sleep(0.0005)
        os.kill(first.pid, signal.SIGSTOP)
        assert first.poll() is None, "the first run ended before the second started"
        for resume_flag in (True, False):
            with pytest.raises(OutputExists, match="in use by another sanitrace run") as e:
                execute(lm["plan"], str(lm["src"]), str(out), resume=resume_flag, progress=False)
            one_line(e.value)
        os.kill(first.pid, signal.SIGCONT)
        _, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGKILL)
            first.communicate()
    assert first.returncode == 0, err.decode()[-2000:]
    assert_identical(lm, out)


# ---------------------------------------------------------------- OUT checks before any work


@pytest.mark.parametrize(
    "how", ["exists", "dangling_symlink", "parent_is_a_file", "parent_missing", "partial_is_a_symlink"]
)
def test_output_refused_before_any_work(how, lm, tmp_path):
    out = tmp_path / "out"
    error = OutputExists
    if how == "exists":
        out.mkdir()
    elif how == "dangling_symlink":
        out.symlink_to(tmp_path / "nowhere")
    elif how == "parent_is_a_file":
        (tmp_path / "file").write_text("not a folder")
        out, error = tmp_path / "file" / "out", OutputError
    elif how == "parent_missing":
        out, error = tmp_path / "missing" / "out", OutputError
    else:
        (tmp_path / "elsewhere").mkdir()
        Path(f"{out}.partial").symlink_to(tmp_path / "elsewhere")
        error = OutputError
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(error) as e:
        execute(lm["plan"], str(lm["src"]), str(out), resume=how == "partial_is_a_symlink", progress=False)
    one_line(e.value)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> a fresh tmpfs of that many KiB; unmounted at teardown."""
    mounted = []

    def mount(kib: int) -> Path:
        path = tmp_path / f"fs{len(mounted)}"
        path.mkdir()
        if subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(path)], capture_output=True
        ).returncode:
            pytest.skip("cannot mount a tmpfs here")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", str(path)], capture_output=True)


def test_not_enough_space_is_refused_before_any_file(lm, tmpfs):
    fs = tmpfs(max(16, lm["plan"].output_bytes // 2048))
    with pytest.raises(OutputError, match=r"needs .* free, has ") as e:
        execute(lm["plan"], str(lm["src"]), str(fs / "out"), progress=False)
    one_line(e.value)
    assert os.listdir(fs) == []


def test_read_only_output_fails_in_one_line_and_stays_resumable(lm, tmpfs):
    fs = tmpfs(64 << 10)
    out = fs / "out"
    interrupt(lm, out, 3)
    subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
    try:
        with pytest.raises(OutputError, match="not writable") as e:
            resume(lm, out)
        one_line(e.value)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(fs)], check=True)
    assert resume(lm, out).skipped_groups == 3
    assert_identical(lm, out)


def test_os_error_on_an_output_file_is_one_line_and_resumable(lm, tmp_path):
    out = tmp_path / "out"
    interrupt(lm, out, 3)
    journal = Path(f"{out}.partial") / JOURNAL
    if subprocess.run(["chattr", "+i", str(journal)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here")
    try:
        with pytest.raises(OutputError, match=f"{JOURNAL}: Operation not permitted") as e:
            resume(lm, out)
        one_line(e.value)
    finally:
        subprocess.run(["chattr", "-i", str(journal)], check=True)
    assert resume(lm, out).skipped_groups == 3
    assert_identical(lm, out)
