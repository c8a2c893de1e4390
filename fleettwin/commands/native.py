"""``fleettwin sim native``: compile the simulator's hot path (mypyc) into this installation, or remove it."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "native",
        help=(
            "compile the simulator's hot modules with mypyc (about 1.4x faster; needs mypy and a C compiler)"
        ),
        description=(
            "Compile models/engine/scheduler.py, models/engine/decode_run.py and sim/replica.py of this "
            "installation with mypyc into site-packages. A compiled copy is used only while it matches "
            "its source; results are the same either way. An installed wheel runs pure Python until this "
            "is run (pip install mypy first)."
        ),
    )
    p.add_argument(
        "--remove", action="store_true", help="delete the compiled copies (pure Python from now on)"
    )
    p.add_argument("--strict", action="store_true", help="exit non-zero when the build fails")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fleettwin.sim.native_build import run as build

    return build(remove_only=args.remove, strict=args.strict)
