"""Execute a plan: write the MLX model one output group at a time, in bounded memory.

The work is a list of chunks (an output group, whole or a row range). It runs as
a three-stage pipeline so that disk and compute overlap:

  read thread:  pread the sources of chunk i+1 into mlx buffers
  main thread:  build chunk i's lazy graph and mx.eval it (all mlx calls happen here)
  write thread: pwrite chunk i-1 at its offsets, hash it, journal finished groups

The source is a local folder (local_source.py) or a Hub repo streamed in
bounded disk (hub_source.py): the read thread waits for a chunk's files
(``acquire``) and the write thread lets each file go once the last group
reading it is journaled (``release``), in the order schedule.py gives.

This package reads only the plan and the source files; it never imports
mlx-lm or mlx-vlm.
"""

import hashlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Protocol, Tuple, Union

import mlx.core as mx

from .. import plan as plan_ir
from ..hub import RemoteRepo
from ..plan import Output, Plan
from ..plan.checks import call_guard
from ..planner.memory import cache_limit, chunk_rows, plan_baseline
from ..regions import NotChunkable
from .allocator import map_large_buffers
from .hub_source import DiskBudgetError, HubSource
from .local_source import LocalSource
from .progress import progress_bar
from .ray_run import RayError, RayOptions, RayRun
from .ray_run import connect as ray_connect
from .ray_run import run as ray_execute
from .replay import Replayer
from .schedule import Schedule, schedule
from .sources import SourceMismatch, SourceReader, byte_view, fill_all
from .writer import OutputError, OutputExists, OutputWriter


class GuardFailed(ValueError):
    pass


@dataclass
class ExecuteSummary:
    outputs: int
    bytes_written: int  # tensor bytes this run wrote (not those of groups a resumed run skipped)
    groups: int
    chunks: int
    skipped_groups: int
    downloaded: int = 0  # bytes downloaded from the Hub (0 for a local folder)
    source_bytes: int = 0  # bytes of the source files the plan reads
    peak_source_disk: int = 0  # most downloaded source bytes held at once
    source_bytes_read: int = 0  # source tensor bytes this run read (each piece once per chunk needing it)
    source_tensor_bytes: int = 0  # bytes of the source tensors the plan reads, each counted once
    ray: Optional["RayRun"] = None  # what each Ray node did (``ray`` runs only)


@dataclass
class Chunk:
    group: int
    outputs: List[Output]
    region: Optional[tuple]  # (0, start, stop) or None for whole outputs
    last: bool  # last chunk of its group


def _read_ahead(chunk: Chunk, replayer: Replayer, reader: SourceReader, pool: ThreadPoolExecutor, source, files):
    """Allocate the chunk's source buffers (main thread) and start reading them,
    once the source has ``files`` (read thread)."""
    requests = replayer.reads([o.ref for o in chunk.outputs], chunk.region)
    pieces = _prepare(requests, reader)

    def read(pieces: list) -> None:
        source.acquire(files)
        fill_all(pieces)

    return pieces, requests, pool.submit(read, list(pieces.values()))


def _prepare(requests: dict, reader: SourceReader) -> dict:
    """Empty buffers for the source pieces in ``requests``, ready to be filled."""
    pieces = {key: reader.prepare(*key) for key in requests}
    mx.eval([p.buffer for p in pieces.values()])
    for p in pieces.values():
        p.view = byte_view(p.buffer)
    return pieces


def _host_layout(array: mx.array) -> mx.array:
    """The array as contiguous bytes the writer can take (bfloat16 as uint16)."""
    array = mx.contiguous(array)
    return array.view(mx.uint16) if array.dtype == mx.bfloat16 else array


class PieceWriter(Protocol):
    """Where the sink puts pieces: OutputWriter locally, a task's shards on Ray."""

    def write(self, out: Output, row_start: int, data: memoryview) -> None: ...

    def group_done(self, group_index: int, sums: Dict[str, str]) -> None: ...


class _Sink:
    """Write-thread side: pwrite pieces, hash each output, journal finished groups,
    then ``group_written(group)`` (the source lets go of what only it read: a
    resumed run never needs a source file again for a journaled group)."""

    def __init__(self, writer: PieceWriter, bar, group_written: Callable[[int], None]):
        self.writer = writer
        self.bar = bar
        self.group_written = group_written
        self.hashes: Dict[str, "hashlib._Hash"] = {}

    def put(self, chunk: Chunk, views: List[memoryview]) -> None:
        start = chunk.region[1] if chunk.region else 0
        for out, view in zip(chunk.outputs, views):
            self.writer.write(out, start, view)
            self.hashes.setdefault(out.name, hashlib.sha256()).update(view)
            self.bar.update(len(view))
        if chunk.last:
            sums = {o.name: self.hashes.pop(o.name).hexdigest() for o in chunk.outputs}
            self.writer.group_done(chunk.group, sums)
            self.group_written(chunk.group)


def _check_guards(plan: Plan, replayer: Replayer, reader: SourceReader, source, order: Schedule) -> None:
    source.acquire(order.guard_files)
    for guard in plan.guards:
        pieces = _prepare(replayer.reads([guard.ref], None), reader)
        fill_all(list(pieces.values()))
        replayer.sources = {k: p.array() for k, p in pieces.items()}
        call = f"{guard.method}({', '.join(map(repr, guard.args))})"
        try:
            value = call_guard(replayer.value(guard.ref, None), guard.method, guard.args)
        except (TypeError, ValueError) as e:
            raise plan_ir.PlanError(f"a guard's {call} fails: {str(e)[:200]}") from None
        replayer.clear()
        if hasattr(value, "tolist"):
            value = value.tolist()
        if not same_value(value, guard.value):
            raise GuardFailed(
                f"sanitize read a value ({call}) that differs from the one "
                f"seen at trace time: {value!r:.200} != {guard.value!r:.200}; re-trace on this data"
            )


def same_value(a, b) -> bool:
    """Guard values equal, NaN equal to NaN (also inside a ``tolist()``)."""
    if a == b:
        return True
    if isinstance(a, float) and isinstance(b, float):
        return a != a and b != b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(same_value, a, b))
    return False


def plan_chunks(
    plan: Plan, budget: int, baseline: int, writer: OutputWriter, source
) -> Tuple[List[Chunk], int, Schedule]:
    """The chunks still to do, how many groups are already done, and the source
    schedule, in whose order the chunks go: output-file order, or for a streaming
    source each source file fetched once, held briefly."""
    outputs = plan.outputs
    groups = plan.groups
    by_offset = sorted(
        range(len(groups)),
        key=lambda g: min((outputs[i].file, outputs[i].offset) for i in groups[g].outputs),
    )
    todo = [g for g in by_offset if not writer.verified_done(g, [outputs[i] for i in groups[g].outputs])]
    # one order for the chunks and for closing each file after its last reader (_release)
    order = schedule(plan, todo, source.sizes, source.streams)
    chunks = [c for g in order.groups for c in group_chunks(plan, g, budget, baseline)]
    return chunks, len(groups) - len(todo), order


def group_chunks(plan: Plan, g: int, budget: int, baseline: int) -> List[Chunk]:
    """Output group ``g`` as chunks under ``budget`` (whole, or row ranges)."""
    group = plan.groups[g]
    members = [plan.outputs[i] for i in group.outputs]
    rows = chunk_rows(group, budget, baseline)
    if not rows:
        return [Chunk(g, members, None, True)]
    return [
        Chunk(g, members, (0, start, min(start + rows, group.rows)), start + rows >= group.rows)
        for start in range(0, group.rows, rows)
    ]


def execute(
    plan: Plan,
    source: Union[str, RemoteRepo],
    out_dir: str,
    memory_budget: Optional[int] = None,
    resume: bool = False,
    progress: bool = True,
    digest: Optional[str] = None,
    disk_budget: Optional[int] = None,
    library_loaded: bool = False,
    ray: Optional["RayOptions"] = None,
) -> ExecuteSummary:
    """Write the plan's output into ``out_dir`` (via ``out_dir.partial``).

    Args:
        plan: a loaded (validated) or freshly built plan.
        source: the model folder the plan was traced from, or the Hub repo
            (``hub.open_repo``) to stream it from; checked first.
        out_dir: the output folder; must not exist.
        memory_budget: bytes to stay under (default: the plan's budget).
        resume: continue an interrupted run in ``out_dir.partial``.
        progress: show progress bars on stderr.
        digest: when given, refuse a plan whose digest is not this hex string.
        disk_budget: a Hub source's downloaded bytes to hold at once (default:
            its two largest files, or more when a group needs more at once).
        library_loaded: this process also traced the plan (``convert``): the
            library's imports count against the budget (planner.memory).
        ray: run the output groups as Ray tasks (ray_run.py); ``out_dir`` and a
            source folder must be paths every Ray node sees (a Hub repo is
            staged in ``out_dir.partial``).

    Returns:
        An ExecuteSummary.
    """
    if digest is not None and digest.lower() != plan.digest:
        raise plan_ir.PlanError(f"plan digest {plan.digest} is not the approved {digest}")
    # Ray first: an unreachable cluster fails before anything is created
    connected = ray_connect(ray) if ray is not None else None
    try:
        return _execute(
            plan, source, out_dir, memory_budget, resume, progress, disk_budget, library_loaded, ray, connected
        )
    finally:
        if connected is not None and connected[1]:
            connected[0].shutdown()


def _execute(
    plan: Plan,
    source: Union[str, RemoteRepo],
    out_dir: str,
    memory_budget: Optional[int],
    resume: bool,
    progress: bool,
    disk_budget: Optional[int],
    library_loaded: bool,
    ray: Optional["RayOptions"],
    connected,
) -> ExecuteSummary:
    """``execute`` after its digest check; ``connected``: (the ray module, this
    run started it) when ``ray``."""
    budget = memory_budget or plan.memory.budget
    map_large_buffers()  # what mlx frees leaves the process, as the memory model assumes
    if isinstance(source, RemoteRepo):
        # on Ray every file is staged in OUT.partial, which every node sees
        src: Union[HubSource, LocalSource] = HubSource(
            plan, source, out_dir, disk_budget, progress, read_cache=ray is None
        )
    else:
        src = LocalSource(plan, source)
    src.check()
    replayer = Replayer(plan.nodes, [o.ref for o in plan.outputs] + [g.ref for g in plan.guards])
    check_chunk_units(plan, replayer)
    writer = OutputWriter(plan, src, out_dir, resume)
    reader = SourceReader(plan, src.paths)
    total = plan.output_bytes
    written = 0
    finished = False
    bar = None
    ray_run: Optional[RayRun] = None
    # on Ray the chunks are computed in worker processes (which never hold the library)
    baseline = plan_baseline(plan, library_loaded and ray is None, ray_worker=ray is not None)
    previous_cache_limit = mx.set_cache_limit(cache_limit(budget, baseline))
    try:
        chunks, skipped, order = plan_chunks(plan, budget, baseline, writer, src)
        if src.streams:
            src.start(order)
        bar = progress_bar(total, "execute", 1 if src.streams else 0, progress)
        _check_guards(plan, replayer, reader, src, order)
        _release(src, reader, order, -1)
        written = sum(o.nbytes for c in chunks if c.last for o in c.outputs)  # resumed groups are not redone
        bar.update(total - written)
        if ray is not None:
            ray_run = ray_execute(connected[0], plan, order, writer, src, bar, budget, baseline)
        else:
            position = {g: p for p, g in enumerate(order.groups)}
            sink = _Sink(writer, bar, lambda g: _release(src, reader, order, position[g]))
            run_chunks(chunks, order, replayer, reader, src, sink)
        reader.close()
        src.close(finished=True)
        finished = True
        writer.finish()
    finally:
        mx.set_cache_limit(previous_cache_limit)
        if bar is not None:
            bar.close()
        reader.close()
        if not finished:
            src.close(finished=False)
        writer.close()
    return ExecuteSummary(
        len(plan.outputs),
        written,
        len(plan.groups),
        len(chunks),
        skipped,
        src.downloaded,
        src.source_bytes,
        src.peak_held,
        reader.bytes_read + (sum(n.source_bytes_read for n in ray_run.nodes) if ray_run else 0),
        _loaded_bytes(plan),
        ray_run,
    )


def _loaded_bytes(plan: Plan) -> int:
    """Bytes of the source tensors the plan's graph loads, each once."""
    loaded = {node.args[0] for node in plan.nodes if node.op == "load"}
    return sum(plan.source.tensors[i].end - plan.source.tensors[i].begin for i in loaded)


def run_chunks(chunks: List[Chunk], order: Schedule, replayer: Replayer, reader: SourceReader, source, sink) -> None:
    """Compute ``chunks`` and hand each to ``sink``, reading and writing in threads beside."""
    with ThreadPoolExecutor(1) as reads, ThreadPoolExecutor(1) as writes:
        try:
            _pipeline(chunks, order, replayer, reader, source, sink, reads, writes)
        except BaseException:
            source.stop()  # a read waiting for a download returns, so the pools can shut down
            raise


def _pipeline(
    chunks: List[Chunk],
    order: Schedule,
    replayer: Replayer,
    reader: SourceReader,
    source,
    sink: "_Sink",
    reads: ThreadPoolExecutor,
    writes: ThreadPoolExecutor,
) -> None:
    """Read chunk i+1, compute chunk i and write chunk i-1 at once (module docstring)."""
    pending: Optional[Future] = None
    ahead = _read_ahead(chunks[0], replayer, reader, reads, source, order.reads[chunks[0].group]) if chunks else None
    for i, chunk in enumerate(chunks):
        assert ahead is not None  # read ahead for every chunk
        pieces, requests, filled = ahead
        filled.result()
        if i + 1 < len(chunks):
            ahead = _read_ahead(chunks[i + 1], replayer, reader, reads, source, order.reads[chunks[i + 1].group])
        replayer.sources = {key: p.array() for key, p in pieces.items()}
        replayer.requests = requests
        del pieces
        arrays = [replayer.value(o.ref, chunk.region) for o in chunk.outputs]
        replayer.clear()
        for out, array in zip(chunk.outputs, arrays):
            _check_piece(out, array, chunk.region)
        arrays = [_host_layout(a) for a in arrays]
        mx.eval(arrays)
        views = [byte_view(a) for a in arrays]
        del arrays
        if pending is not None:
            pending.result()
        pending = writes.submit(sink.put, chunk, views)
        del views
    if pending is not None:
        pending.result()


def _release(source, reader: SourceReader, order: Schedule, position: int) -> None:
    """Let go of the source files whose last reader is at ``position`` (-1: the guards)."""
    done = [f for f, last in order.last_use.items() if last == position]
    for f in done:
        reader.forget(f)
    source.release(done)


def check_chunk_units(plan: Plan, replayer: Replayer) -> None:
    """Each chunked group's unit is a multiple of what its ops' chunk rules need
    (derived from the graph, not taken from the plan)."""
    for group in plan.groups:
        if not group.unit:
            continue
        for i in group.outputs:
            try:
                needed = replayer.rules.granularity(plan.outputs[i].ref, 0)
            except NotChunkable:
                needed = 0
            if not needed or group.unit % needed:
                raise plan_ir.PlanError(
                    f"output {plan.outputs[i].name!r}: chunk unit {group.unit} does not fit its ops "
                    f"(they need multiples of {needed or 'the whole tensor'})"
                )


def _check_piece(out: Output, array: mx.array, region) -> None:
    shape = list(out.shape)
    if region is not None:
        shape[0] = region[2] - region[1]
    if list(array.shape) != shape or plan_ir.dtype_name(array.dtype) != out.dtype:
        raise plan_ir.PlanError(  # nothing of this piece is written; the run stays resumable
            f"replay of {out.name} gave {array.dtype}{list(array.shape)}, the plan says {out.dtype}{shape}"
        )


__all__ = [
    "execute",
    "ExecuteSummary",
    "SourceMismatch",
    "OutputExists",
    "OutputError",
    "GuardFailed",
    "DiskBudgetError",
    "RayError",
    "RayOptions",
]
