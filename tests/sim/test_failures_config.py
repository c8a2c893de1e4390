"""Failures by rate and seed, and the scenario's failures section: a run reports its retries, a bad section
names the field. The injectors themselves: test_failures.py."""

from __future__ import annotations

import numpy as np
import pytest

from fleettwin.models.config import parse_scenario
from fleettwin.models.errors import ConfigError
from fleettwin.models.failures.policies import Timing
from fleettwin.sim.runner import run_scenario
from tests.scenariokit import pool, scenario
from tests.sim.test_failures import on_p, run
from tests.simkit import poisson_requests

# -- timing and configuration --------------------------------------------------------------------------------


def test_failures_by_rate_have_the_mtbf_and_stay_in_their_window():
    t = Timing(mtbf_s=10.0, mttr_s=2.0, start_s=100.0, end_s=100_100.0)
    eps = list(t.episodes(np.random.default_rng(0)))
    assert all(100.0 <= e.start_s < 100_100.0 for e in eps)
    ups = [b.start_s - a.end_s for a, b in zip(eps, eps[1:], strict=False)]
    assert min(ups) > 0 and np.mean(ups) == pytest.approx(10.0, rel=0.05)  # ~8300 samples: 1 % std error
    assert [e.start_s for e in Timing(at_s=(5.0, 1.0), mttr_s=3.0).episodes(np.random.default_rng(0))] == [
        1.0,
        5.0,
    ]


def test_the_same_seed_gives_the_same_failures_and_another_seed_others():
    reqs = poisson_requests(seed=10, n=300, rate=30.0)
    cfg = on_p("replica_failure", timing={"mtbf_s": 8.0, "mttr_s": 1.0})
    runs = [run(reqs, cfg, replicas=3, seed=s)[1].events for s in (1, 1, 2)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


SCENARIO = scenario(
    "f",
    seed=3,
    rate=20,
    duration_s=30,
    lengths={"name": "geometric", "params": {"prompt_mean": 300, "output_mean": 60}},
    pools=[pool(replicas=2, perf_model={"name": "constant", "params": {"step_s": 0.02}})],
)


def test_a_scenario_runs_its_failures_section_and_reports_retries():
    cfg = parse_scenario(
        {
            **SCENARIO,
            "failures": {
                "injectors": [
                    {
                        "name": "replica_failure",
                        "params": {"pool": "chat", "timing": {"at_s": [10.0], "mttr_s": 5.0}},
                    }
                ]
            },
        }
    )
    res = run_scenario(cfg)
    s = res.summary
    assert s["failures"]["injected"] == 1 and s["failures"]["events"][0]["time_s"] == 10.0
    assert s["requests"]["completed"] == s["requests"]["total"] and s["requests"]["failed"] == 0
    assert s["retries"]["retries"] == int(res.requests["retries"].sum()) > 0


@pytest.mark.parametrize(
    ("failures", "message"),
    [
        (
            {
                "injectors": [
                    {"name": "straggler", "params": {"pool": "chatt", "factor": 2, "timing": {"at_s": [1]}}}
                ]
            },
            "failures: injectors[0].params.pool: unknown pool 'chatt'; the scenario's pools are: chat",
        ),
        (
            {
                "injectors": [
                    {"name": "coherence", "params": {"pool": "chat", "replicas": [2], "probability": 0.1}}
                ]
            },
            "replica 2 does not exist in pool 'chat' (2 replicas",
        ),
        (
            {
                "injectors": [
                    {
                        "name": "replica_failure",
                        "params": {"pool": "chat", "timing": {"at_s": [1], "mtbf_s": 5}},
                    }
                ]
            },
            "give either at_s (scheduled failures) or mtbf_s (failures by rate), not both",
        ),
        (
            {"truncation": {"name": "squash"}},
            "unknown truncation policy 'squash'; expected one of: compress, reroute",
        ),
        (
            {"truncation": {"name": "compress", "params": {"ratio": 1.5}}},
            "ratio: Input should be less than 1",
        ),
        (
            {
                "injectors": [
                    {
                        "name": "coherence",
                        "params": {
                            "pool": "chat",
                            "probability": 0.1,
                            "policy": {"name": "fallback", "params": {"pool": "chat"}},
                        },
                    }
                ]
            },
            "the fallback must be another",
        ),
    ],
)
def test_bad_failure_sections_name_the_field(failures, message):
    with pytest.raises(ConfigError) as err:
        parse_scenario({**SCENARIO, "failures": failures}, source="s.yaml")
    assert message in str(err.value) and str(err.value).startswith("s.yaml: failures")
