"""The promotion gate: config hashing, the SQLite registry's refusals, validation suites judged in simulation,
and the validate / promote / shadow --act commands."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from fleettwin.cli import main
from fleettwin.live.gate import GateError, GateRegistry, canonical_policy, policy_hash
from fleettwin.live.suite import Criteria, judge, load_policy, load_suite, run_suite
from fleettwin.models.config import PolicyRef
from fleettwin.models.errors import ConfigError
from fleettwin.sim.runner import run_scenario
from tests.scenariokit import reactive, scenario

ROOT = Path(__file__).resolve().parents[2]


def simulate_summary(cfg):  # what `fleettwin policy validate` injects: the simulator's summary of a scenario
    return run_scenario(cfg).summary


# -- hashing -------------------------------------------------------------------------------------------------


def test_hash_is_of_the_validated_parameters_with_defaults_filled():
    assert policy_hash("reactive", {}) == policy_hash("reactive", {"target": 32, "metric": "concurrency"})
    assert policy_hash("reactive", {"target": 4, "min_replicas": 1}) == policy_hash(
        "reactive", {"min_replicas": 1, "target": 4.0}
    )  # key order and int/float spelling do not matter
    assert policy_hash("reactive", {"target": 4}) != policy_hash("reactive", {"target": 5})
    assert policy_hash("reactive", {}) != policy_hash("unified", {})
    assert len(policy_hash("static", {})) == 64
    canon = canonical_policy("reactive", {"target": 4})
    assert canon["allocator"] == "reactive" and canon["params"]["target"] == 4
    with pytest.raises(ConfigError, match="targt"):
        policy_hash("reactive", {"targt": 4})


# -- the registry --------------------------------------------------------------------------------------------


def record(reg: GateRegistry, h: str, passed: bool) -> None:
    reg.record_validation(
        policy="reactive",
        config_hash=h,
        config={"x": 1},
        suite="s",
        suite_hash="0" * 64,
        baseline="fixed",
        metrics={"a.yaml": {"passed": passed}},
        passed=passed,
        reasons=[] if passed else ["a.yaml: SLO attainment 0.5 < 0.9"],
    )


def test_registry_refuses_what_has_not_passed_its_latest_validation(tmp_path):
    h = policy_hash("reactive", {"target": 4})
    with GateRegistry(tmp_path / "reg.sqlite") as reg:
        with pytest.raises(GateError, match="refusing to promote: .* has no validation"):
            reg.promote(h, "reactive")
        record(reg, h, passed=False)
        with pytest.raises(GateError, match=r"failed: a.yaml: SLO attainment 0.5 < 0.9"):
            reg.promote(h, "reactive")
        record(reg, h, passed=True)
        with pytest.raises(GateError, match="never promoted"):
            reg.require_promoted(h, "reactive")
        promo = reg.promote(h, "reactive")
        assert reg.require_promoted(h, "reactive") == promo and promo.validation_id == 2
        with pytest.raises(GateError, match="has no validation"):
            reg.require_promoted(policy_hash("reactive", {"target": 5}), "reactive")  # another config
        record(reg, h, passed=False)  # a newer validation failed: acting stops
        with pytest.raises(GateError, match="refusing to act: the latest validation .* failed"):
            reg.require_promoted(h, "reactive")
        assert [v.passed for v in reg.validations()] == [False, True, False]
    rows = (
        sqlite3.connect(tmp_path / "reg.sqlite").execute("SELECT policy, passed FROM validations").fetchall()
    )
    assert rows == [("reactive", 0), ("reactive", 1), ("reactive", 0)]


def test_a_file_that_is_not_a_registry_is_a_clear_error(tmp_path):
    bad = tmp_path / "reg.sqlite"
    bad.write_text("not sqlite " * 100)
    with pytest.raises(GateError, match="not a usable registry"):
        GateRegistry(bad)


# -- suites --------------------------------------------------------------------------------------------------

REACTIVE = reactive(interval_s=15, acquire_s=10)
SCENARIO = scenario(
    "tiny", seed=1, rate=3, duration_s=90, prompt=200, output=50, replicas=2, controller=REACTIVE
)


def write_suite(tmp_path: Path, **criteria) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(SCENARIO))
    suite = {"name": "tiny-suite", "scenarios": ["tiny.yaml"], "criteria": criteria}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    return tmp_path


def test_judge_applies_each_criterion():
    c = Criteria(max_attainment_drop=0.02, max_cost_increase=0.1, min_attainment=0.9)
    base = {"attainment": 0.99, "cost_usd": 10.0}
    assert judge({"attainment": 0.975, "cost_usd": 10.9}, base, c) == []
    reasons = judge({"attainment": 0.95, "cost_usd": 11.5}, base, c)
    assert (
        len(reasons) == 2
        and "0.9500 < baseline 0.9900 - 0.02" in reasons[0]
        and "$11.50 > baseline" in reasons[1]
    )
    assert judge({"attainment": 0.85, "cost_usd": 1.0}, {"attainment": 0.85, "cost_usd": 10}, c) == [
        "SLO attainment 0.8500 < 0.9"
    ]


def test_suite_passes_a_policy_within_the_criteria_and_fails_one_that_costs_more(tmp_path):
    suite = load_suite(write_suite(tmp_path))
    ok = run_suite(
        PolicyRef(name="reactive", params={"target": 2, "max_replicas": 2}), suite, simulate=simulate_summary
    )
    assert ok.passed and ok.reasons == []
    s = ok.scenarios["tiny.yaml"]
    assert s["policy"]["attainment"] == 1.0 and s["policy"]["cost_usd"] <= s["baseline"]["cost_usd"]
    costly = run_suite(
        PolicyRef(name="reactive", params={"min_replicas": 6, "max_replicas": 6}),
        suite,
        simulate=simulate_summary,
    )
    assert not costly.passed and "tiny.yaml: cost $" in costly.reasons[0]


def test_suite_hash_covers_the_scenarios_and_errors_name_the_file(tmp_path):
    d = write_suite(tmp_path)
    h = load_suite(d).hash
    (d / "tiny.yaml").write_text(yaml.safe_dump({**SCENARIO, "seed": 2}))
    assert load_suite(d / "suite.yaml").hash != h
    (d / "suite.yaml").write_text(yaml.safe_dump({"name": "x", "scenarios": ["missing.yaml"]}))
    with pytest.raises(ConfigError, match=r"suite.yaml: scenarios\[0\]: no scenario file"):
        load_suite(d)
    (d / "suite.yaml").write_text(yaml.safe_dump({"name": "x", "scenarios": [], "criteria": {"max_cost": 1}}))
    with pytest.raises(ConfigError, match=r"suite.yaml: scenarios: List should have at least 1 item"):
        load_suite(d)


def test_shipped_suite_and_live_scenario_load():
    suite = load_suite(ROOT / "configs" / "validation")
    assert [p.name for p in suite.scenarios] == ["diurnal.yaml", "bursts.yaml", "code_trace.yaml"]
    assert suite.config.baseline == "fixed" and suite.config.criteria.min_attainment == 0.9
    live = load_policy(ROOT / "configs" / "live.yaml")
    assert live.name == "reactive" and live.params["target"] == 2


def test_policies_load_from_allocator_files_and_scenarios(tmp_path):
    assert load_policy(ROOT / "configs" / "allocators" / "reactive.yaml").params["target"] == 32
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(SCENARIO))
    assert load_policy(tmp_path / "s.yaml") == PolicyRef(name="reactive")
    (tmp_path / "bad.yaml").write_text("name: reactive\nparams: {targt: 1}\n")
    with pytest.raises(
        ConfigError, match=r"bad.yaml: policy: bad parameters for allocator 'reactive': targt"
    ):
        load_policy(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="expected a mapping with name and params"):
        load_policy(tmp_path / "list.yaml")


# -- commands ------------------------------------------------------------------------------------------------


def test_validate_and_promote_commands(tmp_path, capsys):
    d = write_suite(tmp_path / "suite")
    reg = str(tmp_path / "reg.sqlite")
    good, costly = tmp_path / "good.yaml", tmp_path / "costly.yaml"
    good.write_text("name: reactive\nparams: {target: 2, max_replicas: 2}\n")
    costly.write_text("name: reactive\nparams: {min_replicas: 6, max_replicas: 6}\n")
    assert main(["promote", str(good), "--registry", reg]) == 2
    assert "refusing to promote" in capsys.readouterr().err
    assert main(["validate", str(costly), "--suite", str(d), "--registry", reg, "--quiet"]) == 1
    assert "FAILED: validation #1" in capsys.readouterr().out
    assert main(["promote", str(costly), "--registry", reg]) == 2
    assert "cost $" in capsys.readouterr().err
    assert main(["validate", str(good), "--suite", str(d), "--registry", reg, "--quiet"]) == 0
    assert "PASSED: validation #2" in capsys.readouterr().out
    assert main(["promote", str(good), "--registry", reg]) == 0
    out = capsys.readouterr().out
    assert f"config hash {policy_hash('reactive', {'target': 2, 'max_replicas': 2})}" in out
    with GateRegistry(reg) as r:
        v = r.validations()[-1]
        assert v.suite == "tiny-suite" and v.baseline == "fixed" and v.passed
        assert json.dumps(v.metrics["tiny.yaml"]["policy"])  # per-scenario metrics kept


def test_shadow_act_refuses_an_unvalidated_policy(tmp_path, capsys):
    live = yaml.safe_load((ROOT / "configs" / "live.yaml").read_text())
    live["decision_log"] = str(tmp_path / "decisions.jsonl")
    (tmp_path / "live.yaml").write_text(yaml.safe_dump(live))
    code = main(
        [
            "shadow",
            "--scenario",
            str(tmp_path / "live.yaml"),
            "--act",
            "--ticks",
            "1",
            "--registry",
            str(tmp_path / "reg.sqlite"),
        ]
    )
    assert code == 2
    assert "refusing to act: policy reactive with config hash" in capsys.readouterr().err
    assert not (tmp_path / "decisions.jsonl").exists()  # refused before anything started


@pytest.mark.slow
def test_the_example_live_policy_passes_the_shipped_suite(tmp_path):
    """`fleettwin policy validate configs/live.yaml --suite configs/validation/` (about 10 s)."""
    assert (
        main(
            [
                "validate",
                str(ROOT / "configs" / "live.yaml"),
                "--suite",
                str(ROOT / "configs" / "validation"),
                "--registry",
                str(tmp_path / "reg.sqlite"),
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "validate",
                str(ROOT / "configs" / "allocators" / "reactive.yaml"),
                "--suite",
                str(ROOT / "configs" / "validation"),
                "--registry",
                str(tmp_path / "reg.sqlite"),
                "--quiet",
            ]
        )
        == 1
    )
