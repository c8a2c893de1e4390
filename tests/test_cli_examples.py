"""The examples in every command's ``--help`` are real commands: with their shell continuations joined, each
is one fleettwin command that the real parser accepts (so a renamed option or group shows up here)."""

from __future__ import annotations

import importlib
import pkgutil
import shlex

import pytest

import fleettwin.commands
from fleettwin.cli import build_parser


def _examples() -> list[tuple[str, str]]:
    found = []
    for info in pkgutil.iter_modules(fleettwin.commands.__path__):
        module = importlib.import_module(f"fleettwin.commands.{info.name}")
        epilog = getattr(module, "EPILOG", None)
        if not isinstance(epilog, str) or "examples:\n" not in epilog:
            continue
        block = epilog.split("examples:\n", 1)[1].split("\n\n", 1)[0]
        for line in block.replace(" \\\n", " ").splitlines():
            if line.strip() and not line.strip().startswith("#"):
                found += [(info.name, part.strip()) for part in line.split("&&")]
    return found


EXAMPLES = _examples()


def test_the_commands_show_examples():
    assert len({module for module, _ in EXAMPLES}) >= 8


@pytest.mark.parametrize(("module", "example"), EXAMPLES, ids=[f"{m}:{e[:40]}" for m, e in EXAMPLES])
def test_each_example_parses_as_one_command(module, example):
    words = shlex.split(example, comments=True)
    while words and "=" in words[0] and not words[0].startswith("-"):
        words = words[1:]  # an environment assignment before the command
    assert words and words[0] == "fleettwin", f"{module}: not a fleettwin command: {example!r}"
    assert words.count("fleettwin") == 1, f"{module}: two commands on one line: {example!r}"
    argv = words[1:]
    try:
        build_parser(argv).parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{module}: example does not parse ({exc}): {example!r}")
