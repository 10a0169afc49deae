"""Supported library versions: the installed ones pass, and MINIMUM / NEWEST_TESTED
agree with pyproject.toml and the lock files (real installed metadata)."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from sanitrace import versions
from sanitrace.versions import MINIMUM, NEWEST_TESTED, VersionError, check_installed, parse_version

REPO = Path(__file__).resolve().parent.parent


def _pins(lock: Path) -> dict:
    pins = {}
    for line in lock.read_text().splitlines():
        m = re.match(r"([A-Za-z0-9_.\-]+)==(\S+)", line.strip())
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def _lower_bounds() -> dict:
    """dist -> [its specifiers] for mlx, mlx-lm and mlx-vlm in pyproject.toml."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    found = {}
    for req in project["dependencies"] + project["optional-dependencies"]["vlm"]:
        m = re.match(r"\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*([^;]*)", req)
        name = m.group(1).lower()
        if name in MINIMUM:
            found.setdefault(name, []).append(m.group(3).strip())
    return found


def test_installed_versions_are_supported():
    library = "mlx_vlm" if versions.installed_version("mlx-vlm") else "mlx_lm"
    warnings = check_installed(library)
    assert isinstance(warnings, list) and all(isinstance(w, str) and "\n" not in w for w in warnings)
    for dist, minimum in MINIMUM.items():
        installed = versions.installed_version(dist)
        if installed is not None:
            assert parse_version(installed) >= parse_version(minimum), dist


def test_newest_tested_matches_requirements_lock():
    pins = _pins(REPO / "requirements.lock")
    assert {d: pins.get(d) for d in NEWEST_TESTED} == NEWEST_TESTED


def test_minimum_matches_requirements_oldest_lock():
    pins = _pins(REPO / "requirements-oldest.lock")
    assert {d: pins.get(d) for d in MINIMUM} == MINIMUM


def test_pyproject_lower_bounds_are_minimum():
    bounds = _lower_bounds()
    assert set(bounds) == set(MINIMUM)
    for dist, specs in bounds.items():
        assert specs and all(s == f">={MINIMUM[dist]}" for s in specs), (dist, specs)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not any("mlx-vlm" in r for r in project["dependencies"]), "mlx-vlm belongs in the vlm extra"
    assert project["requires-python"] == ">=3.11"


def test_version_order():
    order = [
        "0.31.2",
        "0.32",
        "0.32.1.dev20250101",
        "0.32.1a1",
        "0.32.1rc2",
        "0.32.1",
        "0.32.1.post1",
        "0.32.10",
        "1.0.0",
    ]
    keys = [parse_version(v) for v in order]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert parse_version("0.32.0") == parse_version("0.32") == parse_version("0.32.0+local")


def test_too_old_is_one_line_error(monkeypatch):
    monkeypatch.setitem(MINIMUM, "mlx-lm", "999.0")
    with pytest.raises(VersionError) as error:
        check_installed()
    message = str(error.value)
    assert "\n" not in message and "mlx-lm>=999.0" in message
    assert f"mlx-lm {versions.installed_version('mlx-lm')} is older" in message


def test_newer_than_tested_is_a_warning(monkeypatch):
    monkeypatch.setitem(NEWEST_TESTED, "mlx", "0.0.1")
    warnings = check_installed("mlx_lm")
    assert len(warnings) == 1 and warnings[0].startswith(f"mlx {versions.installed_version('mlx')} is newer")


def test_missing_mlx_vlm_names_the_extra(monkeypatch):
    real = versions.installed_version
    monkeypatch.setattr(versions, "installed_version", lambda d: None if d == "mlx-vlm" else real(d))
    check_installed("mlx_lm")  # text-only conversions do not need mlx-vlm
    with pytest.raises(VersionError, match=r"pip install 'sanitrace\[vlm\]'"):
        check_installed("mlx_vlm")


def test_versions_does_not_import_mlx():
    code = (
        "import sys, sanitrace.versions; sanitrace.versions.check_installed(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlx', 'mlx_lm', 'mlx_vlm')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
