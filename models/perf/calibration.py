"""Evidence for the profiled model: interpolation error on held-out table rows, and the fitted roofline's
error.

Held-out rows are a deterministic split: of a table's distinct token counts (message sizes for all-reduce), in
increasing order, every ``every``-th one from the second on is removed from the knots, interpolated from the
rest, and compared with its measurement. The first and last rows always stay knots (nothing is extrapolated).
Pure numpy; ``fleettwin data calibrate`` writes the files and the plot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fleettwin.models.catalog import Catalog
from fleettwin.models.perf.profiled import _roofline_layer_terms, fit_roofline_efficiencies
from fleettwin.models.perf.tables import OPERATORS, PiecewiseLinear, allreduce_tables, mlp_tables

LAYER = "layer (sum)"  # the per-layer total the model uses: every operator but the embedding


@dataclass(frozen=True, slots=True, kw_only=True)
class HoldoutError:
    device: str
    model: str  # upstream model folder, or the node name for all-reduce
    tp: int
    operator: str
    held_out: int
    mape: float
    max_error: float
    errors: np.ndarray  # signed relative errors of each held-out row, (interpolated - measured) / measured


def held_out_mask(n: int, every: int = 2) -> np.ndarray:
    """True for the rows held out of the knots: indices 1, 1 + every, ... excluding the last one."""
    if every < 2:
        raise ValueError(f"every must be >= 2 (1 would hold out everything), got {every}")
    idx = np.arange(n)
    return (idx % every == 1) & (idx < n - 1)


def _holdout(x: np.ndarray, y: np.ndarray, every: int) -> np.ndarray:
    mask = held_out_mask(len(x), every)
    pred = PiecewiseLinear(x[~mask], y[~mask])(x[mask])
    return pred / y[mask] - 1


def _record(device: str, model: str, tp: int, op: str, err: np.ndarray) -> HoldoutError:
    return HoldoutError(
        device=device,
        model=model,
        tp=tp,
        operator=op,
        held_out=len(err),
        mape=float(np.abs(err).mean()),
        max_error=float(np.abs(err).max()),
        errors=err,
    )


def operator_holdout_errors(every: int = 2) -> list[HoldoutError]:
    """Per (device, model, TP) table and per operator, plus the per-layer sum, plus each all-reduce table."""
    out = []
    for t in mlp_tables():
        for op in OPERATORS:
            out.append(_record(t.device, t.model, t.tp, op, _holdout(t.num_tokens, t.times_ms[op], every)))
        out.append(_record(t.device, t.model, t.tp, LAYER, _holdout(t.num_tokens, t.layer_ms, every)))
    for node in ("a100_dgx", "h100_dgx"):
        for workers, (size, ms) in allreduce_tables(node).items():
            out.append(
                _record(node.removesuffix("_dgx"), node, workers, "all_reduce", _holdout(size, ms, every))
            )
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackError:
    """The fitted roofline against every row of one table (what a pair without tables would get)."""

    device: str
    model: str
    tp: int
    mape: float
    max_error: float


def fallback_errors(catalog: Catalog | None = None) -> list[FallbackError]:
    catalog = catalog or Catalog.default()
    fit = fit_roofline_efficiencies()
    out = []
    for t in mlp_tables():
        compute, memory = _roofline_layer_terms(t, catalog)
        pred = fit.layer_fixed_s + np.maximum(
            compute / fit.flops_efficiency, memory / fit.bandwidth_efficiency
        )
        err = np.abs(pred / (t.layer_ms * 1e-3) - 1)
        out.append(
            FallbackError(
                device=t.device, model=t.model, tp=t.tp, mape=float(err.mean()), max_error=float(err.max())
            )
        )
    return out
