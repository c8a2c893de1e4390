"""Results pinned by hash across refactors: the quickstart and one scenario per feature must produce the same
per-request rows, time series, summaries and decisions as when tests/data/golden/hashes.json was recorded
(tests/golden_cases.py; re-record with tools/record_golden.py only for a deliberate change of results)."""

from __future__ import annotations

import json

import pytest

from tests.golden_cases import CASES, RECORD, run_case

RECORDED = json.loads(RECORD.read_text())


@pytest.mark.parametrize("name", sorted(CASES))
def test_results_unchanged(name):
    assert name in RECORDED, f"{name}: no recorded hashes; run tools/record_golden.py"
    assert run_case(name) == RECORDED[name]


def test_every_case_recorded():
    assert sorted(RECORDED) == sorted(CASES)
