"""The soak: a loopback deployment of four sites over 15 rounds under a fault schedule (sites
SIGKILLed mid-round and restarted, the coordinator SIGKILLed once and the run resumed, one
hostile reply), run twice (sims.bench.soak). About an hour on two cores, so it has its own
marker: `make test-soak`; CI's slow tier leaves it out."""

from __future__ import annotations

import math

import pytest

from sims.bench.soak import SITE_POOL, growth_mb, soak

pytestmark = pytest.mark.soak
MEMORY_GROWTH_MB = 150.0  # the coordinator's processes after round 3: flat, up to allocator noise


@pytest.mark.timeout(3 * 3600)
def test_rounds_models_and_state_survive_the_fault_schedule(tmp_path):
    report = soak(tmp_path, sites=SITE_POOL[:4], rounds=15, site_kills=3, repeats=2, seed=0)
    print("\n" + report.table())
    assert not report.problems, report.problems  # each round once, faults recorded, state per run, no orphans
    assert report.difference == 0.0  # the rerun of the schedule ends on the same global model
    assert not report.leftover
    for outcome in report.outcomes:
        for samples in (outcome.serverapp_mb, outcome.superlink_mb):
            growth = growth_mb(samples)
            assert math.isnan(growth) or growth < MEMORY_GROWTH_MB, samples
