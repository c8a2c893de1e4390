"""The Feature loop (sim/feature.py, sim/features.py): run_scenario builds the scenario's features in their
declared order and shapes, annotates and summarizes through them, instead of branching on sections."""

from __future__ import annotations

import ast
import inspect
import textwrap

import numpy as np

import fleettwin.sim.runner as runner
from fleettwin.models.config import ScenarioConfig, parse_scenario
from fleettwin.sim.feature import BaseFeature, World
from fleettwin.sim.features import FEATURES

SECTIONS = {"controller", "jobs", "tenants", "retrieval", "regions", "failures", "workflows"}
SCENARIO = {
    "name": "f",
    "seed": 1,
    "workload": {
        "name": "poisson",
        "params": {
            "rate": 5,
            "duration_s": 4,
            "lengths": {"name": "fixed", "params": {"prompt": 50, "output": 5}},
        },
    },
    "pools": [{"name": "p", "gpu": "h100-80g", "model": "llama-3-8b", "replicas": 1}],
}


def test_every_feature_section_has_one_feature_in_a_declared_order():
    sections = [f.section for f in FEATURES]
    assert set(sections) == SECTIONS and len(sections) == len(SECTIONS)
    assert SECTIONS <= set(ScenarioConfig.model_fields)
    at = {f.section: i for i, f in enumerate(FEATURES)}
    assert at["controller"] < at["jobs"]  # the tiers' fleet lends to the controller
    assert at["tenants"] < at["retrieval"] < at["regions"]  # the front door takes the stages built before it
    assert (
        at["regions"] < at["failures"] and at["regions"] < at["workflows"]
    )  # they act through the front door


def test_run_scenario_branches_on_no_feature_section_but_two_it_documents():
    """Only the tenants' weights for the engines' limits and "workflows may bring all the requests" remain."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(runner.run_scenario)))
    used = {
        n.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute)
        and isinstance(n.value, ast.Name)
        and n.value.id == "cfg"
        and n.attr in SECTIONS
    }
    assert used == {"tenants", "workflows"}
    gen = ast.parse(textwrap.dedent(inspect.getsource(runner.generate_requests)))
    assert not {n.attr for n in ast.walk(gen) if isinstance(n, ast.Attribute) and n.attr in SECTIONS}


class Recorder(BaseFeature):
    """A feature as a contributor would add one: it records when each of its points is reached."""

    section = "name"  # always set, so always active
    calls: list[tuple[str, str]] = []

    @classmethod
    def shape(cls, cfg, requests, seed):
        cls.calls.append((cls.__name__, "shape"))
        return requests[: len(requests) // 2] if cls.__name__ == "Outer" else requests

    def build(self, world: World) -> None:
        self.calls.append((type(self).__name__, "build"))
        world.processes.append(self.process)
        self.started = []

    def process(self, env, pools, log):
        self.started.append(env.now)
        yield env.timeout(0)

    def annotate(self, world, raw):
        self.calls.append((type(self).__name__, "annotate"))
        return raw

    def summarize(self, world, raw, summary):
        self.calls.append((type(self).__name__, "summarize"))
        summary[type(self).__name__.lower()] = {"started": self.started}


class Inner(Recorder):
    pass


class Outer(Recorder):
    pass


def test_a_new_feature_joins_the_run_at_its_declared_place(monkeypatch):
    monkeypatch.setattr(runner, "FEATURES", (Inner, Outer))
    Recorder.calls.clear()
    cfg = parse_scenario(SCENARIO)
    full = len(cfg.workload_source().requests(np.random.default_rng([1, 0])))
    result = runner.run_scenario(cfg)
    by_step = {}
    for name, step in Recorder.calls:
        by_step.setdefault(step, []).append(name)
    assert by_step == {
        "shape": ["Outer", "Inner"],
        "build": ["Inner", "Outer"],
        "annotate": ["Outer", "Inner"],
        "summarize": ["Inner", "Outer"],
    }
    assert result.summary["inner"] == {"started": [0.0]} and result.summary["outer"] == {"started": [0.0]}
    assert len(result.requests) == full // 2 and full > 2  # the outer feature's shaping reached the run
