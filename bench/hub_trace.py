"""Trace from the Hub vs from a local folder: DeepSeek-V3's 163 shard headers.

Materializes ../shared/giants/deepseek-v3 under --work (sparse: the real headers,
holes for the data; as `hf download --local-dir DeepSeek-V3` would name it), serves
it with tests/hub_server.py as deepseek-ai/DeepSeek-V3, and times

    sanitrace trace <work>/DeepSeek-V3 -o local.msgpack [flags]
    sanitrace trace deepseek-ai/DeepSeek-V3 -o remote.msgpack [flags]   (HF_ENDPOINT, a fresh HF_HOME)

--runs times each, alternating. Reports the bytes the server sent vs the shards'
headers (8-byte length + JSON) plus the small files (target <= 1.1x), the requests,
the wall time remote vs local (target <= 2x), and whether the plans are
byte-identical (else `sanitrace diff local remote`).

    python bench/hub_trace.py [--work build/bench-hub-trace] [--runs 2] [--flags=-q] [--giants DIR]
"""

import argparse
import os
import shutil
import subprocess
import time
from collections import Counter
from typing import Dict, List

from harness import GIANTS, materialize, measure
from hub_bench import HubServer, environ, file_of, header_bytes, sanitrace

from sanitrace import plan as plan_ir
from sanitrace.collapse import human_bytes

REPO_ID = "deepseek-ai/DeepSeek-V3"


def expected_bytes(folder: str) -> Dict[str, int]:
    """What a header-only trace must download: each shard's 8-byte length and JSON
    header, and every other (small) file whole."""
    headers = small = shards = 0
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.endswith(".safetensors"):
            headers += header_bytes(path)
            shards += 1
        elif os.path.isfile(path):
            small += os.path.getsize(path)
    return dict(headers=headers, small=small, shards=shards)


def kind(request) -> str:
    """api / HEAD / GET header range / GET small file, for the request breakdown."""
    if request.path.startswith("/api/"):
        return "api"
    if request.method == "HEAD":
        return "HEAD"
    return "GET safetensors range" if file_of(request.path) else "GET small file"


def printed(log: str) -> List[str]:
    """What the command printed (the log without /usr/bin/time's report)."""
    with open(log, errors="replace") as f:
        text = f.read()
    return text.split("\tCommand being timed:")[0].rstrip().splitlines()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="build/bench-hub-trace")
    parser.add_argument("--giants", default=GIANTS)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--flags", default="-q", help="trace flags for both (default -q)")
    args = parser.parse_args()
    flags = args.flags.split()
    os.makedirs(args.work, exist_ok=True)
    local = os.path.join(args.work, "DeepSeek-V3")
    start = time.time()
    materialize(args.giants, "deepseek-v3", local)
    if not os.path.exists(os.path.join(local, "README.md")):  # the Hub repo has a model card; the library reads it
        with open(os.path.join(local, "README.md"), "w") as f:
            f.write("---\nlicense: mit\nlibrary_name: transformers\n---\n# DeepSeek-V3\n\nHeaders only.\n")
    expect = expected_bytes(local)
    need = expect["headers"] + expect["small"]
    print(
        f"source: {local} ({time.time() - start:.1f} s): {expect['shards']} shards, headers "
        f"{human_bytes(expect['headers'])} (with the 8-byte lengths), small files {human_bytes(expect['small'])}"
    )

    start = time.time()
    runs: Dict[str, list] = {"local": [], "remote": [], "cache": []}
    with HubServer({REPO_ID: local}) as hub:
        cache_home = os.path.join(args.work, "hf-home-cache")
        cache_snapshot(local, cache_home, hub.sha(REPO_ID))
        print(f"hub server {hub.endpoint} serving {REPO_ID} (ready in {time.time() - start:.1f} s)")
        for i in range(args.runs):
            plan = os.path.join(args.work, f"local-{i + 1}.msgpack")
            log = os.path.join(args.work, f"local-{i + 1}.log")
            run = measure("local", sanitrace("trace", local, "-o", plan, *flags), log)
            runs["local"].append(dict(run=run, plan=plan, log=log))
            print(
                f"local  run {i + 1}: {run.wall:.1f} s, peak RSS {run.peak_rss / 2**30:.2f} GiB, rc {run.returncode}",
                flush=True,
            )

            plan = os.path.join(args.work, f"remote-{i + 1}.msgpack")
            log = os.path.join(args.work, f"remote-{i + 1}.log")
            home = os.path.join(args.work, f"hf-home-{i + 1}")
            shutil.rmtree(home, ignore_errors=True)
            hub.reset_log()
            env = {
                "HF_ENDPOINT": hub.endpoint,
                "HF_HOME": home,
                "HF_HUB_DISABLE_TELEMETRY": "1",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            }
            with environ(env):
                run = measure("remote", sanitrace("trace", REPO_ID, "-o", plan, *flags), log)
            requests = hub.requests
            runs["remote"].append(dict(run=run, plan=plan, log=log, sent=hub.bytes_sent, requests=requests))
            shutil.rmtree(home, ignore_errors=True)
            print(
                f"remote run {i + 1}: {run.wall:.1f} s, peak RSS {run.peak_rss / 2**30:.2f} GiB, "
                f"rc {run.returncode}, "
                f"{human_bytes(hub.bytes_sent)} sent in {len(requests)} requests",
                flush=True,
            )

            plan = os.path.join(args.work, f"cache-{i + 1}.msgpack")
            log = os.path.join(args.work, f"cache-{i + 1}.log")
            with environ(dict(env, HF_HOME=cache_home, HF_HUB_OFFLINE="1")):
                run = measure("cache", sanitrace("trace", REPO_ID, "-o", plan, *flags), log)
            runs["cache"].append(dict(run=run, plan=plan, log=log))
            print(
                f"cache  run {i + 1}: {run.wall:.1f} s, rc {run.returncode} (offline, the repo's local copy "
                "in the Hugging Face cache)",
                flush=True,
            )

    report(runs, need, expect)


def cache_snapshot(folder: str, home: str, commit: str) -> None:
    """A Hugging Face cache holding ``folder`` as the repo's snapshot at ``commit``
    (refs/main -> commit, files linked): the local copy `hf download` leaves, for an
    offline trace of the same repo id."""
    repo = os.path.join(home, "hub", "models--" + REPO_ID.replace("/", "--"))
    shutil.rmtree(repo, ignore_errors=True)
    snapshot = os.path.join(repo, "snapshots", commit)
    os.makedirs(snapshot)
    os.makedirs(os.path.join(repo, "refs"))
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(commit)
    for name in os.listdir(folder):
        os.symlink(os.path.abspath(os.path.join(folder, name)), os.path.join(snapshot, name))


def report(runs: Dict[str, list], need: int, expect: Dict[str, int]) -> None:
    """The summary table, the request breakdown and the plan comparison."""
    ok = {side: [r for r in runs[side] if r["run"].returncode == 0] for side in runs}
    for side in runs:
        for r in runs[side]:
            if r["run"].returncode:
                print(f"\n{side} trace failed (rc {r['run'].returncode}), {r['log']}:")
                print("\n".join(printed(r["log"])[-8:]))
    if not ok["local"] or not ok["remote"]:
        return
    remote_plans = {open(r["plan"], "rb").read() for r in ok["remote"] + ok["cache"]}
    print(
        f"\nremote plans byte-identical to the offline traces of the cached copy of {REPO_ID} "
        f"({len(ok['remote'])} + {len(ok['cache'])} runs): {'yes' if len(remote_plans) == 1 and ok['cache'] else 'NO'}"
    )
    best = {side: min(ok[side], key=lambda r: r["run"].wall) for side in ("local", "remote")}
    remote = best["remote"]
    walls = {side: ", ".join(f"{r['run'].wall:.1f}" for r in runs[side]) for side in runs}
    ratio_bytes = remote["sent"] / need
    ratio_wall = remote["run"].wall / best["local"]["run"].wall
    print()
    print("| trace | best wall | all runs (s) | peak RSS | server sent | sent / (headers + small files) | requests |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| local folder | {best['local']['run'].wall:.1f} s | {walls['local']} | "
        f"{best['local']['run'].peak_rss / 2**30:.2f} GiB | - | - | - |"
    )
    print(
        f"| {REPO_ID} | {remote['run'].wall:.1f} s ({ratio_wall:.2f}x local; target <= 2x) | {walls['remote']} | "
        f"{remote['run'].peak_rss / 2**30:.2f} GiB | {human_bytes(remote['sent'])} | {ratio_bytes:.4f}x of "
        f"{human_bytes(need)} (target <= 1.1x) | {len(remote['requests'])} |"
    )

    kinds, volume = Counter(), Counter()
    for r in remote["requests"]:
        kinds[kind(r)] += 1
        volume[kind(r)] += r.nbytes
    statuses = Counter(r.status for r in remote["requests"])
    print(
        "\nrequests of the best remote run: "
        + ", ".join(f"{k} {kinds[k]} ({human_bytes(volume[k])})" for k in sorted(kinds))
        + f"; statuses {dict(statuses)}"
    )
    shard_gets = kinds["GET safetensors range"]
    print(
        f"  {shard_gets / max(expect['shards'], 1):.2f} range GETs per shard; headers "
        f"{human_bytes(expect['headers'])} + small files {human_bytes(expect['small'])} = {human_bytes(need)}"
    )
    print("\nthe remote trace printed:")
    print("\n".join("  " + line for line in printed(remote["log"]) if line.strip()))

    plans = [r["plan"] for side in ("local", "remote") for r in ok[side]]
    data = {p: open(p, "rb").read() for p in plans}
    reference = data[best["local"]["plan"]]
    same = all(d == reference for d in data.values())
    print(f"\nplans byte-identical (all {len(plans)} runs, local and remote): {'yes' if same else 'NO'}")
    if not same:
        groups: Dict[bytes, list] = {}
        for p in plans:
            groups.setdefault(data[p], []).append(f"{os.path.basename(p)} ({len(data[p])} B)")
        print(f"  {len(groups)} distinct plans: " + "; ".join(" = ".join(names) for names in groups.values()))
        diff = subprocess.run(sanitrace("diff", best["local"]["plan"], remote["plan"]), capture_output=True, text=True)
        print(f"sanitrace diff {best['local']['plan']} {remote['plan']} (rc {diff.returncode}):")
        print("\n".join("  " + line for line in (diff.stdout + diff.stderr).splitlines()[:40]))
        cards = {
            side: [f.data for f in plan_ir.load(best[side]["plan"]).files if f.name == "README.md"]
            for side in ("local", "remote")
        }
        if cards["local"] != cards["remote"]:
            for side, card in cards.items():
                print(
                    f"  README.md of the {side} plan: {card[0].decode(errors='replace')!r}"
                    if card
                    else f"  no README.md in the {side} plan"
                )


if __name__ == "__main__":
    main()
