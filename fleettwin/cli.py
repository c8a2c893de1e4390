"""The ``fleettwin`` command line. Each subcommand lives in ``fleettwin.commands.<name>`` and exposes
``add_parser(subparsers)`` and ``run(args) -> int``; this module only wires them together and turns
user-facing errors into one clear line instead of a traceback."""

from __future__ import annotations

import argparse
import importlib
import sys

from fleettwin import __version__
from fleettwin.models.errors import FleettwinError

# Module names under fleettwin.commands, in the order `--help` lists them.
COMMANDS = [
    "simulate", "plan", "experiment", "sweep", "catalog", "backtest", "calibrate", "calibrate_retrieval",
    "emulate", "loadgen", "shadow", "validate", "promote", "gateway", "certs", "serve_retrieval", "native",
]  # fmt: skip
# Commands that run the simulator: they say once when it runs without its compiled hot path.
SIMULATING = {"simulate", "plan", "experiment", "sweep", "calibrate", "validate", "backtest"}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or with ``only`` (a command's name) just that command's: importing every command
    module costs a second of start-up (pandas, statsmodels), which ``fleettwin emulate`` replicas should not pay."""
    parser = argparse.ArgumentParser(
        prog="fleettwin",
        description=(
            "Plan and run a fleet of LLM-serving GPUs. Simulate scenarios (YAML) of GPU pools serving "
            "trace-driven traffic, and backtest workload forecasters. Run `fleettwin COMMAND --help` for details."
        ),
    )
    parser.add_argument("--version", action="version", version=f"fleettwin {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        if only is not None and name.replace("_", "-") != only:
            continue
        try:
            module = importlib.import_module(f"fleettwin.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"fleettwin.commands.{name}":
                continue  # a command still being built is simply not offered
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    first = next((a for a in argv if not a.startswith("-")), None)
    known = first is not None and first.replace("-", "_") in COMMANDS
    parser = build_parser(first if known else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if args.command in SIMULATING:
            from fleettwin.sim.native_build import pure_python_note

            note = pure_python_note()
            if note:
                print(note, file=sys.stderr)
        return int(args.func(args) or 0)
    except FleettwinError as exc:
        print(f"fleettwin {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
