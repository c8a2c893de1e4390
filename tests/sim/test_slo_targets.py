"""Percentile SLO targets: parsed from the scenario and --slo, judged over all requests, reported
everywhere."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleettwin.models.config import parse_scenario
from fleettwin.models.errors import ConfigError
from fleettwin.models.slo import parse_cli_target, parse_target_key
from fleettwin.sim.metrics import COMPLETED, REJECTED, Slo, latency_summary
from fleettwin.sim.stats import RequestStats
from tests.scenariokit import scenario

BASE = scenario("s", rate=2, duration_s=60, prompt=100, output=20)


def _frame(ttft: list[float], status: list[str] | None = None) -> pd.DataFrame:
    n = len(ttft)
    status = status or [COMPLETED] * n
    ttft_a = np.array(ttft, dtype=float)
    done = np.array([s == COMPLETED for s in status])
    nan = np.full(n, np.nan)
    return pd.DataFrame(
        {
            "status": status,
            "ttft_s": np.where(done, ttft_a, nan),
            "tpot_s": np.where(done, 0.01, nan),
            "e2e_s": np.where(done, ttft_a + 1, nan),
            "queue_s": np.where(done, 0.0, nan),
            "prompt_tokens": 10,
            "output_tokens": np.where(done, 5, 0),
            "preemptions": 0,
            "finish_s": np.where(done, ttft_a + 1, nan),
        }
    )


@pytest.mark.parametrize(
    "key, metric, q",
    [
        ("ttft_p95_s", "ttft", 95),
        ("tpot_p50_s", "tpot", 50),
        ("e2e_p999_s", "e2e", 99.9),
        ("queue_p99_s", "queue", 99),
    ],
)
def test_target_keys(key, metric, q):
    t = parse_target_key(key, 1.5)
    assert (t.metric, t.q, t.limit_s) == (metric, q, 1.5)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("ttft_p95x_s", 2, "did you mean 'ttft_p95_s'"),
        ("latency_p95_s", 2, "metric one of ttft, tpot, e2e, queue"),
        ("ttft_p95_s", -1, "a number of seconds > 0"),
        ("ttft_p95_s", True, "a number of seconds > 0"),
    ],
)
def test_bad_target_keys_say_what_was_meant(key, value, message):
    with pytest.raises(ConfigError, match=message):
        parse_scenario({**BASE, "slo": {key: value}}, source="plan.yaml")


def test_misspelt_attainment_key_gets_a_hint():
    with pytest.raises(ConfigError, match=r"plan.yaml: slo: unknown key 'ttf_s' \(did you mean 'ttft_s'\?\)"):
        parse_scenario({**BASE, "slo": {"ttf_s": 2}}, source="plan.yaml")


@pytest.mark.parametrize(
    "text, key, value",
    [
        ("ttft_p95=2s", "ttft_p95_s", 2.0),
        ("tpot_p95=50ms", "tpot_p95_s", 0.05),
        ("e2e_p99_s=30", "e2e_p99_s", 30.0),
    ],
)
def test_cli_targets(text, key, value):
    assert parse_cli_target(text) == (key, pytest.approx(value))


@pytest.mark.parametrize("text", ["ttft_p95", "ttft_p95=fast", "speed_p95=2s"])
def test_bad_cli_targets(text):
    with pytest.raises(ValueError, match="--slo"):
        parse_cli_target(text)


def test_target_equals_the_percentile_when_every_request_completes():
    v = list(np.random.default_rng(0).exponential(1.0, 500))
    slo = Slo(ttft_s=2.0, tpot_s=0.2, ttft_p95_s=2.0)
    got = latency_summary(_frame(v), slo, 100.0)["slo"]["targets"]["ttft_p95_s"]
    assert got["value_s"] == pytest.approx(np.percentile(v, 95)) and got["met"] == (
        np.percentile(v, 95) <= 2.0
    )


def test_requests_that_never_complete_count_as_late():
    slo = Slo(ttft_s=2.0, tpot_s=0.2, ttft_p95_s=2.0)
    fast = [0.1] * 90
    mostly_served = latency_summary(_frame(fast + [0.1] * 10, [COMPLETED] * 96 + [REJECTED] * 4), slo, 10.0)
    assert mostly_served["slo"]["targets"]["ttft_p95_s"]["met"]
    turned_away = latency_summary(_frame(fast + [0.1] * 10, [COMPLETED] * 90 + [REJECTED] * 10), slo, 10.0)
    t = turned_away["slo"]["targets"]["ttft_p95_s"]
    assert t["value_s"] is None and not t["met"] and turned_away["slo"]["met"] is False
    assert turned_away["latency_s"]["ttft"]["p95"] == pytest.approx(0.1)  # the served ones alone look fine


@settings(max_examples=20, deadline=None)
@given(st.lists(st.floats(0.001, 100.0), min_size=50, max_size=400), st.integers(1, 8))
def test_sketch_summary_matches_the_exact_one(values, chunks):
    """A streamed run's numbers (REQ sketches, merged over chunks) agree with the exact ones within 1 %."""
    df = _frame(values)
    slo = Slo(ttft_s=2.0, tpot_s=0.2, ttft_p95_s=2.0)
    exact = latency_summary(df, slo, 50.0)
    stats = RequestStats(exact=False)
    for part in np.array_split(np.arange(len(df)), chunks):
        stats.merge(RequestStats(exact=False).add(df.iloc[part], slo))
    sketch = stats.summary(slo, 50.0)
    assert sketch["requests"] == exact["requests"]
    assert sketch["throughput"]["tokens_per_s"] == pytest.approx(exact["throughput"]["tokens_per_s"])
    ranks = np.sort(values)
    for q in ("p50", "p95", "p99"):
        got = sketch["latency_s"]["ttft"][q]
        # a value of the data within a rank or so of the exact percentile (small samples: rank error
        # dominates)
        pos = np.searchsorted(ranks, got)
        assert abs(pos / len(ranks) - int(q[1:]) / 100) <= 0.02 + 1.5 / len(ranks) or math.isclose(
            got, exact["latency_s"]["ttft"][q], rel_tol=0.01
        )


def test_summary_reports_targets_and_cost_per_token():
    from fleettwin.sim.runner import run_scenario

    cfg = parse_scenario({**BASE, "slo": {"ttft_p95_s": 2, "tpot_p95_s": 0.0001}})
    s = run_scenario(cfg).summary
    targets = s["slo"]["targets"]
    assert targets["ttft_p95_s"]["met"] and not targets["tpot_p95_s"]["met"] and s["slo"]["met"] is False
    tokens = s["throughput"]["tokens_per_s"] * s["sim_time_s"]
    assert s["cost"]["usd_per_1m_tokens"] == pytest.approx(1e6 * s["cost"]["usd"] / tokens)
    assert s["cost"]["usd_per_1m_output_tokens"] > s["cost"]["usd_per_1m_tokens"]


def test_experiment_rows_carry_the_targets():
    from fleettwin.sim.stats import slo_columns

    assert slo_columns({"slo": {"targets": {}, "met": None}}) == {}
    row = slo_columns(
        {"slo": {"met": False, "targets": {"ttft_p95_s": {"met": True}, "e2e_p99_s": {"met": False}}}}
    )
    assert row == {"meets_slo": False, "ttft_p95_met": True, "e2e_p99_met": False}
