"""Seeded fuzz campaigns (tests/fuzz_campaign.py): mutated plans and safetensors
headers must be refused with one line or accepted with an output that either
matches the original or shows up in `show --full`; never a crash, a hang or a
silent change. SANITRACE_FUZZ_ITERATIONS sets the iterations per campaign."""

import json
import os

import pytest

import fuzz_campaign as F

ITERATIONS = int(os.environ.get("SANITRACE_FUZZ_ITERATIONS", "200"))


@pytest.fixture(scope="module")
def context(tmp_path_factory) -> str:
    workdir = tmp_path_factory.mktemp("fuzz")
    ctx = F.prepare(workdir)
    path = workdir / "context.json"
    path.write_text(json.dumps(ctx))
    return str(path)


@pytest.mark.parametrize("campaign", F.CAMPAIGNS)
def test_fuzz_campaign(campaign, context):
    result = F.run_campaign(campaign, ITERATIONS, context, seed_start=0, timeout=30)
    print("\n" + F.table([result]))
    counts = result["counts"]
    assert sum(counts.values()) == ITERATIONS
    assert (counts["crash"], counts["hang"], counts["silent"]) == (0, 0, 0), F.table([result])
