"""tools/forecast_headroom.py, the diagnostic behind docs/forecasting.md's headroom table: it must find a
daily cycle where there is one and find nothing to gain on a random walk."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

_spec = importlib.util.spec_from_file_location(
    "forecast_headroom", Path(__file__).parents[1] / "tools" / "forecast_headroom.py"
)
headroom_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(headroom_tool)

DAYS = 5
BUCKETS = np.arange(DAYS * 144)


def test_a_daily_cycle_is_found():
    rng = np.random.default_rng(1)
    cycle = 1000 * (1.5 + np.sin(2 * np.pi * BUCKETS / 144)) * rng.lognormal(0, 0.03, len(BUCKETS))
    out = headroom_tool.headroom(pd.Series(cycle))
    for h in ("2h", "4h"):
        assert out[h]["yesterday"] < 0.5 and out[h]["ridge"] < 0.8, out[h]


def test_a_random_walk_has_nothing_to_gain():
    rng = np.random.default_rng(2)
    walk = 1000 * np.exp(np.cumsum(rng.normal(0, 0.05, len(BUCKETS))))
    out = headroom_tool.headroom(pd.Series(walk))
    for h in ("2h", "4h"):
        assert min(out[h][k] for k in ("mean_3", "mean_6", "mean_12", "yesterday", "ridge")) > 0.93, out[h]
        assert 0.5 < out[h]["variance_ratio"] < 1.6, out[h]
