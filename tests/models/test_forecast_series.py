"""Counts loader, durations, re-bucketing and gap handling (fleettwin.models.forecast.series)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleettwin.models.errors import ConfigError, FleettwinError, TraceFormatError
from fleettwin.models.forecast.series import (
    aggregate_requests,
    check_history,
    fill_gaps,
    mask_zeros,
    parse_duration,
    read_counts_csv,
    rebucket,
    to_buckets,
)


def write(tmp_path, text: str, name: str = "c.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "text,seconds",
    [("30s", 30), ("5min", 300), ("2h", 7200), ("1d", 86400), ("1w", 604800), (600, 600), ("1.5h", 5400)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "5 parsecs", "-1h", "0s"])
def test_parse_duration_rejects(text):
    with pytest.raises(ConfigError):
        parse_duration(text)


def test_to_buckets_needs_whole_buckets():
    assert to_buckets("2h", 600) == 12
    with pytest.raises(ConfigError, match="whole number"):
        to_buckets("7min", 300)


def test_read_counts_with_tokens_and_missing_rows(tmp_path):
    path = write(
        tmp_path, "timestamp_s,requests,prompt_tokens,output_tokens\n0,5,50,10\n60,6,60,12\n180,7,70,14\n"
    )
    s = read_counts_csv(path)
    assert s.bucket_s == 60 and len(s) == 4
    np.testing.assert_array_equal(s.requests[[0, 1, 3]], [5, 6, 7])
    assert np.isnan(s.requests[2]) and np.isnan(s.prompt_tokens[2])  # the absent row is a gap, not zero
    assert s.output_tokens[3] == 14 and s.gaps == 1 and "gaps" in s.notes[0]


def test_read_counts_nan_cell_is_gap(tmp_path):
    s = read_counts_csv(write(tmp_path, "timestamp_s,requests\n0,1\n10,\n20,nan\n30,4\n"))
    assert s.gaps == 2 and s.prompt_tokens is None


@pytest.mark.parametrize(
    "body,line,match",
    [
        ("timestamp_s,requests\n0,1\n60,-3\n", 3, "negative"),
        ("timestamp_s,requests\n0,1\n60,abc\n", 3, "not a number"),
        ("timestamp_s,requests\n0,1\n60,2\n60,3\n", 4, "not after"),
        ("timestamp_s,requests\n0,1\n60,2\n150,3\n", 4, "grid"),
        ("timestamp_s,requests\n0,1\n60\n", 3, "expected 2 fields"),
        ("time,count\n0,1\n", 1, "header"),
        ("timestamp_s,requests\n0,1\n", 2, "two rows"),
        ("timestamp_s,requests\n0,1\n60,inf\n", 3, "not finite"),
    ],
)
def test_read_counts_errors_name_the_line(tmp_path, body, line, match):
    path = write(tmp_path, body)
    with pytest.raises(TraceFormatError, match=match) as err:
        read_counts_csv(path)
    assert err.value.line == line and str(err.value).startswith(f"{path}:{line}:")


def test_read_counts_missing_file():
    with pytest.raises(FleettwinError, match="cannot read"):
        read_counts_csv("/nonexistent/counts.csv")


def test_real_trace_copies_load():
    s = read_counts_csv("traces/servegen_m_mid/requests_per_10min.csv")
    assert s.bucket_s == 600 and len(s) == 1411 and s.gaps == 0
    masked = mask_zeros(s)
    assert masked.gaps == 40  # the 40 zero bins that SOURCE.md lists as collection gaps
    nasa = rebucket(read_counts_csv("traces/nasa_http_jul95/requests_per_minute.csv"), 600)
    assert nasa.bucket_s == 600 and len(nasa) == 27784 // 10
    assert np.nansum(nasa.requests) == pytest.approx(1420758 - 35, abs=2000)


def test_rebucket_sums_and_propagates_gaps():
    from fleettwin.models.forecast.series import CountSeries

    s = CountSeries(start_s=0, bucket_s=60, requests=np.array([1, 2, 3, np.nan, 5, 6, 7.0]))
    r = rebucket(s, 180)
    assert r.bucket_s == 180
    np.testing.assert_array_equal(r.requests[:1], [6])
    assert np.isnan(r.requests[1])  # a coarse bucket with a missing part is missing, not undercounted
    assert "partial" in r.notes[0]
    with pytest.raises(ConfigError):
        rebucket(s, 90)
    with pytest.raises(ConfigError):
        rebucket(s, 30)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=200), st.integers(1, 7))
def test_rebucket_conserves_requests(counts, k):
    from fleettwin.models.forecast.series import CountSeries

    s = CountSeries(start_s=0, bucket_s=10, requests=np.array(counts, dtype=float))
    if len(counts) < k:
        with pytest.raises(FleettwinError):
            rebucket(s, 10 * k)
        return
    r = rebucket(s, 10 * k)
    assert r.requests.sum() == sum(counts[: len(r) * k])


def test_check_history_rejects_negative_and_inf_keeps_nan():
    with pytest.raises(FleettwinError, match="negative"):
        check_history([1, -2, 3])
    with pytest.raises(FleettwinError, match="infinite"):
        check_history([1, np.inf])
    out = check_history([1, np.nan, 3])
    assert np.isnan(out[1])


def test_fill_gaps_uses_season_then_interpolates():
    y = np.array([1, 2, 3, 4, 1, np.nan, 3, 4, np.nan, np.nan], dtype=float)
    filled = fill_gaps(y, 4)
    assert filled[5] == 2 and filled[8] == 1 and filled[9] == 2
    no_season = fill_gaps(np.array([1, np.nan, 3.0]), None)
    assert no_season[1] == 2
    with pytest.raises(FleettwinError):
        fill_gaps(np.array([np.nan, np.nan]), None)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0, 100), min_size=10, max_size=300))
def test_aggregate_requests_counts_every_request(arrivals):
    arr = np.sort(np.array(arrivals))
    s = aggregate_requests(arr, np.ones_like(arr) * 3, None, bucket_s=7.5)
    assert s.requests.sum() == len(arr) and s.prompt_tokens.sum() == 3 * len(arr) and s.output_tokens is None
