"""Source-file lifetimes: which source files each output group reads, an order
of groups that holds few of them at once, and the disk that order needs.

A streaming source (the Hub) fetches each file whole before its first reader
and deletes it after its last one, so the local source bytes at any moment are
the files between those two points. Groups are ordered by the last file they
read (files are fetched in name order, as checkpoints are written layer by
layer), so a group whose tensors straddle two shards (split experts) runs as
soon as its second shard is there, and no file is ever fetched twice.
"""

import dataclasses
from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Sequence

from ..plan import Plan, Ref


@dataclass(frozen=True)
class Schedule:
    groups: List[int]  # group indices in execution order
    reads: Dict[int, FrozenSet[int]]  # group -> the source files it reads
    fetch: List[int]  # source file indices in the order they are first read (guards' first)
    guard_files: FrozenSet[int]  # files the guards read, before any group
    first_use: Dict[int, int]  # file -> position in ``groups`` of its first reader (-1: a guard)
    last_use: Dict[int, int]  # file -> position in ``groups`` of its last reader (-1: guards only)
    peak: int  # largest sum of ``sizes`` held at once, fetching nothing ahead (held_peak)


def files_read(plan: Plan, roots: Sequence[Ref]) -> FrozenSet[int]:
    """Indices of the source files the values ``roots`` read (derived from the graph)."""
    nodes, tensors = plan.nodes, plan.source.tensors
    files, seen, stack = set(), set(), [r.node for r in roots]
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        node = nodes[i]
        if node.op == "load":
            files.add(tensors[node.args[0]].file)
        stack.extend(r.node for r in node.inputs)
    return frozenset(files)


def schedule(plan: Plan, todo: Sequence[int], sizes: Dict[int, int], streams: bool = True) -> Schedule:
    """The order the groups ``todo`` (indices into plan.groups) run in, each file's
    first and last reader in that order, and the peak of source bytes held.
    ``streams``: order them for streaming (each file fetched once, held briefly);
    else keep ``todo``'s order (a folder read in place). ``sizes`` is what holding
    each file costs (0 for a file read in place, e.g. from the local cache)."""
    reads = {g: files_read(plan, [plan.outputs[i].ref for i in plan.groups[g].outputs]) for g in todo}
    guards = files_read(plan, [g.ref for g in plan.guards])
    groups = list(todo)
    if streams:  # a group that reads nothing (constants only) goes first; ties keep output order
        groups.sort(key=lambda g: (max(reads[g], default=-1), min(reads[g], default=-1)))
    first_use: Dict[int, int] = {f: -1 for f in guards}
    last_use: Dict[int, int] = {f: -1 for f in guards}
    fetch = sorted(guards)
    for position, g in enumerate(groups):
        for f in sorted(reads[g]):
            if f not in first_use:
                first_use[f] = position
                fetch.append(f)
            last_use[f] = position
    unpriced = Schedule(groups, reads, fetch, guards, first_use, last_use, 0)
    return dataclasses.replace(unpriced, peak=held_peak(unpriced, sizes))


def held_peak(order: Schedule, sizes: Dict[int, int], early: FrozenSet[int] = frozenset()) -> int:
    """The most bytes of ``sizes`` held at once when each file is held from its
    first reader to its last, and the files ``early`` from the start (a resumed
    run's downloads) to their last reader."""
    releases: Dict[int, List[int]] = {}
    for f, position in order.last_use.items():
        releases.setdefault(position, []).append(f)
    alive = set(order.guard_files) | set(early)
    held = sum(sizes.get(f, 0) for f in alive)
    peak = held
    for f in releases.get(-1, []):
        if f in alive:
            alive.discard(f)
            held -= sizes.get(f, 0)
    for position, g in enumerate(order.groups):
        for f in order.reads[g] - alive:
            alive.add(f)
            held += sizes.get(f, 0)
        peak = max(peak, held)
        for f in releases.get(position, []):
            alive.discard(f)
            held -= sizes.get(f, 0)
    return peak
