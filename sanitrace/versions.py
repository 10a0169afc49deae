"""Which versions of mlx, mlx-lm and mlx-vlm sanitrace supports.

MINIMUM holds the oldest versions the test suite passes with (requirements-oldest.lock),
NEWEST_TESTED the newest (requirements.lock); pyproject.toml's lower bounds equal
MINIMUM. Newer versions than NEWEST_TESTED are allowed (brand-new architectures need
the newest mlx-lm) with a one-line warning. Reads installed metadata only: importing
this module never imports mlx.
"""

import re
import sys
from importlib import metadata
from typing import Dict, List, Optional, Tuple

# mlx < 0.32.1 reads a truncated file as zeros, so the poisoned placeholders of a trace
# (tracer/sources.py) would turn an untracked computation into a constant of zeros instead
# of a TraceError; 0.32.2 is also the oldest mlx that mlx-vlm 0.7.0 accepts. mlx-vlm < 0.7
# has another get_model_and_args signature.
MINIMUM: Dict[str, str] = {"mlx": "0.32.2", "mlx-lm": "0.31.2", "mlx-vlm": "0.7.0"}
# the versions pinned in requirements.lock: keep in sync by hand (tests/test_versions.py checks)
NEWEST_TESTED: Dict[str, str] = {"mlx": "0.32.4", "mlx-lm": "0.32.2", "mlx-vlm": "0.7.10"}

_LIBRARY_DISTS = {"mlx_lm": ("mlx", "mlx-lm"), "mlx_vlm": ("mlx", "mlx-lm", "mlx-vlm")}
_HOW_TO_INSTALL = {"mlx-vlm": "pip install 'sanitrace[vlm]'"}
# PEP 440 order within one release: X.devN < X.aN < X.bN < X.rcN < X < X.postN
_PHASES = {
    "dev": -4,
    "a": -3,
    "alpha": -3,
    "b": -2,
    "beta": -2,
    "c": -1,
    "rc": -1,
    "pre": -1,
    "preview": -1,
    "": 0,
    "post": 1,
    "rev": 1,
    "r": 1,
}
_VERSION = re.compile(r"v?(\d+(?:\.\d+)*)(?:[-_.]?([a-z]+)[-_.]?(\d*))?")


class VersionError(Exception):
    """One line: a required library is missing or older than supported."""


def parse_version(version: str) -> Tuple[Tuple[int, ...], int, int]:
    """A sort key for a version string: (release numbers without trailing zeros,
    phase, phase number), so 0.32 == 0.32.0 < 0.32.1.dev0 < 0.32.1rc1 < 0.32.1 <
    0.32.1.post1. A local part (+...) is ignored; an unknown suffix counts as the release."""
    match = _VERSION.match(version.strip().lower().split("+")[0])
    if not match:
        raise ValueError(f"not a version: {version!r}")
    release = tuple(int(p) for p in match.group(1).split("."))
    while len(release) > 1 and release[-1] == 0:
        release = release[:-1]
    phase = _PHASES.get(match.group(2) or "", 0)
    return release, phase, int(match.group(3) or 0)


def installed_version(dist: str) -> Optional[str]:
    """The installed version of distribution ``dist``, or None when it is absent."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def check_installed(library: Optional[str] = None) -> List[str]:
    """Raise VersionError when mlx or mlx-lm (and mlx-vlm when library == "mlx_vlm")
    is missing or older than MINIMUM; return one-line warnings for versions newer
    than NEWEST_TESTED (still allowed). Missing mlx-vlm says: pip install 'sanitrace[vlm]'."""
    dists = _LIBRARY_DISTS.get((library or "mlx_lm").replace("-", "_"))
    if dists is None:
        raise ValueError(f"unknown library {library!r}: expected 'mlx_lm' or 'mlx_vlm'")
    warnings = []
    for dist in dists:
        version, minimum = installed_version(dist), MINIMUM[dist]
        extra = "[cpu]" if dist == "mlx" and sys.platform == "linux" else ""  # as pyproject.toml
        install = _HOW_TO_INSTALL.get(dist, f"pip install '{dist}{extra}>={minimum}'")
        if version is None:
            raise VersionError(f"{dist} is not installed; sanitrace needs {dist}>={minimum}: {install}")
        try:
            key = parse_version(version)
        except ValueError:
            warnings.append(f"{dist} {version}: not a version sanitrace can compare with {dist}>={minimum}")
            continue
        if key < parse_version(minimum):
            raise VersionError(f"{dist} {version} is older than sanitrace supports ({dist}>={minimum}): {install}")
        if key > parse_version(NEWEST_TESTED[dist]):
            warnings.append(
                f"{dist} {version} is newer than sanitrace was tested with ({NEWEST_TESTED[dist]}); "
                "check a plan with `sanitrace check` on a small model"
            )
    return warnings
