"""``fleettwin data calibrate tables``: how well the profiled performance model reproduces the measured
operator tables.

Per operator and table, the error of interpolation on held-out rows (MAPE and max), the roofline fallback's
efficiencies fitted on the same tables and its error, and which (GPU, model) pairs of the catalog take which
path. Writes ``calibration.csv``, ``calibration.md`` and ``calibration.png`` into ``--report DIR``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from fleettwin.models.catalog import Catalog
from fleettwin.models.errors import ConfigError
from fleettwin.models.perf.calibration import (
    LAYER,
    HoldoutError,
    fallback_errors,
    held_out_mask,
    operator_holdout_errors,
)
from fleettwin.models.perf.profiled import (
    FITTED_BANDWIDTH_EFFICIENCY,
    FITTED_FLOPS_EFFICIENCY,
    FITTED_LAYER_FIXED_S,
    ProfiledModel,
    _roofline_layer_terms,
    fit_roofline_efficiencies,
)
from fleettwin.models.perf.tables import OPERATORS, PiecewiseLinear, mlp_tables
from fleettwin.models.sizing import min_tensor_parallel

MAPE_TARGET = 0.05  # the per-layer total must interpolate held-out rows within this MAPE for every table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--report", type=Path, metavar="DIR", required=True, help="folder for the report files"
    )
    parser.add_argument(
        "--every", type=int, default=2, help="hold out every EVERY-th row (default %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    if args.every < 2:
        raise ConfigError(f"--every must be >= 2, got {args.every}")
    errors = operator_holdout_errors(args.every)
    args.report.mkdir(parents=True, exist_ok=True)
    frame = errors_frame(errors)
    frame.to_csv(args.report / "calibration.csv", index=False)
    text = report_markdown(errors, args.every)
    (args.report / "calibration.md").write_text(text + "\n", encoding="utf-8")
    plot(errors, args.every, args.report / "calibration.png")
    print(text)
    print(f"\nwrote {args.report / 'calibration.csv'}, calibration.md, calibration.png")
    worst = max(e.mape for e in errors if e.operator == LAYER)
    return 0 if worst < MAPE_TARGET else 1


def errors_frame(errors: list[HoldoutError]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "device": e.device,
                "model": e.model,
                "tp": e.tp,
                "operator": e.operator,
                "held_out": e.held_out,
                "mape": e.mape,
                "max_error": e.max_error,
            }
            for e in errors
        ]
    )


def _short(model: str) -> str:
    return model.split("/")[-1].removesuffix("-hf").replace("Llama-2-", "")


def report_markdown(errors: list[HoldoutError], every: int) -> str:
    lines = [
        f"## Interpolation error on held-out rows (1 in {every} token counts held out)",
        "",
        "MAPE / max |error| per operator, pooled over TP 1, 2, 4, 8. `layer (sum)` is the per-layer total "
        "the model uses (all operators but `emb`).",
        "",
    ]
    pairs = sorted({(e.device, e.model) for e in errors if e.operator != "all_reduce"})
    lines.append("| operator | " + " | ".join(f"{d} {_short(m)}" for d, m in pairs) + " |")
    lines.append("|---" * (len(pairs) + 1) + "|")
    for op in (*OPERATORS, LAYER):
        cells = []
        for d, m in pairs:
            err = np.concatenate([e.errors for e in errors if (e.device, e.model, e.operator) == (d, m, op)])
            cells.append(f"{np.abs(err).mean():.1%} / {np.abs(err).max():.0%}")
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Per table, the per-layer total (target: MAPE < 5 % on every table) and the fitted roofline "
        "fallback on all rows of the same table:",
        "",
        "| table | held-out rows | layer MAPE | layer max | fallback MAPE | fallback max |",
        "|---|---|---|---|---|---|",
    ]
    fallback = {(f.device, f.model, f.tp): f for f in fallback_errors()}
    for e in errors:
        if e.operator == LAYER:
            f = fallback[(e.device, e.model, e.tp)]
            lines.append(
                f"| {e.device}/{_short(e.model)}/TP{e.tp} | {e.held_out} | {e.mape:.2%} | {e.max_error:.1%} "
                f"| {f.mape:.1%} | {f.max_error:.0%} |"
            )
    lines += [
        "",
        "All-reduce (NCCL, one node), message sizes held out the same way:",
        "",
        "| node | GPUs | held-out sizes | MAPE | max |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {e.model} | {e.tp} | {e.held_out} | {e.mape:.2%} | {e.max_error:.1%} |"
        for e in errors
        if e.operator == "all_reduce"
    ]
    fit = fit_roofline_efficiencies()
    lines += [
        "",
        f"Roofline fallback fitted on all {fit.rows} rows: per layer {fit.layer_fixed_s * 1e6:.0f} us + "
        f"max(compute / {fit.flops_efficiency:.2f}, memory / {fit.bandwidth_efficiency:.2f}), MAPE "
        f"{fit.mape:.1%} (constants in models/perf/profiled.py: {FITTED_LAYER_FIXED_S * 1e6:.0f} us, "
        f"{FITTED_FLOPS_EFFICIENCY:.2f}, {FITTED_BANDWIDTH_EFFICIENCY:.2f}).",
    ]
    lines += ["", "Path the `profiled` model takes per catalog pair (at the smallest TP that fits):", ""]
    lines += coverage_lines()
    return "\n".join(lines)


def coverage_lines() -> list[str]:
    catalog = Catalog.default()
    out = ["| GPU | model | TP | path |", "|---|---|---|---|"]
    for gpu_id in ("a100-80g", "h100-80g", "h200"):
        for llm_id in ("llama-2-7b", "llama-2-70b", "llama-3-8b"):
            gpu, llm = catalog.gpu(gpu_id), catalog.llm(llm_id)
            tp = min_tensor_parallel(gpu, llm)
            model = ProfiledModel(ProfiledModel.Params(), gpu=gpu, llm=llm, tp=tp)
            out.append(f"| {gpu_id} | {llm_id} | {tp} | {model.describe()} |")
    return out


def plot(errors: list[HoldoutError], every: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    catalog = Catalog.default()
    fit = fit_roofline_efficiencies()
    tables = [t for t in mlp_tables() if t.tp == 1]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    for ax, t in zip(axes.flat[:4], tables, strict=True):
        mask = held_out_mask(len(t.num_tokens), every)
        x, y = t.num_tokens, t.layer_ms
        dense = np.arange(1, x[-1] + 1)
        ax.plot(dense, PiecewiseLinear(x[~mask], y[~mask])(dense), lw=1, label="interpolated (knots only)")
        ax.plot(x[mask], y[mask], "x", ms=4, color="C3", label="held-out rows (measured)")
        compute, memory = _roofline_layer_terms(t, catalog)
        roof = fit.layer_fixed_s + np.maximum(
            compute / fit.flops_efficiency, memory / fit.bandwidth_efficiency
        )
        ax.plot(x, roof * 1e3, "--", lw=1, color="C2", label="fitted roofline (fallback)")
        ax.set(title=f"{t.label}: per-layer non-attention time", xlabel="tokens in batch", ylabel="ms")
        ax.legend(fontsize=8)
    ax = axes.flat[4]
    pairs = sorted({(e.device, e.model) for e in errors if e.operator != "all_reduce"})
    ops = (*OPERATORS, LAYER)
    width = 0.8 / len(pairs)
    for k, (d, m) in enumerate(pairs):
        mapes = [
            np.abs(
                np.concatenate([e.errors for e in errors if (e.device, e.model, e.operator) == (d, m, op)])
            ).mean()
            for op in ops
        ]
        ax.bar(np.arange(len(ops)) + k * width, np.array(mapes) * 100, width, label=f"{d} {_short(m)}")
    ax.axhline(MAPE_TARGET * 100, color="k", lw=0.8, ls=":")
    ax.set_xticks(np.arange(len(ops)) + 0.4 - width / 2, ops, rotation=60, ha="right", fontsize=8)
    ax.set(title="held-out MAPE per operator (all TP)", ylabel="%")
    ax.legend(fontsize=8)
    ax = axes.flat[5]
    for e in errors:
        if e.operator == "all_reduce":
            ax.bar(f"{e.device} x{e.tp}", e.mape * 100, color="C0" if e.device == "a100" else "C1")
    ax.set(title="all-reduce held-out MAPE", ylabel="%")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
