"""Hugging Face Hub sources: a repo's files at one commit, and byte ranges of them.

Everything goes through ``huggingface_hub`` (its auth via ``HF_TOKEN``, its
endpoint via ``HF_ENDPOINT``, its cache for small files, its retries with
backoff on 429 / 5xx / dropped connections). A permanent failure (a gated or
missing repo, a missing revision or file) is a HubError: one line naming it.

``fetch_headers`` writes what a trace reads into a folder: every safetensors
file as its exact header bytes in a sparse file of the real size, and the
small files the libraries read. Weight bytes are never requested.

Whole files for execution are fetched by hub_download.py.
"""

import contextlib
import os
import re
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple, TypeVar

from .safetensors_format import SafetensorsError

# the small files the libraries download besides weights (mlx_lm's download patterns);
# a trace reads them, and the output copies or re-saves some (tokenizer, *.py)
SMALL_FILE_PATTERN = re.compile(r"[^/]+\.(json|jsonl|jinja|txt|model|tiktoken|py)")
MAX_SMALL_FILE_BYTES = 64 << 20
MAX_HEADER_BYTES = 100 << 20  # as safetensors itself
HEADER_THREADS = 8  # safetensors headers read at once by fetch_headers
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
    """Parse a Hub repo spec.

    Args:
        spec: a string that may be ``org/name[@revision]``.

    Returns:
        (repo id, revision or None), or None when ``spec`` is not one.
    """
    match = REPO_SPEC.fullmatch(spec)
    return (match["repo"], match["revision"]) if match else None


def open_repo(repo_id: str, revision: Optional[str] = None, endpoint: Optional[str] = None) -> RemoteRepo:
    """Open a Hub repo at one commit, retrying transient errors.

    Args:
        repo_id: ``org/name``.
        revision: a branch, tag or commit (default: the default branch).
        endpoint: the Hub's URL (default: huggingface_hub's, ``HF_ENDPOINT``).

    Returns:
        A RemoteRepo: its files (sizes, LFS sha256) at the commit ``revision``
        resolves to, which every later read is pinned to.

    Raises:
        HubError: the repo or revision is gated, missing or unreachable.
    """
    from huggingface_hub import HfApi

    label = f"{repo_id}@{revision}" if revision else repo_id
    info = _retrying(
        label, lambda: HfApi(endpoint=endpoint).model_info(repo_id, revision=revision, files_metadata=True)
    )
    files = {}
    for sibling in info.siblings or []:
        lfs = sibling.lfs
        files[sibling.rfilename] = RemoteFile(sibling.rfilename, int(sibling.size or 0), lfs.sha256 if lfs else None)
    assert info.sha is not None  # the Hub always says which commit a model_info resolved to
    return RemoteRepo(repo_id, revision, info.sha, files, endpoint)


def read_range(repo: RemoteRepo, name: str, start: int, stop: int) -> bytes:
    """Read a byte range of one file at the repo's commit (retried as
    huggingface_hub retries).

    Args:
        repo: the opened repo.
        name: a file of ``repo``.
        start, stop: the byte range, within the file's size.

    Returns:
        Exactly the bytes ``start:stop``.

    Raises:
        HubError: the range is outside the file, or the Hub gives anything else.
    """
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
        raise HubError(
            f"{repo.label}: {name}: asked for bytes {start}:{stop}, got status "
            f"{response.status_code} with {len(data)} bytes"
        )
    return data


def read_header_bytes(repo: RemoteRepo, name: str) -> bytes:
    """Read a remote safetensors file's header, never its data.

    Args:
        repo: the opened repo.
        name: a safetensors file of ``repo``.

    Returns:
        The 8-byte length and the JSON header, exactly as stored.

    Raises:
        SafetensorsError: the file is too short or its header length does not fit.
        HubError: as ``read_range``.
    """
    size = repo.files[name].size
    if size < 8:
        raise SafetensorsError(f"{repo.label}: {name}: {size} bytes, too short for a safetensors file")
    prefix = read_range(repo, name, 0, 8)
    (length,) = struct.unpack("<Q", prefix)
    if length > MAX_HEADER_BYTES or 8 + length > size:
        raise SafetensorsError(f"{repo.label}: {name}: header length {length} does not fit its {size} bytes")
    return prefix + (read_range(repo, name, 8, 8 + length) if length else b"")


def fetch_headers(repo: RemoteRepo, folder: str, cache_dir: Optional[str] = None) -> None:
    """Write into ``folder`` what a trace of ``repo`` reads, no weight bytes.

    Each safetensors file is written as its header bytes in a sparse file of
    its real size (HEADER_THREADS at once; the first failure in name order is
    raised), and the small files are copied from huggingface_hub's cache.

    Args:
        repo: the opened repo.
        folder: an existing folder to write into.
        cache_dir: huggingface_hub's cache (default: its own).

    Raises:
        PlanError: a file name would not stay inside ``folder``.
        HubError, SafetensorsError: as ``read_header_bytes`` and ``download_small``.
    """
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
    """The small files the libraries download besides weights.

    Args:
        repo: the opened repo.

    Returns:
        The repo's small top-level files (config, tokenizer, chat template,
        *.py, ...), in name order.
    """
    return sorted(
        name
        for name, remote in repo.files.items()
        if SMALL_FILE_PATTERN.fullmatch(name) and remote.size <= MAX_SMALL_FILE_BYTES
    )


def download_small(repo: RemoteRepo, name: str, cache_dir: Optional[str] = None) -> str:
    """Download a small file at the repo's commit through huggingface_hub's
    cache (hf_hub_download, retried on transient errors).

    Args:
        repo: the opened repo.
        name: a file of ``repo``.
        cache_dir: huggingface_hub's cache (default: its own).

    Returns:
        The file's path in the cache.

    Raises:
        HubError: the Hub refuses it or does not have it.
    """
    from huggingface_hub import hf_hub_download

    return _retrying(
        f"{repo.label}: {name}",
        lambda: hf_hub_download(repo.repo_id, name, revision=repo.commit, endpoint=repo.endpoint, cache_dir=cache_dir),
    )


def snapshot_folder(repo_id: str, revision: Optional[str] = None, cache_dir: Optional[str] = None) -> str:
    """Find the repo's snapshot in the local huggingface_hub cache, without the
    network (offline mode: HF_HUB_OFFLINE=1).

    Args:
        repo_id: ``org/name``.
        revision: a branch, tag or commit (default: the default branch).
        cache_dir: huggingface_hub's cache (default: its own).

    Returns:
        The snapshot folder's path.

    Raises:
        HubError: it is not in the cache.
    """
    from huggingface_hub import snapshot_download

    label = f"{repo_id}@{revision}" if revision else repo_id
    with hub_errors(f"{label} (offline: the local cache)"):
        return snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True)


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
                isinstance(e, errors.LocalEntryNotFoundError) and not constants.HF_HUB_OFFLINE
            )
            if not (lost or status in (408, 429) or status >= 500) or attempt == RETRY_ATTEMPTS:
                with hub_errors(what):
                    raise
        time.sleep(wait)
        wait = min(RETRY_MAX_WAIT, 2 * wait)
    raise AssertionError("unreachable")


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


@contextlib.contextmanager
def hub_errors(what: str):
    """A context in which huggingface_hub's errors become one-line HubErrors.

    Args:
        what: the repo and file the calls inside are about, for the message.

    Raises:
        HubError: naming ``what``: gated, no such repo, revision or file, or the
            first line of any other huggingface_hub, HTTP or OS error.
    """
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
