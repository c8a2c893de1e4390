"""Arrival processes chosen by name: ``arrivals: {name: poisson, params: {rate: 0.5, duration_s: 600}}``.

Each entry of ``ARRIVALS`` is a frozen pydantic model whose fields are the process's parameters (checked here,
so a bad value is a field error) and whose ``times(rng)`` draws the arrival times through the processes of
``arrivals.py``. A synthetic workload source's parameters are one of these plus a length distribution
(``sources.py``), and a workflow section's ``arrivals:`` is one (``models/workflows/templates.py``), so both
read the same parameters with the same checks. ``ArrivalsChoice`` is the field type (``by_name``); the old
form, ``{type: poisson, rate: ...}``, still loads from a scenario file with a note.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import Field, model_validator

from fleettwin.models.base import StrictModel
from fleettwin.models.registry import Chosen, Registry, by_name
from fleettwin.models.workload.arrivals import MMPP, ArrivalProcess, Burst, Diurnal, Gamma, Poisson

ARRIVALS: Registry[Any] = Registry("arrival process")

Rate = Annotated[float, Field(ge=0, allow_inf_nan=False)]  # arrivals per second


class Window(StrictModel):
    """The span ``[0, duration_s)`` that arrivals fall in."""

    duration_s: float = Field(gt=0, allow_inf_nan=False)


class Arrivals(Chosen):
    """An arrival process chosen by name (``ARRIVALS``)."""

    registry = ARRIVALS

    def times(self, rng: np.random.Generator) -> np.ndarray:
        """Sorted arrival times in seconds."""
        raise NotImplementedError


class _Process(Arrivals, Window):
    """An entry that is one of the ``ArrivalProcess`` of ``arrivals.py``: ``process_class`` made from the
    entry's fields, where they are its parameters by the same names (else ``process`` says how)."""

    process_class: ClassVar[type[ArrivalProcess]]

    def process(self) -> ArrivalProcess:
        cls = self.process_class
        return cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(cls)})  # type: ignore[arg-type]

    def times(self, rng: np.random.Generator) -> np.ndarray:
        return self.process().times(rng)


@ARRIVALS.register("poisson")
class PoissonArrivals(_Process):
    """Poisson arrivals at ``rate`` per second."""

    process_class = Poisson
    rate: Rate


@ARRIVALS.register("gamma")
class GammaArrivals(_Process):
    """Renewal arrivals with Gamma gaps: ``cv`` 1 is Poisson, above 1 bursty."""

    process_class = Gamma
    rate: Rate
    cv: float = Field(gt=0, allow_inf_nan=False)


@ARRIVALS.register("mmpp")
class MMPPArrivals(_Process):
    """Markov-modulated Poisson arrivals (``arrivals.MMPP``): bursts and lulls of exponential length, one
    mean sojourn for every state or one per state."""

    rates: list[Rate] = Field(min_length=1)
    mean_sojourn_s: float | list[float]

    @model_validator(mode="after")
    def _sojourns(self) -> MMPPArrivals:
        s = self.mean_sojourn_s
        values = [s] if isinstance(s, int | float) else s
        if not isinstance(s, int | float) and len(s) != len(self.rates):
            raise ValueError(f"mean_sojourn_s has {len(s)} entries but rates has {len(self.rates)}")
        if not all(0 < v < float("inf") for v in values):
            raise ValueError(f"mean_sojourn_s must be finite and > 0, got {s}")
        return self

    def process(self) -> ArrivalProcess:
        s = self.mean_sojourn_s
        return MMPP(
            rates=tuple(self.rates),
            mean_sojourn_s=s if isinstance(s, int | float) else tuple(s),
            duration_s=self.duration_s,
        )


@ARRIVALS.register("diurnal")
class DiurnalArrivals(_Process):
    """Poisson arrivals whose rate follows a daily sinusoid (``arrivals.Diurnal``)."""

    process_class = Diurnal
    mean_rate: Rate
    peak_to_trough: float = Field(ge=1, allow_inf_nan=False)
    period_s: float = Field(default=86400.0, gt=0, allow_inf_nan=False)
    peak_at_s: float = Field(default=14 * 3600.0, allow_inf_nan=False)


@ARRIVALS.register("burst")
class BurstArrivals(_Process):
    """Poisson arrivals at ``rate`` with one burst ``factor`` times as fast for ``burst_s`` seconds from
    ``burst_start_s`` (a noisy neighbour)."""

    rate: Rate
    factor: float = Field(ge=1, allow_inf_nan=False)
    burst_start_s: float = Field(ge=0, allow_inf_nan=False)
    burst_s: float = Field(gt=0, allow_inf_nan=False)

    def process(self) -> ArrivalProcess:
        return Burst(
            rate=self.rate,
            factor=self.factor,
            start_s=self.burst_start_s,
            length_s=self.burst_s,
            duration_s=self.duration_s,
        )


@ARRIVALS.register("times")
class FixedTimes(Arrivals):
    """Arrivals at the listed times (hand-checked cases, replays of a log)."""

    at_s: list[Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(min_length=1)

    def times(self, rng: np.random.Generator) -> np.ndarray:
        return np.sort(np.asarray(self.at_s, dtype=float))


ArrivalsChoice = by_name(Arrivals)
