"""The failures experiment's measures (experiments/failures.py) on hand-made request tables, and its
scenario files (they load, and their failure windows are where the doc says)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fleettwin.experiments.failures import CASES, failure_window, load_case, p99, time_to_recover


def table(e2e_by_minute: dict[int, float], per_minute: int = 20) -> pd.DataFrame:
    rows = [
        (m * 60.0 + 60.0 * k / per_minute, e) for m, e in e2e_by_minute.items() for k in range(per_minute)
    ]
    return pd.DataFrame(rows, columns=["arrival_s", "e2e_s"])


def test_time_to_recover_is_the_first_minute_within_ten_percent_of_the_baseline():
    base = table({m: 10.0 for m in range(10)})
    hit = table({**{m: 10.0 for m in range(10)}, 3: 50.0, 4: 30.0, 5: 11.5, 6: 10.9, 7: 40.0})
    assert time_to_recover(hit, base, end=180.0, horizon=600.0) == 180.0  # minute 6 (11.5 > 11 at minute 5)
    assert time_to_recover(hit, base, end=360.0, horizon=600.0) == 0.0
    assert math.isnan(time_to_recover(table({m: 99.0 for m in range(10)}), base, end=0.0, horizon=600.0))


def test_p99_needs_enough_requests_and_uses_the_arrival_window():
    df = table({0: 1.0, 1: 2.0}, per_minute=20)
    assert p99(df, 60.0, 120.0) == pytest.approx(2.0)
    assert math.isnan(p99(df, 0.0, 27.0))  # 9 requests (one every 3 s): fewer than the minimum of 10
    assert not math.isnan(p99(df, 0.0, 27.01))
    assert p99(df, 0.0, 120.0) == pytest.approx(np.percentile([1.0] * 20 + [2.0] * 20, 99))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_scenario_files_load_and_put_the_failures_at_the_east_peak(case):
    full, quick = load_case(case, quick=False), load_case(case, quick=True)
    assert failure_window(full) in ((1050.0, 1350.0), (1200.0, 1500.0))
    assert quick.workload.params["rate"] == pytest.approx(full.workload.params["rate"] / 4)
    assert [p.replicas for p in quick.pools] == [max(1, round(p.replicas / 4)) for p in full.pools]
    assert full.failures.truncation.name == "truncate"
