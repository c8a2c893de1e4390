"""Shared hypothesis strategies for simulator tests."""

from __future__ import annotations

from hypothesis import strategies as st

from fleettwin.models.engine.queue import EngineLimits
from fleettwin.models.workload.request import Request


@st.composite
def engine_limits(draw) -> EngineLimits:
    block_size = draw(st.sampled_from([4, 16]))
    max_model_len = draw(st.integers(64, 512))
    num_blocks = draw(st.integers(-(-max_model_len // block_size), 200))
    chunked = draw(st.booleans())
    # Without chunking vLLM requires the budget to hold a whole max-length prompt.
    budget = draw(st.integers(32 if chunked else max_model_len, 512))
    return EngineLimits(
        num_blocks=num_blocks,
        block_size=block_size,
        max_num_seqs=draw(st.integers(1, 32)),
        max_num_batched_tokens=budget,
        max_model_len=max_model_len,
        enable_chunked_prefill=chunked,
        long_prefill_token_threshold=draw(st.sampled_from([0, 0, 48])),
    )


@st.composite
def workloads(draw, max_requests: int = 60) -> list[Request]:
    n = draw(st.integers(1, max_requests))
    gaps = draw(st.lists(st.floats(0.0, 0.5, allow_nan=False), min_size=n, max_size=n))
    lengths = draw(st.lists(st.tuples(st.integers(1, 400), st.integers(1, 200)), min_size=n, max_size=n))
    t = 0.0
    out = []
    for i, (gap, (prompt, output)) in enumerate(zip(gaps, lengths, strict=True)):
        t += gap
        out.append(Request(id=i, arrival_s=t, prompt_tokens=prompt, output_tokens=output))
    return out
