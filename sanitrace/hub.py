"""Hugging Face Hub sources: a repo's files at one commit, and byte ranges of them.

Everything goes through ``huggingface_hub`` (its auth via ``HF_TOKEN``, its
endpoint via ``HF_ENDPOINT``, its cache for small files, its retries with
backoff on 429 / 5xx / dropped connections). A permanent failure (a gated or
missing repo, a missing revision or file) is a HubError: one line naming it.

``fetch_headers`` writes what a trace reads into a folder: every safetensors
file as its exact header bytes in a sparse file of the real size, and the
small files the libraries read. Weight bytes are never requested.
"""

import contextlib
import os
import re
import struct
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from .safetensors_format import SafetensorsError

# small files the libraries read when converting (mlx_lm's download patterns, no code)
SMALL_FILE_PATTERN = re.compile(r"[^/]+\.(json|jsonl|jinja|txt|model|tiktoken)")
MAX_SMALL_FILE_BYTES = 64 << 20
MAX_HEADER_BYTES = 100 << 20  # as safetensors itself
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
    with _hub_errors(label):
        info = HfApi(endpoint=endpoint).model_info(repo_id, revision=revision, files_metadata=True)
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
    with _hub_errors(f"{repo.label}: {name}"):
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
    as its header bytes in a sparse file of its real size, and the small files
    (through huggingface_hub's cache). Names are checked to stay inside ``folder``."""
    from huggingface_hub import hf_hub_download

    from .plan.checks import check_name

    for name, remote in sorted(repo.files.items()):
        is_weights = name.endswith(".safetensors")
        if not is_weights and not (SMALL_FILE_PATTERN.fullmatch(name) and remote.size <= MAX_SMALL_FILE_BYTES):
            continue
        check_name(name, f"{repo.label}: file")
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if is_weights:
            header = read_header_bytes(repo, name)
            with open(path, "wb") as out:
                out.write(header)
                out.truncate(remote.size)
            continue
        with _hub_errors(f"{repo.label}: {name}"):
            local = hf_hub_download(repo.repo_id, name, revision=repo.commit, endpoint=repo.endpoint,
                                    cache_dir=cache_dir)
        with open(local, "rb") as src, open(path, "wb") as out:
            out.write(src.read())


@contextlib.contextmanager
def _hub_errors(what: str):
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
        raise HubError(f"{what}: {(str(e).strip().splitlines() or [type(e).__name__])[0][:300]}") from None
