"""Arrival processes against their closed forms: rate, burstiness, stationary mean, daily swing."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleettwin.models.workload.arrivals import MMPP, Diurnal, Gamma, Poisson

Z99 = 2.576  # two-sided 99 % normal quantile


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_poisson_count_within_99pct_ci_and_exponential_gaps():
    p = Poisson(rate=20.0, duration_s=1000.0)
    t = p.times(rng(1))
    mean = p.rate * p.duration_s
    assert abs(len(t) - mean) < Z99 * math.sqrt(mean)
    gaps = np.diff(t)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.03)


def test_poisson_counts_over_many_seeds_have_poisson_dispersion():
    counts = np.array([len(Poisson(rate=5.0, duration_s=20.0).times(rng(s))) for s in range(400)])
    assert counts.mean() == pytest.approx(100, abs=Z99 * 10 / math.sqrt(400))
    assert counts.var() / counts.mean() == pytest.approx(1.0, abs=0.2)


@pytest.mark.parametrize("cv", [0.5, 1.0, 2.0, 4.0])
def test_gamma_rate_and_cv(cv):
    g = Gamma(rate=50.0, cv=cv, duration_s=4000.0)
    t = g.times(rng(2))
    gaps = np.diff(t)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)
    assert len(t) / g.duration_s == pytest.approx(g.rate, rel=0.05)


def test_gamma_is_stationary_from_zero():
    """Equilibrium start: the first arrival is not delayed by a whole gap, so counts in the first second
    average the rate even for very bursty processes."""
    g = Gamma(rate=2.0, cv=3.0, duration_s=1.0)
    counts = [len(g.times(rng(s))) for s in range(3000)]
    assert np.mean(counts) == pytest.approx(2.0, rel=0.1)


def test_mmpp_long_run_rate_is_stationary_mean():
    m = MMPP(rates=(1.0, 10.0, 40.0), mean_sojourn_s=5.0, duration_s=50_000.0)
    assert m.mean_rate == pytest.approx(17.0)
    t = m.times(rng(3))
    assert len(t) / m.duration_s == pytest.approx(m.mean_rate, rel=0.03)
    gaps = np.diff(t)
    assert gaps.std() / gaps.mean() > 1.2  # modulation makes it burstier than Poisson


def test_mmpp_per_state_sojourns_weight_the_mean():
    m = MMPP(rates=(0.0, 30.0), mean_sojourn_s=(30.0, 10.0), duration_s=40_000.0)
    assert m.stationary.tolist() == pytest.approx([0.75, 0.25])
    t = m.times(rng(4))
    assert len(t) / m.duration_s == pytest.approx(7.5, rel=0.05)


def test_mmpp_one_state_is_poisson():
    t = MMPP(rates=(8.0,), mean_sojourn_s=1.0, duration_s=2000.0).times(rng(5))
    assert abs(len(t) - 16000) < Z99 * math.sqrt(16000)


def test_diurnal_peak_to_trough_and_peak_time():
    d = Diurnal(mean_rate=30.0, peak_to_trough=4.0, period_s=1000.0, peak_at_s=250.0, duration_s=20_000.0)
    t = d.times(rng(6))
    counts, edges = np.histogram(t % d.period_s, bins=50, range=(0, d.period_s))
    centres = (edges[:-1] + edges[1:]) / 2
    w = 2 * np.pi * centres / d.period_s
    # Least-squares fit of a + b cos + c sin: the sinusoid's max/min and the phase of its peak.
    a, b, c = np.linalg.lstsq(np.column_stack([np.ones_like(w), np.cos(w), np.sin(w)]), counts, rcond=None)[0]
    amp = math.hypot(b, c)
    assert (a + amp) / (a - amp) == pytest.approx(4.0, rel=0.05)
    assert (math.atan2(c, b) / (2 * np.pi) * d.period_s) % d.period_s == pytest.approx(250.0, abs=10)
    assert len(t) / d.duration_s == pytest.approx(30.0, rel=0.02)


def test_diurnal_partial_period_mean():
    d = Diurnal(mean_rate=10.0, peak_to_trough=3.0, period_s=86400.0, peak_at_s=0.0, duration_s=3600.0)
    assert d.mean_rate_over_duration == pytest.approx(d.rate_at(1800.0), rel=0.01)
    assert d.rate_at(0.0) / d.rate_at(43200.0) == pytest.approx(3.0)


PROCESSES = [
    Poisson(rate=3.0, duration_s=500.0),
    Gamma(rate=3.0, cv=2.0, duration_s=500.0),
    MMPP(rates=(1.0, 6.0), mean_sojourn_s=20.0, duration_s=500.0),
    Diurnal(mean_rate=3.0, peak_to_trough=5.0, period_s=200.0, duration_s=500.0),
]


@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: type(p).__name__)
def test_same_seed_same_times_different_seed_different(process):
    assert np.array_equal(process.times(rng(7)), process.times(rng(7)))
    assert not np.array_equal(process.times(rng(7)), process.times(rng(8)))


@pytest.mark.parametrize(
    "process",
    [
        Poisson(rate=1e4, duration_s=100.0),
        Gamma(rate=1e4, cv=2.0, duration_s=100.0),
        MMPP(rates=(5e3, 1.5e4), mean_sojourn_s=1.0, duration_s=100.0),
        Diurnal(mean_rate=1e4, peak_to_trough=3.0, period_s=50.0, duration_s=100.0),
    ],
    ids=lambda p: type(p).__name__,
)
def test_a_million_arrivals_is_fast(process):
    best = math.inf
    for _ in range(2):  # best of two, the machine is shared
        t0 = time.perf_counter()
        n = len(process.times(rng(9)))
        best = min(best, time.perf_counter() - t0)
    assert n > 800_000
    assert best < 1.0, f"{type(process).__name__}: {best:.2f} s for {n} arrivals"


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(["poisson", "gamma", "mmpp", "diurnal"]),
    rate=st.floats(0.0, 50.0),
    duration=st.floats(0.01, 200.0),
    shape=st.floats(0.1, 5.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_times_are_sorted_and_inside_the_window(kind, rate, duration, shape, seed):
    process = {
        "poisson": lambda: Poisson(rate=rate, duration_s=duration),
        "gamma": lambda: Gamma(rate=rate, cv=shape, duration_s=duration),
        "mmpp": lambda: MMPP(rates=(rate, rate / 2, 0.0), mean_sojourn_s=shape, duration_s=duration),
        "diurnal": lambda: Diurnal(
            mean_rate=rate, peak_to_trough=1 + shape, period_s=60.0, duration_s=duration
        ),
    }[kind]()
    t = process.times(rng(seed))
    assert t.dtype == np.float64
    assert np.all(np.diff(t) >= 0)
    assert np.all((t >= 0) & (t < duration))


@pytest.mark.parametrize(
    "make",
    [
        lambda: Poisson(rate=-1.0, duration_s=1.0),
        lambda: Poisson(rate=1.0, duration_s=0.0),
        lambda: Gamma(rate=1.0, cv=0.0, duration_s=1.0),
        lambda: MMPP(rates=(), mean_sojourn_s=1.0, duration_s=1.0),
        lambda: MMPP(rates=(1.0, 2.0), mean_sojourn_s=(1.0,), duration_s=1.0),
        lambda: MMPP(rates=(1.0,), mean_sojourn_s=0.0, duration_s=1.0),
        lambda: Diurnal(mean_rate=1.0, peak_to_trough=0.5, duration_s=1.0),
        lambda: Diurnal(mean_rate=math.nan, peak_to_trough=2.0, duration_s=1.0),
    ],
)
def test_bad_parameters_raise(make):
    with pytest.raises(ValueError):
        make()
