"""Retrieval tables (loading, errors, precedence), the lookup model (exact on rows, monotone, scaling) and the
retrieval routers' recall model on hand-made inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleettwin.models.errors import ConfigError
from fleettwin.models.retrieval.config import RetrievalConfig
from fleettwin.models.retrieval.model import (
    COLUMNS,
    INDEX_TYPES,
    Lognormal,
    RetrievalModel,
    RetrievalTable,
    parse_table,
)
from fleettwin.models.retrieval.routing import (
    RETRIEVAL_ROUTERS,
    StoreView,
    hybrid_recall,
    merged_recall,
    tag_rag,
    topic_shares,
)
from fleettwin.models.workload.request import Request

HEADER = ",".join(COLUMNS)


def csv_text(*rows: str) -> str:
    return "\n".join([HEADER, *rows]) + "\n"


def row(it="hnsw", hw="cpu", n=1000, dim=128, s=16, p50=1.0, p95=2.0, rec=0.9, batch=1, src="test") -> str:
    return f"{it},{hw},{n},{dim},{s},{p50},{p95},{rec},{batch},{src}"


def model_of(*rows: str) -> RetrievalModel:
    return RetrievalModel(RetrievalTable([("t.csv", parse_table(csv_text(*rows), "t.csv"))]))


# -- loading -------------------------------------------------------------------------------------------------


def test_package_tables_cover_every_index_type():
    table = RetrievalTable.default()
    assert {i for i, _ in table.keys()} == set(INDEX_TYPES)
    assert all(r.source for r in table.rows)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty file"),
        ("index_type,hardware\n", "t.csv:1: header: missing n_vectors"),
        (HEADER + ",extra\n" + row() + ",x\n", "unexpected extra"),
        (csv_text(row(it="annoy")), "t.csv:2: index_type: 'annoy' is not one of"),
        (csv_text(row(), row(n="ten")), "t.csv:3: n_vectors: expected an integer"),
        (csv_text(row(p50=3.0, p95=2.0)), "t.csv:2: latency_ms_p95 (2.0) is below latency_ms_p50 (3.0)"),
        (csv_text(row(rec=1.5)), "t.csv:2: recall_at_10: must be >= 0.0 and <= 1.0"),
        (csv_text(row(p50=0)), "t.csv:2: latency_ms_p50: must be > 0.0"),
        (csv_text(row(p50="nan")), "t.csv:2: latency_ms_p50"),
        (csv_text(row(src="")), "t.csv:2: source: must say where"),
        (csv_text(row() + ",surplus"), "t.csv:2: expected 10 fields"),
        (csv_text(row(batch=0)), "t.csv:2: batch: must be >= 1"),
        (HEADER + "\n", "no data rows"),
    ],
)
def test_bad_tables_name_file_line_and_column(text, message):
    with pytest.raises(ConfigError) as err:
        parse_table(text, "t.csv")
    assert message in str(err.value)


def test_unreadable_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read retrieval table"):
        RetrievalTable.from_files([tmp_path / "missing.csv"])


def test_measured_rows_replace_estimates_only_for_their_index_type_and_hardware_class(tmp_path):
    measured = tmp_path / "faiss_cpu_measured.csv"
    measured.write_text(csv_text(row(hw="cpu-2core", p50=7.0, p95=9.0, src="measured")))
    estimates = tmp_path / "estimates.csv"
    estimates.write_text(csv_text(row(hw="cpu", p50=1.0, src="est"), row(it="flat", s=0, p50=3.0, p95=3.0)))
    model = RetrievalModel(RetrievalTable.from_files([measured, estimates]))
    hnsw = model.lookup("hnsw", "cpu", 1000, 128, 16)
    assert hnsw.p50_ms == 7.0 and hnsw.source == str(measured)
    assert model.lookup("hnsw", "cpu-2core", 1000, 128, 16).p50_ms == 7.0
    assert model.lookup("flat", "cpu", 1000, 128, 0).p50_ms == 3.0  # not measured: still the estimate


def test_unknown_or_ambiguous_hardware_is_an_error():
    model = model_of(row(hw="cpu-2core"), row(hw="cpu-16core"))
    with pytest.raises(ConfigError, match="ambiguous"):
        model.lookup("hnsw", "cpu", 1000, 128, 16)
    assert model.lookup("hnsw", "cpu-16core", 1000, 128, 16).p50_ms == 1.0
    with pytest.raises(ConfigError, match="no retrieval table rows for index_type 'hnsw' on hardware 'tpu'"):
        model.lookup("hnsw", "tpu", 1000, 128, 16)


# -- lookup --------------------------------------------------------------------------------------------------


def test_lookup_is_exact_on_every_row_of_the_package_table():
    table = RetrievalTable.default()
    model = RetrievalModel(table)
    key = lambda r: (r.index_type, r.hardware, r.n_vectors, r.dim, r.search_param, r.batch)  # noqa: E731
    repeats: dict[tuple, list[float]] = {}
    for r in table.rows:
        repeats.setdefault(key(r), []).append(r.latency_ms_p50)
    for r in table.rows:
        p = model.lookup(r.index_type, r.hardware, r.n_vectors, r.dim, r.search_param, batch=r.batch)
        assert p.extrapolated == ()
        if "measured" in r.origin:  # timed rows are noisy, not monotone: the model's running maxima lift them
            mean50 = float(np.mean(repeats[key(r)]))  # a repeated measurement is averaged with its repeats
            assert p.p50_ms >= mean50 * (1 - 1e-9) and p.p95_ms >= p.p50_ms, r
            continue
        assert p.p50_ms == pytest.approx(r.latency_ms_p50, rel=1e-9), r
        assert p.p95_ms == pytest.approx(r.latency_ms_p95, rel=1e-9), r
        assert p.recall == pytest.approx(r.recall_at_10, abs=1e-12), r


def test_interpolation_rules_between_and_beyond_rows():
    m = model_of(
        row(n=1000, s=10, p50=1.0, p95=1.0, rec=0.5),
        row(n=1000, s=20, p50=3.0, p95=3.0, rec=0.9),
        row(n=100000, s=10, p50=4.0, p95=4.0, rec=0.4),
        row(n=100000, s=20, p50=12.0, p95=12.0, rec=0.8),
    )
    assert m.lookup("hnsw", "cpu", 1000, 128, 15).p50_ms == pytest.approx(2.0)  # linear in search_param
    mid = m.lookup("hnsw", "cpu", 10000, 128, 10)  # log-log in n: geometric mean of 1 and 4
    assert mid.p50_ms == pytest.approx(2.0) and mid.recall == pytest.approx(0.45)
    beyond = m.lookup("hnsw", "cpu", 1000, 128, 30)  # last slope continues, recall does not grow
    assert (
        beyond.p50_ms == pytest.approx(5.0) and beyond.recall == 0.9 and "search_param" in beyond.extrapolated
    )
    big = m.lookup("hnsw", "cpu", 10_000_000, 128, 10)  # power law with the last exponent (0.301)
    assert big.p50_ms == pytest.approx(16.0) and big.recall == 0.4 and "n_vectors" in big.extrapolated
    wide = m.lookup("hnsw", "cpu", 1000, 256, 10)  # outside the dims: latency in proportion to dim
    assert wide.p50_ms == pytest.approx(2.0) and wide.recall == 0.5 and "dim" in wide.extrapolated


def test_single_n_uses_the_index_type_default_exponent_and_dims_interpolate_log_log():
    m = model_of(
        row(it="flat", s=0, n=1000, dim=100, p50=1.0, p95=1.0, rec=1.0),
        row(it="flat", s=0, n=1000, dim=400, p50=4.0, p95=4.0, rec=1.0),
    )
    assert m.lookup("flat", "cpu", 8000, 100, 0).p50_ms == pytest.approx(8.0)  # flat: linear in n
    assert m.lookup("flat", "cpu", 1000, 200, 0).p50_ms == pytest.approx(2.0)  # geometric between dims


def test_noisy_rows_are_made_monotone():
    m = model_of(row(s=10, p50=2.0, p95=3.0, rec=0.9), row(s=20, p50=1.5, p95=2.0, rec=0.8))
    a, b = m.lookup("hnsw", "cpu", 1000, 128, 10), m.lookup("hnsw", "cpu", 1000, 128, 20)
    assert b.p50_ms >= a.p50_ms and b.p95_ms >= a.p95_ms and b.recall >= a.recall


@st.composite
def noisy_tables(draw):
    """Random tables on a ragged grid, with noise that breaks monotonicity on purpose."""
    rows = []
    for n in draw(
        st.lists(st.sampled_from([10**3, 10**4, 10**5, 10**6]), min_size=1, max_size=4, unique=True)
    ):
        for s in draw(st.lists(st.integers(1, 300), min_size=1, max_size=5, unique=True)):
            p50 = draw(st.floats(0.01, 50.0))
            rows.append(
                row(n=n, s=s, p50=p50, p95=p50 * draw(st.floats(1.0, 3.0)), rec=draw(st.floats(0.0, 1.0)))
            )
    return model_of(*rows)


@settings(max_examples=60, deadline=None)
@given(noisy_tables(), st.integers(0, 400), st.integers(0, 400), st.floats(2.5, 7.5), st.floats(2.5, 7.5))
def test_lookup_is_monotone_in_search_param_and_n(model, s1, s2, e1, e2):
    s_lo, s_hi = sorted((s1, s2))
    n_lo, n_hi = (int(10**e) for e in sorted((e1, e2)))
    for n in (n_lo, n_hi):
        a, b = model.lookup("hnsw", "cpu", n, 128, s_lo), model.lookup("hnsw", "cpu", n, 128, s_hi)
        assert b.p50_ms >= a.p50_ms * (1 - 1e-12) and b.p95_ms >= a.p95_ms * (1 - 1e-12)
        assert b.recall >= a.recall - 1e-12
    for s in (s_lo, s_hi):
        a, b = model.lookup("hnsw", "cpu", n_lo, 128, s), model.lookup("hnsw", "cpu", n_hi, 128, s)
        assert b.p50_ms >= a.p50_ms * (1 - 1e-12) and b.recall <= a.recall + 1e-12
        assert 0.0 <= a.recall <= 1.0 and a.p95_ms >= a.p50_ms > 0


def test_lognormal_matches_both_quantiles():
    ln = Lognormal.from_quantiles(0.002, 0.005)
    assert ln.quantile(0.5) == pytest.approx(0.002) and ln.quantile(0.95) == pytest.approx(0.005)
    draws = np.array(
        [ln.sample(np.random.default_rng(1)) for _ in range(1)]
        + list(np.random.default_rng(2).lognormal(ln.mu, ln.sigma, 20000))
    )
    assert np.percentile(draws, 95) == pytest.approx(0.005, rel=0.05)
    assert Lognormal.from_quantiles(0.001, 0.001).sample(np.random.default_rng(0)) == pytest.approx(0.001)


# -- routing -------------------------------------------------------------------------------------------------

STORES = [
    StoreView(name=f"s{i}", domain=f"d{i}", n_vectors=n, recall=r)
    for i, (n, r) in enumerate([(100, 0.9), (300, 0.8), (600, 0.7)])
]


def test_topic_shares_and_merged_recall_by_hand():
    # locality 0.5: half the neighbours in the home store, half spread by size (0.1, 0.3, 0.6)
    np.testing.assert_allclose(topic_shares("d0", STORES, 0.5), [0.55, 0.15, 0.30])
    assert merged_recall("d0", [0, 1, 2], STORES, 0.5) == pytest.approx(0.55 * 0.9 + 0.15 * 0.8 + 0.30 * 0.7)
    assert merged_recall("d0", [0], STORES, 1.0) == pytest.approx(0.9)  # routed right, perfect locality
    assert merged_recall("d0", [1], STORES, 1.0) == 0.0  # misrouted: the true neighbours are all elsewhere
    assert merged_recall("d0", [1], STORES, 0.5) == pytest.approx(0.15 * 0.8)
    mono = [StoreView(name="all", domain="*", n_vectors=1000, recall=0.95)]
    assert merged_recall("d2", [0], mono, 0.3) == pytest.approx(0.95)


def test_hybrid_recall_cuts_misses():
    assert hybrid_recall(0.8, 0.5) == pytest.approx(0.9)
    assert hybrid_recall(0.8, 0.0) == 0.8 and hybrid_recall(0.3, 1.0) == 1.0


def test_fanout_and_monolithic_plans():
    rng = np.random.default_rng(0)
    assert RETRIEVAL_ROUTERS.create("fanout_all").plan("d1", STORES, rng).stores == (0, 1, 2)
    mono = RETRIEVAL_ROUTERS.create("monolithic")
    with pytest.raises(ConfigError, match="exactly one store"):
        mono.check(STORES)
    assert mono.plan("d1", [StoreView(name="a", domain="*", n_vectors=1, recall=1.0)], rng).stores == (0,)


def test_routed_perfect_classifier_always_routes_home():
    routed = RETRIEVAL_ROUTERS.create("routed", {"accuracy": 1.0, "threshold": 0.99, "classifier_ms": 2.0})
    rng = np.random.default_rng(0)
    for topic, home in (("d0", 0), ("d2", 2)):
        plan = routed.plan(topic, STORES, rng)
        assert plan.stores == (home,) and not plan.fanned_out and plan.overhead_s == pytest.approx(0.002)


def test_routed_classifier_is_calibrated_and_threshold_trades_fanout_for_accuracy():
    rng = np.random.default_rng(3)
    plans = {}
    for threshold in (0.0, 0.9):
        routed = RETRIEVAL_ROUTERS.create(
            "routed", {"accuracy": 0.9, "concentration": 10, "threshold": threshold}
        )
        plans[threshold] = [routed.plan("d1", STORES, rng) for _ in range(20000)]
    always = plans[0.0]
    assert not any(p.fanned_out for p in always)
    assert np.mean([p.predicted == "d1" for p in always]) == pytest.approx(0.9, abs=0.01)  # overall accuracy
    picky = [p for p in plans[0.9] if not p.fanned_out]
    assert 0.3 < 1 - len(picky) / 20000 < 0.9  # a share of queries fans out
    assert np.mean([p.predicted == "d1" for p in picky]) > 0.95  # confident predictions are right more often
    assert all(p.stores == (0, 1, 2) for p in plans[0.9] if p.fanned_out)
    misroutes = [p.predicted for p in always if p.predicted != "d1"]
    assert set(misroutes) == {"d0", "d2"}


def test_routed_needs_one_store_per_domain():
    with pytest.raises(ConfigError, match="one store per domain"):
        RETRIEVAL_ROUTERS.create("routed").check(
            [STORES[0], StoreView(name="x", domain="d0", n_vectors=1, recall=1.0)]
        )


def test_tag_rag_marks_a_fraction_with_topics_and_keeps_existing_topics():
    reqs = [
        Request(id=i, arrival_s=0.0, prompt_tokens=10, output_tokens=5, topic="legal" if i == 0 else None)
        for i in range(4000)
    ]
    out = tag_rag(reqs, fraction=0.25, topic_mix={"a": 3, "b": 1}, rng=np.random.default_rng(0))
    rag = [r for r in out if r.rag]
    assert len(rag) / len(out) == pytest.approx(0.25, abs=0.03)
    free = [r for r in rag if r.id != 0]
    assert np.mean([r.topic == "a" for r in free]) == pytest.approx(0.75, abs=0.05)
    assert all(r.topic is None and r.prompt_tokens == 10 for r in out if not r.rag and r.id != 0)
    assert out[0].topic == "legal"
    with pytest.raises(ValueError, match="topic_mix"):
        tag_rag(reqs, fraction=0.5, topic_mix={}, rng=np.random.default_rng(0))


# -- config --------------------------------------------------------------------------------------------------


def store(name="a", domain="a", **kw) -> dict:
    return {
        "name": name,
        "domain": domain,
        "index_type": "hnsw",
        "n_vectors": 10**6,
        "dim": 768,
        "search_param": 64,
        **kw,
    }


@pytest.mark.parametrize(
    "data, message",
    [
        ({"stores": [store(hardware="tpu")]}, "stores[0] (a): no retrieval table rows"),
        ({"stores": [store(domain="*"), store(name="b", domain="b")]}, "must be the only one"),
        ({"stores": [store(), store(name="a", domain="b")]}, "store names must be unique"),
        ({"stores": [store()], "topic_mix": {"zz": 1}}, "topic_mix names topics no store holds: zz"),
        ({"stores": [store(domain="*")], "router": {"name": "routed"}}, "one store per domain"),
        ({"stores": [store()], "router": {"name": "routed", "params": {"accuracy": 2}}}, "bad parameters"),
        ({"stores": [store()], "router": {"name": "nope"}}, "unknown retrieval router 'nope'"),
        ({"stores": [store(index_type="annoy")]}, "index_type"),
        (
            {"stores": [store(hybrid={"lexical_ms_p50": 9, "lexical_ms_p95": 3})]},
            "lexical_ms_p95 (3.0) is below",
        ),
    ],
)
def test_retrieval_config_errors(data, message):
    with pytest.raises(Exception) as err:
        RetrievalConfig.model_validate(data)
    assert message in str(err.value)


def test_retrieval_config_views_apply_hybrid_uplift_and_default_topic_mix():
    cfg = RetrievalConfig.model_validate(
        {"stores": [store(), store(name="b", domain="b", hybrid={"recall_uplift": 0.5})]}
    )
    plain, hybrid = cfg.views()
    assert hybrid.recall == pytest.approx(1 - (1 - plain.recall) / 2)
    assert cfg.topics() == {"a": 1.0, "b": 1.0}
    assert math.isclose(cfg.stores[0].profile().recall, plain.recall)
