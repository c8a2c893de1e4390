"""Performance models: the roofline's invariants and closed forms, the constant oracle, and the registry."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleettwin.models.catalog import Catalog
from fleettwin.models.errors import ConfigError
from fleettwin.models.perf import PERF_MODELS, BatchStats, PerformanceModel
from fleettwin.models.perf.roofline import RooflineModel

CAT = Catalog.default()
CONFIGS = [  # (gpu, llm, tp): dense, GQA, MoE, PCIe, two-node TP, MLA
    ("h100-80g", "llama-3-8b", 1),
    ("h100-80g", "llama-3-70b", 4),
    ("h200", "mixtral-8x7b", 2),
    ("l40s", "llama-2-13b", 2),
    ("h100-80g", "llama-3.1-405b", 16),
    ("h200", "deepseek-v3", 16),
]
FIELDS = [f.name for f in dataclasses.fields(BatchStats)]


def roofline(gpu: str, llm: str, tp: int, **params) -> RooflineModel:
    return PERF_MODELS.create("roofline", params, gpu=CAT.gpu(gpu), llm=CAT.llm(llm), tp=tp)


def _load_check_script():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "perf_model_check.py"
    spec = importlib.util.spec_from_file_location("perf_model_check", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


batches = st.builds(
    BatchStats,
    prefill_seqs=st.integers(0, 64),
    prefill_tokens=st.integers(0, 16_384),
    prefill_attn_pairs=st.floats(0, 1e8),
    prefill_ctx_tokens=st.integers(0, 200_000),
    decode_seqs=st.integers(0, 512),
    decode_ctx_tokens=st.integers(0, 2_000_000),
)


# ------------------------------------------------------------------------------------------- roofline


@settings(max_examples=300, deadline=None)
@given(
    config=st.sampled_from(CONFIGS),
    batch=batches,
    field=st.sampled_from(FIELDS),
    extra=st.integers(1, 10_000),
)
def test_roofline_is_monotone_in_every_batch_field(config, batch, field, extra):
    model = roofline(*config)
    bigger = dataclasses.replace(batch, **{field: getattr(batch, field) + extra})
    assert model.step_time(bigger) >= model.step_time(batch)


@settings(max_examples=100, deadline=None)
@given(
    config=st.sampled_from(CONFIGS),
    num_seqs=st.integers(0, 512),
    ctx=st.integers(0, 1_000_000),
    steps=st.integers(0, 300),
)
def test_vectorised_decode_times_match_looping_step_time(config, num_seqs, ctx, steps):
    model = roofline(*config)
    fast = model.decode_times(num_seqs, ctx, steps)
    slow = PerformanceModel.decode_times(model, num_seqs, ctx, steps)  # the base class loops over step_time
    assert fast.shape == (steps,)
    np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=0)


def test_empty_batch_costs_nothing():
    assert roofline("h100-80g", "llama-3-8b", 1).step_time(BatchStats()) == 0.0
    assert not roofline("h100-80g", "llama-3-8b", 1).decode_times(0, 0, 5).any()


def test_single_sequence_decode_is_a_weight_read_closed_form():
    m = CAT.llm("llama-3-8b")
    model = roofline("h100-80g", "llama-3-8b", 1)
    ctx = 1000
    weights = (m.params - m.embedding_params) * 2  # the input embedding is gathered, not streamed
    kv = (ctx + 1) * 128 * 1024
    expected = 2e-3 + (weights + kv) / (3.35e12 * 0.8)
    assert model.step_time(BatchStats(decode_seqs=1, decode_ctx_tokens=ctx)) == pytest.approx(
        expected, rel=1e-12
    )


def test_large_prefill_is_compute_bound_closed_form():
    m = CAT.llm("llama-3-8b")
    model = roofline("h100-80g", "llama-3-8b", 1)
    batch = BatchStats()
    batch.add_prefill(8192, 0)
    flops = 2 * m.nonembedding_active_params * 8192 + m.attention_flops_per_pair * batch.prefill_attn_pairs
    flops += m.lm_head_flops
    assert model.step_time(batch) == pytest.approx(2e-3 + flops / (989e12 * 0.6), rel=1e-12)


def test_tensor_parallel_pays_for_all_reduces():
    batch = BatchStats(decode_seqs=8, decode_ctx_tokens=8 * 500)
    tp1 = roofline("h100-80g", "llama-3-8b", 1)
    assert tp1.step_time(batch) == roofline("h100-80g", "llama-3-8b", 1, allreduce_latency_s=1.0).step_time(
        batch
    )
    tp4 = roofline("h100-80g", "llama-3-70b", 4)
    no_latency = roofline("h100-80g", "llama-3-70b", 4, allreduce_latency_s=0.0)
    # 80 layers x 2 all-reduces: 25 us each, plus a ring transfer of 8 tokens x 8192 x 2 bytes over 450 GB/s.
    assert tp4.step_time(batch) - no_latency.step_time(batch) == pytest.approx(160 * 25e-6, rel=1e-9)
    fast_links = CAT.with_overrides(gpus={"h100-80g": {"interconnect_gbps": 1e15}})
    no_comm = PERF_MODELS.create(
        "roofline",
        {"allreduce_latency_s": 0.0},
        gpu=fast_links.gpu("h100-80g"),
        llm=CAT.llm("llama-3-70b"),
        tp=4,
    )
    ring = 160 * 2 * 3 / 4 * 8 * 8192 * 2 / 450e9
    assert no_latency.step_time(batch) - no_comm.step_time(batch) == pytest.approx(ring, rel=1e-6)


def test_two_node_tensor_parallel_uses_the_internode_network():
    batch = BatchStats(decode_seqs=8, decode_ctx_tokens=8 * 500)
    slow_ib = dict(internode_latency_s=1e-3, internode_bandwidth_gbs=1.0)
    assert roofline("h200", "llama-3.1-405b", 8, **slow_ib).step_time(batch) == roofline(
        "h200", "llama-3.1-405b", 8
    ).step_time(batch)
    assert (
        roofline("h100-80g", "llama-3.1-405b", 16, **slow_ib).step_time(batch)
        > roofline("h100-80g", "llama-3.1-405b", 16).step_time(batch) + 0.2
    )


def test_moe_reads_more_experts_as_the_batch_grows():
    model = roofline("h200", "mixtral-8x7b", 2)
    m = CAT.llm("mixtral-8x7b")
    expert_bytes = m.routed_expert_params * 2 / 2
    one, eight, many = model._weight_bytes(1), model._weight_bytes(8), model._weight_bytes(4096)
    assert eight - one == pytest.approx(expert_bytes * ((1 - 0.75**8) - 0.25))
    assert many == pytest.approx((m.weight_bytes() - m.embedding_params * 2) / 2)


def test_describe_names_gpu_model_and_tp():
    assert roofline("h100-80g", "llama-3-8b", 1).describe() == "roofline (h100-80g, llama-3-8b, TP1)"


def test_published_latency_llama3_8b_h100_within_15_percent():
    rows = {(r.gpu, r.llm): r for r in _load_check_script().published_latency_check()}
    assert len(rows) == 6
    assert abs(rows["h100-80g", "llama-3-8b"].error) <= 0.15
    assert all(abs(r.error) <= 0.25 for r in rows.values())  # the rest are out of sample; keep them honest


# ------------------------------------------------------------------------------------------- constant


def test_constant_model_arithmetic():
    model = PERF_MODELS.create(
        "constant",
        {"step_s": 0.01, "per_prefill_token_s": 1e-4, "per_decode_seq_s": 1e-3},
        gpu=CAT.gpu("h100-80g"),
        llm=CAT.llm("llama-3-8b"),
        tp=1,
    )
    batch = BatchStats(
        prefill_seqs=2, prefill_tokens=300, prefill_attn_pairs=1e6, decode_seqs=7, decode_ctx_tokens=9000
    )
    assert model.step_time(batch) == pytest.approx(0.01 + 300e-4 + 7e-3)
    np.testing.assert_allclose(model.decode_times(4, 100, 3), [0.014] * 3, rtol=1e-15)
    np.testing.assert_allclose(model.decode_times(4, 100, 3), PerformanceModel.decode_times(model, 4, 100, 3))
    assert PERF_MODELS.create("constant", {"step_s": 0.02}).step_time(batch) == 0.02  # gpu/llm/tp optional
    assert "constant" in model.describe()


@pytest.mark.parametrize("params", [{}, {"step_s": 0}, {"step_s": 0.01, "per_decode_seq_s": -1}])
def test_constant_model_rejects_bad_params(params):
    with pytest.raises(ConfigError, match="constant"):
        PERF_MODELS.create("constant", params)


# ------------------------------------------------------------------------------------------- registry


def test_registry_knows_both_models():
    assert {"roofline", "constant"} <= set(PERF_MODELS.names())


@pytest.mark.parametrize("params", [{"bogus": 1}, {"flops_efficiency": 1.5}, {"overhead_s": -1}])
def test_roofline_rejects_bad_params(params):
    with pytest.raises(ConfigError, match="roofline"):
        PERF_MODELS.create("roofline", params, gpu=CAT.gpu("h100-80g"), llm=CAT.llm("llama-3-8b"), tp=1)
