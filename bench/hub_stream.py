"""Convert straight from a (local) Hugging Face Hub: download volume, local disk, identity.

Builds (once, under --work) a >= 2 GB, 5-shard Qwen3-MoE bf16 checkpoint whose experts
of each layer straddle two shards, serves it with tests/hub_server.py as bench/moe-2g, and
converts it: eager ``mlx_lm.convert --hf-path <local folder> -q`` (the oracle); clean
``sanitrace convert --hf-path bench/moe-2g --mlx-path OUT -q``; faults: the same while the
server drops connections at random points (--drops), with one ``kill -9`` at a random moment
after the first shard is downloaded, then the same command with ``--resume``.

Every 20 ms it samples the bytes under OUT.partial/.sanitrace-source/ (and HF_HOME); the
server's log gives the bytes sent and the requests. Identity is compare_folders (tensors and
config quantization; side files are out of scope).

    python bench/hub_stream.py [--work build/bench-hub] [--disk-budget 1.2G] [--drops 6] [--seed N] [--stall 120]
        [--modes eager,clean,faults] [--keep]
"""

import argparse
import contextlib
import filecmp
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Tuple

import psutil
from harness import Run, eager_argv, measure, write_bench_moe

from hub_bench import HubServer, allocated, covered, environ, file_gets, header_bytes, sanitrace, shard_sizes, span

from sanitrace.cli_flags import parse_size  # noqa: E402
from sanitrace.collapse import human_bytes  # noqa: E402
from sanitrace.compare import compare_folders  # noqa: E402

REPO_ID = "bench/moe-2g"
SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB)\b")


def build_source(src: str, args) -> None:
    """The checkpoint, unless it exists; then check its size and expert split."""
    if not os.path.exists(src):
        write_bench_moe(src, args.layers, args.experts, args.hidden, args.moe_intermediate, shards=args.shards)
    if not os.path.exists(os.path.join(src, "README.md")):  # Hub repos have a model card
        with open(os.path.join(src, "README.md"), "w") as f:
            f.write("---\nlicense: apache-2.0\ntags:\n- moe\n---\n# moe-2g\n\nA synthetic bench checkpoint.\n")
    shards = shard_sizes(src)
    on_disk = allocated(src)[0]
    with open(os.path.join(src, "model.safetensors.index.json")) as f:
        weight_map = json.load(f)["weight_map"]
    split: Dict[str, set] = {}
    for name, shard in weight_map.items():
        match = re.match(r"model\.layers\.(\d+)\.mlp\.experts\.", name)
        if match:
            split.setdefault(match.group(1), set()).add(shard)
    straddle = [
        f"layer {k}: {' + '.join(sorted(v))}" for k, v in sorted(split.items(), key=lambda kv: int(kv[0])) if len(v) > 1
    ]
    print(
        f"source: {src}: {len(shards)} shards, {sum(shards.values()) / 1e9:.2f} GB "
        f"({on_disk / 1e9:.2f} GB allocated on disk); experts straddling shards:\n  " + "\n  ".join(straddle)
    )
    if len(shards) < 4 or on_disk < 2e9 or not straddle:
        sys.exit("the source must have >= 4 shards, >= 2 GB on disk and a layer's experts in two shards")


class Monitor(threading.Thread):
    """Every 20 ms: the peak allocated bytes of the source folder and HF_HOME, the
    peak RSS (VmHWM) of ``pid``; in faults mode it arms connection drops and sends
    the kill -9 (see ``arm`` and ``kill``)."""

    def __init__(
        self,
        hub: HubServer,
        sizes: Dict[str, int],
        headers: Dict[str, int],
        source_dir: str,
        hf_home: str,
        rng: random.Random,
        drops: int = 0,
        kill: bool = False,
        stall: float = 120,
    ):
        super().__init__(daemon=True)
        self.hub, self.sizes, self.headers, self.rng = hub, sizes, headers, rng
        self.source_dir, self.hf_home = source_dir, hf_home
        self.drops, self.kill_pending = drops, kill
        self.peak_source = self.peak_apparent = self.peak_home = self.peak_rss = 0
        self.pid: Optional[int] = None
        self.armed: Optional[int] = None  # log length when the pending drop rule was armed
        self.rules = 0  # drop rules armed
        self.kill_at: Optional[int] = None  # covered bytes at which to kill
        self.killed: Optional[dict] = None
        self.stall, self.stalled, self.activity = stall, False, (0.0, 0, 0.0)  # (time, bytes sent, CPU s)
        self._halt = threading.Event()

    def run(self):
        while not self._halt.wait(0.02):
            self.sample()
        self.sample()

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def watchdog(self) -> None:
        """Kill the sanitrace process when for ``stall`` seconds the server sent nothing
        and it used under a second of CPU (a hang, not a slow step)."""
        now, (last, sent, cpu) = time.time(), self.activity
        if now - last < 5:
            return
        with contextlib.suppress(psutil.Error):
            procs = [p for p in psutil.Process().children(recursive=True) if p.name() != "time"]
            used = sum(sum(p.cpu_times()[:2]) for p in procs)
            if self.hub.bytes_sent != sent or used - cpu > 1 or not last:
                self.activity = (now, self.hub.bytes_sent, used)
            elif now - last > self.stall and procs:
                self.stalled = True
                for p in procs:
                    p.kill()

    def sample(self) -> None:
        if self.stall:
            self.watchdog()
        blocks, size = allocated(self.source_dir)
        self.peak_source, self.peak_apparent = max(self.peak_source, blocks), max(self.peak_apparent, size)
        self.peak_home = max(self.peak_home, allocated(self.hf_home)[0])
        if self.pid is not None:
            with contextlib.suppress(OSError):
                with open(f"/proc/{self.pid}/status") as f:
                    hwm = re.search(r"VmHWM:\s+(\d+) kB", f.read())
                self.peak_rss = max(self.peak_rss, int(hwm.group(1)) * 1024 if hwm else 0)
        if not (self.drops or self.kill_pending):
            return
        requests = self.hub.requests
        done = covered(requests, self.sizes)
        if self.drops:
            self.arm(requests, sum(done.values()))
        if self.kill_pending and self.pid is not None:
            self.kill(requests, done)

    def arm(self, requests: list, done: int) -> None:
        """Drop rules one at a time (the server's drop_randomly: the next safetensors
        data GET is cut at a uniformly random point of its body), the k-th once
        streaming has started, the previous rule is taken, and k/(drops+1) of 60% of
        the source is downloaded; drops + 1 rules, as the kill may take one."""
        gets = file_gets(requests, self.sizes)
        data = [i for i, name, r in gets if span(r, self.sizes[name])[1] > self.headers[name]]
        if not data or (self.armed is not None and data[-1] < self.armed):
            return  # not streaming yet (the trace reads headers), or the last rule is not taken yet
        self.armed, total = None, sum(self.sizes.values())
        if self.rules > self.drops or done < self.rules / (self.drops + 1) * 0.6 * total:
            return
        self.armed, self.rules = len(requests), self.rules + 1
        self.hub.faults.drop_randomly(
            1, match=".safetensors", seed=self.rng.randrange(1 << 30), min_length=max(self.headers.values()) + 1
        )  # header reads are left alone

    def kill(self, requests: list, done: Dict[str, int]) -> None:
        """kill -9 once a random share of the bytes between the end of the first
        downloaded shard and 90% of the source is downloaded."""
        total, now = sum(self.sizes.values()), sum(done.values())
        if self.kill_at is None:
            if any(done[n] >= self.sizes[n] for n in self.sizes):
                self.kill_at = now + int(self.rng.random() * max(0.9 * total - now, 0))
            return
        if now < self.kill_at:
            return
        os.kill(self.pid, signal.SIGKILL)
        self.kill_pending = False
        in_flight = [n for n in self.sizes if self.headers[n] < done[n] < self.sizes[n]]
        last = {name: i for i, name, _ in file_gets(requests, self.sizes) if name in in_flight}
        self.killed = dict(at=now, shards=in_flight, requests=set(last.values()))


def sanitrace_argv(out: str, flags: List[str], disk_budget: Optional[str]) -> List[str]:
    budget = ["--disk-budget", disk_budget] if disk_budget else []
    return sanitrace("convert", "--hf-path", REPO_ID, "--mlx-path", out, "--no-progress", *flags, *budget)


def disk_budget(args, lines: List[str], sizes: Dict[str, int]) -> Tuple[int, str]:
    """(disk budget in bytes, where it comes from): --disk-budget, else the one
    sanitrace printed (the last size of its line about the budget; exact when it
    is the documented default, the two largest shards), else that default."""
    if args.disk_budget:
        return parse_size(args.disk_budget), "--disk-budget"
    default = sum(sorted(sizes.values())[-2:])
    for sizes_in_line in [SIZE.findall(line) for line in lines if "budget" in line.lower()]:
        if sizes_in_line:  # "disk needed X: the output and Y of source at once (--disk-budget)": Y
            printed = parse_size("".join(sizes_in_line[-1]))
            if abs(printed - default) < printed / 1000:
                return default, f"printed {''.join(sizes_in_line[-1])}: the two largest shards"
            return printed, "printed"
    return default, "not printed; the default, two largest shards"


def run_hub(mode: str, hub: HubServer, src: str, args, rng: random.Random) -> dict:
    """One sanitrace mode ("clean" or "faults") against the server; its numbers."""
    out = os.path.join(args.work, f"{mode}-sanitrace")
    home = os.path.join(args.work, f"{mode}-hf-home")
    for d in (out, out + ".partial", home):
        shutil.rmtree(d, ignore_errors=True)
    sizes = shard_sizes(src)
    headers = {n: header_bytes(os.path.join(src, n)) for n in sizes}
    faults = mode == "faults"
    monitor = Monitor(
        hub,
        sizes,
        headers,
        os.path.join(out + ".partial", ".sanitrace-source"),
        home,
        rng,
        drops=args.drops if faults else 0,
        kill=faults,
        stall=args.stall,
    )
    hub.faults.clear()
    hub.reset_log()
    argv = sanitrace_argv(out, args.flags, args.disk_budget)
    env = {
        "HF_ENDPOINT": hub.endpoint,
        "HF_HOME": home,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    logs = [os.path.join(args.work, f"{mode}-sanitrace.log")]
    monitor.start()
    with environ(env):
        if not faults:
            run = measure(f"sanitrace {mode}", argv, logs[0])
        else:
            start, noise = time.time(), io.StringIO()  # the server thread's traceback when the kill resets
            with open(logs[0], "w") as f, contextlib.redirect_stderr(noise):
                proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT)
                monitor.pid = proc.pid
                first_rc = proc.wait()
                first_wall, first_rss = time.time() - start, monitor.peak_rss
                monitor.pid, monitor.kill_pending = None, False
                time.sleep(0.5)  # let the server see the killed connections close
            logs.append(os.path.join(args.work, f"{mode}-sanitrace-resume.log"))
            resumed = measure("sanitrace faults --resume", argv + ["--resume"], logs[1])
            run = Run(
                f"sanitrace {mode}", max(first_rss, resumed.peak_rss), first_wall + resumed.wall, resumed.returncode
            )
            print(
                f"  faults: first run rc={first_rc} after {first_wall:.1f} s "
                f"({'killed' if monitor.killed else 'not killed'}), resume rc={resumed.returncode}"
            )
    monitor.stop()
    requests = hub.requests
    gets = file_gets(requests, sizes)
    sent = {n: 0 for n in sizes}
    for _, name, r in gets:
        sent[name] += r.nbytes
    cut = {i for i, name, r in gets if r.nbytes < span(r, sizes[name])[1]}
    killed = monitor.killed or {}
    in_flight = cut & killed.get("requests", set())
    with open(logs[0], errors="replace") as f:
        disk = [line.strip() for line in f if re.search(r"(?i)\bdisk\b(?!_)", line) and "=" not in line]
    return dict(
        run=run,
        out=out,
        logs=logs,
        requests=len(requests),
        sizes=sizes,
        sent=sent,
        covered=covered(requests, sizes),
        drops=len(cut - in_flight),
        cuts=len(cut),
        in_flight=len(in_flight),
        killed=killed,
        monitor=monitor,
        server_drops=getattr(hub.faults, "dropped", "?"),
        budget=disk_budget(args, disk, sizes),
        disk=disk,
    )


def identity(eager_out: Optional[str], out: str, rc: int) -> str:
    """ "yes", "NO: ...", or why it was not compared; side files that differ are named."""
    if rc:
        return f"failed (rc={rc})"
    if eager_out is None or not os.path.isdir(eager_out):
        return "no eager output"
    problems = compare_folders(eager_out, out)
    pairs = [
        (n, os.path.join(eager_out, n), os.path.join(out, n))
        for n in set(os.listdir(eager_out)) | set(os.listdir(out))
        if not n.endswith(".safetensors") and n != "config.json"
    ]
    side = sorted(n for n, a, b in pairs if not (os.path.isfile(a) and os.path.isfile(b) and filecmp.cmp(a, b, False)))
    note = f" (side files differ, out of scope: {', '.join(side)})" if side else ""
    return ("yes" if not problems else f"NO: {problems[:3]}") + note


def report(mode: str, result: dict, identical: str) -> List[str]:
    """Detail lines of one mode, and the per-shard table for faults."""
    sizes, sent = result["sizes"], result["sent"]
    total, (budget, origin), mon = sum(sizes.values()), result["budget"], result["monitor"]
    stalled = ["  HUNG: no download and no CPU for --stall seconds; killed by the bench"] if mon.stalled else []
    lines = [
        f"{mode}: identical: {identical}",
        *stalled,
        f"  safetensors sent {human_bytes(sum(sent.values()))} for {human_bytes(total)} of source "
        f"({sum(sent.values()) / total:.4f}x; must be <= 1.05), {result['requests']} requests",
        f"  peak local source {mon.peak_apparent:,} B ({mon.peak_apparent - budget:+,} B vs the budget), "
        f"{mon.peak_source:,} B allocated ({mon.peak_source - budget:+,} B); budget {budget:,} B ({origin})",
        f"  HF_HOME peak {human_bytes(mon.peak_home)} allocated",
        f"  sanitrace printed: {' | '.join(result['disk']) or 'nothing about disk'}",
    ]
    if mode != "faults":
        return lines
    killed = result["killed"]
    lines.append(
        f"  drops injected {result['drops']} (server's count {result['server_drops']}; GETs cut short: "
        f"{result['cuts']}, of which in flight at the kill: {result['in_flight']}); kill -9 "
        + (
            f"at {human_bytes(killed['at'])} downloaded, shard in flight: {', '.join(killed['shards']) or 'none'}"
            if killed
            else "NOT sent (the run ended first)"
        )
    )
    lines.append("  | shard | size | sent | sent / size | re-sent | |")
    lines.append("  |---|---:|---:|---:|---:|---|")
    for name, size in sizes.items():
        resent = sent[name] - result["covered"][name]
        interrupted = name in killed.get("shards", [])
        flag = "in flight at the kill" if interrupted else ("SENT MORE THAN ONCE" if resent > 1 << 20 else "")
        lines.append(
            f"  | {name} | {human_bytes(size)} | {human_bytes(sent[name])} | {sent[name] / size:.4f} | "
            f"{human_bytes(resent)} | {flag} |"
        )
    return lines


def table(rows: List[tuple]) -> str:
    lines = [
        "| mode | identical | wall | peak RSS | downloaded / source | peak local source / budget | requests |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, run, identical, result in rows:
        if result is None:
            download = local = requests = "-"
        else:
            total, sent = sum(result["sizes"].values()), sum(result["sent"].values())
            download = f"{human_bytes(sent)} / {human_bytes(total)} = {sent / total:.4f}x"
            peak, budget = result["monitor"].peak_source, result["budget"][0]
            local = f"{human_bytes(peak)} / {human_bytes(budget)} = {peak / budget:.2f}x"
            requests = str(result["requests"])
        short = identical.split(" (side files")[0]
        lines.append(
            f"| {mode} | {short} | {run.wall:.1f} s | {run.peak_rss / 2**30:.2f} GiB | {download} | "
            f"{local} | {requests} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="build/bench-hub")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--moe-intermediate", type=int, default=768)
    parser.add_argument("--shards", type=int, default=5)
    parser.add_argument("--flags", default="-q", help="convert flags for every mode (default -q)")
    parser.add_argument("--disk-budget", default=None, help="sanitrace --disk-budget (default: sanitrace's)")
    parser.add_argument("--drops", type=int, default=6, help="connection drops to inject in faults mode")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--stall",
        type=float,
        default=120,
        help="kill a sanitrace run idle (no bytes sent, no CPU) this many seconds; 0: never",
    )
    parser.add_argument("--modes", default="eager,clean,faults")
    parser.add_argument("--keep", action="store_true", help="keep the outputs (the source is always kept)")
    args = parser.parse_args()
    args.flags = args.flags.split()
    args.seed = random.randrange(1 << 30) if args.seed is None else args.seed
    modes = args.modes.split(",")
    os.makedirs(args.work, exist_ok=True)
    src = os.path.join(args.work, "moe-2g")
    build_source(src, args)
    print(f"seed {args.seed}; sanitrace: {' '.join(sanitrace_argv('OUT', args.flags, args.disk_budget))}")

    rows, details, eager_out = [], [], None
    if "eager" in modes:
        eager_out = os.path.join(args.work, "eager")
        shutil.rmtree(eager_out, ignore_errors=True)
        run = measure("eager", eager_argv(src, eager_out, args.flags), os.path.join(args.work, "eager.log"))
        rows.append(
            (
                "eager mlx_lm.convert (local folder)",
                run,
                "oracle" if not run.returncode else f"failed (rc={run.returncode})",
                None,
            )
        )
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    rng = random.Random(args.seed)
    start = time.time()
    with HubServer({REPO_ID: src}) as hub:
        print(f"hub server {hub.endpoint} serving {REPO_ID} (ready in {time.time() - start:.1f} s)")
        for mode in [m for m in modes if m in ("clean", "faults")]:
            result = run_hub(mode, hub, src, args, rng)
            same = (
                "HUNG: killed by --stall"
                if result["monitor"].stalled
                else identity(eager_out, result["out"], result["run"].returncode)
            )
            rows.append((f"sanitrace {mode}", result["run"], same, result))
            details += report(mode, result, same)
            print(table(rows[-1:]).splitlines()[-1], flush=True)
            if result["run"].returncode:
                lines = [ln for ln in open(result["logs"][-1]) if not ln.startswith(("\t", "Command "))]
                print(f"  see {result['logs'][-1]}:\n" + "".join(lines[-5:]))
            if not args.keep:
                shutil.rmtree(result["out"], ignore_errors=True)
    print()
    print(table(rows))
    print()
    print("\n".join(details))
    if eager_out and not args.keep:
        shutil.rmtree(eager_out, ignore_errors=True)


if __name__ == "__main__":
    main()
