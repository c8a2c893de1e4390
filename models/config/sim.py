"""The scenario's ``sim:`` section: how the simulator steps and samples."""

from __future__ import annotations

from pydantic import PositiveFloat

from fleettwin.models.base import StrictModel
from fleettwin.models.config.choices import SimModeRef


class SimConfig(StrictModel):
    mode: SimModeRef = SimModeRef(name="skip")  # {name: per_iteration}: one event per engine step (oracle)
    sample_interval_s: PositiveFloat = 1.0
    max_time_s: PositiveFloat | None = None  # stop here even if requests remain (they are reported)
