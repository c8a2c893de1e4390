"""The live workflow executor against emulators on loopback: dependencies respected (a node starts only after
its parents ended), exact token counts reach the server, the simulator's columns and instances, failures and
the drain deadline, the trace of a workflow, `fleettwin live loadgen --workflows`; the hybrid retriever's
rankings."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fleettwin.cli import main
from fleettwin.live.hybrid import HybridRetriever, Passage, load_corpus, recall_of_source
from fleettwin.live.metrics import Scraper
from fleettwin.live.server import serve_in_thread
from fleettwin.live.tracing import setup_tracing
from fleettwin.live.workflows import run_workflows
from fleettwin.models.engine.queue import EngineLimits
from fleettwin.models.errors import ConfigError
from fleettwin.models.workflows.records import NODE_COLUMNS, WORKFLOW_COLUMNS
from fleettwin.models.workflows.templates import WorkflowsConfig, sample_instances
from tests.emukit import constant_emulator
from tests.scenariokit import fixed, uniform

ROOT = Path(__file__).parents[2]
LIMITS = EngineLimits(num_blocks=1024, max_num_seqs=32, max_num_batched_tokens=2048, max_model_len=2048)
SPEC = constant_emulator(0.002, LIMITS)
AGENT = {
    "arrivals": {"name": "poisson", "params": {"rate": 20, "duration_s": 1}},
    "templates": [
        {
            "name": "agent",
            "nodes": [
                {"id": "plan", "kind": "llm", "lengths": uniform(20, 200, 2, 12)},
                {"id": "search", "kind": "retrieval", "after": ["plan"], "fanout": {"min": 1, "max": 3}},
                {
                    "id": "read",
                    "kind": "llm",
                    "after": ["search"],
                    "branch_of": "search",
                    "lengths": fixed(30, 6),
                },
                {
                    "id": "lookup",
                    "kind": "tool",
                    "after": ["plan"],
                    "delay": {"name": "uniform", "params": {"min_s": 0.0, "max_s": 0.05}},
                    "result_tokens": 7,
                },
                {
                    "id": "answer",
                    "kind": "llm",
                    "rag": True,
                    "after": ["read", "lookup"],
                    "lengths": fixed(10, 4),
                },
            ],
        }
    ],
}


@pytest.fixture(scope="module")
def retriever() -> HybridRetriever:
    return HybridRetriever(load_corpus(ROOT / "docs")[:150], dim=64)  # a part of the docs: a quicker index


def execute(instances, urls, retriever, **kw):
    return asyncio.run(run_workflows(instances, urls, retriever=retriever, k=4, context_tokens=40, **kw))


def test_nodes_start_after_their_parents_and_every_call_reaches_a_server(retriever):
    instances = sample_instances(WorkflowsConfig.model_validate(AGENT), seed=4, context_tokens=40)
    with serve_in_thread(SPEC) as a, serve_in_thread(SPEC) as b:
        wf, nodes = execute(instances, [a.url, b.url], retriever)

        async def finished() -> float:
            async with Scraper() as s:
                scraped = [await s.scrape(u) for u in (a.url, b.url)]
            return sum(m.requests_finished for m in scraped)

        served = asyncio.run(finished())
    assert list(wf.columns) == list(WORKFLOW_COLUMNS) and list(nodes.columns) == list(NODE_COLUMNS)
    assert len(wf) == len(instances) > 5 and (wf["status"] == "completed").all()
    llm = nodes[nodes["kind"] == "llm"]
    assert served == len(llm) and llm["request_id"].is_unique
    for _, w in wf.iterrows():
        part = nodes[nodes["workflow"] == w["workflow"]].set_index("node")
        for _, node in part.iterrows():
            parents = [p for p in node["parents"].split(",") if p]
            if parents:  # started after every parent ended (on the executor's clock)
                assert node["start_s"] >= max(part.loc[p, "end_s"] for p in parents)
            else:
                assert node["start_s"] >= w["arrival_s"]
            assert node["end_s"] >= node["start_s"]
        assert w["finish_s"] == part["end_s"].max() and w["e2e_s"] >= w["critical_path_s"] > 0
    # the instance's lengths, exactly: prompts carry the parents' outputs and the retrieved context
    by_key = {(i.id, n.key): n for i in instances for n in i.nodes}
    for _, node in llm.iterrows():
        inst_node = by_key[(node["workflow"], node["node"])]
        assert node["output_tokens"] == inst_node.output_tokens
        assert node["prompt_tokens"] == inst_node.prompt_tokens + (40 if inst_node.rag else 0)
    answer = [n for n in instances[0].nodes if n.node == "answer"][0]
    reads = [n for n in instances[0].nodes if n.node == "read"]
    assert answer.prompt_tokens == 10 + 6 * len(reads) + 7


def test_a_failed_call_skips_its_descendants_and_the_drain_deadline_leaves_nodes_unfinished(retriever):
    cfg = WorkflowsConfig.model_validate(
        {
            "arrivals": {"name": "times", "params": {"at_s": [0.0]}},
            "templates": [
                {
                    "name": "t",
                    "nodes": [
                        {"id": "big", "kind": "llm", "lengths": fixed(5000, 4)},
                        {"id": "after", "kind": "llm", "after": ["big"], "lengths": fixed(5, 2)},
                        {"id": "slow", "kind": "tool", "delay": {"name": "fixed", "params": {"s": 30}}},
                    ],
                }
            ],
        }
    )
    with serve_in_thread(SPEC) as a:
        wf, nodes = execute(sample_instances(cfg, 0), [a.url], retriever, drain_timeout_s=1.0)
    by = nodes.set_index("node")
    assert by.loc["big", "status"] == "failed" and "maximum context length" in by.loc["big", "reason"]
    assert by.loc["after", "status"] == "skipped" and math.isnan(by.loc["after", "start_s"])
    assert by.loc["slow", "status"] == "unfinished" and by.loc["slow", "start_s"] >= 0
    assert (
        wf.loc[0, "status"] == "failed"
        and wf.loc[0, "failed_nodes"] == "big"
        and wf.loc[0, "skipped_nodes"] == 1
    )


def test_a_workflow_is_one_trace_from_its_root_to_the_emulator(retriever):
    pytest.importorskip("opentelemetry.sdk", reason="tracing needs opentelemetry-sdk (the live extra)")
    tr, emu_tr = setup_tracing("loadgen", "memory"), setup_tracing("emulator", "memory")
    from fleettwin.live.server import create_app

    instances = sample_instances(WorkflowsConfig.model_validate(AGENT), seed=1, context_tokens=40)[:1]
    with serve_in_thread(create_app(SPEC, tracing=emu_tr)) as a:
        wf, nodes = execute(instances, [a.url], retriever, tracing=tr)
    spans = tr.exporter.get_finished_spans()
    [root] = [s for s in spans if s.name == "workflow"]
    calls = [s for s in spans if s.name == "workflow.llm"]
    assert len(calls) == (nodes["kind"] == "llm").sum()
    assert {s.context.trace_id for s in spans} == {root.context.trace_id}
    assert all(s.parent.span_id == root.context.span_id for s in calls)
    searches = [s for s in spans if s.name == "retrieval.search"]
    assert len(searches) == (nodes["kind"] == "retrieval").sum() + 1  # + the rag answer's own retrieval
    generated = emu_tr.exporter.get_finished_spans()
    assert sorted(g.parent.span_id for g in generated) == sorted(c.context.span_id for c in calls)


def test_loadgen_command_runs_the_scenarios_workflows(tmp_path, capsys):
    scenario = tmp_path / "wf.yaml"
    scenario.write_text((ROOT / "configs" / "workflows.yaml").read_text())
    out = tmp_path / "live.parquet"
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.md").write_text(
        "\n\n".join(p.text for p in load_corpus(ROOT / "docs")[:40])
    )  # a quick index
    with serve_in_thread(SPEC) as a:
        assert (
            main(
                [
                    "loadgen",
                    "--workflows",
                    str(scenario),
                    "--targets",
                    a.url,
                    "--duration",
                    "1.5",
                    "--speedup",
                    "8",
                    "--max-workflows",
                    "3",
                    "--corpus",
                    str(corpus),
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
    wf, nodes = pd.read_parquet(out), pd.read_parquet(tmp_path / "live_nodes.parquet")
    assert 1 <= len(wf) <= 3 and set(nodes["workflow"]) == set(wf["workflow"])
    assert (wf["status"] == "completed").all()
    assert '"workflows":' in capsys.readouterr().out
    assert main(["loadgen", "--targets", "http://127.0.0.1:9"]) != 0
    assert "give --trace (replay requests) or --workflows" in capsys.readouterr().err


# -- the hybrid retriever ------------------------------------------------------------------------------------


def test_bm25_and_reciprocal_rank_fusion_by_hand():
    passages = [
        Passage("x", "apple banana"),
        Passage("x", "apple apple cherry"),
        Passage("x", "banana cherry date"),
        Passage("x", "elderberry fig grape"),
    ]
    r = HybridRetriever(passages, dim=2)
    # BM25 of "apple" by hand: idf = ln(1 + (4 - 2 + 0.5) / (2 + 0.5)); tf part = tf (k1 + 1) / (tf + k1 (1 -
    # b + b dl / avgdl))
    idf = math.log(1 + 2.5 / 2.5)
    avgdl = 11 / 4
    expect = [
        idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * dl / avgdl))
        for tf, dl in ((1, 2), (2, 3), (0, 3), (0, 3))
    ]
    got = np.asarray(r.bm25[:, [r.vocab["apple"]]].todense()).ravel()
    assert got == pytest.approx(expect, rel=1e-12)
    hits = r.search("apple", k=4)
    assert hits[0].passage == 1 and hits[0].lexical_rank == 1
    for h in hits:  # fused score = sum of 1 / (60 + rank) over the lists it is in
        expect = sum(1 / (60 + rank) for rank in (h.lexical_rank, h.dense_rank) if rank is not None)
        assert h.score == pytest.approx(expect)
    assert r.search("zzz unknown", k=3) == []


def test_the_docs_corpus_finds_the_source_of_its_own_queries(retriever):
    found = recall_of_source(retriever, queries=100, k=10)
    assert found["hybrid"] >= 0.9 and found["lexical"] >= 0.9 and found["dense"] >= 0.5
    with pytest.raises(ConfigError, match="not a directory"):
        load_corpus(ROOT / "no-such-dir")


def test_through_the_gateway_a_workflow_is_one_trace_down_to_the_emulator_and_the_retrieval_service(
    retriever, tmp_path
):
    pytest.importorskip("opentelemetry.sdk", reason="tracing needs opentelemetry-sdk (the live extra)")
    from fleettwin.live.gateway.app import create_gateway_app
    from fleettwin.live.gateway.config import hash_key, parse_gateway
    from fleettwin.live.retrieval_service import build_collection, create_retrieval_app, load_collection
    from fleettwin.live.server import create_app

    key = "wf-key-0123456789"
    build_collection(
        tmp_path / "docs.faiss",
        [{"text": p.text} for p in retriever.passages[:50]],
        embedder_params={"dim": 64},
    )
    tr = {n: setup_tracing(n, "memory") for n in ("loadgen", "gateway", "emulator", "retrieval")}
    instances = sample_instances(WorkflowsConfig.model_validate(AGENT), seed=2, context_tokens=40)[:3]
    with (
        serve_in_thread(create_app(SPEC, tracing=tr["emulator"])) as emu,
        serve_in_thread(
            create_retrieval_app(
                {"docs": load_collection("docs", tmp_path / "docs.faiss")}, tracing=tr["retrieval"]
            )
        ) as svc,
    ):
        cfg = parse_gateway(
            {
                "tenants": {
                    "t": {
                        "api_keys": [hash_key(key)],
                        "models": ["emu"],
                        "collections": ["docs"],
                        "allow_token_ids": True,
                    }
                },
                "backends": {"emu": {"urls": [emu.url]}},
                "retrieval": {"url": svc.url},
                "audit_log": str(tmp_path / "audit.jsonl"),
            }
        )
        with serve_in_thread(create_gateway_app(cfg, tracing=tr["gateway"])) as gw:
            wf, nodes = execute(
                instances, [gw.url], retriever, token=key, retrieval_collection="docs", tracing=tr["loadgen"]
            )
    assert (wf["status"] == "completed").all(), nodes[nodes["status"] != "completed"]["reason"].tolist()
    spans = {n: t.exporter.get_finished_spans() for n, t in tr.items()}
    by_id = {s.context.span_id: s for ss in spans.values() for s in ss}

    def chain(span) -> list[str]:
        names = [span.name]
        while span.parent is not None:
            span = by_id[span.parent.span_id]
            names.append(span.name)
        return names[::-1]

    searched = spans["retrieval"]
    assert len(searched) == (nodes["kind"] == "retrieval").sum() + len(
        instances
    )  # + each answer's rag retrieval
    assert {tuple(chain(s)[-4:]) for s in searched} == {
        ("retrieval.search", "gateway.request", "gateway.retrieval", "retrieval.retrieve")
    }
    assert {chain(s)[0] for s in searched} == {"workflow"}
    generated = spans["emulator"]
    assert len(generated) == (nodes["kind"] == "llm").sum()
    assert {tuple(chain(g)) for g in generated} == {
        ("workflow", "workflow.llm", "gateway.request", "gateway.backend", "emulator.generate")
    }
    roots = [s for s in spans["loadgen"] if s.name == "workflow"]
    assert len({s.context.trace_id for s in roots}) == len(instances)
