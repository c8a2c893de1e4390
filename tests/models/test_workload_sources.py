"""The WORKLOADS registry, its sources as a scenario would build them, and the length distributions."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleettwin.models.errors import ConfigError, UnknownNameError
from fleettwin.models.workload import (
    WORKLOADS,
    EmpiricalLengths,
    GeometricLengths,
    LognormalLengths,
    UniformLengths,
    parse_lengths,
    read_azure_csv,
    summarize,
)

TRACES = Path(__file__).resolve().parents[2] / "traces"
AZURE_CONV = TRACES / "azure2023_conv" / "AzureLLMInferenceTrace_conv.csv"
GEOM = {"name": "geometric", "params": {"prompt_mean": 400, "output_mean": 80}}
FIXED = {"name": "fixed", "params": {"prompt": 100, "output": 10}}

SYNTHETIC = {
    "poisson": {"rate": 4.0, "duration_s": 300, "lengths": GEOM},
    "gamma": {"rate": 4.0, "cv": 2.5, "duration_s": 300, "lengths": GEOM},
    "mmpp": {"rates": [1, 8], "mean_sojourn_s": 30, "duration_s": 300, "lengths": GEOM},
    "diurnal": {
        "mean_rate": 4.0,
        "peak_to_trough": 3,
        "period_s": 120,
        "peak_at_s": 0,
        "duration_s": 300,
        "lengths": GEOM,
    },
}


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_registry_names():
    # other modules may register more sources (rate_series); these are the ones sources.py itself defines
    assert {"burst", "diurnal", "gamma", "mixture", "mmpp", "poisson", "trace"} <= set(WORKLOADS.names())


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_synthetic_sources_give_sorted_numbered_requests(name):
    reqs = WORKLOADS.create(name, SYNTHETIC[name]).requests(rng(1), model="llama-3-8b")
    assert len(reqs) > 100
    assert [r.id for r in reqs] == list(range(len(reqs)))
    assert all(a.arrival_s <= b.arrival_s for a, b in zip(reqs, reqs[1:], strict=False))
    assert all(0 <= r.arrival_s < 300 and r.prompt_tokens >= 1 and r.output_tokens >= 1 for r in reqs)
    assert {r.model for r in reqs} == {"llama-3-8b"} and {r.tenant for r in reqs} == {"default"}


@pytest.mark.parametrize("name", [*sorted(SYNTHETIC), "trace"])
def test_same_seed_same_requests(name):
    params = SYNTHETIC.get(name, {"path": str(AZURE_CONV), "format": "azure", "max_requests": 50})
    src = WORKLOADS.create(name, params)
    assert src.requests(rng(3)) == src.requests(rng(3))
    if name != "trace":  # a trace replay is deterministic by design
        assert src.requests(rng(3)) != src.requests(rng(4))


def test_arrivals_do_not_depend_on_the_length_distribution():
    """Separate streams: a sweep over lengths keeps the same arrival times (common random numbers)."""
    a = WORKLOADS.create("gamma", SYNTHETIC["gamma"]).requests(rng(5))
    b = WORKLOADS.create("gamma", {**SYNTHETIC["gamma"], "lengths": FIXED}).requests(rng(5))
    assert [r.arrival_s for r in a] == [r.arrival_s for r in b]
    assert {(r.prompt_tokens, r.output_tokens) for r in b} == {(100, 10)}


def test_poisson_source_rate():
    reqs = WORKLOADS.create("poisson", {"rate": 50, "duration_s": 200, "lengths": FIXED}).requests(rng(6))
    assert abs(len(reqs) - 10_000) < 2.576 * 100


# --- trace source: paths resolve against the scenario directory, then the working directory -------------


def test_trace_source_resolves_against_base_dir_and_applies_speedup():
    src = WORKLOADS.create(
        "trace",
        {"path": "azure2023_conv/AzureLLMInferenceTrace_conv.csv", "format": "azure", "speedup": 3},
        base_dir=TRACES,
    )
    stats = summarize(src.requests(rng(), model="m"))
    assert stats["count"] == 9739
    assert stats["rate_per_s"] == pytest.approx(16.7, abs=0.02)
    assert stats["prompt_mean"] == pytest.approx(1237.2, abs=0.05)
    assert stats["output_p50"] == 140


def test_trace_source_falls_back_to_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(TRACES.parent)
    params = {
        "path": "traces/mooncake_conversation/conversation_trace.jsonl",
        "format": "mooncake",
        "start_s": 60,
        "duration_s": 60,
        "tenant": "kimi",
    }
    reqs = WORKLOADS.create("trace", params, base_dir=tmp_path).requests(rng())
    assert reqs and all(r.prefix_blocks and r.tenant == "kimi" and r.arrival_s < 60 for r in reqs)
    assert [r.id for r in reqs] == list(range(len(reqs)))


def test_trace_source_missing_file_names_every_path_tried(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scenario_dir = tmp_path / "scenarios"
    with pytest.raises(ConfigError) as info:
        WORKLOADS.create("trace", {"path": "missing.csv", "format": "azure"}, base_dir=scenario_dir)
    assert str(scenario_dir / "missing.csv") in str(info.value)
    assert str(tmp_path / "missing.csv") in str(info.value)


# --- parameter validation: ConfigError naming the field --------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("poisson", {**SYNTHETIC["poisson"], "rate": -1}, "rate"),
        ("poisson", {**SYNTHETIC["poisson"], "duration_s": 0}, "duration_s"),
        ("poisson", {**SYNTHETIC["poisson"], "burst": 2}, "burst"),
        ("poisson", {"rate": 1, "duration_s": 1}, "lengths"),
        ("poisson", {**SYNTHETIC["poisson"], "lengths": {"name": "zipf"}}, "lengths"),
        (
            "poisson",
            {**SYNTHETIC["poisson"], "lengths": {**GEOM, "params": {**GEOM["params"], "prompt_mena": 3}}},
            "prompt_mena",
        ),
        (
            "poisson",
            {**SYNTHETIC["poisson"], "lengths": {**GEOM, "params": {**GEOM["params"], "output_mean": 0.5}}},
            "output_mean",
        ),
        ("gamma", {**SYNTHETIC["gamma"], "cv": 0}, "cv"),
        ("mmpp", {**SYNTHETIC["mmpp"], "rates": [1, -2]}, "rates.1"),
        ("mmpp", {**SYNTHETIC["mmpp"], "mean_sojourn_s": [1, 2, 3]}, "mean_sojourn_s"),
        ("diurnal", {**SYNTHETIC["diurnal"], "peak_to_trough": 0.5}, "peak_to_trough"),
        ("trace", {"path": str(AZURE_CONV), "format": "csv"}, "format"),
        ("trace", {"path": str(AZURE_CONV), "format": "azure", "speedup": 0}, "speedup"),
        ("trace", {"path": str(AZURE_CONV), "format": "azure", "max_requests": 0}, "max_requests"),
    ],
)
def test_bad_params_name_the_field(name, params, field):
    with pytest.raises(ConfigError, match=rf"workload source '{name}'.*{field}"):
        WORKLOADS.create(name, params)


def test_unknown_source_type():
    with pytest.raises(UnknownNameError, match="unknown workload source 'bursty'.*poisson"):
        WORKLOADS.create("bursty", {})


def test_params_are_frozen():
    src = WORKLOADS.create("poisson", SYNTHETIC["poisson"])
    with pytest.raises(ValueError):
        src.params.rate = 9


# --- length distributions ---------------------------------------------------------------------------------


def test_geometric_means_and_support():
    p, o = GeometricLengths(prompt_mean=400, output_mean=80).sample(rng(7), 200_000)
    assert p.dtype == np.int64 and min(p.min(), o.min()) >= 1
    assert p.mean() == pytest.approx(400, rel=0.01) and o.mean() == pytest.approx(80, rel=0.01)
    assert o.std() == pytest.approx(np.sqrt((1 - 1 / 80) * 80**2), rel=0.02)  # geometric variance (1-p)/p^2
    p1, o1 = GeometricLengths(prompt_mean=1, output_mean=1).sample(rng(7), 10)
    assert set(p1.tolist()) == set(o1.tolist()) == {1}


def test_lognormal_median_and_caps():
    d = LognormalLengths(
        prompt_median=1000,
        prompt_sigma=1.0,
        output_median=200,
        output_sigma=0.5,
        max_prompt=4096,
        max_output=1000,
    )
    p, o = d.sample(rng(8), 100_000)
    assert np.median(p) == pytest.approx(1000, rel=0.03) and np.median(o) == pytest.approx(200, rel=0.03)
    assert p.max() == 4096 and o.max() <= 1000 and min(p.min(), o.min()) >= 1
    wide = LognormalLengths(prompt_median=1, prompt_sigma=30, output_median=1, output_sigma=30)
    p, o = wide.sample(rng(8), 1000)  # no cap given: still no overflow and no zeros
    assert p.min() >= 1 and p.max() < 2**31


def test_uniform_bounds_inclusive():
    p, o = UniformLengths(prompt_min=5, prompt_max=7, output_min=1, output_max=1).sample(rng(9), 3000)
    assert set(p.tolist()) == {5, 6, 7} and set(o.tolist()) == {1}
    with pytest.raises(ConfigError, match="prompt_max"):
        parse_lengths(
            {
                "name": "uniform",
                "params": {"prompt_min": 9, "prompt_max": 3, "output_min": 1, "output_max": 2},
            }
        )


def test_empirical_keeps_pairs_from_the_trace(tmp_path):
    table = read_azure_csv(AZURE_CONV)
    pairs = set(zip(table.prompt_tokens.tolist(), table.output_tokens.tolist(), strict=True))
    d = EmpiricalLengths(path=str(AZURE_CONV), format="azure")
    p, o = d.sample(rng(10), 50_000)
    drawn = list(zip(p.tolist(), o.tolist(), strict=True))
    assert set(drawn) <= pairs
    assert len(set(drawn)) > 0.9 * len(pairs)  # resamples the whole trace, not a corner of it
    # Joint resampling keeps the prompt/output correlation; independent draws would give ~0.
    real = np.corrcoef(table.prompt_tokens, table.output_tokens)[0, 1]
    assert np.corrcoef(p, o)[0, 1] == pytest.approx(real, abs=0.03)


def test_empirical_path_resolves_against_base_dir(tmp_path):
    shutil.copy(AZURE_CONV, tmp_path / "conv.csv")
    params = {
        **SYNTHETIC["poisson"],
        "lengths": {"name": "empirical", "params": {"path": "conv.csv", "format": "azure"}},
    }
    reqs = WORKLOADS.create("poisson", params, base_dir=tmp_path).requests(rng(11))
    assert reqs and all(r.prompt_tokens >= 2 for r in reqs)  # the trace's minimum prompt is 2
    with pytest.raises(ConfigError, match="conv.csv"):
        WORKLOADS.create("poisson", params, base_dir=tmp_path / "elsewhere")


def test_parse_lengths_errors_name_the_field():
    with pytest.raises(ConfigError, match="lognormal.*prompt_sigma"):
        parse_lengths(
            {
                "name": "lognormal",
                "params": {
                    "prompt_median": 10,
                    "prompt_sigma": -1,
                    "output_median": 5,
                    "output_sigma": 1,
                },
            }
        )
    with pytest.raises(ConfigError, match="extra"):
        parse_lengths({**FIXED, "params": {**FIXED["params"], "extra": 1}})
    with pytest.raises(ConfigError, match=r"expected \{name, params\}"):
        parse_lengths({**FIXED, "extra": 1})


# --- summary and an invariant over random configurations -------------------------------------------------


def test_summarize():
    reqs = WORKLOADS.create("trace", {"path": str(AZURE_CONV), "format": "azure"}).requests(rng())
    s = summarize(reqs)
    assert s["count"] == 9739 and s["span_s"] == pytest.approx(1750.8, abs=0.05)
    assert s["rate_per_s"] == pytest.approx(5.56, abs=0.005)
    assert s["prompt_p50"] == 1035 and s["prompt_p99"] == pytest.approx(4122)
    assert s["output_mean"] == pytest.approx(221.3, abs=0.05)
    assert summarize([])["count"] == 0


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(sorted(SYNTHETIC)),
    rate=st.floats(0.0, 20.0),
    duration=st.floats(0.1, 60.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_source_yields_valid_requests(name, rate, duration, seed):
    params = {**SYNTHETIC[name], "duration_s": duration}
    params |= (
        {"mean_rate": rate}
        if name == "diurnal"
        else {"rates": [rate, 0]}
        if name == "mmpp"
        else {"rate": rate}
    )
    reqs = WORKLOADS.create(name, params).requests(rng(seed))
    assert [r.id for r in reqs] == list(range(len(reqs)))
    times = [r.arrival_s for r in reqs]
    assert times == sorted(times) and all(0 <= t < duration for t in times)
