"""How long a workflow's tool call takes, chosen by name:
``delay: {name: lognormal, params: {median_s: 0.4, sigma: 0.5, max_s: 5}}``.

Each entry of ``DELAYS`` is a frozen pydantic model whose fields are its parameters and whose ``sample(rng)``
draws one delay in seconds; ``ToolDelay`` is the field type (``by_name``). The old form, ``{type: lognormal,
median_s: ...}``, still loads from a scenario file with a note (``models/config/legacy.py``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import NonNegativeFloat, PositiveFloat, model_validator

from fleettwin.models.registry import Chosen, Registry, by_name

DELAYS: Registry[Any] = Registry("tool delay")


class Delay(Chosen):
    """A tool call's delay distribution (``DELAYS``)."""

    registry = DELAYS

    def sample(self, rng: np.random.Generator) -> float:
        raise NotImplementedError


@DELAYS.register("fixed")
class FixedDelay(Delay):
    s: NonNegativeFloat

    def sample(self, rng: np.random.Generator) -> float:
        return self.s


@DELAYS.register("uniform")
class UniformDelay(Delay):
    min_s: NonNegativeFloat
    max_s: NonNegativeFloat

    @model_validator(mode="after")
    def _order(self) -> UniformDelay:
        if self.max_s < self.min_s:
            raise ValueError(f"max_s ({self.max_s}) must be >= min_s ({self.min_s})")
        return self

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.min_s, self.max_s))


@DELAYS.register("lognormal")
class LognormalDelay(Delay):
    median_s: PositiveFloat
    sigma: NonNegativeFloat
    max_s: PositiveFloat | None = None  # clipped here (a tool call's timeout)

    def sample(self, rng: np.random.Generator) -> float:
        x = float(rng.lognormal(math.log(self.median_s), self.sigma))
        return min(x, self.max_s) if self.max_s is not None else x


@DELAYS.register("exponential")
class ExponentialDelay(Delay):
    mean_s: PositiveFloat

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.exponential(self.mean_s))


ToolDelay = by_name(Delay)
