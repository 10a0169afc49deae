"""Conformance on ../shared/corpus (skipped when it is absent): every case whose eager
conversion the manifest marks ok, converted with the manifest's library, in bf16
and with -q, with the smallest chunks, equals the library's own conversion.

The eager conversions of the selected cases run first, in one process per
library (tests/eager_batch.py): importing the library once per conversion cost
about 2 s each, a third of this file's time."""

import json
import subprocess
import sys

import pytest
from conftest import REPO, SHARED

from sanitrace.check import check, eager_flags
from sanitrace.conformance import MODES, corpus_cases

pytestmark = pytest.mark.slow  # the libraries' own conversion is the oracle

CORPUS = SHARED / "corpus"
CASES = corpus_cases(str(CORPUS)) if (CORPUS / "manifest.json").exists() else []


@pytest.fixture(scope="session")
def corpus_eager(request, tmp_path_factory) -> dict:
    """(case, mode) -> (eager output folder, None or its error's last line), for
    the corpus cases this session runs."""
    base = tmp_path_factory.mktemp("corpus-eager")
    jobs = {}
    for item in request.session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if getattr(item, "originalname", None) != "test_corpus_case" or "case" not in params:
            continue
        case, mode = params["case"], params["mode"]
        if case[f"eager_{mode}"] != "ok":
            continue
        out = base / f"{case['case']}-{mode}"
        argv = ["--hf-path", str(CORPUS / "cases" / case["case"]), "--mlx-path", str(out)]
        jobs.setdefault(case["library"], []).append(
            {"id": f"{case['case']}-{mode}", "argv": argv + eager_flags(MODES[mode]), "cwd": str(base)}
        )
    results = {}
    for library, library_jobs in jobs.items():
        jobs_file, results_file = base / f"{library}-jobs.json", base / f"{library}-results.json"
        jobs_file.write_text(json.dumps(library_jobs))
        subprocess.run(
            [sys.executable, str(REPO / "tests" / "eager_batch.py"), library, str(jobs_file), str(results_file)],
            check=True,
            capture_output=True,
        )
        for r in json.loads(results_file.read_text()):
            results[r["id"]] = (str(base / r["id"]), None if r["status"] == "ok" else r["message"] or r["status"])
    return results


@pytest.mark.skipif(not CASES, reason="../shared/corpus is not present")
@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("case", CASES, ids=[c["case"] for c in CASES])
def test_corpus_case(case, mode, corpus_eager):
    if case[f"eager_{mode}"] != "ok":
        pytest.skip("the manifest says eager conversion refuses this case")
    eager = corpus_eager[f"{case['case']}-{mode}"]
    result = check(str(CORPUS / "cases" / case["case"]), MODES[mode], case["library"], memory_budget=1, eager=eager)
    assert result.verdict == "identical", (result.sanitrace_failed, result.eager_failed, result.differences[:5])
    assert result.loads == "yes"  # eager's output loads (verify loaded ours, byte-equal to it)
