"""Hugging Face Hub sources: a repo's files at one commit, and byte ranges of them.

Everything goes through ``huggingface_hub`` (its auth via ``HF_TOKEN``, its
endpoint via ``HF_ENDPOINT``, its cache for small files, its retries with
backoff on 429 / 5xx / dropped connections). A permanent failure (a gated or
missing repo, a missing revision or file) is a HubError: one line naming it.

``fetch_headers`` writes what a trace reads into a folder: every safetensors
file as its exact header bytes in a sparse file of the real size, and the
small files the libraries read. Weight bytes are never requested.

``download_file`` fetches one whole file for execution: streamed, resumed from
what a killed or dropped run left, retried, and checked against the Hub's size
and sha256 before it takes its final name.
"""

import contextlib
import hashlib
import os
import re
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Callable, Dict, List, Optional, Tuple, TypeVar

from .safetensors_format import SafetensorsError

# the small files the libraries download besides weights (mlx_lm's download patterns);
# a trace reads them, and the output copies or re-saves some (tokenizer, *.py)
SMALL_FILE_PATTERN = re.compile(r"[^/]+\.(json|jsonl|jinja|txt|model|tiktoken|py)")
MAX_SMALL_FILE_BYTES = 64 << 20
MAX_HEADER_BYTES = 100 << 20  # as safetensors itself
HEADER_THREADS = 8  # safetensors headers read at once by fetch_headers
DOWNLOAD_WRITE_BYTES = 4 << 20  # download_file writes (and reports) this much at a time
RETRY_FIRST_WAIT, RETRY_MAX_WAIT = 0.5, 8.0  # seconds; doubling in between, Retry-After capped too
RETRY_ATTEMPTS = 8  # tries of a call that makes no partial progress (model_info, a small file)
T = TypeVar("T")
REPO_SPEC = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?")


class HubError(Exception):
    """One line: a repo, revision or file the Hub refuses or does not have."""


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    sha256: Optional[str]  # the LFS sha256 the Hub gives for large files


@dataclass(frozen=True)
class RemoteRepo:
    repo_id: str
    revision: Optional[str]  # as asked (None: the default branch)
    commit: str  # the commit sha it resolved to: every read is pinned to it
    files: Dict[str, RemoteFile]
    endpoint: Optional[str] = None  # None: huggingface_hub's (HF_ENDPOINT)

    @property
    def label(self) -> str:
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id


def parse_repo_spec(spec: str) -> Optional[Tuple[str, Optional[str]]]:
    """``org/name[@revision]`` -> (repo id, revision), or None when ``spec`` is not one."""
    match = REPO_SPEC.fullmatch(spec)
    return (match["repo"], match["revision"]) if match else None


def open_repo(repo_id: str, revision: Optional[str] = None, endpoint: Optional[str] = None) -> RemoteRepo:
    """The repo's files (sizes, LFS sha256) at the commit ``revision`` resolves to."""
    from huggingface_hub import HfApi

    label = f"{repo_id}@{revision}" if revision else repo_id
    info = _retrying(label, lambda: HfApi(endpoint=endpoint).model_info(repo_id, revision=revision,
                                                                       files_metadata=True))
    files = {}
    for sibling in info.siblings or []:
        lfs = sibling.lfs
        files[sibling.rfilename] = RemoteFile(sibling.rfilename, int(sibling.size or 0), lfs.sha256 if lfs else None)
    return RemoteRepo(repo_id, revision, info.sha, files, endpoint)


def read_range(repo: RemoteRepo, name: str, start: int, stop: int) -> bytes:
    """Bytes ``start:stop`` of file ``name`` at the repo's commit (retried as
    huggingface_hub retries); HubError when the Hub gives anything else."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, http_backoff

    if not 0 <= start < stop <= repo.files[name].size:
        raise HubError(f"{repo.label}: {name}: bytes {start}:{stop} are outside its {repo.files[name].size}")
    url = hf_hub_url(repo.repo_id, name, revision=repo.commit, endpoint=repo.endpoint)
    headers = build_hf_headers()
    headers["Range"] = f"bytes={start}-{stop - 1}"
    headers["Accept-Encoding"] = "identity"
    with hub_errors(f"{repo.label}: {name}"):
        response = http_backoff("GET", url, headers=headers, follow_redirects=True)
        hf_raise_for_status(response)
    data = response.content
    if response.status_code != 206 or len(data) != stop - start:
        raise HubError(f"{repo.label}: {name}: asked for bytes {start}:{stop}, got status "
                       f"{response.status_code} with {len(data)} bytes")
    return data


def read_header_bytes(repo: RemoteRepo, name: str) -> bytes:
    """The 8-byte length and the JSON header of a remote safetensors file, exactly."""
    size = repo.files[name].size
    if size < 8:
        raise SafetensorsError(f"{repo.label}: {name}: {size} bytes, too short for a safetensors file")
    prefix = read_range(repo, name, 0, 8)
    (length,) = struct.unpack("<Q", prefix)
    if length > MAX_HEADER_BYTES or 8 + length > size:
        raise SafetensorsError(f"{repo.label}: {name}: header length {length} does not fit its {size} bytes")
    return prefix + (read_range(repo, name, 8, 8 + length) if length else b"")


def fetch_headers(repo: RemoteRepo, folder: str, cache_dir: Optional[str] = None) -> None:
    """Write into ``folder`` what a trace of ``repo`` reads: each safetensors file
    as its header bytes in a sparse file of its real size (HEADER_THREADS at once;
    the first failure in name order is raised), and the small files (through
    huggingface_hub's cache). Names are checked to stay inside ``folder``."""
    from .plan.checks import check_name

    weights = sorted(name for name in repo.files if name.endswith(".safetensors"))
    small = small_files(repo)
    for name in weights + small:
        check_name(name, f"{repo.label}: file")
        os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)

    def write_header(name: str) -> None:
        header = read_header_bytes(repo, name)
        with open(os.path.join(folder, name), "wb") as out:
            out.write(header)
            out.truncate(repo.files[name].size)

    with ThreadPoolExecutor(HEADER_THREADS) as pool:
        list(pool.map(write_header, weights))
    for name in small:
        with open(download_small(repo, name, cache_dir), "rb") as src, open(os.path.join(folder, name), "wb") as out:
            out.write(src.read())


def small_files(repo: RemoteRepo) -> List[str]:
    """The repo's small top-level files the libraries download besides weights
    (config, tokenizer, chat template, *.py, ...), in name order."""
    return sorted(name for name, remote in repo.files.items()
                  if SMALL_FILE_PATTERN.fullmatch(name) and remote.size <= MAX_SMALL_FILE_BYTES)


def download_small(repo: RemoteRepo, name: str, cache_dir: Optional[str] = None) -> str:
    """A small file of the repo at its commit, through huggingface_hub's cache
    (hf_hub_download, retried on transient errors); its path in the cache."""
    from huggingface_hub import hf_hub_download

    return _retrying(f"{repo.label}: {name}", lambda: hf_hub_download(
        repo.repo_id, name, revision=repo.commit, endpoint=repo.endpoint, cache_dir=cache_dir))


def snapshot_folder(repo_id: str, revision: Optional[str] = None, cache_dir: Optional[str] = None) -> str:
    """The repo's snapshot folder in the local huggingface_hub cache, without the
    network (offline mode: HF_HUB_OFFLINE=1); HubError when it is not cached."""
    from huggingface_hub import snapshot_download

    label = f"{repo_id}@{revision}" if revision else repo_id
    with hub_errors(f"{label} (offline: the local cache)"):
        return snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True)


def cached_file(repo: RemoteRepo, name: str, cache_dir: Optional[str] = None) -> Optional[str]:
    """The path of ``name`` at ``repo.commit`` in the local huggingface_hub cache, or None
    (also when the cached file does not have the size the Hub gives)."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo.repo_id, name, cache_dir=cache_dir, revision=repo.commit)
    if not isinstance(path, str) or name not in repo.files:
        return None
    try:
        size = os.path.getsize(path)
    except OSError:
        return None
    return path if size == repo.files[name].size else None


def download_file(repo: RemoteRepo, name: str, dest: str, on_bytes: Optional[Callable[[int], None]] = None,
                  attempts: int = 10) -> None:
    """Download ``name`` at the repo's commit to ``dest``, streamed into ``dest + ".incomplete"``
    (continued from the bytes already there), retried with backoff on dropped connections,
    timeouts, 429 and 5xx until ``attempts`` failures in a row make no progress, checked
    against the Hub's size and sha256, fsynced, then renamed. ``on_bytes(n)`` gets the size
    of each write. Anything else is a one-line HubError; a corrupted download is deleted."""
    what = f"{repo.label}: {name}"
    if name not in repo.files:
        raise HubError(f"{what}: no such file")
    size, want = repo.files[name].size, repo.files[name].sha256
    part = dest + ".incomplete"
    try:
        with hub_errors(what), open(part, "a+b") as out:
            got = _fill(repo, name, out, on_bytes, attempts)
            out.flush()
            os.fsync(out.fileno())
            got_size = os.fstat(out.fileno()).st_size
    except HubError:
        if os.path.exists(part) and os.path.getsize(part) == 0:
            os.remove(part)
        raise
    if got_size != size or (want and got != want):
        os.remove(part)
        if got_size != size:
            raise HubError(f"{what}: corrupted download: {got_size} bytes or more, the Hub says {size}")
        raise HubError(f"{what}: corrupted download: sha256 {got[:12]}..., the Hub says {want[:12]}...")
    os.replace(part, dest)


def _fill(repo: RemoteRepo, name: str, out: BinaryIO, on_bytes: Optional[Callable[[int], None]],
          attempts: int) -> str:
    """Append to ``out`` (an "a+b" file) the file's bytes it does not have yet, until it has
    all of them or too many; return the sha256 (hex) of everything in ``out``. huggingface_hub's
    errors and a permanent status are raised as they come (download_file maps them)."""
    import httpx2
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    what = f"{repo.label}: {name}"
    size = repo.files[name].size
    url = hf_hub_url(repo.repo_id, name, revision=repo.commit, endpoint=repo.endpoint)
    sha, done = hashlib.sha256(), 0
    out.seek(0)
    for chunk in iter(lambda: out.read(DOWNLOAD_WRITE_BYTES), b""):
        sha.update(chunk)
        done += len(chunk)
    if done > size:  # not a part of this file: start over
        out.truncate(0)
        sha, done = hashlib.sha256(), 0

    def write(data: bytearray) -> None:
        nonlocal done
        out.write(data)
        out.flush()  # on disk when reported, and where a retry's Range starts
        sha.update(data)
        done += len(data)
        if on_bytes is not None:
            on_bytes(len(data))
        data.clear()

    failures, wait = 0, RETRY_FIRST_WAIT
    while done < size:
        start, retry_after, pending = done, None, bytearray()
        headers = {**build_hf_headers(), "Accept-Encoding": "identity"}
        if done:
            headers["Range"] = f"bytes={done}-"
        try:
            with get_session().stream("GET", url, headers=headers, follow_redirects=True,
                                      timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as response:
                status = response.status_code
                if status in (408, 429) or status >= 500:
                    problem, retry_after = f"HTTP {status}", _retry_after(response)
                else:
                    hf_raise_for_status(response)
                    content_range = response.headers.get("Content-Range", "")
                    if status == 200 and done:  # the Range was ignored: start over
                        out.truncate(0)
                        sha, done = hashlib.sha256(), 0
                    elif status != (206 if done else 200) or (done and not content_range.startswith(
                            f"bytes {done}-")):
                        raise HubError(f"{what}: asked for bytes {done}-, got status {status} {content_range}")
                    for piece in response.iter_bytes():
                        pending += piece
                        if len(pending) >= DOWNLOAD_WRITE_BYTES:
                            write(pending)
                        if done + len(pending) > size:
                            break
                    problem = f"the response ended at byte {done + len(pending)} of {size}"
        except httpx2.TransportError as e:
            problem = _first_line(e)
        if pending:  # what arrived before a drop is kept: the retry starts after it
            write(pending)
        if done >= size:
            break
        if done > start:
            failures, wait = 0, RETRY_FIRST_WAIT
        failures += 1
        if failures >= attempts:
            raise HubError(f"{what}: {problem} ({failures} attempts in a row without progress)")
        time.sleep(min(RETRY_MAX_WAIT, wait if retry_after is None else retry_after))
        wait = min(RETRY_MAX_WAIT, 2 * wait)
    return sha.hexdigest()


def _retrying(what: str, call: Callable[[], T]) -> T:
    """``call()`` (a huggingface_hub call that does not retry by itself), retried with
    backoff on 408 / 429 / 5xx and lost connections; errors mapped by hub_errors."""
    import httpx2
    from huggingface_hub import constants, errors

    wait = RETRY_FIRST_WAIT
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        try:
            return call()
        except (errors.HfHubHTTPError, errors.LocalEntryNotFoundError, httpx2.TransportError) as e:
            status = getattr(getattr(e, "response", None), "status_code", None) or 0
            lost = isinstance(e, httpx2.TransportError) or (
                isinstance(e, errors.LocalEntryNotFoundError) and not constants.HF_HUB_OFFLINE)
            if not (lost or status in (408, 429) or status >= 500) or attempt == RETRY_ATTEMPTS:
                with hub_errors(what):
                    raise
        time.sleep(wait)
        wait = min(RETRY_MAX_WAIT, 2 * wait)
    raise AssertionError("unreachable")


def _retry_after(response) -> Optional[float]:
    """The response's Retry-After in seconds, when it gives a number."""
    value = response.headers.get("Retry-After", "").strip()
    return float(value) if value.isdigit() else None


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


@contextlib.contextmanager
def hub_errors(what: str):
    """Turns huggingface_hub's errors into one-line HubErrors naming ``what``."""
    import httpx2
    from huggingface_hub import errors

    try:
        yield
    except errors.GatedRepoError:
        raise HubError(f"{what}: gated: accept its conditions on the Hub and set HF_TOKEN") from None
    except errors.RepositoryNotFoundError:
        raise HubError(f"{what}: no such repo (or private: set HF_TOKEN)") from None
    except errors.RevisionNotFoundError:
        raise HubError(f"{what}: no such revision") from None
    except errors.EntryNotFoundError:
        raise HubError(f"{what}: no such file") from None
    except (errors.HfHubHTTPError, errors.LocalEntryNotFoundError, httpx2.HTTPError, OSError) as e:
        raise HubError(f"{what}: {_first_line(e)}") from None
