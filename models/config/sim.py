"""The scenario's ``sim:`` section: how the simulator steps and samples."""

from __future__ import annotations

from typing import Literal

from pydantic import PositiveFloat

from fleettwin.models.base import StrictModel


class SimConfig(StrictModel):
    mode: Literal["skip", "per_iteration"] = "skip"  # per_iteration: one event per engine step (oracle)
    sample_interval_s: PositiveFloat = 1.0
    max_time_s: PositiveFloat | None = None  # stop here even if requests remain (they are reported)
