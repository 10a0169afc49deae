"""Seeded fuzz campaigns against sanitrace's plan and safetensors readers.

    python tests/fuzz_campaign.py --iterations 3000 --campaign plan_bytes
    python tests/fuzz_campaign.py --campaign all --iterations 100
    python tests/fuzz_campaign.py --campaign plan_structure --seed-start 17 --iterations 1 --keep /tmp/f

Campaigns: plan_bytes (bit flips, overwrites, inserts, deletes, truncation,
duplicated ranges of a plan file), plan_structure (decoded plan mutated and
re-encoded), header_bytes (bytes of a source .safetensors header),
header_structure (header JSON mutated, re-serialized with a correct length).
Plan mutants go through `show --full`, `diff ORIG MUT` and `execute MUT` on the
real source; header mutants through `trace` and `execute ORIG_PLAN` (a header
mutant that traces counts as accepted: identical when it traces to the
original plan).

Each iteration runs in process in a worker subprocess (faulthandler on, an
alarm per iteration); a worker that dies is a CRASH for that seed and a new
worker starts at the next seed. Outcomes: ok (show/diff fine, execute
refused: "refused", or accepted with the original's output: "identical", or a
different output whose `show --full` differs: "different"), crash (exception
escaping main(), exit code not 0/1/130, traceback on stderr, dead worker,
peak RSS over 1 GiB), hang (over the per-iteration timeout), silent (accepted,
different output, same `show --full` text without digest lines).
"""

import argparse
import copy
import faulthandler
import json
import os
import random
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import msgpack  # noqa: E402

import hostile as H  # noqa: E402

CAMPAIGNS = ["plan_bytes", "plan_structure", "header_bytes", "header_structure"]
ARCH = "qwen3_moe"
TRACE_FLAGS = ["-q"]
RSS_LIMIT_KB = 1 << 20  # 1 GiB
OUTCOMES = ["refused", "identical", "different", "crash", "hang", "silent"]


class Hang(Exception):
    pass


# ---------------------------------------------------------------- setup


def prepare(workdir: Path) -> dict:
    """The fixture every campaign mutates: a checkpoint, its plan, the
    original output and `show --full` text. Returns the context (paths)."""
    from sanitrace.fixtures import write_checkpoint

    workdir.mkdir(parents=True, exist_ok=True)
    src = workdir / "src"
    if not src.exists():
        write_checkpoint(str(src), ARCH)
    plan = workdir / "plan.msgpack"
    rc, _, err = H.run_cli(["trace", src, "-o", plan] + TRACE_FLAGS)
    assert rc == 0, err
    out = workdir / "orig-out"
    shutil.rmtree(out, ignore_errors=True)
    rc, _, err = H.run_cli(["execute", plan, "--source", src, "--out", out, "--no-progress"])
    assert rc == 0, err
    rc, show, err = H.run_cli(["show", plan, "--full"])
    assert rc == 0, err
    (workdir / "orig-show.txt").write_text(show)
    return {
        "workdir": str(workdir),
        "src": str(src),
        "plan": str(plan),
        "out": str(out),
        "show": str(workdir / "orig-show.txt"),
    }


# ---------------------------------------------------------------- mutators


def mutate_bytes(data: bytes, rng: random.Random, lo: int = 0, hi: Optional[int] = None) -> bytes:
    """1-4 byte-level edits inside data[lo:hi]."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        end = min(hi if hi is not None else len(buf), len(buf))
        if end - lo < 2:
            break
        pos = rng.randrange(lo, end)
        kind = rng.choice(["flip", "flip", "overwrite", "insert", "delete", "truncate", "splice"])
        if kind == "flip":
            buf[pos] ^= 1 << rng.randrange(8)
        elif kind == "overwrite":
            n = rng.randint(1, 8)
            buf[pos : pos + n] = bytes(
                rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)]) for _ in range(min(n, end - pos))
            )
        elif kind == "insert":
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif kind == "delete":
            del buf[pos : pos + rng.randint(1, 8)]
        elif kind == "truncate" and hi is None:
            del buf[pos:]
        else:
            n = rng.randint(1, 64)
            piece = bytes(buf[pos : pos + n])
            at = rng.randrange(lo, end)
            buf[at:at] = piece
    return bytes(buf)


def _slots(obj, path=()) -> List[tuple]:
    """(container, key) for every value inside obj."""
    found = []
    if isinstance(obj, dict):
        for k in list(obj):
            found.append((obj, k))
            found.extend(_slots(obj[k]))
    elif isinstance(obj, list):
        for i in range(len(obj)):
            found.append((obj, i))
            found.extend(_slots(obj[i]))
    return found


LARGE = [2**31, 2**31 - 1, 2**32 + 1, 2**40, 2**63 - 1, -(2**63), 10**12, -1, -(2**31)]
OTHER_TYPES = [None, 0, -1, "", "x", [], {}, True, 1.5, b"", b"\x00" * 3]


def mutate_value(value, rng: random.Random, allow_ext: bool = True):
    """One structural change of ``value`` (a new value; containers changed in place)."""
    if isinstance(value, bool) or rng.random() < 0.15:
        choices = OTHER_TYPES if allow_ext else [v for v in OTHER_TYPES if not isinstance(v, bytes)]
        return copy.deepcopy(rng.choice(choices))
    if isinstance(value, int):
        return rng.choice([value + 1, value - 1, value * 2, -value, rng.choice(LARGE), rng.randrange(-1000, 1000)])
    if isinstance(value, float):
        return rng.choice([value * 2, -value, float("nan"), float("inf"), 0.0, 1e308])
    if isinstance(value, str):
        return rng.choice(
            [
                value + "x",
                value[:-1],
                "",
                "../" + value,
                "/" + value,
                value * 50,
                value.replace(".", "/"),
                value + "\x00",
                "é" + value,
            ]
        )
    if isinstance(value, bytes):
        return mutate_bytes(value, rng) if value else b"\x00"
    if isinstance(value, msgpack.ExtType):
        kind = rng.choice(["payload", "code", "value"])
        if kind == "code":
            return msgpack.ExtType(rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 127]), value.data)
        if kind == "payload":
            return msgpack.ExtType(value.code, mutate_bytes(value.data, rng) if value.data else b"\xc0")
        return msgpack.ExtType(
            value.code,
            msgpack.packb(rng.choice([[0, 0], [10**6, 0], [-1, 5], 3, -1, "bfloat16", "floaty", [1, 2, 3], [], None])),
        )
    if isinstance(value, list):
        kind = rng.choice(["swap", "delete", "duplicate", "wrap", "clear", "append"])
        if kind == "swap" and len(value) > 1:
            i, j = rng.sample(range(len(value)), 2)
            value[i], value[j] = value[j], value[i]
        elif kind == "delete" and value:
            del value[rng.randrange(len(value))]
        elif kind == "duplicate" and value:
            i = rng.randrange(len(value))
            value.insert(i, copy.deepcopy(value[i]))
        elif kind == "wrap":
            return [value]
        elif kind == "clear":
            return []
        else:
            value.append(copy.deepcopy(value[-1]) if value else 0)
        return value
    if isinstance(value, dict):
        kind = rng.choice(["delete", "duplicate", "rename", "wrap"])
        keys = list(value)
        if kind == "delete" and keys:
            del value[rng.choice(keys)]
        elif kind == "duplicate" and keys:
            k = rng.choice(keys)
            value[str(k) + "_copy"] = copy.deepcopy(value[k])
        elif kind == "rename" and keys:
            k = rng.choice(keys)
            value[str(k) + "x"] = value.pop(k)
        else:
            return [value]
        return value
    return value


def mutate_structure(obj, rng: random.Random, allow_ext: bool = True):
    """1-3 structural changes at random places of a decoded document."""
    for _ in range(rng.randint(1, 3)):
        slots = _slots(obj)
        if not slots:
            break
        container, key = rng.choice(slots)
        container[key] = mutate_value(container[key], rng, allow_ext)
    return obj


# ---------------------------------------------------------------- one iteration


def _run(argv: List[str], record: list) -> tuple:
    """main(argv) in process; a crash is appended to ``record``."""
    try:
        rc, out, err = H.run_cli(argv)
    except Hang:
        raise
    except BaseException:  # noqa: BLE001
        text = traceback.format_exc()
        sys.stderr.write(text)  # the worker's log keeps the whole traceback
        record.append(f"{argv[0]}: exception escaped main(): {text.strip().splitlines()[-1]}")
        return -1, "", ""
    if rc not in (0, 1, 130):
        record.append(f"{argv[0]}: exit code {rc}")
    if H.TRACEBACK in err:
        sys.stderr.write(err)
        record.append(f"{argv[0]}: traceback on stderr: {err.strip().splitlines()[-1]}")
    return rc, out, err


def iteration(campaign: str, seed: int, ctx: dict, keep: Optional[str] = None) -> dict:
    rng = random.Random(f"{campaign}:{seed}")
    tmp = Path(tempfile.mkdtemp(prefix=f"fuzz-{campaign}-{seed}-", dir=ctx["workdir"]))
    crashes: List[str] = []
    try:
        orig_out = ctx["out"]
        out = tmp / "out"
        if campaign.startswith("plan"):
            data = Path(ctx["plan"]).read_bytes()
            if campaign == "plan_bytes":
                mutated = mutate_bytes(data, rng)
            else:
                mutated = H.pack(mutate_structure(H.unpack(data), rng))
            plan = tmp / "mutant.msgpack"
            plan.write_bytes(mutated)
            rc_show, show, _ = _run(["show", plan, "--full"], crashes)
            _run(["diff", ctx["plan"], plan], crashes)
            rc, _, _ = _run(["execute", plan, "--source", ctx["src"], "--out", out, "--no-progress"], crashes)
        else:
            src = tmp / "src"
            shutil.copytree(ctx["src"], src)
            st = src / "model.safetensors"
            data = st.read_bytes()
            (n,) = struct.unpack("<Q", data[:8])
            if campaign == "header_bytes":
                st.write_bytes(
                    mutate_bytes(data, rng, 0, 8 + n)
                    if rng.random() < 0.8
                    else mutate_bytes(data[: 8 + n], rng, 0, 8 + n) + data[8 + n :]
                )
            else:
                header = mutate_structure(json.loads(data[8 : 8 + n]), rng, allow_ext=False)
                raw = json.dumps(header, separators=(",", ":")).encode()
                st.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
            rc_trace, _, _ = _run(["trace", src, "-o", tmp / "plan.msgpack"] + TRACE_FLAGS, crashes)
            rc, _, _ = _run(["execute", ctx["plan"], "--source", src, "--out", out, "--no-progress"], crashes)
            rc_show, show = 0, Path(ctx["show"]).read_text()
            if not crashes and rc != 0 and rc_trace == 0:
                # the mutated header traced: "identical" if to the same plan
                same = (tmp / "plan.msgpack").read_bytes() == Path(ctx["plan"]).read_bytes()
                return {
                    "seed": seed,
                    "outcome": "identical" if same else "different",
                    "detail": "",
                    "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                }
        if crashes:
            outcome, detail = "crash", "; ".join(crashes)
        elif rc != 0:
            outcome, detail = "refused", ""
        elif H.folder_difference(orig_out, out) == []:
            outcome, detail = "identical", ""
        else:
            original = Path(ctx["show"]).read_text()
            if rc_show == 0 and H.without_digest(show) == H.without_digest(original):
                outcome = "silent"
                detail = f"output differs ({H.folder_difference(orig_out, out)[:3]}), same show --full"
            else:
                outcome, detail = "different", ""
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if rss > RSS_LIMIT_KB:
            outcome, detail = "crash", f"allocated beyond budget: peak RSS {rss >> 10} MB"
        return {"seed": seed, "outcome": outcome, "detail": detail, "rss_kb": rss}
    finally:
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            for p in tmp.iterdir():
                if p.name != "out":
                    dest = Path(keep) / f"{campaign}-{seed}-{p.name}"
                    shutil.rmtree(dest, ignore_errors=True)
                    (shutil.copytree if p.is_dir() else shutil.copy)(p, dest)
        shutil.rmtree(tmp, ignore_errors=True)


def worker(ctx_path: str, timeout: int) -> None:
    """Read 'campaign seed' lines on stdin, answer one JSON line each."""
    faulthandler.enable()
    ctx = json.loads(Path(ctx_path).read_text())

    def alarm(signum, frame):
        raise Hang()

    signal.signal(signal.SIGALRM, alarm)
    for line in sys.stdin:
        campaign, seed = line.split()
        signal.alarm(timeout)
        try:
            result = iteration(campaign, int(seed), ctx)
        except Hang:
            result = {"seed": int(seed), "outcome": "hang", "detail": f"over {timeout}s (alarm)"}
        finally:
            signal.alarm(0)
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
        if result.get("rss_kb", 0) > RSS_LIMIT_KB or result["outcome"] == "hang":
            return  # a fresh worker for the next seed


# ---------------------------------------------------------------- driver


class Worker:
    def __init__(self, ctx_path: str, timeout: int, log: Path):
        self.log = open(log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", ctx_path, "--timeout", str(timeout)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )

    def ask(self, campaign: str, seed: int, timeout: float) -> Optional[dict]:
        """The result for one seed; None when the worker died or hung (then it is gone)."""
        try:
            self.proc.stdin.write(f"{campaign} {seed}\n".encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            return None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self.close()
            return None
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        self.log.close()


def run_campaign(campaign: str, iterations: int, ctx_path: str, seed_start: int = 0, timeout: int = 30) -> dict:
    """Run seeds seed_start.. of a campaign; returns counts, failing seeds and wall time."""
    start = time.time()
    counts = {k: 0 for k in OUTCOMES}
    failures = []
    log = Path(json.loads(Path(ctx_path).read_text())["workdir"]) / f"worker-{campaign}.log"
    w = None
    for seed in range(seed_start, seed_start + iterations):
        if w is None or w.proc.poll() is not None:
            w = Worker(ctx_path, timeout, log)
        t0 = time.time()
        result = w.ask(campaign, seed, timeout * 2 + 30)
        if result is None:
            code = w.proc.returncode
            hung = time.time() - t0 >= timeout * 2 + 30
            result = {
                "seed": seed,
                "outcome": "hang" if hung else "crash",
                "detail": "worker timed out" if hung else f"worker died (exit {code}); see {log}",
            }
            w = None
        counts[result["outcome"]] += 1
        if result["outcome"] in ("crash", "hang", "silent"):
            failures.append(result)
    if w is not None:
        w.close()
    return {
        "campaign": campaign,
        "iterations": iterations,
        "counts": counts,
        "failures": failures,
        "wall": time.time() - start,
    }


def reproduce_command(campaign: str, seed: int) -> str:
    return (
        f"python tests/fuzz_campaign.py --campaign {campaign} --seed-start {seed} "
        f"--iterations 1 --keep /tmp/fuzz-{campaign}-{seed}"
    )


def table(results: List[dict]) -> str:
    head = [
        "campaign",
        "iterations",
        "ok",
        "refused",
        "accepted-identical",
        "accepted-different",
        "crashes",
        "hangs",
        "silent",
        "wall",
    ]
    rows = [head]
    for r in results:
        c = r["counts"]
        ok = c["refused"] + c["identical"] + c["different"]
        rows.append(
            [
                r["campaign"],
                r["iterations"],
                ok,
                c["refused"],
                c["identical"],
                c["different"],
                c["crash"],
                c["hang"],
                c["silent"],
                f"{r['wall']:.0f}s",
            ]
        )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    lines = ["  ".join(str(v).rjust(w) for v, w in zip(row, widths)) for row in rows]
    for r in results:
        for f in r["failures"]:
            lines.append(f"{r['campaign']} seed {f['seed']}: {f['outcome']}: {f['detail'][:300]}")
            lines.append(f"    reproduce: {reproduce_command(r['campaign'], f['seed'])}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--campaign", action="append", choices=CAMPAIGNS + ["all"], default=None)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--seed-start", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=30, help="Seconds per iteration.")
    parser.add_argument("--workdir", default=None, help="Keep the fixture here (default: a temp dir).")
    parser.add_argument("--keep", default=None, help="Run in this process and keep the mutants here.")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.timeout)
        return 0
    campaigns = CAMPAIGNS if not args.campaign or "all" in args.campaign else args.campaign
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sanitrace-fuzz-"))
    try:
        ctx = prepare(workdir)
        if args.keep:
            for campaign in campaigns:
                for seed in range(args.seed_start, args.seed_start + args.iterations):
                    faulthandler.enable()
                    print(json.dumps(iteration(campaign, seed, ctx, args.keep)))
            return 0
        ctx_path = workdir / "context.json"
        ctx_path.write_text(json.dumps(ctx))
        results = [run_campaign(c, args.iterations, str(ctx_path), args.seed_start, args.timeout) for c in campaigns]
        print(table(results))
        bad = sum(r["counts"][k] for r in results for k in ("crash", "hang", "silent"))
        return 1 if bad else 0
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
