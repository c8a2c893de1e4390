"""The ``fleettwin`` command line: four groups (``sim``, ``live``, ``policy``, ``data``) of subcommands, plus
the flat names of earlier releases (``fleettwin simulate`` = ``fleettwin sim run``) kept as hidden aliases.
Each subcommand lives in ``fleettwin.commands.<module>`` and exposes ``add_parser(subparsers)`` and
``run(args) -> int``; this module only wires them together and turns user-facing errors into one clear line
instead of a traceback."""

from __future__ import annotations

import argparse
import importlib
import sys
import textwrap

from fleettwin import __version__
from fleettwin.models.errors import FleettwinError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing is start-up time emulator replicas pay
if TYPE_CHECKING:
    from typing import Any


class Group:
    """A group of subcommands (a plain class: dataclasses would add inspect and ast to every start-up)."""

    def __init__(self, name: str, help: str, commands: dict[str, str]) -> None:
        self.name = name
        self.help = help  # the one line the root --help shows (<= 64 characters: one line at 80 columns)
        self.commands = commands  # subcommand -> module under fleettwin.commands, in --help's order


GROUPS = [
    Group(
        "sim",
        "the simulator: run a scenario, sweep a grid, plan, experiments",
        {"run": "simulate", "sweep": "sweep", "plan": "plan", "experiment": "experiment", "native": "native"},
    ),
    Group(
        "live",
        "live twin: vLLM emulator, loadgen, shadow, gateway, retrieval",
        {
            "emulate": "emulate",
            "loadgen": "loadgen",
            "shadow": "shadow",
            "gateway": "gateway",
            "retrieval": "serve_retrieval",
        },
    ),
    Group(
        "policy",
        "policies: backtest forecasters, validate in simulation, promote",
        {"backtest": "backtest", "validate": "validate", "promote": "promote"},
    ),
    Group(
        "data",
        "catalogs, calibration on measured runs, FAISS timings, certs",
        {
            "catalog": "catalog",
            "calibrate": "calibrate",
            "calibrate-retrieval": "calibrate_retrieval",
            "certs": "certs",
        },
    ),
]
# The flat names of earlier releases (the module's name, dashed) -> module; they parse exactly as before.
ALIASES = {module.replace("_", "-"): module for g in GROUPS for module in g.commands.values()}
# Commands (modules) that run the simulator: they say once when it runs without its compiled hot path.
SIMULATING = {"simulate", "plan", "experiment", "sweep", "calibrate", "validate", "backtest"}

DESCRIPTION = (
    "Plan and run a fleet of LLM-serving GPUs: simulate scenarios (YAML) of GPU pools serving trace-driven "
    "traffic, run the same policies live against vLLM or an emulator, backtest and validate them. Run "
    "`fleettwin GROUP --help` for a group's commands, `fleettwin GROUP COMMAND --help` for a command's."
)
OLD_NAMES = "The flat command names of earlier releases still work, with the same arguments and outputs:\n"
OLD_NAMES += "\n".join(
    f"  fleettwin {module.replace('_', '-'):<20} = fleettwin {g.name} {name}"
    for g in GROUPS
    for name, module in g.commands.items()
)


class _Register:
    """Stands in for an ``add_subparsers()`` action while a command module registers itself, so that one
    module can appear under its name in a group or, hidden from --help, under its old flat name."""

    def __init__(self, subparsers: argparse._SubParsersAction, name: str, *, hidden: bool) -> None:
        self._subparsers, self._name, self._hidden = subparsers, name, hidden
        self.parser: argparse.ArgumentParser | None = None

    def add_parser(self, _name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if self._hidden:
            kwargs.pop("help", None)  # argparse lists a subcommand only when it has a help line
        self.parser = self._subparsers.add_parser(self._name, **kwargs)
        return self.parser


def _add_command(
    subparsers: argparse._SubParsersAction, name: str, module: str, label: str, *, hidden: bool = False
) -> None:
    """Import ``fleettwin.commands.<module>`` and register it as ``name``; ``label`` names it in errors."""
    try:
        mod = importlib.import_module(f"fleettwin.commands.{module}")
    except ModuleNotFoundError as exc:
        if exc.name == f"fleettwin.commands.{module}":
            return  # a command still being built is simply not offered
        raise
    register = _Register(subparsers, name, hidden=hidden)
    mod.add_parser(register)
    if register.parser is not None:
        register.parser.set_defaults(command_module=module, command_label=label)


def _add_group(subparsers: argparse._SubParsersAction, group: Group, words: list[str]) -> None:
    """The group's parser. Its commands are imported only when the command line names the group: just the
    command it names, or all of them (for ``fleettwin GROUP --help``)."""
    p = subparsers.add_parser(
        group.name,
        help=group.help,
        description=group.help[0].upper() + group.help[1:] + ".",
        epilog=f"Run `fleettwin {group.name} COMMAND --help` for a command's options and examples.",
    )
    p.set_defaults(print_group_help=p.print_help)
    if words[:1] != [group.name]:
        return
    commands = p.add_subparsers(dest="subcommand", metavar="COMMAND")
    wanted = words[1] if len(words) > 1 and words[1] in group.commands else None
    for name, module in group.commands.items():
        if wanted in (None, name):
            _add_command(commands, name, module, f"{group.name} {name}")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for this command line. Only the command it names is imported: importing every command
    module costs a second or two of start-up (pandas, statsmodels), which ``fleettwin live emulate`` replicas
    should not pay. The root ``--help`` imports none."""
    words = [a for a in (argv or []) if not a.startswith("-")]
    parser = argparse.ArgumentParser(
        prog="fleettwin",
        description=textwrap.fill(DESCRIPTION, 100),
        epilog=OLD_NAMES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fleettwin {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="GROUP")
    for group in GROUPS:
        _add_group(subparsers, group, words)
    if words and words[0] in ALIASES:
        _add_command(subparsers, words[0], ALIASES[words[0]], words[0], hidden=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        getattr(args, "print_group_help", parser.print_help)()
        return 2
    try:
        if args.command_module in SIMULATING:
            from fleettwin.sim.native_build import pure_python_note

            note = pure_python_note()
            if note:
                print(note, file=sys.stderr)
        return int(args.func(args) or 0)
    except FleettwinError as exc:
        print(f"fleettwin {args.command_label}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
