"""The scenario's ``workload:`` section: which source produces the requests, and how it is reshaped.

workload:
  name: poisson                      # a workload source (models/workload/sources.py)
  params: {rate: 4, duration_s: 600, lengths: {name: geometric, params: {prompt_mean: 500, output_mean: 100}}}
  rate_scale: 2                      # optional: reshape any source without compressing time
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from fleettwin.models.registry import Choice, legacy_key_form
from fleettwin.models.workload.sources import WORKLOADS

RESHAPE = ("rate_scale", "loop_to_s")


class WorkloadConfig(Choice):
    """``name`` picks a workload source and ``params`` are its parameters; the two reshaping keys apply to any
    source (models/workload/reshape.py)."""

    registry = WORKLOADS
    rate_scale: float = Field(1.0, gt=0, allow_inf_nan=False)  # x the request rate: shifted copies / thinning
    loop_to_s: float | None = Field(None, gt=0, allow_inf_nan=False)  # repeat the window to this many seconds

    @classmethod
    def from_legacy(cls, raw: Any) -> dict[str, Any] | None:
        """``{type: poisson, rate: 4, ...}`` (parameters beside the type); a mixture's components too."""
        new = legacy_key_form(raw, "type", keep=RESHAPE)
        if new is None and isinstance(raw, dict) and isinstance(raw.get("params"), dict):
            new = raw  # new form outside, perhaps old components inside
        if new is None:
            return None
        comps = new["params"].get("components")
        if isinstance(comps, list):
            ups = [legacy_key_form(c, "type") for c in comps]
            if any(u is not None for u in ups):
                params = {
                    **new["params"],
                    "components": [c if u is None else u for c, u in zip(comps, ups, strict=True)],
                }
                return {**new, "params": params}
        return new if new is not raw else None
