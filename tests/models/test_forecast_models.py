"""Each forecaster: recovers known seasonality, calibrated quantiles, fallbacks, gaps, bad input, update()."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fleettwin.models.forecast.lstm as lstm_module
from fleettwin.models.errors import ConfigError, FleettwinError, UnknownNameError
from fleettwin.models.forecast import FORECASTERS, Forecast
from fleettwin.models.forecast.backtest import ModelSpec, iter_backtest, rolling_origins, score

HOUR = 3600.0  # tests use hourly buckets: a daily season of 24 keeps every fit well under a second
DAY = 24
SEASONAL = [
    "seasonal_naive",
    "seasonal_naive_weekly",
    "level_seasonal_naive",
    "holt_winters",
    "sarimax",
    "lstm",
    "mstl",
    "auto_theta",
    "lightgbm",
    "ensemble",
]
FAST_LSTM = {"horizon": "1d", "epochs": 15, "hidden": 16}


def synthetic(
    days: int = 14,
    *,
    level: float = 1000.0,
    amp: float = 0.5,
    noise: float = 0.05,
    seed: int = 0,
    extra: int = DAY,
) -> tuple[np.ndarray, np.ndarray]:
    """Daily sinusoid times log-normal noise; returns (observed history, true mean of the next ``extra``)."""
    n = days * DAY
    t = np.arange(n + extra)
    lam = level * (1 + amp * np.sin(2 * np.pi * t / DAY) + 0.2 * np.cos(4 * np.pi * t / DAY))
    y = lam * np.exp(np.random.default_rng(seed).normal(0, noise, n + extra) - noise**2 / 2)
    return y, lam


def create(name: str, **params) -> object:
    if name == "lstm":
        params = {**FAST_LSTM, **params}
    return FORECASTERS.create(name, params, bucket_s=HOUR)


def test_registry_lists_all_and_rejects_bad_names_and_params():
    assert {"naive", "auto_ets", "auto_arima", *SEASONAL} <= set(FORECASTERS.names())
    with pytest.raises(UnknownNameError, match="expected one of"):
        FORECASTERS.create("prophet", {}, bucket_s=HOUR)
    with pytest.raises(ConfigError, match="fourier"):
        FORECASTERS.create("sarimax", {"fourier": "many"}, bucket_s=HOUR)
    with pytest.raises(ConfigError, match="Extra inputs"):
        FORECASTERS.create("holt_winters", {"seasonality": 3}, bucket_s=HOUR)
    with pytest.raises(UnknownNameError):
        FORECASTERS.create("ensemble", {"members": [{"model": "nope"}]}, bucket_s=HOUR)
    with pytest.raises(ConfigError, match="whole number"):
        FORECASTERS.create("seasonal_naive", {"period": "90min"}, bucket_s=HOUR).fit(np.ones(100))


@pytest.mark.parametrize("name", SEASONAL)
def test_recovers_known_seasonality(name):
    y, lam = synthetic()
    n = 14 * DAY
    fc = create(name).fit(y[:n]).predict(DAY)
    assert isinstance(fc, Forecast) and fc.horizon == DAY and fc.model == name
    truth = lam[n : n + DAY]
    mape = np.mean(np.abs(fc.mean - truth) / truth)
    assert mape < (0.10 if "seasonal_naive" in name else 0.06), f"{name}: MAPE {mape:.3f}"
    assert np.all(fc.p10 <= fc.p50) and np.all(fc.p50 <= fc.p90) and np.all(fc.p10 >= 0)


def test_naive_recovers_a_level():
    y = 500 * np.exp(np.random.default_rng(1).normal(0, 0.02, 200))
    fc = create("naive").fit(y).predict(6)
    np.testing.assert_allclose(fc.mean, y[-1])
    assert np.all(fc.p90 > 500 * 1.01)


@pytest.mark.parametrize("name", ["seasonal_naive", "holt_winters", "sarimax", "lstm"])
def test_p90_coverage_near_nominal(name):
    y, _ = synthetic(days=17, extra=0, seed=3)
    step = 8 if name in ("lstm", "sarimax") else 5
    origins = rolling_origins(len(y), first=12 * DAY, horizon=DAY, step=step)
    params = FAST_LSTM if name == "lstm" else {}
    results = list(
        iter_backtest(
            y, [ModelSpec(alias=name, name=name, params=params)], bucket_s=HOUR, origins=origins, horizon=DAY
        )
    )
    coverage = score(y, results, [DAY])["coverage_p90"].iloc[0]
    assert 0.78 <= coverage <= 0.98, f"{name}: p90 coverage {coverage:.3f}"


def test_lstm_is_deterministic_under_a_seed():
    y, _ = synthetic(days=10)
    a = create("lstm", seed=7).fit(y[:240]).predict(DAY)
    b = create("lstm", seed=7).fit(y[:240]).predict(DAY)
    c = create("lstm", seed=8).fit(y[:240]).predict(DAY)
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.p90, b.p90)
    assert not np.array_equal(a.mean, c.mean)


def test_lstm_without_torch_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(lstm_module, "torch_available", lambda: False)
    with pytest.raises(FleettwinError, match=r"pip install 'fleettwin\[lstm\]' torch==2.13.0"):
        FORECASTERS.create("lstm", {}, bucket_s=HOUR)


@pytest.mark.parametrize("name", SEASONAL)
def test_short_history_falls_back_and_says_so(name):
    y, _ = synthetic(days=1)
    fc = create(name).fit(y[:15]).predict(6)
    assert np.all(np.isfinite(fc.mean)) and fc.horizon == 6
    assert fc.notes, f"{name} should say which fallback it used"
    assert any("short" in n or "last value" in n or "season" in n for n in fc.notes)
    assert np.all(np.abs(fc.mean - y[14]) < 0.8 * y[14])


@pytest.mark.parametrize("name", ["naive", *SEASONAL])
def test_bad_input_is_a_clear_error(name):
    model = create(name)
    with pytest.raises(FleettwinError, match="negative"):
        model.fit([5.0, -1.0, 3.0])
    with pytest.raises(FleettwinError, match="no observed"):
        model.fit([np.nan, np.nan])
    with pytest.raises(FleettwinError, match="no observed"):
        model.fit([])
    with pytest.raises(FleettwinError, match="before fit"):
        create(name).predict(3)
    y, _ = synthetic(days=3)
    with pytest.raises(FleettwinError, match="at least one bucket"):
        model.fit(y[:72]).predict(0)


@pytest.mark.parametrize("name", SEASONAL)
def test_gaps_are_masked_not_zero_demand(name):
    y, lam = synthetic()
    n = 14 * DAY
    holey = y[:n].copy()
    holey[n - 30 : n - 18] = np.nan  # half a day missing, including the same hours one season before
    holey[100:110] = np.nan
    fc = create(name).fit(holey).predict(DAY)
    truth = lam[n : n + DAY]
    assert np.mean(np.abs(fc.mean - truth) / truth) < 0.12, "a gap must not read as zero demand"


def test_fit_failure_uses_the_fallback(monkeypatch):
    model = create("sarimax")

    def boom(y):
        raise np.linalg.LinAlgError("singular matrix")

    monkeypatch.setattr(model, "_fit", boom)
    y, _ = synthetic(days=3)
    fc = model.fit(y[:72]).predict(DAY)
    assert any("fit failed" in n and "LinAlgError" in n for n in fc.notes)
    assert fc.fallback is not None and "LinAlgError" in fc.fallback
    np.testing.assert_allclose(fc.mean, y[71])  # the last value


def test_update_matches_a_refit_for_seasonal_naive_and_tracks_for_sarimax():
    y, _ = synthetic(days=12)
    n = 10 * DAY
    sn = create("seasonal_naive").fit(y[:n]).update(y[n : n + 5])
    np.testing.assert_allclose(
        sn.predict(DAY).mean, create("seasonal_naive").fit(y[: n + 5]).predict(DAY).mean
    )
    # SARIMAX between refits only re-filters; with a capped window the Fourier phase must stay aligned.
    cheap = create("sarimax", refit_every="1d", max_history="7d").fit(y[:n])
    for k in range(n, n + 10, 2):
        cheap.update(y[k : k + 2])
    assert cheap.offset_ == 3 * DAY + 10 and len(cheap.y_) == 7 * DAY
    full = create("sarimax", max_history="7d").fit(y[: n + 10])
    np.testing.assert_allclose(cheap.predict(DAY).mean, full.predict(DAY).mean, rtol=0.03)
    refit = create("sarimax", refit_every="4h", max_history="7d").fit(y[:n]).update(y[n : n + 10])
    np.testing.assert_allclose(refit.predict(DAY).mean, full.predict(DAY).mean, rtol=0.03)


def test_ensemble_weights_favour_the_better_member():
    y, lam = synthetic()
    ens = create(
        "ensemble",
        members=[{"model": "seasonal_naive"}, {"model": "naive"}],
        conformal={"span": "2d", "windows": 6, "horizon": "1d"},
    )
    fc = ens.fit(y[: 14 * DAY]).predict(DAY)
    assert ens.weights_[0] > 0.9
    assert np.mean(np.abs(fc.mean - lam[14 * DAY : 15 * DAY]) / lam[14 * DAY : 15 * DAY]) < 0.1
    ens.update(y[14 * DAY : 14 * DAY + 3])  # scores the pending forecasts and keeps the weights sane
    assert ens.weights_.sum() == pytest.approx(1) and ens.weights_[0] > 0.8
    with pytest.raises(ConfigError):
        create("ensemble", members=[])


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.one_of(st.floats(0, 1e6), st.just(float("nan"))), min_size=1, max_size=120),
    st.integers(1, 30),
    st.sampled_from(["naive", "seasonal_naive"]),
)
def test_forecast_is_nonnegative_and_ordered(values, h, name):
    if all(np.isnan(values)):
        return
    fc = create(name).fit(values).predict(h)
    assert fc.horizon == h
    for arr in (fc.mean, fc.p10, fc.p50, fc.p90):
        assert np.all(np.isfinite(arr)) and np.all(arr >= 0)
    assert np.all(fc.p10 <= fc.p50) and np.all(fc.p50 <= fc.p90)


def test_lightgbm_backcasts_in_one_batch_match_one_origin_at_a_time():
    """The calibration's batched recursive predict (one series per origin) gives each origin's own
    forecast."""
    y, _ = synthetic(days=8)
    model = create("lightgbm", n_estimators=20).fit(y[: 5 * DAY])
    origins = np.array([5 * DAY, 5 * DAY + 7, 6 * DAY, 8 * DAY - 1])
    one_by_one = np.vstack([model._forward(y[:t], 12) for t in origins])
    np.testing.assert_allclose(model._forward_many(y, origins, 12), one_by_one, rtol=1e-12)


def test_ensemble_members_reuse_the_fits_of_the_same_models_on_a_history_with_zero_gaps(monkeypatch):
    """The ensemble hands its members the gap-masked history, the backtest the raw one: still one fit each."""
    from fleettwin.models.forecast.base import Forecaster, shared_fits

    y, _ = synthetic(days=6)
    y[40:44] = 0  # a collection outage, masked as a gap
    fits: list[str] = []
    real = Forecaster._fit_from
    monkeypatch.setattr(
        Forecaster,
        "_fit_from",
        lambda self, arr, offset: fits.append(self.alias) or real(self, arr, offset=offset),
    )
    members = [{"model": "naive"}, {"model": "auto_theta"}]
    with shared_fits():
        for name in ("naive", "auto_theta"):
            create(name).fit(y).predict(12)
        fc = create("ensemble", members=members).fit(y).predict(12)
    assert fits.count("auto_theta") == 1  # (the member naive is calibrated, the baseline is not: two fits)
    assert any("masked as gaps" in n for n in fc.notes)
