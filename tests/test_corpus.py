"""Conformance on ../shared/corpus (skipped when it is absent): every mlx_lm case whose
eager conversion is marked ok converts bit-identically, in bf16 and with -q."""

import json

import pytest
from conftest import SHARED, eager_convert, sanitrace_convert

from sanitrace.compare import compare_folders

MANIFEST = SHARED / "corpus" / "manifest.json"
CASES = []
if MANIFEST.exists():
    CASES = [
        c for c in json.loads(MANIFEST.read_text())
        if c["library"] == "mlx_lm" and c.get("kept", True)
    ]


@pytest.mark.skipif(not MANIFEST.exists(), reason="../shared/corpus is not present")
@pytest.mark.parametrize("flags", [[], ["-q"]], ids=["bf16", "q4"])
@pytest.mark.parametrize("case", CASES, ids=[c["case"] for c in CASES])
def test_corpus_case(case, flags, tmp_path):
    if case["eager_q4" if flags else "eager_bf16"] != "ok":
        pytest.skip("eager conversion does not accept this case")
    src = SHARED / "corpus" / "cases" / case["case"]
    expected = eager_convert(src, tmp_path / "eager", flags)
    out = sanitrace_convert(src, tmp_path / "ours", flags, budget="1")
    assert compare_folders(str(expected), str(out)) == []
