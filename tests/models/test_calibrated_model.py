"""The calibrated performance model: laws, precision, profiles, the closed form of decode runs, the `auto`
default, and that the older models are unchanged."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleettwin.models.catalog import Catalog
from fleettwin.models.errors import ConfigError
from fleettwin.models.perf import BF16, BatchStats, Precision, create_perf_model
from fleettwin.models.perf.calibrated import CAPTURE_SIZES, padded_tokens
from fleettwin.models.perf.kernels import AllReduceCurve, GemmLaw, smooth_max
from fleettwin.models.perf.profile import builtin_profiles, load_profile
from fleettwin.models.sizing import kv_cache_blocks

CAT = Catalog.default()


def model(name="calibrated", gpu="h100-80g", llm="llama-3-8b", tp=1, precision=BF16, **params):
    return create_perf_model(name, params, gpu=CAT.gpu(gpu), llm=CAT.llm(llm), tp=tp, precision=precision)


def batch(prefill=0, ctx=0, decodes=0, dctx=0):
    b = BatchStats()
    if prefill:
        b.add_prefill(prefill, ctx)
    for _ in range(decodes):
        b.add_decode(dctx)
    return b


# Step times of the older models before this model existed (computed on the tree before it, commit db52bd0):
# they must not move.
OLD = {
    ("roofline", "h100-80g", "llama-3-8b", 1): [
        0.007605434746268656,
        0.008697587295522387,
        0.05221199211939332,
        0.01587660012241321,
        0.026387220919402987,
    ],
    ("roofline", "h200", "mixtral-8x7b", 2): [
        0.006922175417777778,
        0.016146267450458062,
        0.05054177031103921,
        0.017392990706666667,
        0.022432240342222222,
    ],
    ("profiled", "a100-80g", "llama-2-7b", 1): [
        0.011765668536176145,
        0.018066846708138663,
        0.14208461982754533,
        0.056126102819020474,
        0.11870632466003353,
    ],
    ("profiled", "h100-80g", "llama-3-70b", 4): [
        0.026569670226551455,
        0.029026487357737628,
        0.1474365470761389,
        0.06534937369544933,
        0.03742182084399058,
    ],
}
OLD_BATCHES = ((0, 1, 100), (0, 32, 700), (2048, 0, 0), (512, 64, 900), (0, 128, 3000))


@pytest.mark.parametrize("key", list(OLD))
def test_older_models_are_unchanged(key):
    name, gpu, llm, tp = key
    m = model(name, gpu, llm, tp)
    got = [m.step_time(batch(pre, 100 if pre else 0, dec, ctx)) for pre, dec, ctx in OLD_BATCHES]
    assert got == pytest.approx(OLD[key], rel=1e-12)


def test_builtin_profiles_load_and_name_their_gpu():
    assert {"h100-vllm-v1", "h200-vllm-v1", "a100-vllm-v1"} <= set(builtin_profiles())
    for name in builtin_profiles():
        p = load_profile(name)
        CAT.gpu(p.gpu)
        assert "bf16" in p.kernels.gemm and p.kernels.allreduce_graph


def test_auto_picks_calibrated_where_a_profile_exists_else_roofline():
    assert model("auto").describe().startswith("calibrated (h100-vllm-v1")
    assert model("auto", gpu="l40s").describe().startswith("roofline")


@given(st.integers(1, 256), st.integers(0, 40_000), st.integers(1, 300))
@settings(max_examples=40, deadline=None)
def test_decode_run_closed_form_matches_step_by_step(seqs, ctx, steps):
    m = model(llm="llama-3-70b", tp=4)
    fast = m.decode_times(seqs, ctx, steps)
    b = BatchStats(decode_seqs=seqs)
    slow = []
    for k in range(steps):
        b.decode_ctx_tokens = ctx + k * seqs
        slow.append(m.step_time(b))
    assert fast == pytest.approx(slow, rel=1e-12)


def test_step_time_grows_with_work_and_empty_batch_is_free():
    m = model()
    assert m.step_time(BatchStats()) == 0.0
    assert m.step_time(batch(decodes=64, dctx=1000)) > m.step_time(batch(decodes=8, dctx=1000))
    assert m.step_time(batch(prefill=4096)) > m.step_time(batch(prefill=512))
    assert m.step_time(batch(decodes=8, dctx=8000)) > m.step_time(batch(decodes=8, dctx=100))


def test_tensor_parallel_speeds_up_a_large_model_but_adds_all_reduces():
    b = batch(decodes=32, dctx=1000)
    assert model(llm="llama-3-70b", tp=4).step_time(b) < model(llm="llama-3-70b", tp=2).step_time(b)


def test_fp8_weights_and_kv_are_faster_and_hold_more_blocks():
    b = batch(decodes=64, dctx=2000)
    bf16 = model(llm="llama-3-70b", tp=2).step_time(b)
    fp8 = model(llm="llama-3-70b", tp=2, precision=Precision("fp8", "fp8")).step_time(b)
    assert fp8 < 0.8 * bf16
    gpu, llm = CAT.gpu("h100-80g"), CAT.llm("llama-3-70b")
    assert kv_cache_blocks(gpu, llm, 2, dtype_bytes=1, kv_dtype_bytes=1) > 2 * kv_cache_blocks(gpu, llm, 2)


def test_models_without_precision_refuse_fp8_with_a_clear_error():
    with pytest.raises(ConfigError, match="profiled.*bf16 only"):
        model("profiled", precision=Precision("fp8"))


def test_enforce_eager_is_slower_on_small_decodes():
    b = batch(decodes=4, dctx=500)
    assert model(llm="llama-3-70b", tp=4, enforce_eager=True).step_time(b) > model(
        llm="llama-3-70b", tp=4
    ).step_time(b)


def test_moe_reads_only_the_experts_tokens_were_routed_to():
    m = model(llm="mixtral-8x7b", tp=2)
    one, many = m.step_time(batch(decodes=1, dctx=100)), m.step_time(batch(decodes=64, dctx=100))
    assert many > 1.5 * one  # at 64 tokens every expert is read, at 1 token a quarter of them


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"profile": "nope"}, "unknown calibration profile 'nope'"),
        ({"profile": "a100-vllm-v1"}, "describes GPU 'a100-80g', not 'h100-80g'"),
        ({"engine_costs": {"step_fixed": 1e-3}}, "unknown name"),
        ({"engine_costs": {"step_fixed_s": -1}}, "engine_costs"),
    ],
)
def test_bad_parameters_are_one_line(bad, message):
    with pytest.raises(ConfigError, match=message):
        model(**bad)


def test_a_gpu_without_a_profile_says_how_to_get_one():
    with pytest.raises(ConfigError, match="no built-in calibration profile for GPU 'l40s'"):
        model(gpu="l40s")


def _with_allreduce_scale(tmp_path, scale: float) -> str:
    base = load_profile("h100-vllm-v1")
    costs = base.engine_costs.model_copy(update={"allreduce_scale": scale})
    path = tmp_path / f"ar{scale}.yaml"
    path.write_text(base.model_copy(update={"name": f"ar{scale}", "engine_costs": costs}).to_yaml())
    return str(path)


def test_allreduce_scale_scales_only_the_all_reduces(tmp_path):
    """Halving the scale takes half the all-reduce time off a TP2 step and nothing off a TP1 step; the
    scale is opt-in for a fit (a build or ``--coefficients`` names it)."""
    from fleettwin.sim.calibration.fit import DEFAULT_FREE

    one, half = _with_allreduce_scale(tmp_path, 1.0), _with_allreduce_scale(tmp_path, 0.5)
    b = batch(prefill=512, decodes=16, dctx=1000)
    assert model(profile=half).step_time(b) == model(profile=one).step_time(b)
    tp2 = {s: model(llm="llama-3-70b", tp=2, profile=p).step_time(b) for s, p in ((1.0, one), (0.5, half))}
    zero = model(llm="llama-3-70b", tp=2, profile=_with_allreduce_scale(tmp_path, 1e-9)).step_time(b)
    assert tp2[0.5] == pytest.approx((tp2[1.0] + zero) / 2, rel=1e-9)
    assert zero < tp2[0.5] < tp2[1.0]
    assert "allreduce_scale" not in DEFAULT_FREE and "gpu_time_scale" in DEFAULT_FREE


def test_profile_by_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(load_profile("h100-vllm-v1").model_copy(update={"name": "mine"}).to_yaml())
    assert "mine" in model(profile=str(path)).describe()
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\ngpu: h100-80g\n")
    with pytest.raises(ConfigError, match=f"{broken}: kernels: Field required"):
        model(profile=str(broken))


def test_padding_follows_the_capture_sizes():
    assert [padded_tokens(t) for t in (1, 3, 5, 9, 255, 257, 512, 513, 4000)] == [
        1,
        4,
        8,
        16,
        256,
        272,
        512,
        513,
        4000,
    ]
    assert all(padded_tokens(s) == s for s in CAPTURE_SIZES)


def test_smooth_max_and_laws():
    assert smooth_max(3.0, 4.0, 2.0) == pytest.approx(5.0)
    assert smooth_max(np.array([1.0, 0.0]), np.array([1e-9, 0.0]), 3.0) == pytest.approx([1.0, 0.0])
    law = GemmLaw(fixed_s=5e-6, flops_per_s=1e15, bytes_per_s=3e12, p=50)
    assert law.time(1, 8192, 8192) == pytest.approx(5e-6 + 8192 * 8192 * 2 / 3e12, rel=1e-3)
    curve = AllReduceCurve(num_gpus=2, sizes_bytes=(1e3, 1e6), latency_s=(1e-5, 1e-4))
    assert curve.time(1e3) == pytest.approx(1e-5) and curve.time(2e6) == pytest.approx(
        1e-4 + 9e-5 / 999e3 * 1e6
    )
    with pytest.raises(ValueError):
        AllReduceCurve(num_gpus=2, sizes_bytes=(1e6, 1e3), latency_s=(1e-5, 1e-4))
