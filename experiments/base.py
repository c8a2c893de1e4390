"""What every experiment returns and how it is written (a results table and a markdown report), and how one
reads its own YAML file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pandas as pd
from pydantic import BaseModel, ValidationError

from fleettwin.io import write_csv, write_json, write_text
from fleettwin.models.config import format_errors, read_yaml
from fleettwin.models.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

# (runs done, runs total, label of the run just started or finished)
ExperimentProgress = Callable[[int, int, str], None]


def load_yaml(model: type[M], path: Path, what: str) -> M:
    """The YAML file ``path`` (``what`` names it in a read error) as ``model``; a ConfigError names the file,
    the field and the reason."""
    try:
        return model.model_validate(read_yaml(path, what))
    except ValidationError as exc:
        raise ConfigError(format_errors(str(path), exc)) from None


def progress_ticker(progress: ExperimentProgress | None, total: int) -> Callable[[str], None]:
    """A ``tick(label)`` that reports the run about to start as ``(runs done, total, label)``."""
    done = [0]

    def tick(label: str) -> None:
        if progress:
            progress(done[0], total, label)
        done[0] += 1

    return tick


@dataclass
class ExperimentResult:
    name: str
    results: pd.DataFrame  # one row per policy / set-up; the columns the experiment promises
    report_md: str  # the table next to the claim it tests, and what it does and does not confirm
    wall_time_s: float = 0.0
    extra: dict = field(default_factory=dict)  # anything else worth keeping (config, seeds), written as JSON
    figures: list[Path] = field(default_factory=list)  # plots already written under the output directory


def write_experiment(result: ExperimentResult, out: str | Path) -> list[Path]:
    """Write ``results.csv``, ``report.md`` and ``meta.json`` atomically under ``out``."""
    out = Path(out)
    paths = [
        write_csv(out / "results.csv", result.results),
        write_text(out / "report.md", result.report_md),
        write_json(
            out / "meta.json", {"experiment": result.name, "wall_time_s": result.wall_time_s, **result.extra}
        ),
    ]
    return paths + list(result.figures)
