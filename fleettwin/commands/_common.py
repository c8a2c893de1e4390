"""What the command modules share: the parser each command gets, the options several take (--set, --executor,
--registry, ...) and the progress bar of long runs. Only argparse and pathlib at import (rich is imported when
a bar is drawn): ``fleettwin live emulate`` imports this module too."""

from __future__ import annotations

import argparse
from pathlib import Path

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing is start-up time emulator replicas pay
if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.console import Console
    from rich.progress import Progress, TaskID


def command_parser(
    subparsers: argparse._SubParsersAction,
    name: str,
    epilog: str,
    run: Callable[[argparse.Namespace], int],
    *,
    help: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """The parser of a command that ``run`` carries out: ``help`` is its line in the group's list, the
    description ``run``'s docstring as one paragraph unless ``description`` is given; ``description`` and
    ``epilog`` (examples, outputs) are printed as written, since they are laid out by hand."""
    p = subparsers.add_parser(
        name,
        help=help,
        description=" ".join((run.__doc__ or "").split()) if description is None else description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=run)
    return p


def add_overrides_arg(p: argparse.ArgumentParser, help: str) -> None:
    """--set KEY=VALUE (repeatable) into ``args.overrides``: scenario fields by dotted path."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def add_executor_args(p: argparse.ArgumentParser, *, executor_help: str, jobs_help: str) -> None:
    """--executor, --jobs and --ray-address: where many simulations run (``sim/executors.py``)."""
    p.add_argument("--executor", choices=["local", "ray"], default="local", help=executor_help)
    p.add_argument("--jobs", type=int, metavar="N", help=jobs_help)
    p.add_argument(
        "--ray-address", metavar="ADDR", help="an existing Ray cluster (default: start one locally)"
    )


def add_policy_arg(p: argparse.ArgumentParser) -> None:
    """The policy a gate command judges: an allocator file or a scenario naming one."""
    p.add_argument("policy", type=Path, help="allocator YAML, or a (live) scenario with controller.allocator")


def add_registry_arg(p: argparse.ArgumentParser) -> None:
    """--registry: the gate registry (``live/gate.py``) of validations and promotions."""
    p.add_argument(
        "--registry",
        type=Path,
        help="gate registry (default $FLEETTWIN_REGISTRY or .fleettwin/registry.sqlite)",
    )


def progress_bar(console: Console, quiet: bool, head: str, middle: str, tail: str = "") -> Progress:
    """A transient progress bar (none with --quiet): HEAD, the bar, done/total, MIDDLE, the time elapsed and,
    if given, TAIL; the texts are rich format strings over the task (``{task.fields[label]}``)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn(head), BarColumn(), MofNCompleteColumn(), TextColumn(middle), TimeElapsedColumn()]
    if tail:
        columns.append(TextColumn(tail))
    return Progress(*columns, console=console, disable=quiet, transient=True)


def labelled(bar: Progress, task: TaskID, prefix: str = "") -> Callable[[int, int | None, str], None]:
    """The ``progress(done, total, label)`` callback that sweeps, plans, experiments and suites call."""
    return lambda done, total, label: bar.update(task, completed=done, total=total, label=f"{prefix}{label}")
