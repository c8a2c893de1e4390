"""Parameter sweeps: a grid of scenario overrides, each point simulated (in a process pool or on Ray),
collected into one table with the Pareto frontier of two of its columns marked.

A parameter is ``PATH=start:stop:n`` (n evenly spaced values, like ``numpy.linspace``) or ``PATH=a,b,c`` (a
list; each value read as YAML, so ``8``, ``0.5``, ``spot``, ``null`` and ``true`` mean what they would in the
scenario file; ``PATH=[...]`` is one YAML flow list of values, for values that are themselves lists). ``PATH``
is a dotted path as ``fleettwin sim run --set`` takes it, or one of the ``SHORTHANDS``.

Results do not depend on the executor or on the order runs finish: every run of a point uses a seed fixed in
advance (the point's scenario seed, plus ``r`` for replicate ``r``: the same seeds at every point, so points
are compared on common random numbers) and the table is sorted by point.
"""

from __future__ import annotations

import itertools
import math
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from fleettwin.io import write_csv, write_json
from fleettwin.models.config import ScenarioConfig, load_scenario
from fleettwin.models.errors import ConfigError
from fleettwin.sim.executors import Executor
from fleettwin.sim.pareto import frontier

# prefix -> full dotted path prefix; documented in ``fleettwin sim sweep --help`` and docs/sweep.md
SHORTHANDS = {
    "allocator.": "controller.allocator.params.",
    "router.": "pools.0.router.params.",
    "engine.": "pools.0.engine.",
    "pool.": "pools.0.",
}

# The metric columns every run reports (a summary may add more: see ``metrics``), in table order.
METRICS = (
    "ttft_p50_s",
    "ttft_p95_s",
    "ttft_p99_s",
    "e2e_p50_s",
    "e2e_p95_s",
    "e2e_p99_s",
    "tpot_p95_s",
    "slo_attainment",
    "meets_slo",
    "goodput_rps",
    "throughput_rps",
    "tokens_per_s",
    "output_tokens_per_s",
    "completed_fraction",
    "rejected",
    "unfinished",
    "usd_per_hour",
    "usd_per_1k_requests",
    "usd_per_1m_tokens",
    "usd_per_1m_output_tokens",
    "gpu_hours",
    "gpus_mean",
)
# Summary keys turned into the columns above, or too bulky for a table; any other numeric entry (a tier's GPU
# utilisation, say) is flattened into extra columns.
_KNOWN_KEYS = {
    "scenario",
    "seed",
    "mode",
    "sim_time_s",
    "wall_time_s",
    "requests",
    "latency_s",
    "throughput",
    "slo",
    "preemptions",
    "cost",
    "pools",
    "controller",
}

Progress = Callable[[int, int, str], None]  # (runs done, runs total, label of the run just finished)


# ---------------------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class Param:
    label: str  # as written on the command line; the column name in the table
    path: str  # the full dotted path
    values: tuple[Any, ...]


def expand_path(key: str) -> str:
    for short, full in SHORTHANDS.items():
        if key.startswith(short) and len(key) > len(short):
            return full + key[len(short) :]
    return key


def parse_param(text: str) -> Param:
    """``allocator.target=16:64:4`` -> Param("allocator.target", "controller.allocator.params.target",
    (16, 32, 48, 64)); ``pools.0.gpu=h100-80g,a100-80g`` -> two string values."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key or not raw:
        raise ConfigError(
            f"--param {text!r}: expected PATH=start:stop:n or PATH=a,b,c, "
            "e.g. allocator.target=16:64:4 or pools.0.replicas=2,4,8"
        )
    values = _linspace(text, raw)
    if values is None:
        values = _values_list(text, raw)
    return Param(label=key, path=expand_path(key), values=values)


def _linspace(text: str, raw: str) -> tuple[Any, ...] | None:
    parts = raw.split(":")
    if len(parts) != 3:
        return None
    try:
        start, stop = (yaml.safe_load(p) for p in parts[:2])
        n = yaml.safe_load(parts[2])
    except yaml.YAMLError:
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (start, stop)):
        return None  # not a range: e.g. a time of day, read as a list of one string below
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(
            f"--param {text!r}: the number of values in start:stop:n must be a positive integer, "
            f"got {parts[2]!r}"
        )
    grid = np.linspace(start, stop, n)
    if isinstance(start, int) and isinstance(stop, int) and np.all(grid == np.round(grid)):
        return tuple(int(v) for v in np.round(grid))  # integer steps stay integers (replicas, max_num_seqs)
    return tuple(float(f"{v:.12g}") for v in grid)  # 0.30000000000000004 -> 0.3


def _values_list(text: str, raw: str) -> tuple[Any, ...]:
    try:
        if raw.startswith("["):
            values = yaml.safe_load(raw)
            if not isinstance(values, list):
                raise ConfigError(f"--param {text!r}: [...] must be a YAML list of values")
        else:
            values = [yaml.safe_load(v) if v.strip() else "" for v in raw.split(",")]
    except yaml.YAMLError as exc:
        raise ConfigError(f"--param {text!r}: cannot read the values as YAML: {exc}") from None
    if not values or any(v == "" for v in values):
        raise ConfigError(f"--param {text!r}: an empty value in the list (a stray comma?)")
    return tuple(values)


# -------------------------------------------------------------------------------------------- grid
@dataclass(frozen=True)
class Point:
    index: int
    values: dict[str, Any]  # label -> value
    overrides: dict[str, Any]  # full path -> value: the fixed overrides, then this point's

    def label(self, short: dict[str, str]) -> str:
        return ", ".join(f"{short[k]}={v}" for k, v in self.values.items())


def grid(params: Sequence[Param], fixed: dict[str, Any] | None = None) -> list[Point]:
    """The cartesian product of the parameters' values (the first parameter varies slowest)."""
    paths = [p.path for p in params]
    dupes = sorted({p for p in paths if paths.count(p) > 1})
    if dupes:
        raise ConfigError(f"--param: a path is swept twice: {', '.join(dupes)}")
    points = []
    for i, combo in enumerate(itertools.product(*(p.values for p in params))):
        values = {p.label: v for p, v in zip(params, combo, strict=True)}
        overrides = {**(fixed or {}), **{p.path: v for p, v in zip(params, combo, strict=True)}}
        points.append(Point(index=i, values=values, overrides=overrides))
    return points


def short_labels(params: Sequence[Param]) -> dict[str, str]:
    """``controller.allocator.params.target`` -> ``target`` for plot labels, where that stays unambiguous."""
    tails = [p.label.rsplit(".", 1)[-1] for p in params]
    return {p.label: t if tails.count(t) == 1 else p.label for p, t in zip(params, tails, strict=True)}


def validate(scenario: Path, points: Sequence[Point]) -> list[ScenarioConfig]:
    """Every point's scenario, validated before anything runs; all bad points are reported in one error."""
    configs, bad = [], []
    for pt in points:
        try:
            configs.append(load_scenario(scenario, pt.overrides))
        except ConfigError as exc:
            bad.append(f"point {pt.index} ({pt.label({k: k for k in pt.values})}): {exc}")
    if bad:
        more = f"\n... and {len(bad) - 5} more" if len(bad) > 5 else ""
        hint = (
            "\n(allocator.X is shorthand for controller.allocator.params.X: the scenario needs a controller)"
            if "controller.allocator.name: Field required" in bad[0]
            else ""
        )
        raise ConfigError(
            f"{len(bad)} of {len(points)} sweep points are invalid:\n" + "\n".join(bad[:5]) + more + hint
        )
    return configs


# -------------------------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class Task:
    point: int
    replicate: int
    seed: int
    cfg: ScenarioConfig


def run_task(task: Task) -> dict:
    """Simulate one (point, seed); never raises, so one failing point cannot take the sweep down."""
    from fleettwin.sim.runner import run_scenario

    rec: dict[str, Any] = {"point": task.point, "replicate": task.replicate, "seed": task.seed, "error": ""}
    t0 = time.perf_counter()
    try:
        rec.update(metrics(run_scenario(task.cfg, seed=task.seed).summary))
    except Exception as exc:  # noqa: BLE001  (recorded in the table instead)
        rec["error"] = f"{type(exc).__name__}: {exc}".strip()
        rec["traceback"] = traceback.format_exc(limit=-3)
    rec["wall_s"] = time.perf_counter() - t0
    return rec


def metrics(summary: dict) -> dict[str, float]:
    """The flat record of one run: latency percentiles, SLO, cost, and any other numbers the summary
    carries."""
    lat, req, cost = summary["latency_s"], summary["requests"], summary["cost"]
    rec = {f"{m}_{q}_s": lat[m][q] for m in ("ttft", "e2e") for q in ("p50", "p95", "p99")}
    rec["tpot_p95_s"] = lat["tpot"]["p95"]
    met = summary["slo"].get("met")  # the percentile targets (None: the scenario has none)
    rec.update(
        slo_attainment=summary["slo"]["attainment"],
        goodput_rps=summary["slo"]["goodput_requests_per_s"],
        meets_slo=math.nan if met is None else float(met),
        throughput_rps=summary["throughput"]["requests_per_s"],
        tokens_per_s=summary["throughput"].get("tokens_per_s", math.nan),
        output_tokens_per_s=summary["throughput"]["output_tokens_per_s"],
        usd_per_1m_tokens=cost.get("usd_per_1m_tokens", math.nan),
        usd_per_1m_output_tokens=cost.get("usd_per_1m_output_tokens", math.nan),
        completed_fraction=req["completed"] / max(req["total"], 1),
        rejected=req["rejected"],
        unfinished=req["unfinished"],
        usd_per_hour=cost["usd_per_hour"],
        usd_per_1k_requests=cost["usd_per_1k_requests"],
        gpu_hours=cost["gpu_hours"],
        gpus_mean=sum(
            p.get("replicas_mean", p.get("replicas", 0)) * p.get("tp", 1) for p in summary.get("pools", [])
        ),
    )
    for key, value in summary.items():
        if key not in _KNOWN_KEYS:
            rec.update(_numbers(key, value))
    return rec


def _numbers(prefix: str, value: Any, depth: int = 0) -> dict[str, float]:
    """Numeric leaves of a nested summary entry, e.g. {"gpu_util": {"training": 0.8}} -> gpu_util_training."""
    if isinstance(value, bool):
        return {prefix: float(value)}
    if isinstance(value, int | float):
        return {prefix: value}
    if isinstance(value, dict) and depth < 3:
        out: dict[str, float] = {}
        for k, v in value.items():
            out.update(_numbers(f"{prefix}_{k}", v, depth + 1))
        return out
    return {}  # lists and text do not fit a table column


# ----------------------------------------------------------------------------------------- results
@dataclass
class SweepResult:
    table: pd.DataFrame  # one row per point: parameters, metrics (means over seeds), error, pareto
    runs: list[dict]  # one record per (point, seed), sorted
    wall_time_s: float
    meta: dict = field(default_factory=dict)


def build_table(points: Sequence[Point], runs: Sequence[dict], *, seeds: int, x: str, y: str) -> pd.DataFrame:
    """One row per point whose runs have all finished, sorted by point, with the frontier over ``x``,
    ``y``."""
    by_point: dict[int, list[dict]] = {}
    for r in runs:
        by_point.setdefault(r["point"], []).append(r)
    rows = []
    for pt in points:
        recs = sorted(by_point.get(pt.index, []), key=lambda r: r["replicate"])
        if len(recs) == seeds:
            rows.append({"point": pt.index, **pt.values, **_combine(recs)})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    # parameters and seeds, then each metric beside its confidence half-width, then extra numbers, then error
    head = [c for c in dict.fromkeys(("point", *points[0].values, "seed", "seeds", "runs_ok")) if c in table]
    metric_cols = [c for m in METRICS for c in (m, f"{m}_ci95") if c in table]
    rest = [c for c in table.columns if c not in {*head, *metric_cols, "error"}]
    table = table[[*head, *metric_cols, *rest, "error"]].copy()
    table["pareto"] = frontier(table, x, y) if x in table and y in table else False
    if "meets_slo" in table and table["meets_slo"].notna().any():
        # With percentile targets, a point that misses one is never on the frontier: an overloaded setting is
        # cheap per request only because it serves them late.
        meets = table["meets_slo"].fillna(0) >= 1.0
        table["pareto"] = frontier(table.where(meets), x, y) & meets.to_numpy() if meets.any() else False
    return table


_RUN_KEYS = ("point", "replicate", "seed", "error", "wall_s", "traceback")  # bookkeeping, not metrics


def _combine(recs: list[dict]) -> dict:
    """A point's row: its one run, or the mean and 95 % confidence half-width over its seeds."""
    errors = [f"seed {r['seed']}: {r['error']}" if len(recs) > 1 else r["error"] for r in recs if r["error"]]
    ok = [r for r in recs if not r["error"]]
    keys = list(dict.fromkeys(k for r in ok for k in r if k not in _RUN_KEYS))
    if len(recs) == 1:
        return {"seed": recs[0]["seed"], **{k: ok[0][k] for k in keys}, "error": "; ".join(errors)}
    from scipy import stats

    row: dict[str, Any] = {"seeds": ",".join(str(r["seed"]) for r in recs), "runs_ok": len(ok)}
    for k in keys:
        v = np.array([r.get(k, math.nan) for r in ok], dtype=float)
        row[k] = float(v.mean())
        half = stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size) if v.size > 1 else math.nan
        row[f"{k}_ci95"] = float(half)
    row["error"] = "; ".join(errors)
    return row


def run_sweep(
    scenario: Path,
    params: Sequence[Param],
    executor: Executor,
    *,
    fixed: dict[str, Any] | None = None,
    seeds: int = 1,
    x: str = "usd_per_hour",
    y: str = "ttft_p95_s",
    progress: Progress | None = None,
    on_update: Callable[[pd.DataFrame, list[dict]], None] | None = None,
) -> SweepResult:
    """Validate every point, then run points x seeds on ``executor``; ``on_update`` sees the table so far
    after each run (so a crash loses only the runs in flight)."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    check_axes(params, x, y)
    points = grid(params, fixed)
    configs = validate(scenario, points)
    tasks = [
        Task(pt.index, r, cfg.seed + r, cfg)
        for pt, cfg in zip(points, configs, strict=True)
        for r in range(seeds)
    ]
    short = short_labels(params)
    t0 = time.perf_counter()
    runs: list[dict] = []
    for i, rec in executor.run(run_task, tasks):
        if rec.get("point") is None:  # the executor lost the task (a crashed worker): record which
            rec = {"point": tasks[i].point, "replicate": tasks[i].replicate, "seed": tasks[i].seed, **rec}
        runs.append(rec)
        if progress:
            progress(len(runs), len(tasks), points[rec["point"]].label(short))
        if on_update:
            on_update(build_table(points, runs, seeds=seeds, x=x, y=y), runs)
    runs.sort(key=lambda r: (r["point"], r["replicate"]))
    table = build_table(points, runs, seeds=seeds, x=x, y=y)
    meta = {
        "scenario": str(scenario),
        "params": [{"label": p.label, "path": p.path, "values": list(p.values)} for p in params],
        "fixed": fixed or {},
        "seeds": seeds,
        "points": len(points),
        "runs": len(tasks),
        "failed_runs": sum(1 for r in runs if r["error"]),
        "x": x,
        "y": y,
        "executor": executor.describe(),
        "labels": {pt.index: pt.label(short) for pt in points},
    }
    return SweepResult(table=table, runs=runs, wall_time_s=time.perf_counter() - t0, meta=meta)


# ------------------------------------------------------------------------------------------ outputs
def check_axes(params: Sequence[Param], x: str, y: str) -> None:
    """The frontier's columns must exist before hours are spent on runs."""
    known = [*METRICS, *(p.label for p in params)]
    for flag, col in (("--x", x), ("--y", y)):
        if col not in known:
            raise ConfigError(
                f"{flag} {col!r}: not a column of the sweep table; expected one of: {', '.join(known)}"
            )
    if x == y:
        raise ConfigError(f"--x and --y are both {x!r}; the frontier needs two different columns")


def write_partial(out: Path, table: pd.DataFrame, runs: Sequence[dict], *, seeds: int) -> None:
    """The table so far (and every finished run when there are several seeds), rewritten atomically."""
    if not table.empty:
        write_csv(Path(out) / "sweep.csv", table)
    if seeds > 1:
        write_csv(Path(out) / "runs.csv", _runs_frame(runs))


def write_sweep(result: SweepResult, out: Path) -> list[Path]:
    """``sweep.csv``, ``runs.csv`` (several seeds), ``pareto.png`` (when a run succeeded) and
    ``sweep.json``."""
    from fleettwin.sim.pareto import plot_frontier

    out, meta, table = Path(out), result.meta, result.table
    paths = [write_csv(out / "sweep.csv", table)]
    if meta["seeds"] > 1:
        paths.append(write_csv(out / "runs.csv", _runs_frame(result.runs)))
    if not table.empty and table["error"].eq("").any():
        labels = [meta["labels"][p] for p in table["point"]]
        title = f"{Path(meta['scenario']).name}: {meta['points']} points" + (
            f", mean of {meta['seeds']} seeds" if meta["seeds"] > 1 else ""
        )
        paths.append(
            plot_frontier(table, meta["x"], meta["y"], out / "pareto.png", labels=labels, title=title)
        )
    failures = [
        {k: r[k] for k in ("point", "seed", "error", "traceback") if k in r}
        for r in result.runs
        if r["error"]
    ]
    paths.append(
        write_json(
            out / "sweep.json",
            {
                **meta,
                "wall_time_s": result.wall_time_s,
                "run_wall_s": [r["wall_s"] for r in result.runs],
                "failures": failures,
            },
        )
    )
    return paths


def _runs_frame(runs: Sequence[dict]) -> pd.DataFrame:
    rows = sorted(
        ({k: v for k, v in r.items() if k not in ("traceback", "wall_s")} for r in runs),
        key=lambda r: (r["point"], r["replicate"]),
    )
    return pd.DataFrame(rows)
