"""Agent/RAG workflows: template validation, instance expansion, the critical path by hand, a simulated
workflow equal to a hand computation, and conservation of node requests on random DAGs (hypothesis)."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from fleettwin.models.config import parse_scenario
from fleettwin.models.engine.queue import EngineLimits
from fleettwin.models.errors import ConfigError
from fleettwin.models.perf.constant import ConstantModel
from fleettwin.models.retrieval.config import RetrievalConfig
from fleettwin.models.workflows.templates import (
    TemplateSpec,
    WorkflowsConfig,
    critical_path,
    sample_instances,
)
from fleettwin.models.workload.request import Request
from fleettwin.sim.retrieval.rag import RagStage
from fleettwin.sim.runner import run_scenario
from fleettwin.sim.workflows.driver import WorkflowDriver, workflow_summary
from tests import scenariokit
from tests.sim.test_retrieval_sim import TABLE
from tests.simkit import run_pool

FIXED = {"name": "fixed", "params": {"prompt": 100, "output": 4}}
# One store answering in exactly 1 ms (TABLE), two queries at a time: 4 passages of 50 tokens.
RETRIEVAL = RetrievalConfig.model_validate(
    {
        "stores": [
            {"name": "a", "domain": "*", "index_type": "flat", "n_vectors": 1000, "dim": 128, "servers": 2}
        ],
        "k": 4,
        "tokens_per_passage": 50,
        "router": {"name": "monolithic"},
    }
)
PERF = ConstantModel(ConstantModel.Params(step_s=0.01, per_prefill_token_s=1e-4))
LIMITS = EngineLimits(num_blocks=1000, max_num_seqs=8, max_num_batched_tokens=4096, max_model_len=4096)
AGENT = [  # plan -> 2 x (search -> read) + lookup -> answer
    {"id": "plan", "kind": "llm", "lengths": FIXED},
    {"id": "search", "kind": "retrieval", "after": ["plan"], "fanout": 2},
    {
        "id": "read",
        "kind": "llm",
        "after": ["search"],
        "branch_of": "search",
        "lengths": {"name": "fixed", "params": {"prompt": 50, "output": 10}},
    },
    {
        "id": "lookup",
        "kind": "tool",
        "after": ["plan"],
        "delay": {"name": "fixed", "params": {"s": 0.1}},
        "result_tokens": 30,
    },
    {
        "id": "answer",
        "kind": "llm",
        "after": ["read", "lookup"],
        "lengths": {"name": "fixed", "params": {"prompt": 20, "output": 3}},
    },
]


def workflows(nodes: list[dict], at_s=(1.0,), **kw) -> WorkflowsConfig:
    return WorkflowsConfig.model_validate(
        {
            "arrivals": {"name": "times", "params": {"at_s": list(at_s)}},
            "templates": [{"name": "t", "nodes": nodes}],
            **kw,
        }
    )


# -- validation ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "nodes, message",
    [
        (
            [
                {"id": "a", "kind": "llm", "lengths": FIXED, "after": ["c"]},
                {"id": "b", "kind": "llm", "lengths": FIXED, "after": ["a"]},
                {"id": "c", "kind": "llm", "lengths": FIXED, "after": ["b"]},
            ],
            "template 't': the nodes form a cycle: a -> b -> c -> a",
        ),
        ([{"id": "a", "kind": "llm", "lengths": FIXED, "after": ["a"]}], "node 'a' depends on itself"),
        (
            [{"id": "a", "kind": "llm", "lengths": FIXED, "after": ["nope"]}],
            "node 'a': after: unknown node 'nope'",
        ),
        (
            [
                {"id": "a", "kind": "tool", "delay": {"name": "fixed", "params": {"s": 1}}},
                {"id": "a", "kind": "llm", "lengths": FIXED},
            ],
            "node id 'a' is used twice",
        ),
        ([{"id": "a", "kind": "llm"}], "node 'a': an llm node needs lengths"),
        ([{"id": "a", "kind": "tool"}], "node 'a': a tool node needs a delay"),
        (
            [{"id": "a", "kind": "retrieval", "lengths": FIXED}],
            "node 'a': lengths is for llm nodes, not retrieval",
        ),
        (
            [{"id": "a", "kind": "llm", "lengths": FIXED, "delay": {"name": "fixed", "params": {"s": 1}}}],
            "node 'a': delay is for tool nodes, not llm",
        ),
        (
            [
                {"id": "a", "kind": "retrieval"},
                {"id": "b", "kind": "llm", "lengths": FIXED, "branch_of": "a"},
            ],
            "node 'b': branch_of 'a', which has no fanout",
        ),
        (
            [
                {"id": "a", "kind": "retrieval", "fanout": 2},
                {"id": "b", "kind": "llm", "lengths": FIXED, "branch_of": "x"},
            ],
            "node 'b': branch_of: unknown node 'x'",
        ),
        ([{"id": "a[1]", "kind": "retrieval"}], "node 'a[1]': an id is a letter"),
        (
            [{"id": "a", "kind": "retrieval", "fanout": {"min": 3, "max": 2}}],
            "fanout max (2) must be >= min (3)",
        ),
    ],
)
def test_bad_templates_are_refused_with_the_node_named(nodes, message):
    with pytest.raises(ValidationError) as err:
        TemplateSpec.model_validate({"name": "t", "nodes": nodes})
    assert message in str(err.value)


def scenario(**extra) -> dict:
    pools = [scenariokit.pool("p", perf_model={"name": "constant", "params": {"step_s": 0.01}})]
    return scenariokit.scenario("wf", rate=0, duration_s=1, lengths=FIXED, **{"pools": pools, **extra})


def test_scenario_checks_name_the_section_and_the_node():
    wf = {
        "arrivals": {"name": "times", "params": {"at_s": [0]}},
        "templates": [{"name": "agent", "nodes": AGENT}],
    }
    with pytest.raises(
        ConfigError,
        match=r"x.yaml: workflows: agent.search query the knowledge fabric, but the "
        r"scenario has no retrieval: section",
    ):
        parse_scenario(scenario(workflows=wf), source="x.yaml")
    other = {**wf, "templates": [{"name": "c", "model": "llama-3-70b", "nodes": [AGENT[0]]}]}
    with pytest.raises(
        ConfigError, match=r"workflows: model 'llama-3-70b' is not served by any pool \(llama-3-8b\)"
    ):
        parse_scenario(scenario(workflows=other))
    topic = {**wf, "templates": [{"name": "c", "nodes": [{"id": "s", "kind": "retrieval", "topic": "hr"}]}]}
    rag = {
        "stores": [
            {
                "name": "e",
                "domain": "eng",
                "index_type": "hnsw",
                "n_vectors": 10**6,
                "dim": 768,
                "search_param": 64,
            }
        ],
        "router": {"name": "fanout_all"},
    }
    with pytest.raises(ConfigError, match=r"node 's': topic 'hr' is held by no store \(store domains: eng\)"):
        parse_scenario(scenario(workflows=topic, retrieval=rag))
    with pytest.raises(ConfigError, match=r"workflows.templates\[0\].nodes\[0\]"):
        parse_scenario(
            scenario(workflows={**wf, "templates": [{"name": "c", "nodes": [{"id": "a", "kind": "x"}]}]})
        )


# -- instances and the critical path -------------------------------------------------------------------------


def test_fanout_pairs_branches_and_prompts_carry_what_the_parents_hand_on():
    [inst] = sample_instances(workflows(AGENT), seed=3, context_tokens=200)
    keys = [n.key for n in inst.nodes]
    assert keys == ["plan", "search[0]", "search[1]", "read[0]", "read[1]", "lookup", "answer"]
    parents = {n.key: tuple(keys[p] for p in n.parents) for n in inst.nodes}
    assert parents["read[1]"] == ("search[1]",) and parents["read[0]"] == ("search[0]",)
    assert parents["answer"] == ("read[0]", "read[1]", "lookup")
    prompt = {n.key: n.prompt_tokens for n in inst.nodes}
    assert prompt == {
        "plan": 100,
        "search[0]": 0,
        "search[1]": 0,
        "read[0]": 50 + 200,
        "read[1]": 250,
        "lookup": 0,
        "answer": 20 + 10 + 10 + 30,
    }


def test_random_widths_stay_in_range_and_a_seed_gives_the_same_instances():
    nodes = [
        {
            "id": "a",
            "kind": "llm",
            "lengths": {
                "name": "uniform",
                "params": {
                    "prompt_min": 1,
                    "prompt_max": 99,
                    "output_min": 1,
                    "output_max": 9,
                },
            },
        },
        {
            "id": "b",
            "kind": "tool",
            "after": ["a"],
            "fanout": {"min": 1, "max": 4},
            "delay": {"name": "lognormal", "params": {"median_s": 0.2, "sigma": 1.0}},
        },
    ]
    cfg = WorkflowsConfig.model_validate(
        {
            "arrivals": {"name": "poisson", "params": {"rate": 5, "duration_s": 20}},
            "templates": [{"name": "t", "nodes": nodes}],
        }
    )
    a, b, c = (sample_instances(cfg, s) for s in (1, 1, 2))
    assert a == b and a != c and len(a) > 50
    widths = [len(i.nodes) - 1 for i in a]
    assert set(widths) == {1, 2, 3, 4}
    # adding workflows leaves the earlier ones alone (one stream per workflow)
    more = sample_instances(cfg.model_copy(update={"max_workflows": 10}), 1)
    assert more == a[:10]


def test_critical_path_by_hand():
    #   a -> b -> d ; a -> c -> d ; c ends last of d's parents
    parents = [(), (0,), (0,), (1, 2)]
    start, end = [0, 1, 1, 5], [1, 3, 5, 6]
    assert critical_path(parents, start, end) == [0, 2, 3]
    assert critical_path(parents, start, [1, 5, 5, 6]) == [0, 2, 3]  # a tie goes to the later node
    nan = math.nan
    assert critical_path(parents, [0, 1, 1, nan], [1, 3, 5, nan]) == [0, 2]  # d did not run: c ended last
    assert critical_path([(), ()], [0, 0], [4, 2]) == [0]  # two roots: the later end
    assert critical_path([()], [nan], [nan]) == []


# -- in the simulator ----------------------------------------------------------------------------------------


def run_driver(cfg: WorkflowsConfig, requests=(), seed=0, context_tokens=200, limits=LIMITS, **kw):
    stage = RagStage(RETRIEVAL, seed=seed, model=TABLE)
    driver = WorkflowDriver(
        sample_instances(cfg, seed, context_tokens=context_tokens), first_id=len(requests), rag=stage
    )
    raw = run_pool(list(requests), limits, perf=PERF, pre_submit=[stage], spawners=[driver], **kw)
    return driver, raw


def test_a_simulated_workflow_takes_exactly_the_hand_computed_time():
    # Constant steps: an LLM call alone takes step + 1e-4 x prompt (the prefill iteration, first token) plus
    # (output - 1) decode steps of 10 ms; the two reads arrive together and share their iterations.
    driver, raw = run_driver(workflows(AGENT))
    wf, nodes = driver.frames()
    plan = 0.01 + 1e-4 * 100 + 3 * 0.01  # 1.00 -> 1.05
    search = 0.001  # 1.05 -> 1.051, both at once (two servers)
    reads = 0.01 + 1e-4 * 500 + 9 * 0.01  # one prefill iteration of both prompts (250 each), 9 decodes
    answer = 0.01 + 1e-4 * 70 + 2 * 0.01  # after the reads (the lookup ended at 1.15)
    row = wf.iloc[0]
    assert row["status"] == "completed"
    assert row["e2e_s"] == pytest.approx(plan + search + reads + answer, abs=1e-9)
    assert row["critical_path"] == "plan>search[1]>read[1]>answer"
    assert row["critical_path_s"] == pytest.approx(row["e2e_s"], abs=1e-12)
    assert row["critical_retrieval_s"] == pytest.approx(0.001, abs=1e-12) and row["critical_tool_s"] == 0
    assert (row["tokens_in"], row["tokens_out"]) == (100 + 2 * 250 + 70, 4 + 2 * 10 + 3)
    assert (row["llm_calls"], row["retrieval_calls"], row["tool_calls"]) == (4, 2, 1)
    lookup = nodes.set_index("node").loc["lookup"]
    assert (lookup["start_s"], lookup["end_s"]) == pytest.approx((1.05, 1.15), abs=1e-12)
    df = raw.requests
    assert len(df) == 4 and (df["status"] == "completed").all()
    # with a slow tool the path goes through it instead
    slow = [*AGENT[:3], {**AGENT[3], "delay": {"name": "fixed", "params": {"s": 0.5}}}, AGENT[4]]
    row = run_driver(workflows(slow))[0].frames()[0].iloc[0]
    assert row["critical_path"] == "plan>lookup>answer"
    assert row["e2e_s"] == pytest.approx(plan + 0.5 + answer, abs=1e-9)


def test_a_rejected_call_fails_its_workflow_and_skips_the_descendants():
    nodes = [
        {"id": "a", "kind": "llm", "lengths": FIXED},
        {
            "id": "big",
            "kind": "llm",
            "after": ["a"],
            "lengths": {"name": "fixed", "params": {"prompt": 5000, "output": 4}},
        },
        {"id": "side", "kind": "tool", "after": ["a"], "delay": {"name": "fixed", "params": {"s": 0.2}}},
        {"id": "z", "kind": "llm", "after": ["big", "side"], "lengths": FIXED},
    ]
    driver, raw = run_driver(workflows(nodes, at_s=(0.0, 0.5)))
    wf, out = driver.frames()
    assert list(wf["status"]) == ["failed", "failed"] and list(wf["failed_nodes"]) == ["big", "big"]
    by = out.set_index(["workflow", "node"])
    assert by.loc[(0, "z"), "status"] == "skipped" and by.loc[(0, "side"), "status"] == "completed"
    assert "max_model_len" in by.loc[(0, "big"), "reason"] or "context" in by.loc[(0, "big"), "reason"]
    assert math.isnan(wf.loc[0, "e2e_s"])
    assert sorted(raw.requests["status"]) == ["completed"] * 2 + ["rejected"] * 2
    s = workflow_summary(wf, out)
    assert (s["failed"], s["failed_nodes"], s["skipped_nodes"]) == (2, 2, 2)


@st.composite
def random_templates(draw):
    n = draw(st.integers(1, 6))
    nodes, fanned = [], []
    for k in range(n):
        kind = draw(st.sampled_from(["llm", "llm", "tool", "retrieval"]))
        node = {
            "id": f"n{k}",
            "kind": kind,
            "after": sorted(draw(st.sets(st.sampled_from([f"n{j}" for j in range(k)]), max_size=3)))
            if k
            else [],
        }
        if fanned and draw(st.booleans()):
            node["branch_of"] = draw(st.sampled_from(fanned))
        elif draw(st.booleans()):
            node["fanout"] = draw(st.integers(1, 3))
        if "fanout" in node or "branch_of" in node:
            fanned.append(node["id"])
        if kind == "llm":
            node["lengths"] = {
                "name": "uniform",
                "params": {
                    "prompt_min": 1,
                    "prompt_max": 300,
                    "output_min": 1,
                    "output_max": 30,
                },
            }
            node["rag"] = draw(st.booleans())
        elif kind == "tool":
            node["delay"] = {"name": "exponential", "params": {"mean_s": 0.05}}
        nodes.append(node)
    return nodes


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    nodes=random_templates(),
    seed=st.integers(0, 2**16),
    horizon=st.sampled_from([None, 1.5]),
    max_len=st.sampled_from([4096, 600]),
)
def test_every_node_request_is_counted_once_and_the_timing_is_consistent(nodes, seed, horizon, max_len):
    cfg = WorkflowsConfig.model_validate(
        {
            "arrivals": {"name": "poisson", "params": {"rate": 4, "duration_s": 2}},
            "templates": [{"name": "t", "nodes": nodes}],
        }
    )
    background = [Request(id=i, arrival_s=0.1 * i, prompt_tokens=50, output_tokens=5) for i in range(10)]
    limits = EngineLimits(num_blocks=400, max_num_seqs=4, max_num_batched_tokens=512, max_model_len=max_len)
    driver, raw = run_driver(cfg, background, seed=seed, limits=limits, max_time_s=horizon)
    wf, out = driver.frames()
    df = raw.requests
    # every request once: the workload's and every LLM node that started
    assert sorted(df["id"]) == list(range(10)) + [r.id for r in driver.requests]
    started_llm = out[(out["kind"] == "llm") & out["start_s"].notna()]
    assert sorted(started_llm["request_id"]) == [r.id for r in driver.requests]
    rows = df.set_index("id")
    for _, node in started_llm.iterrows():
        assert (rows.loc[node["request_id"], "status"] == "completed") == (node["status"] == "completed")
    # a node runs only once all its parents completed, at the moment the last one ended
    for w, part in out.groupby("workflow"):
        end = dict(zip(part["node"], part["end_s"], strict=True))
        status = dict(zip(part["node"], part["status"], strict=True))
        for _, node in part.iterrows():
            parents = [p for p in node["parents"].split(",") if p]
            if not math.isnan(node["start_s"]):
                if parents:
                    assert all(status[p] == "completed" for p in parents)
                    assert node["start_s"] == pytest.approx(max(end[p] for p in parents), abs=1e-9)
                else:
                    assert node["start_s"] == pytest.approx(wf.loc[w, "arrival_s"], abs=1e-12)
            if node["status"] == "skipped":
                assert any(status[p] in ("failed", "skipped") for p in parents)
    done = wf[wf["status"] == "completed"]
    assert (done["critical_path_s"] - done["e2e_s"]).abs().max() < 1e-9 if len(done) else True
    llm_done = out[(out["kind"] == "llm") & (out["status"] == "completed")]
    per_wf = llm_done.groupby("workflow")["prompt_tokens"].sum()
    for w, row in done.iterrows():
        assert row["tokens_in"] == per_wf.get(w, 0)
    if horizon is None:
        assert (wf["status"] != "unfinished").all()


def test_the_example_scenario_runs_and_reports_workflows():
    from pathlib import Path

    from fleettwin.models.config import load_scenario

    cfg = load_scenario(
        Path(__file__).parents[2] / "configs" / "workflows.yaml",
        {"workload.duration_s": 60, "workflows.arrivals.duration_s": 60},
    )
    result = run_scenario(cfg)
    s = result.summary["workflows"]
    assert s["workflows"] == len(result.workflows) > 10 and s["completed"] == s["workflows"]
    assert s["e2e_s"]["p50"] > 0 and s["tokens_in_per_workflow"] > 1000
    paths = {p["path"] for p in s["top_critical_paths"]}
    assert paths <= {"plan>search>read>answer", "plan>lookup>answer", "reply"}
    df = result.requests
    assert (df["workflow"] >= 0).sum() == result.workflow_nodes["request_id"].ge(0).sum()
    assert result.summary["requests"]["total"] == len(df)


def test_behind_a_regions_front_door_a_call_ends_when_its_answer_reaches_the_user():
    lengths = {"name": "fixed", "params": {"prompt": 100, "output": 4}}
    data = scenario(
        pools=[scenariokit.pool(n) for n in ("use1", "euw1")],
        regions={
            "regions": [
                {"name": "us-east-1", "weight": 1, "pools": ["use1"]},
                {"name": "eu-west-1", "weight": 1, "pools": ["euw1"]},
            ],
            "users": {"duration_s": 1},
        },
        workflows={
            "arrivals": {"name": "poisson", "params": {"rate": 2, "duration_s": 10}},
            "templates": [
                {
                    "name": "t",
                    "nodes": [
                        {"id": "a", "kind": "llm", "lengths": lengths},
                        {
                            "id": "b",
                            "kind": "tool",
                            "after": ["a"],
                            "delay": {"name": "fixed", "params": {"s": 0.2}},
                        },
                        {"id": "c", "kind": "llm", "after": ["b"], "lengths": lengths},
                    ],
                }
            ],
        },
    )
    result = run_scenario(parse_scenario(data))
    req = result.requests.set_index("id")
    nodes = result.workflow_nodes
    llm = nodes[nodes["kind"] == "llm"]
    assert (
        len(llm) > 20
        and (llm["status"] == "completed").all()
        and set(req["origin"].dropna()) == {"us-east-1", "eu-west-1"}
    )
    for (
        _,
        n,
    ) in llm.iterrows():  # the node ends when the user sees the end: server finish + half the round trip
        r = req.loc[n["request_id"]]
        assert r["rtt_s"] > 0 and n["end_s"] == pytest.approx(r["arrival_s"] + r["e2e_s"], abs=1e-12)
    by = nodes.set_index(["workflow", "node"])
    for w in result.workflows["workflow"]:
        assert by.loc[(w, "c"), "start_s"] == pytest.approx(by.loc[(w, "a"), "end_s"] + 0.2, abs=1e-12)
    assert (result.workflows["e2e_s"] - result.workflows["critical_path_s"]).abs().max() < 1e-9
