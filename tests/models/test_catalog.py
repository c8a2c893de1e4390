"""Catalog loading, derived sizes, sizing rules and overrides."""

from __future__ import annotations

import pytest

from fleettwin.models.catalog import GIB, Catalog
from fleettwin.models.errors import ConfigError, UnknownNameError
from fleettwin.models.sizing import kv_cache_blocks, min_tensor_parallel

CAT = Catalog.default()
KIB = 1024


def test_default_catalog_has_required_ids_and_is_cached():
    assert {"a100-80g", "h100-80g", "h200", "l40s", "mi300x"} <= set(CAT.gpus)
    assert {
        "llama-2-7b",
        "llama-3-8b",
        "llama-2-13b",
        "llama-3-70b",
        "mixtral-8x7b",
        "llama-3.1-405b",
    } <= set(CAT.llms)
    assert Catalog.default() is CAT
    assert all(id_ == id_.lower() for id_ in [*CAT.gpus, *CAT.llms])


def test_catalog_is_read_only():
    with pytest.raises(TypeError):
        CAT.gpus["x"] = CAT.gpu("h100-80g")  # type: ignore[index]


def test_gpu_fields_and_derived_units():
    h100 = CAT.gpu("h100-80g")
    assert h100.memory_bytes == 80 * GIB
    assert h100.peak_flops == 989e12
    assert h100.hbm_bytes_per_s == 3.35e12
    assert h100.has_nvlink and h100.interconnect_gbps == 900
    assert h100.link_bytes_per_s == 450e9


def test_pcie_only_gpus_use_the_pcie_figure():
    assert (CAT.gpu("l40s").interconnect_gbps, CAT.gpu("l40s").has_nvlink) == (64, False)
    assert (CAT.gpu("l4").interconnect_gbps, CAT.gpu("l4").has_nvlink) == (64, False)
    assert (CAT.gpu("h100-pcie").interconnect_gbps, CAT.gpu("h100-pcie").has_nvlink) == (128, False)


def test_blank_spot_price_is_half_on_demand():
    mi300x = CAT.gpu("mi300x")
    assert mi300x.spot_price_estimated
    assert mi300x.price_spot_usd_h == pytest.approx(0.5 * 1.71)
    assert not CAT.gpu("h100-80g").spot_price_estimated
    assert CAT.gpu("h100-80g").price_spot_usd_h == 1.49


def test_unknown_names_list_valid_ids():
    with pytest.raises(UnknownNameError, match="h100-80g"):
        CAT.gpu("h1000")
    with pytest.raises(UnknownNameError, match="llama-3-8b"):
        CAT.llm("gpt-5")


@pytest.mark.parametrize(
    ("llm", "kib"),
    [
        ("llama-2-7b", 512),
        ("llama-3-8b", 128),
        ("llama-3-70b", 320),
        ("llama-3.1-405b", 504),
        ("mixtral-8x7b", 128),
        ("llama-2-13b", 800),
    ],
)
def test_kv_bytes_per_token(llm, kib):
    assert CAT.llm(llm).kv_bytes_per_token() == kib * KIB


def test_deepseek_v3_kv_uses_mla_latent():
    ds = CAT.llm("deepseek-v3")
    assert ds.kv_bytes_per_token() == (512 + 64) * 61 * 2  # ~69 KiB, llms.md
    assert ds.kv_bytes_per_token_per_gpu(8) == ds.kv_bytes_per_token()  # the latent is replicated, not split


def test_kv_per_gpu_replicates_kv_heads_beyond_their_count():
    m = CAT.llm("llama-3.1-405b")  # 8 KV heads
    assert m.kv_bytes_per_token_per_gpu(8) == m.kv_bytes_per_token() / 8
    assert m.kv_bytes_per_token_per_gpu(16) == m.kv_bytes_per_token() / 8


def test_active_params():
    assert CAT.llm("mixtral-8x7b").active_params == pytest.approx(12.88e9, rel=1e-3)
    assert CAT.llm("deepseek-v3").active_params == pytest.approx(37.6e9, rel=2e-3)
    dense = CAT.llm("llama-3-8b")
    assert dense.active_params == dense.params
    assert dense.nonembedding_active_params == pytest.approx(8.03e9 - 2 * 128256 * 4096)


def test_weight_bytes():
    assert CAT.llm("llama-3-70b").weight_bytes() == pytest.approx(141.1e9)
    assert CAT.llm("llama-3-70b").weight_bytes(1) == pytest.approx(70.55e9)


@pytest.mark.parametrize(
    ("gpu", "llm", "tp"),
    [
        ("h100-80g", "llama-3-8b", 1),
        ("h100-80g", "llama-3-70b", 2),
        ("h100-80g", "llama-3.1-405b", 16),
        ("h200", "llama-3.1-405b", 8),
        ("h200", "mixtral-8x7b", 1),
        ("h100-80g", "mixtral-8x7b", 2),
    ],
)
def test_min_tensor_parallel(gpu, llm, tp):
    assert min_tensor_parallel(CAT.gpu(gpu), CAT.llm(llm)) == tp


def test_min_tensor_parallel_needs_room_for_one_max_context_sequence():
    # qwen2.5-72b's weights fit two H100s, but not with KV for a 32k-token sequence (vLLM's start-up check).
    h100, qwen = CAT.gpu("h100-80g"), CAT.llm("qwen2.5-72b")
    assert min_tensor_parallel(h100, qwen) == 4
    assert min_tensor_parallel(h100, qwen, min_kv_tokens=4096) == 2


def test_min_tensor_parallel_raises_when_nothing_fits():
    with pytest.raises(ConfigError, match=r"llama-3.1-405b does not fit on l4"):
        min_tensor_parallel(CAT.gpu("l4"), CAT.llm("llama-3.1-405b"))


def test_kv_cache_blocks_llama3_8b_on_h100():
    # Per GPU: 80 GiB x 0.9 = 77.3 GB, less 16.1 GB of weights, less a 2-4 GB activation/runtime reserve,
    # leaves 57.3-59.3 GB; at 128 KiB per token that is 437k-452k tokens (the default reserve is 2.3 GB: 450k
    # tokens, 28k blocks of 16). The band is what any reserve a vLLM profile would plausibly find gives.
    blocks = kv_cache_blocks(CAT.gpu("h100-80g"), CAT.llm("llama-3-8b"), 1)
    assert 435_000 <= blocks * 16 <= 452_000
    # An explicit reserve replaces the default, byte for byte.
    explicit = kv_cache_blocks(CAT.gpu("h100-80g"), CAT.llm("llama-3-8b"), 1, activation_reserve_gb=0)
    assert explicit == int((80 * GIB * 0.9 - 16.06e9) // (16 * 128 * KIB))


def test_kv_cache_blocks_scales_with_utilization_tp_and_block_size():
    h100, m = CAT.gpu("h100-80g"), CAT.llm("llama-3-70b")
    assert kv_cache_blocks(h100, m, 4) > 2 * kv_cache_blocks(h100, m, 2)  # weights per GPU halve too
    assert kv_cache_blocks(h100, m, 4, gpu_memory_utilization=0.95) > kv_cache_blocks(h100, m, 4)
    assert kv_cache_blocks(h100, m, 4, block_size=32) == kv_cache_blocks(h100, m, 4, block_size=16) // 2


def test_kv_cache_blocks_errors_name_gpu_model_and_tp():
    with pytest.raises(ConfigError, match=r"llama-3-70b on h100-80g at TP1"):
        kv_cache_blocks(CAT.gpu("h100-80g"), CAT.llm("llama-3-70b"), 1)
    with pytest.raises(ConfigError, match="does not split"):
        kv_cache_blocks(CAT.gpu("h100-80g"), CAT.llm("llama-3-8b"), 3)
    with pytest.raises(ConfigError, match="gpu_memory_utilization"):
        kv_cache_blocks(CAT.gpu("h100-80g"), CAT.llm("llama-3-8b"), 1, gpu_memory_utilization=1.5)


def test_override_changes_a_field_and_leaves_the_original_alone():
    cat = CAT.with_overrides(gpus={"h100-80g": {"price_on_demand_usd_h": 3.1}})
    assert cat.gpu("h100-80g").price_on_demand_usd_h == 3.1
    assert cat.gpu("h100-80g").memory_gb == 80
    assert CAT.gpu("h100-80g").price_on_demand_usd_h == 2.69


def test_override_of_on_demand_price_rederives_an_estimated_spot_price():
    cat = CAT.with_overrides(gpus={"mi300x": {"price_on_demand_usd_h": 2.0}})
    assert cat.gpu("mi300x").price_spot_usd_h == pytest.approx(1.0)
    cat = CAT.with_overrides(gpus={"mi300x": {"price_spot_usd_h": 0.9}})
    assert cat.gpu("mi300x").price_spot_usd_h == 0.9 and not cat.gpu("mi300x").spot_price_estimated


def test_override_adds_new_ids():
    new_llm = dict(
        params_b=8.03,
        num_layers=32,
        hidden_size=4096,
        intermediate_size=14336,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=128256,
        max_context=131072,
    )
    new_gpu = dict(
        memory_gb=96,
        hbm_tbps=1.6,
        bf16_tflops=500,
        interconnect_gbps=128,
        has_nvlink=False,
        tdp_w=600,
        price_on_demand_usd_h=1.5,
    )
    cat = CAT.with_overrides(gpus={"rtx-pro-6000": new_gpu}, llms={"llama-3.1-8b": new_llm})
    assert cat.llm("llama-3.1-8b").kv_bytes_per_token() == 128 * KIB
    assert cat.gpu("rtx-pro-6000").fp8_tflops is None
    assert cat.gpu("rtx-pro-6000").price_spot_usd_h == 0.75
    assert "rtx-pro-6000" not in CAT.gpus


@pytest.mark.parametrize(
    ("gpus", "llms", "pattern"),
    [
        ({"h100-80g": {"memory_gib": 80}}, None, r"gpu 'h100-80g': unknown field\(s\) 'memory_gib'"),
        ({"h100-80g": {"memory_gb": -1}}, None, r"gpu 'h100-80g': field 'memory_gb'"),
        ({"h100-80g": {"hbm_tbps": "fast"}}, None, r"gpu 'h100-80g': field 'hbm_tbps'"),
        ({"new-gpu": {"memory_gb": 10}}, None, r"gpu 'new-gpu': field 'hbm_tbps'.*new id needs every field"),
        ({"H100": {"memory_gb": 10}}, None, r"lower-case"),
        ({"h100-80g": 3.1}, None, r"gpu 'h100-80g': expected a mapping"),
        (None, {"llama-3-8b": {"num_layers": 0}}, r"llm 'llama-3-8b': field 'num_layers'"),
        (None, {"llama-3-8b": {"num_layers": 31.5}}, r"llm 'llama-3-8b': field 'num_layers'"),
        (None, {"llama-3-8b": {"experts_per_token": 2}}, r"llm 'llama-3-8b':.*experts_per_token"),
        (None, {"llama-3-8b": {"params_b": 1.0}}, r"llm 'llama-3-8b': field 'params_b'"),
    ],
)
def test_bad_overrides_name_the_id_and_field(gpus, llms, pattern):
    with pytest.raises(ConfigError, match=pattern):
        CAT.with_overrides(gpus=gpus, llms=llms)


def test_cli_prints_both_tables(capsys):
    from fleettwin.cli import main

    assert main(["catalog", "gpus"]) == 0
    assert "mi300x" in capsys.readouterr().out
    assert main(["catalog", "models", "--gpu", "h200"]) == 0
    out = capsys.readouterr().out
    assert "llama-3.1-405b" in out and "h200" in out
    assert main(["catalog", "models", "--gpu", "h1000"]) == 2
    assert "unknown gpu 'h1000'" in capsys.readouterr().err
