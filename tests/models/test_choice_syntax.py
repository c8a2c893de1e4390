"""One syntax for every choice: ``{name, params}`` for workloads, length distributions, waiting policies, the
sim mode, failure injectors, workflow arrivals and tool delays, and the live actuator. The old forms
(``type:``/``kind:`` beside the parameters, a bare name) load into the same frozen config, each with one note
naming the file and the field; the shipped scenarios are in the new form."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from fleettwin.live.config import load_live, parse_live
from fleettwin.models.config import load_scenario, parse_scenario
from fleettwin.models.config.legacy import LegacyFormWarning

ROOT = Path(__file__).resolve().parents[2]
LENGTHS = {"name": "geometric", "params": {"prompt_mean": 300, "output_mean": 60}}
OLD_LENGTHS = {"type": "geometric", **LENGTHS["params"]}  # the length distribution's old form
POOL = {"name": "chat", "gpu": "h100-80g", "model": "llama-3-8b", "replicas": 2}
ARRIVALS = [  # a workflow section's arrival processes: the workload sources' ones, and fixed times
    {"name": "poisson", "params": {"rate": 0.5, "duration_s": 30}},
    {"name": "gamma", "params": {"rate": 1.0, "cv": 2.0, "duration_s": 30}},
    {"name": "mmpp", "params": {"rates": [0.2, 2.0], "mean_sojourn_s": [5, 2], "duration_s": 30}},
    {"name": "times", "params": {"at_s": [0.0, 1.5]}},
]
DELAYS = [  # a tool node's delay
    {"name": "fixed", "params": {"s": 0.5}},
    {"name": "lognormal", "params": {"median_s": 0.3, "sigma": 0.4, "max_s": 5}},
    {"name": "exponential", "params": {"mean_s": 0.2}},
]
LIVE = {
    "name": "live",
    "pools": [{**{k: v for k, v in POOL.items() if k != "replicas"}, "backends": ["http://127.0.0.1:1"]}],
    "controller": {"allocator": {"name": "static"}},
}


def _parse(data: dict, parse=parse_scenario) -> tuple:
    """The config and the notes its loading gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = parse(data, source="s.yaml")
    return cfg, [str(w.message) for w in caught if issubclass(w.category, LegacyFormWarning)]


def _shipped_scenarios() -> list[Path]:
    out = []
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict) and "workload" in data and "pools" in data:
            out.append(path)
    return out


@st.composite
def scenarios(draw) -> tuple[dict, dict, list[str]]:
    """A scenario in the new form, the same in old forms, and the fields written the old way."""
    rate = draw(st.floats(0.5, 50))
    params = {"rate": rate, "duration_s": draw(st.floats(5, 60)), "lengths": LENGTHS}
    if draw(st.booleans()):
        params = {
            "components": [
                {"name": "poisson", "params": {**params, "tenant": "a"}},
                {"name": "gamma", "params": {**params, "cv": 2.0, "tenant": "b"}},
            ]
        }
    reshape = draw(st.sampled_from([{}, {"rate_scale": 2.0}, {"loop_to_s": 120.0}]))
    name = "mixture" if "components" in params else "poisson"
    new_workload = {"name": name, "params": params, **reshape}
    old_params = (
        {"components": [{"type": c["name"], **c["params"]} for c in params["components"]]}
        if "components" in params
        else params
    )
    old_workload = {"type": name, **old_params, **reshape}
    policy = draw(st.sampled_from(["fcfs", "wfq", "priority"]))
    mode = draw(st.sampled_from(["skip", "per_iteration"]))
    spec = draw(
        st.sampled_from(
            [
                {"pool": "chat", "factor": 3.0, "timing": {"at_s": [1.0], "mttr_s": 2.0}},
                {"pool": "chat", "count": 2, "timing": {"mtbf_s": 30.0, "mttr_s": 5.0}},
            ]
        )
    )
    kind = "straggler" if "factor" in spec else "replica_failure"
    arrivals = draw(st.sampled_from(ARRIVALS))
    delay = draw(st.sampled_from(DELAYS))
    new = {
        "name": "x",
        "workload": new_workload,
        "pools": [{**POOL, "engine": {"waiting_policy": {"name": policy}}}],
        "sim": {"mode": {"name": mode}},
        "failures": {"injectors": [{"name": kind, "params": spec}]},
        "workflows": {
            "arrivals": arrivals,
            "templates": [
                {
                    "name": "t",
                    "nodes": [
                        {"id": "a", "kind": "llm", "lengths": LENGTHS},
                        {"id": "b", "kind": "tool", "after": ["a"], "delay": delay},
                    ],
                }
            ],
        },
    }
    olds = {
        "workload": old_workload,
        "pools[0].engine.waiting_policy": policy,
        "sim.mode": mode,
        "failures.injectors[0]": {"kind": kind, **spec},
        "workflows.arrivals": {"type": arrivals["name"], **arrivals["params"]},
        "workflows.templates[0].nodes[1].delay": {"type": delay["name"], **delay["params"]},
    }
    which = draw(st.lists(st.sampled_from(sorted(olds)), min_size=1, unique=True))
    old = yaml.safe_load(yaml.safe_dump(new))  # a deep copy
    for field in which:
        _put(old, field, olds[field])
    if "components" not in params and draw(st.booleans()):  # the lengths too, inside the workload's params
        workload = old["workload"]
        workload.get("params", workload)["lengths"] = OLD_LENGTHS
        which = [*which, "workload.params.lengths"]
    return new, old, which


def _put(data: dict, field: str, value) -> None:
    path = re.sub(r"\[(\d+)\]", r".\1", field).split(".")
    node = data
    for key in path[:-1]:
        node = node[int(key)] if key.isdigit() else node[key]
    last = path[-1]
    node[int(last) if last.isdigit() else last] = value


@settings(max_examples=40, deadline=None)
@given(scenarios())
def test_old_and_new_forms_give_the_same_frozen_config(case):
    new, old, which = case
    cfg_new, notes_new = _parse(new)
    cfg_old, notes_old = _parse(old)
    assert cfg_old == cfg_new
    assert cfg_old.model_dump() == cfg_new.model_dump()
    assert notes_new == []
    assert len(notes_old) == len(which)  # one note per field written the old way, naming file and field
    for field in which:
        assert sum(n.startswith(f"s.yaml: {field}: old form") for n in notes_old) == 1


@settings(max_examples=20, deadline=None)
@given(
    params=st.fixed_dictionaries(
        {},
        optional={
            "max_replicas_per_pool": st.integers(1, 8),
            "startup_timeout_s": st.floats(1, 60),
            "drain_timeout_s": st.floats(1, 60),
        },
    ),
    old_form=st.sampled_from(["type", "bare"]),
)
def test_old_and_new_actuator_forms_give_the_same_live_config(params, old_form):
    """The live actuator: ``{type: local_process, ...}`` or the parameters alone (local_process was the one
    kind) load as ``{name: local_process, params: {...}}`` with one note naming the field."""
    new, notes_new = _parse({**LIVE, "actuator": {"name": "local_process", "params": params}}, parse_live)
    old_actuator = {"type": "local_process", **params} if old_form == "type" else params
    old, notes_old = _parse({**LIVE, "actuator": old_actuator}, parse_live)
    assert old == new and old.model_dump() == new.model_dump()
    assert new.model_dump()["actuator"] == {"name": "local_process", "params": new.actuator.model_dump()}
    assert notes_new == [] and len(notes_old) == 1 and notes_old[0].startswith("s.yaml: actuator: old form")


def test_shipped_live_scenario_is_in_the_new_form():
    with warnings.catch_warnings():
        warnings.simplefilter("error", LegacyFormWarning)
        assert load_live(ROOT / "configs" / "live.yaml").actuator.registry_name == "local_process"


def test_overrides_reach_a_workflow_choices_params(tmp_path):
    """``--set workflows.arrivals.rate=2`` reaches ``params`` of a choice validated into its entry."""
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "pools": [POOL], **_workflows_only()}))
    cfg = load_scenario(path, {"workflows.arrivals.rate": 2, "workflows.arrivals.duration_s": 60})
    assert (cfg.workflows.arrivals.rate, cfg.workflows.arrivals.duration_s) == (2, 60)


def _workflows_only() -> dict:
    return {
        "workload": {"name": "poisson", "params": {"rate": 0, "duration_s": 1, "lengths": LENGTHS}},
        "workflows": {
            "arrivals": ARRIVALS[0],
            "templates": [{"name": "t", "nodes": [{"id": "a", "kind": "llm", "lengths": LENGTHS}]}],
        },
    }


@pytest.mark.parametrize("path", _shipped_scenarios(), ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_scenarios_are_in_the_new_form(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", LegacyFormWarning)
        load_scenario(path)


def test_the_old_form_note_is_shown_to_users_and_names_the_file_and_field(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "x",
                "workload": {"type": "poisson", "rate": 2, "duration_s": 10, "lengths": LENGTHS},
                "pools": [POOL],
            }
        )
    )
    assert issubclass(LegacyFormWarning, FutureWarning)  # FutureWarning: shown by default, unlike Deprecation
    with pytest.warns(
        LegacyFormWarning,
        match=(
            rf"^{re.escape(str(path))}: workload: old form `type: poisson` beside its parameters; write "
            r"{name: poisson, params: {"
        ),
    ):
        cfg = load_scenario(path)
    assert cfg.workload.name == "poisson" and cfg.workload.params["rate"] == 2


def test_overrides_reach_a_choices_params_without_naming_them(tmp_path):
    """``--set workload.rate=5`` on a ``{name, params}`` workload sets ``params.rate``; a key of the choice
    itself (``rate_scale``) stays beside ``name``."""
    path = tmp_path / "s.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "x",
                "pools": [POOL],
                "workload": {"name": "poisson", "params": {"rate": 2, "duration_s": 10, "lengths": LENGTHS}},
            }
        )
    )
    cfg = load_scenario(
        path, {"workload.rate": 5, "workload.lengths.prompt_mean": 100, "workload.rate_scale": 2}
    )
    assert cfg.workload.params["rate"] == 5 and cfg.workload.params["lengths"]["params"]["prompt_mean"] == 100
    assert cfg.workload.rate_scale == 2
    assert load_scenario(path, {"workload.params.rate": 7}).workload.params["rate"] == 7


def test_a_misspelt_choice_gets_a_hint():
    data = {
        "name": "x",
        "workload": {"name": "poisson", "params": {"rate": 1, "duration_s": 5, "lengths": LENGTHS}},
        "pools": [{**POOL, "engine": {"waiting_policy": {"name": "wfg"}}}],
        "sim": {"mode": {"name": "skipp"}},
    }
    with pytest.raises(Exception) as err:
        parse_scenario(data, source="s.yaml")
    text = str(err.value)
    assert "pools[0].engine.waiting_policy: unknown waiting policy 'wfg' (did you mean 'wfq'?)" in text
    assert "sim.mode: unknown sim mode 'skipp' (did you mean 'skip'?)" in text
