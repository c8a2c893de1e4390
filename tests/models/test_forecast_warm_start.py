"""Issue 17: the forecast allocator warm-started from a history file, its forecasters kept between decisions,
and a fallback said once on the console and counted in the summary."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from fleettwin.models.allocators.common import FALLBACK_NOTE, ForecastSettings, ForecastTracker, forecast_peak
from fleettwin.models.config import PolicyRef, load_scenario
from fleettwin.models.errors import ConfigError
from fleettwin.models.snapshot import FleetSnapshot, PoolState, ServingStats, Slo
from fleettwin.sim.runner import run_scenario

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "configs" / "experiments" / "multitier.yaml"
SMALL = {
    "workload.duration_s": 1200,
    "workload.mean_rate": 1,
    "pools.0.replicas": 1,
    "jobs": None,
    "controller.allocator": {
        "name": "forecast",
        "params": {
            "forecast": {
                "forecaster": {"name": "seasonal_naive", "params": {"period": "1d"}},
                "quantile": "p90",
                "provisioning_delay_s": 3300,
            },
            "capacity": {"measured": {"h100-80g/llama-3-70b/2": 1.55}},
        },
    },
}


def snapshot(rates: list[float | None], t: float) -> FleetSnapshot:
    serving = ServingStats(
        running=0, waiting=0, kv_usage=0.0, arrival_rate_history=tuple(rates), history_bucket_s=300.0
    )
    pool = PoolState(
        name="chat",
        tier="inference",
        region="default",
        gpu="h100-80g",
        purchase="on_demand",
        model="llama-3-8b",
        tp=1,
        gpus=(),
        serving=serving,
        slo=Slo(ttft_s=2.0, tpot_s=0.1),
    )
    return FleetSnapshot(time_s=t, control_interval_s=300.0, pools=(pool,), inventory=(), jobs=())


def test_tracker_updates_between_decisions_and_matches_a_refit():
    rng = np.random.default_rng(0)
    rates = list(10 + 5 * np.sin(2 * np.pi * np.arange(700) / 288) + rng.normal(0, 0.3, 700))
    settings = ForecastSettings(
        forecaster=PolicyRef(name="seasonal_naive", params={"period": "1d"}), provisioning_delay_s=3300
    )
    tracker = ForecastTracker()
    for k in range(600, 606):
        kept, _ = forecast_peak(
            settings, snapshot(rates[:k], 300.0 * k), snapshot(rates[:k], 0).pools[0], tracker
        )
        fresh, _ = forecast_peak(settings, snapshot(rates[:k], 300.0 * k), snapshot(rates[:k], 0).pools[0])
        assert kept == pytest.approx(fresh, rel=1e-9)
    model = tracker._state["chat"][0]
    assert len(model.y_) == 605  # grown by updates, not refit from the snapshot's window


def test_short_history_fallback_is_in_the_note():
    settings = ForecastSettings(provisioning_delay_s=600)
    peak, note = forecast_peak(settings, snapshot([5.0] * 10, 3000.0), snapshot([5.0] * 10, 0).pools[0])
    assert peak == pytest.approx(5.0, rel=0.3)
    assert FALLBACK_NOTE in note and "shorter than one season" in note


def test_cold_start_says_its_fallback_once_and_counts_it(capsys):
    cfg = load_scenario(SCENARIO, {**SMALL, "controller.prior_history_s": 0})
    res = run_scenario(cfg)
    err = capsys.readouterr().err
    assert err.count(FALLBACK_NOTE) == 1 and "shorter than one season" in err
    (entry,) = res.summary["controller"]["forecast_fallbacks"]
    assert entry["decisions"] == len(res.decisions) and entry["first_s"] == res.decisions[0]["time_s"]


def test_history_file_warm_start_forecasts_from_the_first_decision(tmp_path, capsys):
    path = tmp_path / "before.csv"
    t = np.arange(2 * 288)
    counts = 300 * (1 + 0.5 * np.sin(2 * np.pi * t / 288))
    path.write_text("timestamp_s,requests\n" + "".join(f"{i * 300},{c:.0f}\n" for i, c in enumerate(counts)))
    cfg = load_scenario(
        SCENARIO,
        {
            **SMALL,
            "controller.prior_history_s": 0,  # 0: all of the file (2 days)
            "controller.prior_history_path": str(path),
        },
    )
    res = run_scenario(cfg)
    assert res.decisions[0]["time_s"] == 0.0
    assert res.summary["controller"]["forecast_fallbacks"] == []
    assert FALLBACK_NOTE not in capsys.readouterr().err
    assert not any(FALLBACK_NOTE in n for d in res.decisions for n in d["notes"])


def test_history_file_shorter_than_asked_is_a_clear_error(tmp_path):
    path = tmp_path / "before.csv"
    path.write_text("timestamp_s,requests\n0,5\n300,6\n")
    cfg = load_scenario(
        SCENARIO, {**SMALL, "controller.prior_history_s": 86400, "controller.prior_history_path": str(path)}
    )
    with pytest.raises(ConfigError, match="longer than the file"):
        run_scenario(cfg)


def test_rate_series_warm_start_still_works():
    cfg = load_scenario(SCENARIO, SMALL)
    res = run_scenario(cfg)
    assert res.decisions[0]["time_s"] == 0.0 and not res.summary["controller"]["forecast_fallbacks"]
    assert math.isfinite(res.summary["cost"]["usd"])
