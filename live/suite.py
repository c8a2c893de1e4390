"""Validation suites for the promotion gate: run a policy in simulation on a set of scenarios against a
baseline and judge it by the suite's criteria (``fleettwin policy validate``).

A suite is a YAML file (or a directory holding ``suite.yaml``)::

    name: smoke
    baseline: fixed                  # the scenarios' pools as written, no controller; or {name, params}
    scenarios: [diurnal.yaml, bursts.yaml, code_trace.yaml]   # relative to the suite file
    criteria:
      max_attainment_drop: 0.02      # policy SLO attainment >= baseline's - 0.02
      max_cost_increase: 0.10        # policy cost <= baseline's x 1.10
      min_attainment: 0.0            # and >= this, whatever the baseline does

Each scenario is an ordinary simulator scenario with a ``controller`` section (interval, provisioning,
inventory); the policy replaces its allocator. Everything is deterministic (seeded), so a validation is a
property of (policy config, suite files): the suite hash covers the suite file and every scenario file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from fleettwin.models.config import (
    PolicyRef,
    ScenarioConfig,
    StrictModel,
    format_errors,
    load_scenario,
    read_yaml,
    validated,
)
from fleettwin.models.errors import ConfigError


class Criteria(StrictModel):
    max_attainment_drop: float = Field(0.02, ge=0.0, le=1.0)  # absolute, as a fraction of requests
    max_cost_increase: float = Field(0.10, ge=0.0)  # relative to the baseline's cost
    min_attainment: float = Field(0.0, ge=0.0, le=1.0)


class SuiteConfig(StrictModel):
    name: str
    description: str = ""
    baseline: Literal["fixed"] | PolicyRef = "fixed"
    scenarios: list[str] = Field(min_length=1)
    criteria: Criteria = Criteria()


@dataclass(frozen=True)
class Suite:
    config: SuiteConfig
    path: Path
    scenarios: list[Path]
    hash: str

    @property
    def baseline_label(self) -> str:
        from fleettwin.live.gate import policy_hash

        b = self.config.baseline
        return b if isinstance(b, str) else f"{b.name} {policy_hash(b.name, b.params)[:12]}"


@dataclass
class SuiteResult:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    scenarios: dict[str, dict] = field(
        default_factory=dict
    )  # per scenario: policy, baseline, passed, reasons


def load_suite(path: str | Path) -> Suite:
    path = Path(path)
    if path.is_dir():
        path = path / "suite.yaml"
    cfg = validated(SuiteConfig, read_yaml(path, "validation suite"), source=str(path), what="suite")
    scenarios = [(path.parent / s).resolve() for s in cfg.scenarios]
    digest = hashlib.sha256(path.read_bytes())
    for i, s in enumerate(scenarios):
        if not s.is_file():
            raise ConfigError(f"{path}: scenarios[{i}]: no scenario file {s}")
        digest.update(s.read_bytes())
    return Suite(config=cfg, path=path, scenarios=scenarios, hash=digest.hexdigest())


def load_policy(path: str | Path) -> PolicyRef:
    """A policy from an allocator file (``{name, params}``, as in ``configs/allocators/``) or from the
    ``controller.allocator`` of a scenario or live scenario."""
    path = Path(path)
    data = read_yaml(path, "policy")
    if isinstance(data, dict) and isinstance(data.get("controller"), dict):
        data, where = data["controller"].get("allocator"), "controller.allocator"
    else:
        where = "policy"
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {where}: expected a mapping with name and params")
    data = {k: v for k, v in data.items() if k in ("name", "params")}
    try:
        ref = PolicyRef.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(f"{path}: {where}", exc)) from None
    from fleettwin.live.gate import canonical_policy

    try:
        canonical_policy(ref.name, ref.params)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {where}: {exc}") from None
    return ref


def scenario_metrics(summary: dict) -> dict[str, Any]:
    """What a verdict is made of, from a simulation summary."""
    return {
        "attainment": summary["slo"]["attainment"],
        "cost_usd": summary["cost"]["usd"],
        "gpu_hours": summary["cost"]["gpu_hours"],
        "ttft_p95_s": summary["latency_s"]["ttft"]["p95"],
        "completed": summary["requests"]["completed"],
        "requests": summary["requests"]["total"],
    }


ScenarioSimulator = Callable[[ScenarioConfig], dict]
"""Runs one scenario and returns its summary. Given by the caller (``fleettwin policy validate`` passes the
simulator's ``run_scenario``): the live layer does not import the simulator."""


def _simulate(path: Path, allocator: PolicyRef | None, simulate: ScenarioSimulator) -> dict[str, Any]:
    overrides = (
        {"controller": None} if allocator is None else {"controller.allocator": allocator.model_dump()}
    )
    base = load_scenario(path)
    if base.controller is None:
        raise ConfigError(
            f"{path}: a validation scenario needs a controller section (interval, provisioning)"
        )
    return scenario_metrics(simulate(load_scenario(path, overrides)))


def judge(policy: dict, baseline: dict, c: Criteria) -> list[str]:
    """Why ``policy`` fails against ``baseline`` (empty: it passes)."""
    reasons = []
    if policy["attainment"] < baseline["attainment"] - c.max_attainment_drop:
        reasons.append(
            f"SLO attainment {policy['attainment']:.4f} < baseline {baseline['attainment']:.4f} "
            f"- {c.max_attainment_drop}"
        )
    if policy["attainment"] < c.min_attainment:
        reasons.append(f"SLO attainment {policy['attainment']:.4f} < {c.min_attainment}")
    if policy["cost_usd"] > baseline["cost_usd"] * (1.0 + c.max_cost_increase):
        reasons.append(
            f"cost ${policy['cost_usd']:.2f} > baseline ${baseline['cost_usd']:.2f} "
            f"x {1.0 + c.max_cost_increase:g}"
        )
    return reasons


def run_suite(
    policy: PolicyRef,
    suite: Suite,
    progress: Callable[[int, int, str], None] | None = None,
    *,
    simulate: ScenarioSimulator,
) -> SuiteResult:
    """Simulate every scenario with the policy and with the baseline (with ``simulate``); the policy passes if
    every scenario does."""
    baseline = None if suite.config.baseline == "fixed" else suite.config.baseline
    result = SuiteResult(passed=True)
    total = 2 * len(suite.scenarios)
    for i, path in enumerate(suite.scenarios):
        if progress:
            progress(2 * i, total, f"{path.name}: policy")
        pol = _simulate(path, policy, simulate)
        if progress:
            progress(2 * i + 1, total, f"{path.name}: baseline")
        base = _simulate(path, baseline, simulate)
        reasons = judge(pol, base, suite.config.criteria)
        result.scenarios[path.name] = {
            "policy": pol,
            "baseline": base,
            "passed": not reasons,
            "reasons": reasons,
        }
        result.reasons += [f"{path.name}: {r}" for r in reasons]
    if progress:
        progress(total, total, "done")
    result.passed = not result.reasons
    return result
