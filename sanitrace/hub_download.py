"""Whole Hub files for execution: streamed, resumed, retried and verified.

``download_file`` fetches one whole file: streamed into ``dest + ".incomplete"``,
resumed from what a killed or dropped run left, retried, and checked against the
Hub's size and sha256 before it takes its final name. ``cached_file`` finds one
already in huggingface_hub's cache instead.
"""

import hashlib
import os
import time
from typing import BinaryIO, Callable, Optional

from .hub import RETRY_FIRST_WAIT, RETRY_MAX_WAIT, HubError, RemoteRepo, _first_line, hub_errors

DOWNLOAD_WRITE_BYTES = 4 << 20  # download_file writes (and reports) this much at a time


def cached_file(repo: RemoteRepo, name: str, cache_dir: Optional[str] = None) -> Optional[str]:
    """Find a file of the repo, at its commit, in the local huggingface_hub cache.

    Args:
        repo: the opened repo.
        name: a file of ``repo``.
        cache_dir: huggingface_hub's cache (default: its own).

    Returns:
        Its path in the cache, or None when it is not there or not of the size
        the Hub gives.
    """
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo.repo_id, name, cache_dir=cache_dir, revision=repo.commit)
    if not isinstance(path, str) or name not in repo.files:
        return None
    try:
        size = os.path.getsize(path)
    except OSError:
        return None
    return path if size == repo.files[name].size else None


def download_file(
    repo: RemoteRepo, name: str, dest: str, on_bytes: Optional[Callable[[int], None]] = None, attempts: int = 10
) -> None:
    """Download one whole file at the repo's commit to ``dest``.

    It is streamed into ``dest + ".incomplete"`` (continued from the bytes
    already there), retried with backoff on dropped connections, timeouts, 429
    and 5xx, checked against the Hub's size and sha256, fsynced, then renamed.

    Args:
        repo: the opened repo.
        name: a file of ``repo``.
        dest: the final path.
        on_bytes: called with the size of each write, for progress.
        attempts: failures in a row without progress before giving up.

    Raises:
        HubError: one line: no such file, a permanent Hub error, too many
            failures, or a corrupted download (which is deleted).
    """
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
        assert want is not None  # only a known sha256 can mismatch
        raise HubError(f"{what}: corrupted download: sha256 {got[:12]}..., the Hub says {want[:12]}...")
    os.replace(part, dest)


def _fill(repo: RemoteRepo, name: str, out: BinaryIO, on_bytes: Optional[Callable[[int], None]], attempts: int) -> str:
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
            with get_session().stream(
                "GET", url, headers=headers, follow_redirects=True, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT
            ) as response:
                status = response.status_code
                if status in (408, 429) or status >= 500:
                    problem, retry_after = f"HTTP {status}", _retry_after(response)
                else:
                    hf_raise_for_status(response)
                    content_range = response.headers.get("Content-Range", "")
                    if status == 200 and done:  # the Range was ignored: start over
                        out.truncate(0)
                        sha, done = hashlib.sha256(), 0
                    elif status != (206 if done else 200) or (done and not content_range.startswith(f"bytes {done}-")):
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


def _retry_after(response) -> Optional[float]:
    """The response's Retry-After in seconds, when it gives a number."""
    value = response.headers.get("Retry-After", "").strip()
    return float(value) if value.isdigit() else None
