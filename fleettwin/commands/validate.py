"""``fleettwin policy validate``: simulate a policy on a validation suite against a baseline and record the
verdict in the gate registry."""

from __future__ import annotations

import argparse
from pathlib import Path

from fleettwin.commands._common import (
    add_policy_arg,
    add_registry_arg,
    command_parser,
    labelled,
    progress_bar,
)

HELP = "validate a policy in simulation on a scenario suite and record the verdict (promotion gate)"
EPILOG = """examples:
  fleettwin policy validate configs/allocators/reactive.yaml --suite configs/validation/
  fleettwin policy validate configs/live.yaml --suite configs/validation/ --registry /tmp/gate.sqlite

POLICY is an allocator file ({name, params}, as in configs/allocators/) or a scenario / live scenario whose
controller.allocator is taken. Each suite scenario is simulated with the policy as its allocator and with the
suite's baseline; the policy passes if, on every scenario, its SLO attainment and cost meet the suite's
criteria. The verdict is recorded with the policy's config hash (SHA-256 of its canonical name + parameters);
`fleettwin policy promote` needs a passing one. Exit status: 0 passed, 1 failed."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = command_parser(subparsers, "validate", EPILOG, run, help=HELP)
    add_policy_arg(p)
    p.add_argument(
        "--suite",
        type=Path,
        default=Path("configs/validation"),
        help="suite YAML or a directory holding suite.yaml (default %(default)s)",
    )
    add_registry_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run a policy in simulation on every scenario of a validation suite and on the suite's baseline,
    judge it by the suite's criteria, and record pass/fail with the policy's config hash in the local gate
    registry."""
    from rich.console import Console
    from rich.table import Table

    from fleettwin.live.gate import GateRegistry, canonical_policy, policy_hash
    from fleettwin.live.suite import load_policy, load_suite, run_suite
    from fleettwin.sim.runner import run_scenario

    console = Console()
    policy = load_policy(args.policy)
    suite = load_suite(args.suite)
    config_hash = policy_hash(policy.name, policy.params)
    head = "[bold]validating[/] {task.description}"
    with progress_bar(console, args.quiet, head, "{task.fields[label]}") as bar:
        task = bar.add_task(f"{policy.name} {config_hash[:12]}", total=None, label="")
        result = run_suite(
            policy,
            suite,
            labelled(bar, task),
            simulate=lambda cfg: run_scenario(cfg).summary,
        )
    table = Table(
        title=f"{policy.name} {config_hash[:12]} vs {suite.baseline_label} on suite {suite.config.name}"
    )
    for col in ("scenario", "attainment", "baseline", "cost $", "baseline $", "verdict"):
        table.add_column(col, justify="left" if col in ("scenario", "verdict") else "right")
    for name, s in result.scenarios.items():
        pol, base = s["policy"], s["baseline"]
        table.add_row(
            name,
            f"{pol['attainment']:.4f}",
            f"{base['attainment']:.4f}",
            f"{pol['cost_usd']:.3f}",
            f"{base['cost_usd']:.3f}",
            "pass" if s["passed"] else "FAIL: " + "; ".join(s["reasons"]),
        )
    console.print(table)
    with GateRegistry(args.registry) as reg:
        v = reg.record_validation(
            policy=policy.name,
            config_hash=config_hash,
            config=canonical_policy(policy.name, policy.params),
            suite=suite.config.name,
            suite_hash=suite.hash,
            baseline=suite.baseline_label,
            metrics=result.scenarios,
            passed=result.passed,
            reasons=result.reasons,
        )
        console.print(
            f"{'PASSED' if v.passed else 'FAILED'}: validation #{v.id} of {policy.name} "
            f"(config hash {config_hash}) recorded in {reg.path}"
        )
    return 0 if result.passed else 1
