"""The rolling-origin engine: no look-ahead, metrics, origins, and the backtest command end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fleettwin.cli import main
from fleettwin.models.errors import FleettwinError
from fleettwin.models.forecast.backtest import (
    COLUMNS,
    ModelSpec,
    OriginResult,
    forecasts_frame,
    iter_backtest,
    pinball,
    rolling_origins,
    score,
    smape,
)

HOUR = 3600.0
DAY = 24


def series(days: int = 8, seed: int = 0) -> np.ndarray:
    t = np.arange(days * DAY)
    lam = 800 * (1 + 0.5 * np.sin(2 * np.pi * t / DAY))
    return lam * np.exp(np.random.default_rng(seed).normal(0, 0.05, len(t)))


@pytest.mark.parametrize(
    "name,params",
    [
        ("seasonal_naive", {}),
        ("naive", {}),
        ("holt_winters", {}),
        ("sarimax", {}),
        ("lstm", {"horizon": "12h", "epochs": 5, "hidden": 8}),
        ("ensemble", {"members": [{"model": "seasonal_naive"}, {"model": "holt_winters"}]}),
        ("mstl", {}),
        ("auto_theta", {}),
        ("lightgbm", {"n_estimators": 20}),
    ],
)
def test_no_look_ahead(name, params):
    """Perturbing everything after an origin leaves every forecast made at or before it unchanged."""
    y = series()
    origins = rolling_origins(len(y), first=4 * DAY, horizon=12, step=16)
    cut = int(origins[len(origins) // 2])
    perturbed = y.copy()
    perturbed[cut:] = np.random.default_rng(99).uniform(0, 1e6, len(y) - cut)
    perturbed[cut + 3 : cut + 9] = np.nan
    spec = [ModelSpec(alias=name, name=name, params=params)]
    a = list(iter_backtest(y, spec, bucket_s=HOUR, origins=origins, horizon=12))
    b = list(iter_backtest(perturbed, spec, bucket_s=HOUR, origins=origins, horizon=12))
    checked = 0
    for ra, rb in zip(a, b, strict=True):
        if ra.origin <= cut:
            for field in ("mean", "p10", "p50", "p90"):
                np.testing.assert_array_equal(getattr(ra, field), getattr(rb, field))
            checked += 1
        else:
            # once the perturbation is in the past it shows (seasonal naive: at least in its residual band)
            assert not all(np.array_equal(getattr(ra, f), getattr(rb, f)) for f in ("mean", "p90"))
    assert checked >= 2


def test_rolling_origins():
    np.testing.assert_array_equal(rolling_origins(100, first=50, horizon=10, step=20), [50, 70, 90])
    np.testing.assert_array_equal(rolling_origins(100, first=50, horizon=10, step=20, last=75), [50, 70])
    with pytest.raises(FleettwinError, match="no origin"):
        rolling_origins(30, first=25, horizon=10, step=1)


def test_metrics_on_known_values():
    actual = np.array([10.0, 0.0, 20.0])
    assert smape(actual, np.array([10.0, 0.0, 10.0])).tolist() == pytest.approx([0, 0, 200 * 10 / 30])
    assert pinball(np.array([10.0]), np.array([8.0]), 0.9)[0] == pytest.approx(1.8)
    assert pinball(np.array([10.0]), np.array([12.0]), 0.9)[0] == pytest.approx(0.2)
    values = np.array([0, 0, 10, 20, np.nan, 40.0])
    res = [
        OriginResult(
            alias="m",
            origin=2,
            fit_seconds=0.5,
            mean=np.array([10, 10, 10, 10.0]),
            p10=np.zeros(4),
            p50=np.full(4, 10.0),
            p90=np.full(4, 25.0),
        )
    ]
    table = score(values, res, [2, 4])
    assert list(table.columns) == COLUMNS
    two, four = table.iloc[0], table.iloc[1]
    assert two["horizon_buckets"] == 2 and two["mae"] == 5 and two["coverage_p90"] == 1.0
    assert four["mae"] == pytest.approx((0 + 10 + 30) / 3)  # the gap is skipped, not scored as zero demand
    assert four["coverage_p90"] == pytest.approx(2 / 3) and four["fit_seconds"] == 0.5
    frame = forecasts_frame(values, res, start_s=100, bucket_s=60)
    assert frame["timestamp_s"].tolist() == [220, 280, 340, 400] and np.isnan(frame["actual"][2])


def test_parallel_jobs_give_identical_results():
    y = series(days=6)
    origins = rolling_origins(len(y), first=4 * DAY, horizon=6, step=12)
    spec = [ModelSpec(alias="sn", name="seasonal_naive"), ModelSpec(alias="nv", name="naive")]
    one = list(iter_backtest(y, spec, bucket_s=HOUR, origins=origins, horizon=6))
    two = list(iter_backtest(y, spec, bucket_s=HOUR, origins=origins, horizon=6, jobs=2))
    assert [(r.alias, r.origin) for r in one] == [(r.alias, r.origin) for r in two]
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a.p90, b.p90)


def write_counts(tmp_path, y: np.ndarray, bucket_s: float = 600) -> str:
    path = tmp_path / "counts.csv"
    pd.DataFrame({"timestamp_s": np.arange(len(y)) * bucket_s, "requests": np.round(y)}).to_csv(
        path, index=False
    )
    return str(path)


def backtest(trace, out, options: str, *args: str) -> int:
    """``fleettwin backtest --trace TRACE OPTIONS ARGS --out OUT``, its exit code; ``options`` as typed on a
    command line (split at spaces), ``args`` passed as they are (paths)."""
    return main(["backtest", "--trace", str(trace), *options.split(), *args, "--out", str(out)])


def test_cli_counts_end_to_end(tmp_path, capsys):
    t = np.arange(6 * 144)
    y = (
        1000
        * (1 + 0.5 * np.sin(2 * np.pi * t / 144))
        * np.exp(np.random.default_rng(0).normal(0, 0.05, len(t)))
    )
    y[500:510] = 0
    path = write_counts(tmp_path, y)
    out = tmp_path / "bt"
    options = "--format counts --bucket 20min --horizon 2h,4h --models naive,seasonal_naive,holt_winters"
    rc = backtest(path, out, options + " --warmup 3d --step 6h --zeros-as-gaps")
    assert rc == 0
    table = pd.read_csv(out / "backtest.csv")
    assert list(table.columns) == COLUMNS and len(table) == 6
    assert set(table["horizon_buckets"]) == {6, 12}
    best = table[table["horizon_buckets"] == 12].set_index("model")["smape"]
    assert best["seasonal_naive"] < best["naive"]
    assert (out / "backtest.png").stat().st_size > 10_000 and (out / "forecasts.csv").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left behind
    printed = capsys.readouterr().out
    assert "seasonal_naive" in printed and "origins" in printed and "masked as gaps" in printed


def test_cli_aliases_from_config(tmp_path):
    cfg = tmp_path / "f.yaml"
    cfg.write_text("forecasters:\n  weekly_sn: {model: seasonal_naive, params: {period: 2d}}\n")
    path = write_counts(tmp_path, np.tile(np.arange(1, 145.0), 6))
    options = "--horizon 1h --models weekly_sn --warmup 4d --step 12h --no-plot"
    rc = backtest(path, tmp_path / "o", options, "--config", str(cfg))
    assert rc == 0
    table = pd.read_csv(tmp_path / "o" / "backtest.csv")
    assert table["model"].tolist() == ["weekly_sn"] and table["smape"].iloc[0] == 0


@pytest.mark.parametrize(
    "args,message",
    [
        (["--models", "prophet"], "unknown forecaster 'prophet'"),
        (["--horizon", "7min"], "not a whole number"),
        (["--warmup", "30d"], "no origin"),
        (["--target", "prompt_tokens"], "no 'prompt_tokens' column"),
    ],
)
def test_cli_errors_are_one_clean_line(tmp_path, capsys, args, message):
    path = write_counts(tmp_path, np.full(600, 50.0))
    rc = main(
        ["backtest", "--trace", path, "--out", str(tmp_path / "o"), "--models", "naive", "--no-plot", *args]
    )
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err


def test_cli_bad_counts_file_names_the_line(tmp_path, capsys):
    path = tmp_path / "bad.csv"
    path.write_text("timestamp_s,requests\n0,5\n600,-1\n")
    assert main(["backtest", "--trace", str(path), "--out", str(tmp_path / "o")]) == 2
    assert f"{path}:3: requests -1 is negative" in capsys.readouterr().err


def test_cli_aggregates_a_request_trace(tmp_path):
    trace = "traces/azure2023_code/AzureLLMInferenceTrace_code.csv"
    options = "--format azure --bucket 1min --horizon 5min --warmup 15min --step 2min"
    rc = backtest(
        trace, tmp_path / "az", options + " --models naive,seasonal_naive --target prompt_tokens --no-plot"
    )
    assert rc == 0
    table = pd.read_csv(tmp_path / "az" / "backtest.csv")
    assert len(table) == 2 and table["mae"].notna().all()


def test_cli_defaults_run_both_baselines_report_skill_and_mask_zero_gaps(tmp_path, capsys):
    """No --models: the baselines and the recommended set; zeros of a busy series are gaps, not demand."""
    t = np.arange(5 * 144)
    y = (
        1e6
        * (1 + 0.4 * np.sin(2 * np.pi * t / 144))
        * np.exp(np.random.default_rng(2).normal(0, 0.05, len(t)))
    )
    y[400:406] = 0
    y[560:566] = 0
    path = write_counts(tmp_path, y)
    out = tmp_path / "bt"
    assert backtest(path, out, "--format counts --horizon 2h,4h --warmup 3d --step 12h") == 0
    table = pd.read_csv(out / "backtest.csv")
    from fleettwin.commands.backtest import RECOMMENDED

    assert set(table["model"]) == {"naive", "seasonal_naive", *RECOMMENDED}
    assert table.groupby("horizon_buckets")["best"].sum().tolist() == [1, 1]
    naive = table[table["model"] == "naive"]
    assert np.allclose(naive["smape_vs_naive"], 1.0) and naive["smape_vs_seasonal_naive"].notna().all()
    assert (table["max_over_series_max"] < 3).all()  # nothing explodes on the outages
    printed = capsys.readouterr().out
    assert "12 gaps" in printed and "vs naive" in printed and "best model (not a baseline)" in printed
    assert (out / "backtest.png").stat().st_size > 10_000
    # --zeros-are-demand keeps the zeros: they are scored (and the log-scale models must still not explode)
    options = "--format counts --horizon 2h --warmup 3d --step 12h --models naive,auto_ets"
    assert backtest(path, tmp_path / "z", options + " --zeros-are-demand --no-plot") == 0
    assert "0 gaps (zeros kept as demand)" in capsys.readouterr().out
    assert (pd.read_csv(tmp_path / "z" / "backtest.csv")["max_over_series_max"] < 3).all()
