"""A Hugging Face Hub repo as the executor's source, streamed in bounded disk.

Each safetensors file the plan reads is downloaded whole (one request, resumed
by Range after a dropped connection; bench/source_coverage.py measures why
whole files: the Hub's sha256 covers whole files only, and plans read nearly
every byte of every file), in the order the groups first need them, into
``OUT.partial/.sanitrace-source/``. It is deleted as soon as no remaining
group reads it. Downloads run ahead on their own thread while the source
bytes held stay within the disk budget (downloading and held files both
count). Files already in the local huggingface_hub cache are read in place,
count nothing and are never deleted.

Before anything is created, each remote file's size and header hash are
checked against the plan (by Range: a few KB per file). A downloaded file is
used only after its length, its Hub sha256 and its header (against the plan's
source table) are verified.
"""

import fnmatch
import hashlib
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, List, Optional, Tuple

from .. import hub, hub_download
from ..collapse import human_bytes
from ..plan import Plan
from ..plan.checks import check_name
from .copies import made_file
from .progress import progress_bar
from .schedule import Schedule, held_peak, schedule
from .sources import SourceMismatch, planned_tables, verify_file

# what mlx_vlm's download takes from a repo (utils.get_model_path): its convert then
# copies every sub-folder of that snapshot, so these are the sub-folder files it copies
VLM_DOWNLOAD_PATTERNS = ("*.json", "*.jsonl", "*.safetensors", "*.py", "*.model", "*.tiktoken", "*.txt", "*.jinja")

STAGING = ".sanitrace-source"


class DiskBudgetError(ValueError):
    """The disk budget is smaller than the source bytes the plan must hold at once."""


class _Stopped(Exception):
    pass


@dataclass
class DiskNeeds:
    cached: Dict[int, str]  # source file -> its path in the local huggingface_hub cache
    sizes: Dict[int, int]  # source file -> bytes to download (files read and not cached)
    budget: int  # the disk budget: as given, or the default
    peak: int  # the least disk budget the plan's schedule can meet


def disk_needs(
    plan: Plan,
    repo: hub.RemoteRepo,
    disk_budget: Optional[int] = None,
    cache_dir: Optional[str] = None,
    read_cache: bool = True,
) -> DiskNeeds:
    """What streaming ``plan``'s sources from ``repo`` downloads and holds. The
    default budget is the two largest downloads (one in use, the next
    arriving), or the schedule's peak when a group must hold more at once.
    ``read_cache``: files in the local huggingface_hub cache are read there
    (not on Ray, whose other hosts do not see this one's cache).
    SourceMismatch when the repo lacks a file the plan reads or has it shorter."""
    for f in plan.source.files:
        remote = repo.files.get(f.name)
        if remote is None:
            raise SourceMismatch(f"{repo.label}: {f.name}: missing (the plan reads it)")
        if remote.size < f.size:
            raise SourceMismatch(f"{repo.label}: {f.name}: {remote.size} bytes, its header needs {f.size}")
    cached: Dict[int, str] = {}
    for i, f in enumerate(plan.source.files):
        path = hub_download.cached_file(repo, f.name, cache_dir) if read_cache else None
        if path is not None:
            cached[i] = path
    sizes = {i: repo.files[f.name].size for i, f in enumerate(plan.source.files) if i not in cached}
    whole = schedule(plan, range(len(plan.groups)), sizes)
    sizes = {i: size for i, size in sizes.items() if i in whole.first_use}  # files no group reads: never
    default = max(sum(sorted(sizes.values(), reverse=True)[:2]), whole.peak)
    return DiskNeeds(cached, sizes, disk_budget or default, whole.peak)


class HubSource:
    """The plan's source files from ``repo`` (pinned at its commit); see the module
    docstring. Same interface as local_source.LocalSource."""

    streams = True
    identity_fields = ("size", "commit", "sha256")

    def __init__(
        self,
        plan: Plan,
        repo: hub.RemoteRepo,
        out_dir: str,
        disk_budget: Optional[int],
        progress: bool = True,
        cache_dir: Optional[str] = None,
        read_cache: bool = True,
    ):
        self.plan = plan
        self.repo = repo
        self.cache_dir = cache_dir
        self.folder = os.path.join(os.path.abspath(out_dir) + ".partial", STAGING)
        self.progress = progress
        needs = disk_needs(plan, repo, disk_budget, cache_dir, read_cache)
        if needs.peak > needs.budget:
            raise DiskBudgetError(
                f"--disk-budget {human_bytes(needs.budget)} is too small: some output groups read "
                f"several shards that must be held at once; the smallest disk budget for this plan is "
                f"{human_bytes(needs.peak)}"
            )
        self.cached = needs.cached
        self._tables = planned_tables(plan)
        self.sizes = needs.sizes
        self.disk_budget = needs.budget
        self.paths = [self.cached.get(i) or os.path.join(self.folder, f.name) for i, f in enumerate(plan.source.files)]
        self.space_needed = min(self.disk_budget, sum(self.sizes.values()))
        self.source_bytes = sum(repo.files[f.name].size for f in plan.source.files)
        self.downloaded = 0
        self.peak_held = 0
        self._copy_paths: Dict[str, str] = {}
        self._sub_files: List[Tuple[str, int]] = []
        self._cond = threading.Condition()
        self._present: set = set()
        self._held = 0
        self._error: Optional[BaseException] = None
        self._stop = False
        self._thread: Optional[threading.Thread] = None
        self._bar: Optional[Any] = None  # the download's progress bar, made by start()

    # -- before anything is created

    def check(self) -> None:
        """Each remote file's header is the plan's (cached files: the whole local
        check); the small files the output copies are fetched into the cache."""
        files = self.plan.source.files

        def check_one(i: int) -> None:
            if i in self.cached:
                verify_file(self.plan, i, self.cached[i], self._tables[i])
                return
            header = hub.read_header_bytes(self.repo, files[i].name)
            if hashlib.sha256(header[8:]).hexdigest() != files[i].header_sha256:
                raise SourceMismatch(
                    f"{self.repo.label}: {files[i].name}: header differs from the one the plan was traced from"
                )

        with ThreadPoolExecutor(8) as pool:
            for result in [pool.submit(check_one, i) for i in range(len(files))]:
                result.result()
        self._fetch_copies()

    def _fetch_copies(self) -> None:
        """The repo files the plan makes output files from, fetched into the
        huggingface_hub cache and checked against the plan; for mlx_vlm, also the
        sub-folder files its download takes (its convert copies the sub-folders)."""
        for f in self.plan.files:
            if f.kind != "source" or f.base in self._copy_paths:
                continue
            if f.base not in self.repo.files:
                raise SourceMismatch(f"{self.repo.label}: has no {f.base}, which the output's {f.name} is made from")
            self._copy_paths[f.base] = hub.download_small(self.repo, f.base, self.cache_dir)
            made_file(f, self._copy_paths[f.base])
        if self.plan.copy_subdirectories:
            for name in sorted(self.repo.files):
                if "/" in name and any(fnmatch.fnmatch(name, p) for p in VLM_DOWNLOAD_PATTERNS):
                    check_name(name, f"{self.repo.label}: file")
                    self._copy_paths[name] = hub.download_small(self.repo, name, self.cache_dir)
                    self._sub_files.append((name, self.repo.files[name].size))

    def identity(self) -> Dict[str, list]:
        """[size, commit, sha256] of each source file: a moved revision is a change."""
        ids = {}
        for f in self.plan.source.files:
            remote = self.repo.files[f.name]
            ids[f.name] = [remote.size, self.repo.commit, remote.sha256 or ""]
        return ids

    def resume_hint(self, recorded: Dict[str, list]) -> str:
        commits = sorted({v[1] for v in recorded.values() if len(v) == 3 and isinstance(v[1], str)})
        if len(commits) == 1 and commits[0] != self.repo.commit:
            return (
                f" ({self.repo.label} now resolves to commit {self.repo.commit[:12]}; the interrupted run "
                f"read {commits[0][:12]}: --source {self.repo.repo_id}@{commits[0]} finishes it)"
            )
        return ""

    def copies(self) -> Tuple[List[str], List[Tuple[str, int]]]:
        dirs = {"/".join(name.split("/")[:i]) for name, _ in self._sub_files for i in range(1, name.count("/") + 1)}
        return sorted(dirs), list(self._sub_files)

    def copy_path(self, rel: str) -> str:
        return self._copy_paths[rel]

    # -- while executing

    def start(self, order: Schedule) -> None:
        """Download, on a thread, the files ``order`` reads, in its fetch order,
        within the disk budget. A staged file left by an interrupted run is
        kept when still needed (whole, or continued from where it stopped)."""
        needed = [f for f in order.fetch if f not in self.cached]
        self._forget_stale(needed)
        staged = {f for f in needed if self._staged_bytes(f)}
        # kept while the schedule, holding them from the start, fits the budget;
        # else the one needed last goes (the download thread never waits for
        # room that only a later group would free)
        while staged and held_peak(order, self.sizes, frozenset(staged)) > self.disk_budget:
            dropped = max(staged, key=lambda f: order.first_use[f])
            staged.discard(dropped)
            self._unstage(dropped)
        with self._cond:
            self._held = sum(self.sizes[f] for f in staged)
            self.peak_held = self._held
        left = sum(self.sizes[f] for f in needed) - sum(self._staged_bytes(f) for f in staged)
        self._bar = progress_bar(left, "download", 0, self.progress)
        self._thread = threading.Thread(
            target=self._run, args=(needed, set(staged)), daemon=True, name="sanitrace-download"
        )
        self._thread.start()

    def acquire(self, files: FrozenSet[int]) -> None:
        """Block until each of ``files`` is local and verified; re-raise a failed download."""
        with self._cond:
            while True:
                if self._stop:
                    raise _Stopped("the run is stopping")
                if self._error is not None:
                    raise self._error
                if all(f in self.cached or f in self._present for f in files):
                    return
                self._cond.wait()

    def ready(self, files: FrozenSet[int]) -> bool:
        """Whether each of ``files`` is local and verified now (``acquire`` without waiting)."""
        with self._cond:
            if self._error is not None:
                raise self._error
            return all(f in self.cached or f in self._present for f in files)

    def release(self, files) -> None:
        """Delete downloaded ``files`` (no remaining group reads them)."""
        for f in files:
            if f in self.cached:
                continue
            with self._cond:
                if f not in self._present:
                    continue
                self._present.discard(f)
            os.unlink(self.paths[f])
            with self._cond:
                self._held -= self.sizes[f]
                self._cond.notify_all()

    def stop(self) -> None:
        """Stop downloading; a waiting ``acquire`` returns (raising)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()

    def close(self, finished: bool) -> None:
        """Stop downloading; on success remove the staging folder (before the
        output folder is renamed into place). A download stuck in the network
        is left to its daemon thread."""
        self.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._bar is not None:
            self._bar.close()
        if finished:
            shutil.rmtree(self.folder, ignore_errors=True)

    # -- the download thread

    def _run(self, needed: List[int], staged: set) -> None:
        try:
            for f in needed:
                name, size = self.plan.source.files[f].name, self.sizes[f]
                with self._cond:
                    while f not in staged and self._held + size > self.disk_budget and not self._stop:
                        self._cond.wait()
                    if self._stop:
                        return
                    if f not in staged:
                        self._held += size
                        self.peak_held = max(self.peak_held, self._held)
                if not os.path.isfile(self.paths[f]):
                    os.makedirs(os.path.dirname(self.paths[f]), exist_ok=True)
                    hub_download.download_file(self.repo, name, self.paths[f], on_bytes=self._on_bytes)
                try:
                    verify_file(self.plan, f, self.paths[f], self._tables[f])
                except SourceMismatch:
                    os.unlink(self.paths[f])  # the Hub's bytes are not the plan's: never reused
                    raise
                with self._cond:
                    self._present.add(f)
                    self._cond.notify_all()
        except _Stopped:
            return
        except BaseException as e:  # noqa: BLE001  handed to the main thread by acquire()
            with self._cond:
                self._error = e
                self._cond.notify_all()

    def _on_bytes(self, n: int) -> None:
        if self._stop:
            raise _Stopped()
        assert self._bar is not None  # start() makes the bar before the download thread
        self.downloaded += n
        self._bar.update(n)

    def _staged_bytes(self, f: int) -> int:
        """Bytes of file ``f`` already staged: whole, or an interrupted download."""
        for path in (self.paths[f], self.paths[f] + ".incomplete"):
            if os.path.isfile(path):
                return os.path.getsize(path)
        return 0

    def _unstage(self, f: int) -> None:
        """Delete what is staged of file ``f`` (whole or partial)."""
        for path in (self.paths[f], self.paths[f] + ".incomplete"):
            if os.path.isfile(path):
                os.unlink(path)

    def _forget_stale(self, needed: List[int]) -> None:
        """Delete staged files (whole or partial) no remaining group reads."""
        keep = {self.paths[f] for f in needed} | {self.paths[f] + ".incomplete" for f in needed}
        for root, _, names in os.walk(self.folder):
            for name in names:
                path = os.path.join(root, name)
                if path not in keep:
                    os.unlink(path)
