"""Fidelity against Vidur on one small side-by-side case (same requests, same operator tables).

Slow (Vidur takes tens of seconds, and trains its predictors on first use) and skipped when Vidur is absent:
    VIDUR_VENV=/work/vidur-venv .venv/bin/python -m pytest -m slow tests/sim/test_fidelity.py
The bands are those ``docs/validation.md`` explains for a light load, where both simulators batch alike.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "vs_vidur.py"


def _bench():
    spec = importlib.util.spec_from_file_location("vs_vidur", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["vs_vidur"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_light_load_matches_vidur():
    bench = _bench()
    if not bench.vidur_available():
        pytest.skip(f"Vidur not installed at {bench.vidur_python()} (set VIDUR_VENV)")
    work = Path(
        os.environ.get("FLEETTWIN_VIDUR_WORK", "/tmp/fleettwin-vs-vidur")
    )  # keeps Vidur's trained cache
    work.mkdir(parents=True, exist_ok=True)
    row = bench.compare(n=300, qps=1.0, seed=1, work=work)
    assert abs(row["ttft_p50_diff"]) < 0.10, row
    assert abs(row["e2e_p50_diff"]) < 0.10, row
    assert abs(row["e2e_p95_diff"]) < 0.10, row
    assert row["speed_ratio"] > 1.0, row  # fleettwin is faster, by a wide margin (docs/validation.md)
