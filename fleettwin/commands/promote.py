"""``fleettwin policy promote``: allow a validated policy to act (``fleettwin live shadow --act``)."""

from __future__ import annotations

import argparse

from fleettwin.commands._common import add_policy_arg, add_registry_arg, command_parser

HELP = "promote a policy whose latest validation passed, so that shadow --act may run it"
EPILOG = """examples:
  fleettwin policy validate configs/live.yaml --suite configs/validation/ && \\
      fleettwin policy promote configs/live.yaml
  fleettwin policy promote configs/allocators/reactive.yaml --registry /tmp/gate.sqlite

Refused unless the latest validation of exactly this configuration (same config hash: allocator name and
parameters, defaults filled in) passed. `fleettwin live shadow --act` then acts for that hash only."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = command_parser(subparsers, "promote", EPILOG, run, help=HELP)
    add_policy_arg(p)
    add_registry_arg(p)


def run(args: argparse.Namespace) -> int:
    """Record in the gate registry that a policy configuration may act on the fleet; refused without a
    passing validation of the same config hash."""
    from fleettwin.live.gate import GateRegistry, policy_hash
    from fleettwin.live.suite import load_policy

    policy = load_policy(args.policy)
    config_hash = policy_hash(policy.name, policy.params)
    with GateRegistry(args.registry) as reg:
        promo = reg.promote(config_hash, policy.name)
        print(
            f"promoted {policy.name} (config hash {config_hash}) on validation #{promo.validation_id}: "
            f"promotion #{promo.id} in {reg.path}"
        )
    return 0
