"""Vector stores and the knowledge fabric in SimPy: the store queue against exact FCFS recursion,
Pollaczek-Khinchine and Little's law; queries conserved; fan-out latency; the RAG stage; the experiment."""

from __future__ import annotations

import math

import numpy as np
import pytest
import simpy
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from fleettwin.models.retrieval.config import RetrievalConfig
from fleettwin.models.retrieval.model import (
    COLUMNS,
    RetrievalModel,
    RetrievalTable,
    StoreProfile,
    parse_table,
)
from fleettwin.models.workload.request import Request
from fleettwin.sim.retrieval.rag import KnowledgeFabric, RagStage, VectorStore, build_fabric
from tests.sim.test_closed_forms import fcfs_multiserver_waits

# Stores whose latency is exact (p95 = p50): 1 ms at 1000 vectors, 4 ms at 100000 (flat scales linearly in n).
TABLE = RetrievalModel(
    RetrievalTable(
        [
            (
                "t.csv",
                parse_table(
                    ",".join(COLUMNS)
                    + "\nflat,cpu,1000,128,0,1.0,1.0,1.0,1,test\nhnsw,cpu,1000,128,16,1.0,2.0,0.9,1,test\n",
                    "t.csv",
                ),
            )
        ]
    )
)


def profile(p50_ms: float, p95_ms: float) -> StoreProfile:
    return StoreProfile(
        index_type="hnsw",
        hardware="cpu",
        n_vectors=1,
        dim=1,
        search_param=0,
        p50_ms=p50_ms,
        p95_ms=p95_ms,
        recall=1.0,
        source="test",
    )


def run_store(
    servers: int, rate: float, n: int, seed: int, p50_ms=2.0, p95_ms=4.0, sample_dt: float | None = None
):
    """Poisson queries into one store; returns arrivals, waits, services (and sampled queue lengths)."""
    env = simpy.Environment()
    store = VectorStore(
        env, "s", profile(p50_ms, p95_ms), servers=servers, rng=np.random.default_rng([seed, 1])
    )
    arrivals = np.cumsum(np.random.default_rng([seed, 2]).exponential(1.0 / rate, n))
    waits, services = np.empty(n), np.empty(n)
    samples: list[int] = []

    def one(i):
        waits[i], services[i] = yield env.process(store.query())

    def source():
        for i, t in enumerate(arrivals):
            yield env.timeout(t - env.now)
            env.process(one(i))

    def sampler():
        while True:
            samples.append(store.in_system)
            yield env.timeout(sample_dt)

    env.process(source())
    if sample_dt:
        env.process(sampler())
    env.run(until=arrivals[-1] + 60.0)
    assert store.arrived == store.served == n
    return arrivals, waits, services, np.array(samples), store


def test_store_is_exactly_a_fcfs_multiserver_queue():
    arrivals, waits, services, _, store = run_store(servers=3, rate=1200.0, n=5000, seed=1)
    np.testing.assert_allclose(waits, fcfs_multiserver_waits(arrivals, services, 3), atol=1e-9)
    assert store.busy_s == pytest.approx(services.sum())
    assert waits.max() > 0  # the load made it queue


def test_single_server_store_matches_pollaczek_khinchine():
    # M/G/1 with lognormal service: Wq = lambda E[S^2] / (2 (1 - rho)); 8 independent replications.
    ln = profile(2.0, 4.0).latency_s
    es, es2 = ln.mean, math.exp(2 * ln.mu + 2 * ln.sigma**2)
    rate = 0.6 / es
    expected = rate * es2 / (2 * (1 - 0.6))
    means = [run_store(1, rate, 12_000, seed=50 + k)[1][1200:].mean() for k in range(8)]
    half = 3.499 * float(np.std(means, ddof=1)) / math.sqrt(8)  # 99 % t-interval, 7 degrees of freedom
    assert abs(np.mean(means) - expected) <= half, (np.mean(means), expected, half)
    assert half < 0.25 * expected


def test_littles_law_at_a_multiserver_store():
    arrivals, waits, services, samples, _ = run_store(
        servers=4, rate=1500.0, n=30_000, seed=9, sample_dt=0.001
    )
    horizon = arrivals[-1]
    in_system = samples[: int(horizon / 0.001)].mean()  # time average, sampled
    rate = len(arrivals) / horizon
    assert in_system == pytest.approx(rate * (waits + services).mean(), rel=0.03)


def fabric(router: dict, n_stores: int, *, seed=0, servers=1, index="hnsw", search_param=16) -> tuple:
    env = simpy.Environment()
    cfg = RetrievalConfig.model_validate(
        {
            "stores": [
                {
                    "name": f"s{i}",
                    "domain": f"d{i}",
                    "index_type": index,
                    "n_vectors": 1000 * (i + 1),
                    "dim": 128,
                    "search_param": search_param,
                    "servers": servers,
                }
                for i in range(n_stores)
            ],
            "router": router,
            "k": 4,
            "tokens_per_passage": 50,
        }
    )
    return env, build_fabric(env, cfg, seed=seed, model=TABLE)


def drive(env: simpy.Environment, fab: KnowledgeFabric, topics: list[str], gap_s: float) -> None:
    def source():
        for i, topic in enumerate(topics):
            env.process(fab.retrieve(i, topic))
            yield env.timeout(gap_s)

    env.process(source())
    env.run()


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from(
        [
            {"name": "fanout_all"},
            {"name": "routed", "params": {"accuracy": 0.7, "threshold": 0.6, "concentration": 5}},
            {"name": "routed", "params": {"accuracy": 1.0, "threshold": 0.0}},
        ]
    ),
    st.integers(1, 4),
    st.lists(st.integers(0, 3), min_size=1, max_size=60),
    st.floats(0.0, 0.003),
    st.integers(0, 10),
)
def test_every_query_gets_one_outcome_and_every_store_query_is_served(router, n_stores, topic_ids, gap, seed):
    env, fab = fabric(router, n_stores, seed=seed)
    drive(env, fab, [f"d{t % n_stores}" for t in topic_ids], gap)
    df = fab.outcomes_frame()
    assert sorted(df["request_id"]) == list(range(len(topic_ids)))
    assert (
        df["stores_queried"].sum() == sum(s.served for s in fab.stores) == sum(s.arrived for s in fab.stores)
    )
    assert ((df["recall"] >= 0) & (df["recall"] <= 1)).all() and (df["latency_s"] > 0).all()
    assert (df["context_tokens"] == 200).all()
    assert (df["fanned_out"] == (df["stores_queried"] == n_stores)).all() or n_stores == 1


def test_fanout_latency_is_the_slowest_store_and_routed_adds_the_classifier():
    # flat stores with exact service times 1, 2, 3 ms (linear in n); queries far apart never queue
    env, fab = fabric({"name": "fanout_all"}, 3, index="flat", search_param=0)
    drive(env, fab, ["d0", "d1", "d2"], gap_s=1.0)
    assert fab.outcomes_frame()["latency_s"].tolist() == pytest.approx([0.003] * 3)
    env, fab = fabric(
        {"name": "routed", "params": {"accuracy": 1.0, "threshold": 0.5, "classifier_ms": 0.5}},
        3,
        index="flat",
        search_param=0,
    )
    drive(env, fab, ["d0", "d1", "d2"], gap_s=1.0)
    df = fab.outcomes_frame()
    assert df["latency_s"].tolist() == pytest.approx([0.0015, 0.0025, 0.0035])
    assert df["recall"].tolist() == pytest.approx([1.0] * 3) and not df["misrouted"].any()


def test_hybrid_store_answers_when_the_slower_search_is_done_and_bm25_takes_no_slot():
    from fleettwin.models.retrieval.config import HybridConfig

    env = simpy.Environment()
    store = VectorStore(
        env,
        "h",
        profile(1.0, 1.0),
        servers=1,
        rng=np.random.default_rng(0),
        hybrid=HybridConfig(lexical_ms_p50=5.0, lexical_ms_p95=5.0),
    )
    done = []

    def one():
        yield env.process(store.query())
        done.append(env.now)

    for _ in range(3):  # three at once: dense searches queue (1, 2, 3 ms), BM25 runs apart (5 ms each)
        env.process(one())
    env.run()
    assert done == pytest.approx([0.005] * 3) and store.busy_s == pytest.approx(0.003)


def test_same_seed_same_outcomes_and_another_seed_differs():
    frames = []
    for seed in (4, 4, 5):
        env, fab = fabric({"name": "routed", "params": {"accuracy": 0.8, "threshold": 0.7}}, 3, seed=seed)
        drive(env, fab, [f"d{i % 3}" for i in range(300)], gap_s=0.0004)
        frames.append(fab.outcomes_frame())
    assert frames[0].equals(frames[1])
    assert not frames[0]["latency_s"].equals(frames[2]["latency_s"])


def rag_stage(k: int, tokens_per_passage: int) -> RagStage:
    """A RAG stage in front of one small flat store (an exact 1 ms query) that every topic goes to."""
    store = {"name": "a", "domain": "*", "index_type": "flat", "n_vectors": 1000, "dim": 128}
    cfg = RetrievalConfig.model_validate(
        {"stores": [store], "k": k, "tokens_per_passage": tokens_per_passage}
    )
    return RagStage(cfg, seed=0, model=TABLE)


def test_rag_stage_grows_the_prompt_by_the_context_and_passes_others_through():
    stage = rag_stage(k=5, tokens_per_passage=100)
    env = simpy.Environment()
    seen: list[tuple[float, Request]] = []

    def go(req):
        out = yield from stage(env, req)
        seen.append((env.now, out))

    for i, rag in enumerate((True, False)):
        env.process(go(Request(id=i, arrival_s=0.0, prompt_tokens=300, output_tokens=10, rag=rag, topic="x")))
    env.run()
    (t_plain, plain), (t_rag, rag_req) = sorted(seen, key=lambda x: x[0])
    assert t_plain == 0.0 and plain.prompt_tokens == 300 and not plain.rag
    assert t_rag == pytest.approx(0.001) and rag_req.prompt_tokens == 300 + 5 * 100
    assert rag_req.arrival_s == 0.0 and stage.pending == {}
    assert stage.summary()["queries"] == 1


def test_experiment_runs_end_to_end_on_a_small_config(tmp_path):
    from fleettwin.experiments import knowledge_fabric as kf

    data = yaml.safe_load(kf.CONFIG.read_text())
    data.update(
        queries=300,
        loads=[{"name": "moderate", "utilization": 0.3}],
        indexes=[{"index_type": "ivf_flat", "hardware": "cpu", "search_param": 64, "servers": 8}],
    )
    data["sensitivity"].update(index_types=["ivf_flat"], accuracy=[0.9, 1.0], locality=[1.0], queries=200)
    path = tmp_path / "kf.yaml"
    path.write_text(yaml.safe_dump(data))
    result = kf.run(tmp_path / "out", quick=False, config=path)
    df = result.results
    assert list(df["policy"]) == [p["label"] for p in data["policies"]]
    for col in (
        "policy",
        "retrieval_p50_ms",
        "retrieval_p95_ms",
        "recall_at_10",
        "queries_per_s",
        "stores_queried_mean",
    ):
        assert df[col].notna().all(), col
    by = df.set_index("policy")
    assert (
        by.loc["monolithic", "stores_queried_mean"] == 1 and by.loc["fanout_all", "stores_queried_mean"] == 8
    )
    assert by.loc["monolithic", "p50_vs_monolithic_pct"] == 0
    assert by.loc["fanout_all", "recall_at_10"] >= by.loc["routed", "recall_at_10"]
    assert "0.992" in result.report_md and "estimate" in result.report_md
    assert (tmp_path / "out" / "sensitivity.csv").exists()


# -- in the request path -------------------------------------------------------------------------------------


def test_rag_requests_retrieve_then_prefill_the_longer_prompt_in_the_simulator():
    # one store with an exact 1 ms query; constant steps: TTFT = retrieval + step + per-token x (prompt +
    # context)
    from fleettwin.models.engine.queue import EngineLimits
    from fleettwin.models.perf.constant import ConstantModel
    from tests.simkit import run_pool

    stage = rag_stage(k=4, tokens_per_passage=50)
    reqs = [
        Request(id=i, arrival_s=float(i), prompt_tokens=100, output_tokens=3, rag=i % 2 == 0, topic="x")
        for i in range(6)
    ]
    perf = ConstantModel(ConstantModel.Params(step_s=0.01, per_prefill_token_s=1e-4))
    limits = EngineLimits(num_blocks=1000, max_num_seqs=8, max_num_batched_tokens=4096, max_model_len=4096)
    df = run_pool(reqs, limits, perf=perf, pre_submit=[stage]).requests.set_index("id")
    assert (df["status"] == "completed").all()
    for i in range(6):
        rag = i % 2 == 0
        prompt = 100 + (200 if rag else 0)
        assert df.loc[i, "prompt_tokens"] == prompt
        assert df.loc[i, "ttft_s"] == pytest.approx((0.001 if rag else 0.0) + 0.01 + 1e-4 * prompt, abs=1e-9)
    assert stage.summary()["queries"] == 3


@pytest.mark.parametrize("regions", [False, True])
def test_scenarios_with_a_retrieval_section_tag_and_serve_rag_requests(regions):
    from fleettwin.models.config import parse_scenario
    from fleettwin.sim.runner import run_scenario
    from tests.scenariokit import pool, scenario

    data = scenario(
        "rag",
        seed=5,
        rate=5,
        duration_s=20,
        prompt=100,
        output=4,
        pools=[pool("p")],
        retrieval={
            "stores": [
                {
                    "name": f"s{d}",
                    "domain": d,
                    "index_type": "hnsw",
                    "n_vectors": 10**6,
                    "dim": 768,
                    "search_param": 64,
                    "servers": 2,
                }
                for d in ("hr", "eng")
            ],
            "router": {"name": "routed"},
            "k": 5,
            "tokens_per_passage": 100,
            "rag_fraction": 0.5,
        },
    )
    requests = None
    if regions:  # the front door's pre-submit hook; users from one region, tagged here
        data["regions"] = {"regions": [{"name": "us-east-1", "pools": ["p"]}], "users": None}
        requests = [
            Request(
                id=i,
                arrival_s=0.2 * i,
                prompt_tokens=100,
                output_tokens=4,
                region="us-east-1",
                rag=i % 2 == 0,
                topic=("hr", "eng")[i % 3 % 2],
            )
            for i in range(100)
        ]
    result = run_scenario(parse_scenario(data), requests=requests)
    df = result.requests
    assert (df["status"] == "completed").all() and len(df) > 50
    rag = df["prompt_tokens"] == 600
    assert set(df["prompt_tokens"]) == {100, 600} and 0.3 < rag.mean() < 0.7
    summary = result.summary["retrieval"]
    assert summary["queries"] == rag.sum() and summary["context_tokens"] == 500
    assert sum(s["queries"] for s in summary["stores"].values()) >= summary["queries"]
