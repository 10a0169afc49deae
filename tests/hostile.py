"""Helpers for hostile-input tests and fuzz campaigns: raw plan (msgpack) and
safetensors editing, running the CLI in process or in a subprocess, comparing
output folders. Black-box: nothing here imports sanitrace's internals."""

import contextlib
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import msgpack

REPO = Path(__file__).resolve().parent.parent
TRACEBACK = "Traceback (most recent call last)"
JOURNAL = ".sanitrace-journal.jsonl"

EXT_REF, EXT_TUPLE, EXT_SLICE, EXT_ELLIPSIS, EXT_DTYPE, EXT_DEVICE, EXT_CATEGORY, EXT_SLOT = range(1, 9)

ITEMSIZE = {
    "bool": 1,
    "uint8": 1,
    "uint16": 2,
    "uint32": 4,
    "uint64": 8,
    "int8": 1,
    "int16": 2,
    "int32": 4,
    "int64": 8,
    "float16": 2,
    "bfloat16": 2,
    "float32": 4,
    "float64": 8,
    "complex64": 8,
}
SAFETENSORS_DTYPE = {
    "bool": "BOOL",
    "uint8": "U8",
    "uint16": "U16",
    "uint32": "U32",
    "uint64": "U64",
    "int8": "I8",
    "int16": "I16",
    "int32": "I32",
    "int64": "I64",
    "float16": "F16",
    "bfloat16": "BF16",
    "float32": "F32",
    "float64": "F64",
    "complex64": "C64",
}


# ---------------------------------------------------------------- raw plans


def unpack(data: bytes):
    """msgpack -> Python, ext types kept opaque (msgpack.ExtType)."""
    return msgpack.unpackb(
        data, raw=False, strict_map_key=False, ext_hook=lambda code, payload: msgpack.ExtType(code, payload)
    )


def canonical(obj):
    """``obj`` with every map's keys sorted (the plan's canonical order)."""
    if isinstance(obj, dict):
        try:
            keys = sorted(obj)
        except TypeError:
            keys = sorted(obj, key=repr)
        return {k: canonical(obj[k]) for k in keys}
    if isinstance(obj, list):
        return [canonical(x) for x in obj]
    return obj


def pack(obj, sort_keys: bool = False) -> bytes:
    """msgpack bytes; maps keep their order (the plan's own, as decoded) unless
    ``sort_keys``. Re-packing an unchanged decoded plan gives the same bytes."""
    return msgpack.packb(canonical(obj) if sort_keys else obj, use_bin_type=True)


def read_plan(path) -> dict:
    return unpack(Path(path).read_bytes())


def write_plan(obj, path) -> Path:
    Path(path).write_bytes(pack(obj))
    return Path(path)


def ext_payload(ext: msgpack.ExtType):
    return msgpack.unpackb(ext.data, raw=False, strict_map_key=False)


def ext(code: int, value) -> msgpack.ExtType:
    return msgpack.ExtType(code, msgpack.packb(value, use_bin_type=True))


def ref(node: int, out: int = 0) -> msgpack.ExtType:
    return ext(EXT_REF, [node, out])


def slot(i: int) -> msgpack.ExtType:
    return ext(EXT_SLOT, i)


def dtype_ext(name: str) -> msgpack.ExtType:
    return msgpack.ExtType(EXT_DTYPE, name.encode())


def pack_with_raw(obj, field_path: List, raw_value: bytes) -> bytes:
    """Pack ``obj`` with the value at ``field_path`` replaced by ``raw_value``
    (already msgpack bytes): for values msgpack would not write (non-UTF-8
    strings, 16M-element arrays)."""
    marker = "@@sanitrace-hostile-marker@@"
    target = obj
    for key in field_path[:-1]:
        target = target[key]
    target[field_path[-1]] = marker
    data = pack(obj)
    packed_marker = msgpack.packb(marker, use_bin_type=True)
    assert data.count(packed_marker) == 1
    return data.replace(packed_marker, raw_value)


def raw_str(data: bytes) -> bytes:
    """A msgpack str holding ``data`` verbatim (possibly invalid UTF-8)."""
    n = len(data)
    if n < 32:
        return bytes([0xA0 | n]) + data
    if n < 256:
        return b"\xd9" + bytes([n]) + data
    return b"\xda" + struct.pack(">H", n) + data


# ---------------------------------------------------------------- graph edits


def absolute_rows(rows: List[list], signatures: List[list]) -> List[list]:
    """Node rows with relative references made absolute: [sig, ("ref", node, out)...]
    or for loads [sig, tensor]."""
    result = []
    for i, row in enumerate(rows):
        if signatures[row[0]][0] == "load":
            result.append(list(row))
            continue
        new = [row[0]]
        for x in row[1:]:
            new.append(("ref", i - x, 0) if isinstance(x, int) else ("ref", i - x[0], x[1]))
        result.append(new)
    return result


def relative_rows(rows: List[list], signatures: List[list]) -> List[list]:
    result = []
    for i, row in enumerate(rows):
        if signatures[row[0]][0] == "load":
            result.append(list(row))
            continue
        new = [row[0]]
        for _, node, out in row[1:]:
            new.append(i - node if out == 0 else [i - node, out])
        result.append(new)
    return result


def insert_nodes(plan: dict, position: int, new_rows: List[list]) -> None:
    """Insert absolute ``new_rows`` before node ``position``, shifting every later
    reference (rows, outputs, guards)."""
    sigs = plan["signatures"]
    rows = absolute_rows(plan["nodes"], sigs)
    n = len(new_rows)

    def shift(node: int) -> int:
        return node + n if node >= position else node

    for row in rows:
        if sigs[row[0]][0] != "load":
            row[1:] = [("ref", shift(node), out) for _, node, out in row[1:]]
    rows[position:position] = new_rows
    plan["nodes"] = relative_rows(rows, sigs)
    for out in plan["outputs"]:
        node, o = ext_payload(out[3])
        out[3] = ref(shift(node), o)
    for guard in plan["guards"]:
        node, o = ext_payload(guard["ref"])
        guard["ref"] = ref(shift(node), o)


def output_index(plan: dict, name: str) -> int:
    return next(i for i, o in enumerate(plan["outputs"]) if o[0] == name)


def add_signature(plan: dict, signature: list) -> int:
    plan["signatures"].append(signature)
    return len(plan["signatures"]) - 1


def splice_take(plan: dict, output_name: str, indices: List[int], op: str = "mx.take") -> dict:
    """Make ``output_name`` (a 1-D astype of a load) = op(load, const(indices)),
    with the dtype and shape the plan declares; the group becomes whole-only.
    ``op`` is "mx.take", "mx.take_along_axis" or "array.__getitem__"."""
    k = output_index(plan, output_name)
    name, dtype, shape, out_ref, _, _ = plan["outputs"][k]
    assert len(shape) == 1 and len(indices) == shape[0]
    node, _ = ext_payload(out_ref)
    sigs = plan["signatures"]
    rows = absolute_rows(plan["nodes"], sigs)
    load = rows[node][1][1]  # the astype's input
    assert sigs[rows[load][0]][0] == "load"
    const = add_signature(plan, ["const", [struct.pack(f"<{len(indices)}i", *indices)], {}, [["int32", list(shape)]]])
    if op == "mx.take":
        take = add_signature(plan, ["mx.take", [slot(0), slot(1)], {"axis": 0}, [[dtype, list(shape)]]])
    elif op == "mx.take_along_axis":
        take = add_signature(plan, ["mx.take_along_axis", [slot(0), slot(1)], {"axis": 0}, [[dtype, list(shape)]]])
    else:
        take = add_signature(plan, ["array.__getitem__", [slot(0), slot(1)], {}, [[dtype, list(shape)]]])
    # node -> [const, take]: the const goes where the astype was, the take after it
    insert_nodes(plan, node, [[const]])
    rows = absolute_rows(plan["nodes"], plan["signatures"])
    rows[node + 1] = [take, ("ref", load, 0), ("ref", node, 0)]
    plan["nodes"] = relative_rows(rows, plan["signatures"])
    for group in plan["groups"]:
        if k in group["outputs"]:
            group["unit"] = 0
            group["peak_lines"] = group["peak_lines"][:1]
    return plan


def relayout_shard(plan: dict, file_index: int) -> None:
    """Recompute the offsets of the outputs in shard ``file_index`` and its size
    from their dtypes and shapes, as the plan's shard layout defines them."""
    entries = sorted((o for o in plan["outputs"] if o[4] == file_index), key=lambda o: o[0])
    doc = {"__metadata__": plan["files"][file_index]["metadata"]}
    offset = 0
    relative = []
    for o in entries:
        nbytes = ITEMSIZE[o[1]]
        for d in o[2]:
            nbytes *= d
        doc[o[0]] = {"data_offsets": [offset, offset + nbytes], "dtype": SAFETENSORS_DTYPE[o[1]], "shape": list(o[2])}
        relative.append(offset)
        offset += nbytes
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    raw += b" " * (-(8 + len(raw)) % 8)
    for o, r in zip(entries, relative):
        o[5] = 8 + len(raw) + r
    plan["files"][file_index]["size"] = 8 + len(raw) + offset


# ---------------------------------------------------------------- running the CLI


def run_cli(argv: List[str]) -> Tuple[int, str, str]:
    """``main(argv)`` in process: (exit code, stdout, stderr). An exception that
    escapes main() is re-raised: that is a crash."""
    from sanitrace.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
    return rc, out.getvalue(), err.getvalue()


def sanitrace_cmd(*argv) -> List[str]:
    return [sys.executable, "-m", "sanitrace"] + [str(a) for a in argv]


def run_sub(argv: List[str], timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """``python -m sanitrace argv`` in a fresh process (killed after ``timeout``)."""
    return subprocess.run(sanitrace_cmd(*argv), capture_output=True, text=True, timeout=timeout, **kwargs)


def error_lines(stderr: str) -> List[str]:
    """stderr's lines less warnings (``sanitrace: warning: ...``, e.g. a budget
    of 1 byte that cannot be met): what a failure says."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("sanitrace: warning:")]


def assert_refused(rc: int, stderr: str, what: str = "") -> str:
    """Exit 1, exactly one line on stderr, no traceback; returns the line."""
    lines = error_lines(stderr)
    assert TRACEBACK not in stderr, f"{what}: traceback:\n{stderr[-3000:]}"
    assert rc == 1, f"{what}: exit {rc}, stderr:\n{stderr[-2000:]}"
    assert len(lines) == 1, f"{what}: expected one line on stderr, got:\n{stderr[-2000:]}"
    return lines[0]


def without_digest(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("digest"))


def show_full(plan_path) -> Tuple[int, str, str]:
    return run_cli(["show", str(plan_path), "--full"])


# ---------------------------------------------------------------- folders


def folder_files(path) -> Dict[str, bytes]:
    """relative path -> bytes of every regular file under ``path`` (symlinks
    recorded as 'symlink:' + target)."""
    root = Path(path)
    result = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            full = Path(dirpath) / name
            rel = str(full.relative_to(root))
            if full.is_symlink():
                result[rel] = b"symlink:" + os.readlink(full).encode()
            else:
                result[rel] = full.read_bytes()
    return result


def folder_difference(a, b) -> List[str]:
    fa, fb = folder_files(a), folder_files(b)
    problems = [f"only in {a}: {n}" for n in sorted(set(fa) - set(fb))]
    problems += [f"only in {b}: {n}" for n in sorted(set(fb) - set(fa))]
    problems += [f"differs: {n}" for n in sorted(set(fa) & set(fb)) if fa[n] != fb[n]]
    return problems


def tree_listing(path) -> List[str]:
    """Every path under ``path`` (relative), for 'nothing was created' checks."""
    root = Path(path)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ---------------------------------------------------------------- processes


def journal_groups(out_dir) -> int:
    """Finished groups the journal of ``out_dir``.partial lists (0 if none)."""
    path = Path(str(out_dir) + ".partial") / JOURNAL
    try:
        return max(0, len(path.read_bytes().splitlines()) - 1)
    except OSError:
        return 0


def start_execute(plan, source, out, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        sanitrace_cmd("execute", plan, "--source", source, "--out", out, "--no-progress", *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def wait_for(
    condition: Callable[[], bool], proc: Optional[subprocess.Popen], timeout: float = 60, interval: float = 0.002
) -> bool:
    """Poll ``condition`` until true (True), ``proc`` exits or timeout (False)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        if proc is not None and proc.poll() is not None:
            return condition()
        time.sleep(interval)
    return False


def stop(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal ``proc`` (one we started) and reap it."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
            if sig != signal.SIGKILL:
                os.kill(proc.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()


def interrupt_after_groups(plan, source, out, groups: int = 1, *extra) -> subprocess.Popen:
    """Run execute with --memory-budget 1 and SIGKILL it once the journal lists
    ``groups`` finished groups. Returns the reaped process."""
    proc = start_execute(plan, source, out, "--memory-budget", "1", *extra)
    try:
        reached = wait_for(lambda: journal_groups(out) >= groups, proc)
        assert reached and proc.poll() is None, "execute finished before it could be interrupted"
    finally:
        stop(proc)
    return proc


# ---------------------------------------------------------------- safetensors headers


def read_st_header(path) -> Tuple[int, dict]:
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return n, json.loads(data[8 : 8 + n])


def rewrite_st_header(path, header: dict, pad_to: Optional[int] = None) -> None:
    """Replace the header of a safetensors file by ``header`` (JSON), keeping the data."""
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    raw = json.dumps(header, separators=(",", ":")).encode()
    if pad_to is not None and len(raw) < pad_to:
        raw += b" " * (pad_to - len(raw))
    Path(path).write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
