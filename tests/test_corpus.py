"""Conformance on ../shared/corpus (skipped when it is absent): every case whose eager
conversion the manifest marks ok, converted with the manifest's library, in bf16
and with -q, with the smallest chunks, equals the library's own conversion."""

import pytest
from conftest import SHARED

from sanitrace.check import check
from sanitrace.conformance import MODES, corpus_cases

CORPUS = SHARED / "corpus"
CASES = corpus_cases(str(CORPUS)) if (CORPUS / "manifest.json").exists() else []


@pytest.mark.skipif(not CASES, reason="../shared/corpus is not present")
@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("case", CASES, ids=[c["case"] for c in CASES])
def test_corpus_case(case, mode):
    if case[f"eager_{mode}"] != "ok":
        pytest.skip("the manifest says eager conversion refuses this case")
    result = check(str(CORPUS / "cases" / case["case"]), MODES[mode], case["library"], memory_budget=1)
    assert result.verdict == "identical", (result.sanitrace_failed, result.eager_failed, result.differences[:5])
