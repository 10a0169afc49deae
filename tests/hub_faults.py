"""Fault injection for the local Hub server (hub_server.py): deterministic, thread-safe,
consumed in request order. A rule applies to the next ``k`` requests it matches
(``method``: "GET" / "HEAD"; ``match``: a glob matching part of the request path, so
a plain string is a substring: ``"model-00002"``, ``"*.safetensors"``, ``"/tree/"``)."""

import fnmatch
import random
import threading
from typing import Dict, List, Optional


class Faults:
    """The faults ``hub.faults`` injects; every method is thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self._status: List[dict] = []
            self._drops: List[dict] = []
            self._ignore_range: List[dict] = []
            self._delays: List[dict] = []
            self._corrupt: Dict[str, Optional[int]] = {}
            self.dropped = 0  # connections dropped so far

    def fail_next(
        self,
        k: int = 1,
        status: int = 503,
        retry_after: Optional[int] = None,
        method: Optional[str] = None,
        match: Optional[str] = None,
    ) -> None:
        """Answer the next ``k`` requests (optionally only those with ``method`` / whose path
        matches ``match``) with ``status``, plus ``Retry-After: retry_after`` if given."""
        with self._lock:
            self._status.append(dict(left=k, status=status, retry_after=retry_after, method=method, match=match))

    def drop_after(self, nbytes: int, k: int = 1, match: Optional[str] = None) -> None:
        """For the next ``k`` file GET responses (resolve or CDN; path matching ``match`` if
        given), send the headers and ``nbytes`` body bytes, then close the connection (the
        client sees a transport error mid-body). A response of at most ``nbytes`` is whole."""
        with self._lock:
            self._drops.append(dict(left=k, nbytes=nbytes, rng=None, match=match))

    def drop_randomly(self, k: int = 1, match: Optional[str] = None, seed: int = 0, min_length: int = 0) -> None:
        """As drop_after, at a point drawn uniformly from ``[0, body length)`` of each of the
        next ``k`` file GET responses with a body of at least ``min_length`` bytes (so header
        reads can be left alone); the same points for the same seed and requests."""
        with self._lock:
            self._drops.append(dict(left=k, nbytes=None, rng=random.Random(seed), match=match, min_length=min_length))

    def ignore_range(self, k: int = 1, match: Optional[str] = None) -> None:
        """Answer the next ``k`` file GETs that carry a Range with 200 and the whole file,
        as a server or proxy that does not do ranges would."""
        with self._lock:
            self._ignore_range.append(dict(left=k, match=match))

    def delay(
        self,
        seconds: float,
        k: int = 1,
        match: Optional[str] = None,
        method: Optional[str] = None,
        ranged: Optional[bool] = None,
    ) -> None:
        """Wait ``seconds`` before answering each of the next ``k`` requests (optionally only
        those with ``method`` / whose path matches ``match`` / with (True) or without (False)
        a Range header): a round trip's latency, or a slow download."""
        with self._lock:
            self._delays.append(dict(left=k, seconds=seconds, method=method, match=match, ranged=ranged))

    def corrupt(self, filename: str, offset: Optional[int] = None) -> None:
        """Serve ``filename`` (a repo-relative path, any repo and revision) with the byte at
        ``offset`` (default: the last byte) flipped; the advertised sizes and hashes stay."""
        with self._lock:
            self._corrupt[filename] = offset

    def uncorrupt(self, filename: str) -> None:
        with self._lock:
            self._corrupt.pop(filename, None)

    @staticmethod
    def _take(rules: List[dict], method: str, path: str, length: int = 0) -> Optional[dict]:
        for rule in rules:
            if rule.get("method") not in (None, method) or length < rule.get("min_length", 0):
                continue
            if rule["match"] is not None and not fnmatch.fnmatchcase(path, f"*{rule['match']}*"):
                continue
            rule["left"] -= 1
            if rule["left"] <= 0:
                rules.remove(rule)
            return rule
        return None

    def take_status(self, method: str, path: str) -> Optional[dict]:
        with self._lock:
            return self._take(self._status, method, path)

    def take_delay(self, method: str, path: str, ranged: bool = False) -> float:
        with self._lock:
            rules = [r for r in self._delays if r["ranged"] in (None, ranged)]
            rule = self._take(rules, method, path)
            if rule is not None and rule["left"] <= 0:
                self._delays.remove(rule)
            return 0.0 if rule is None else rule["seconds"]

    def take_drop(self, path: str, length: int) -> Optional[int]:
        """How many of the ``length`` body bytes of this file GET to send before dropping, or None."""
        with self._lock:
            rule = self._take(self._drops, "GET", path, length)
            if rule is None:
                return None
            nbytes = rule["nbytes"] if rule["rng"] is None else rule["rng"].randrange(max(1, length))
            if nbytes < length:
                self.dropped += 1
            return nbytes

    def take_ignore_range(self, path: str) -> bool:
        with self._lock:
            return self._take(self._ignore_range, "GET", path) is not None

    def corrupt_offset(self, filename: str, size: int) -> Optional[int]:
        with self._lock:
            if filename not in self._corrupt or size == 0:
                return None
            offset = self._corrupt[filename]
            return size - 1 if offset is None else offset
