"""Closed-form decode runs agree with iteration-by-iteration sums."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleettwin.models.catalog import Catalog
from fleettwin.models.engine.decode_run import AffineRun, ArrayRun
from fleettwin.models.perf import PERF_MODELS, DecodeCost

positive = st.floats(1e-4, 0.05)
slope = st.floats(0.0, 1e-4)


@settings(max_examples=300, deadline=None)
@given(
    base=positive,
    a1=positive,
    b1=slope,
    a2=positive,
    b2=slope,
    steps=st.integers(1, 3000),
    start=st.floats(0, 1e5),
    probes=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=8),
)
def test_affine_run_matches_the_array_of_iteration_times(base, a1, b1, a2, b2, steps, start, probes):
    cost = DecodeCost(base=base, lines=((a1, b1), (a2, b2)))
    k = np.arange(steps)
    durations = base + np.maximum(a1 + b1 * k, a2 + b2 * k)
    exact, closed = ArrayRun(start, durations), AffineRun(start, steps, cost)
    last = exact.end(steps - 1)
    for j in {0, steps // 3, steps // 2, steps - 1}:
        assert closed.end(j) == pytest.approx(exact.end(j), rel=1e-12, abs=1e-12)
    for p in probes:
        t = start + p * (last - start)
        j = closed.first_end_at_or_after(t)
        # The boundary found is the array's, up to ties within float rounding of the sums.
        assert closed.end(j) >= t or j == steps - 1
        assert j == 0 or closed.end(j - 1) < t
        tol = 1e-9 * max(1.0, abs(t))
        je = exact.first_end_at_or_after(t)
        tie = (j == je - 1 and abs(exact.end(j) - t) <= tol) or (
            j == je + 1 and abs(closed.end(je) - t) <= tol
        )
        assert (
            tie or abs(closed.end(j) - exact.end(je)) <= tol
        )  # a boundary within rounding of t may go either way
        assert abs(closed.started_by(t) - exact.started_by(t)) <= 1


@pytest.mark.parametrize(
    ("gpu", "model", "tp"),
    [("h100-80g", "llama-3-8b", 1), ("a100-80g", "llama-3-70b", 4), ("h200", "mixtral-8x7b", 2)],
)
def test_roofline_closed_form_equals_its_vectorised_decode_times(gpu, model, tp):
    cat = Catalog.default()
    perf = PERF_MODELS.create("roofline", {}, gpu=cat.gpu(gpu), llm=cat.llm(model), tp=tp)
    for n, ctx in ((1, 10), (64, 64 * 900), (256, 256 * 4000)):
        cost = perf.decode_cost(n, ctx)
        durations = perf.decode_times(n, ctx, 500)
        k = np.arange(500)
        closed = cost.base + np.max([a + b * k for a, b in cost.lines], axis=0)
        np.testing.assert_allclose(closed, durations, rtol=1e-12)
