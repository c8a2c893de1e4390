"""workload.rate_scale and workload.loop_to_s: more or fewer requests over the same clock, and a window
repeated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleettwin.models.config import parse_scenario
from fleettwin.models.workload.request import Request
from fleettwin.models.workload.reshape import ReshapedRequests, reshape, window_s
from fleettwin.sim.runner import generate_requests

ROOT = Path(__file__).resolve().parents[2]
AZURE = ROOT / "traces" / "azure2023_conv" / "AzureLLMInferenceTrace_conv.csv"


def _reqs(times) -> list[Request]:
    return [
        Request(id=i, arrival_s=float(t), prompt_tokens=10 + i, output_tokens=5) for i, t in enumerate(times)
    ]


def _scenario(**workload) -> dict:
    return {
        "name": "r",
        "seed": 3,
        "workload": {"type": "trace", "path": str(AZURE), "format": "azure", **workload},
        "pools": [{"name": "chat", "gpu": "h100-80g", "model": "llama-3-8b", "replicas": 1}],
    }


def test_neutral_reshape_returns_the_requests_unchanged():
    reqs = _reqs([0, 1, 2])
    assert reshape(reqs, rng=np.random.default_rng(0)) is reqs
    base = generate_requests(parse_scenario(_scenario()), 3)
    same = generate_requests(parse_scenario(_scenario(rate_scale=1.0)), 3)
    assert list(base) == list(same)


def test_rate_scale_keeps_the_clock_and_scales_the_count():
    base = generate_requests(parse_scenario(_scenario()), 3)
    scaled = generate_requests(parse_scenario(_scenario(rate_scale=3.5)), 3)
    assert isinstance(scaled, ReshapedRequests)
    assert len(scaled) == pytest.approx(3.5 * len(base), rel=0.03)
    span = window_s(np.array([r.arrival_s for r in base]))
    times = np.array([r.arrival_s for r in scaled])
    assert times.min() >= 0 and times.max() < span  # same window: not compressed
    assert np.all(np.diff(times) >= 0) and [r.id for r in scaled[:5]] == [0, 1, 2, 3, 4]
    # every original request is still there (copy 0 is unshifted and never thinned above scale 1)
    assert {(r.arrival_s, r.prompt_tokens) for r in base} <= {(r.arrival_s, r.prompt_tokens) for r in scaled}


def test_thinning_below_one_and_seeded():
    a = generate_requests(parse_scenario(_scenario(rate_scale=0.25)), 3)
    b = generate_requests(parse_scenario(_scenario(rate_scale=0.25)), 3)
    c = generate_requests(parse_scenario(_scenario(rate_scale=0.25)), 4)
    assert list(a) == list(b) and list(a) != list(c)
    assert len(a) == pytest.approx(0.25 * 9739, rel=0.05)


@settings(max_examples=25, deadline=None)
@given(st.floats(0.1, 4.0), st.floats(0.1, 4.0))
def test_a_higher_scale_contains_the_lower_ones_requests(s1, s2):
    """Common random numbers: the searches bisect on the rate, so scales must nest."""
    lo, hi = sorted((s1, s2))
    reqs = _reqs(np.sort(np.random.default_rng(1).uniform(0, 100, 200)))
    a = reshape(reqs, rng=np.random.default_rng(7), rate_scale=lo)
    b = reshape(reqs, rng=np.random.default_rng(7), rate_scale=hi)
    pa = {(r.prompt_tokens, round(r.arrival_s, 9)) for r in a}
    pb = {(r.prompt_tokens, round(r.arrival_s, 9)) for r in b}
    assert pa <= pb


def test_loop_to_s_repeats_the_window_to_the_duration():
    reqs = _reqs([0.0, 1.0, 2.0, 3.0])  # window 4 s (last arrival + one mean gap)
    looped = reshape(reqs, rng=np.random.default_rng(0), loop_to_s=10.0)
    assert [r.arrival_s for r in looped] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert [r.prompt_tokens for r in looped][4:8] == [10, 11, 12, 13]
    cfg = parse_scenario(_scenario(loop_to_s=7200, max_requests=None))
    day = generate_requests(cfg, 3)
    assert day[len(day) - 1].arrival_s < 7200 and len(day) == pytest.approx(9739 * 7200 / 1752, rel=0.02)


def test_reshaped_sequence_behaves_like_a_list():
    seq = reshape(_reqs([0, 1, 2, 3]), rng=np.random.default_rng(0), rate_scale=2.0)
    assert len(seq[1:3]) == 2 and seq[-1].id == len(seq) - 1
    with pytest.raises(IndexError):
        seq[len(seq)]


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("rate_scale", 0, "workload.rate_scale: Input should be greater than 0"),
        ("loop_to_s", -5, "workload.loop_to_s: Input should be greater than 0"),
    ],
)
def test_bad_reshape_values_name_the_field(key, value, message):
    from fleettwin.models.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        parse_scenario(_scenario(**{key: value}), source="s.yaml")
