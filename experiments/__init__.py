"""Named experiments (``fleettwin sim experiment NAME``): each runs several policies or set-ups on the same
workload and seed and writes ``results.csv`` plus a markdown report that sets the numbers next to a claim.

An experiment is a module in this package exposing ``run(out, *, quick, progress) -> ExperimentResult``;
``EXPERIMENTS`` maps the command-line name to that module so the CLI imports only the one asked for."""

from __future__ import annotations

import importlib
import os
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

from fleettwin.models.errors import FleettwinError

# command-line name -> module in this package
EXPERIMENTS: dict[str, str] = {
    "multitier": "multitier",
    "regions": "regions",
    "knowledge-fabric": "knowledge_fabric",
    "failures": "failures",
    "noisy-neighbor": "noisy_neighbor",
}


def _config_dir() -> Path:
    """The experiments' scenario files: package data (``fleettwin.configs``, configs/ in a clone, inside the
    wheel when installed, next to ``fleettwin.traces`` whose traces they read by relative path); or
    FLEETTWIN_CONFIGS, a folder of one's own versions."""
    if os.environ.get("FLEETTWIN_CONFIGS"):
        return Path(os.environ["FLEETTWIN_CONFIGS"])
    return Path(str(resources.files("fleettwin.configs").joinpath("experiments")))


CONFIG_DIR = _config_dir()


def available() -> list[str]:
    """The experiments whose module is present (one still being built is simply not offered)."""
    return [name for name, mod in EXPERIMENTS.items() if importlib.util.find_spec(f"{__name__}.{mod}")]


def load(name: str) -> ModuleType:
    if name not in EXPERIMENTS or name not in available():
        raise FleettwinError(f"unknown experiment {name!r}; available: {', '.join(available()) or 'none'}")
    if not CONFIG_DIR.is_dir():
        raise FleettwinError(
            f"experiment scenarios not found in {CONFIG_DIR}: FLEETTWIN_CONFIGS names a folder "
            "that does not exist, or the package was installed without its data (reinstall)"
        )
    return importlib.import_module(f"{__name__}.{EXPERIMENTS[name]}")


def __getattr__(name: str) -> Any:
    # The result type pulls in pandas; importing it lazily keeps `fleettwin --help` (which lists the
    # experiment names) and every command's start-up free of that cost.
    if name in ("ExperimentResult", "write_experiment"):
        from . import base

        return getattr(base, name)
    raise AttributeError(name)


__all__ = ["EXPERIMENTS", "ExperimentResult", "available", "load", "write_experiment"]
