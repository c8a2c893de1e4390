"""Prompt/output length distributions: each ``sample(rng, n) -> (prompt, output)`` gives two int64 arrays of
``n`` values, all >= 1.

Each distribution is a frozen pydantic model registered by name in ``LENGTHS``, so a scenario chooses one
the one way, ``{name, params}``:
``lengths: {name: lognormal, params: {prompt_median: 1000, prompt_sigma: 1.0, output_median: 200,
output_sigma: 0.8}}``, and gets field-level errors for typos and bad values. ``LengthDist`` is the field type:
it validates ``{name, params}`` into the distribution itself (what the sources sample from) and writes it back
in that form; ``parse_lengths`` validates a plain mapping. The old form, ``{type: lognormal, ...}`` beside the
parameters, still loads from a scenario file with a note (``models/config/legacy.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, TypeAdapter, ValidationError, model_validator

from fleettwin.models.errors import ConfigError
from fleettwin.models.registry import Chosen, Registry, by_name
from fleettwin.models.workload.traces import TraceFormat, read_trace, resolve_path

# Lognormal draws are capped here before the cast to int64 even when no max is given: a large sigma can
# otherwise overflow, and no model has a 2^31-token context.
_HARD_CAP = 2**31 - 1


LENGTHS: Registry[Any] = Registry("length distribution")


class _Lengths(Chosen):
    """A length distribution: its parameters are its fields (``LENGTHS`` validates ``params`` into it). Old
    form: ``{type: lognormal, prompt_median: ...}``."""

    registry = LENGTHS

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def with_base_dir(self, base_dir: Path | None) -> _Lengths:
        """This distribution with any relative file path resolved (only ``empirical`` has one)."""
        return self


@LENGTHS.register("fixed")
class FixedLengths(_Lengths):
    """Every request has the same prompt and output length (calibration, closed-form checks)."""

    prompt: int = Field(ge=1)
    output: int = Field(ge=1)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        return np.full(n, self.prompt, dtype=np.int64), np.full(n, self.output, dtype=np.int64)


@LENGTHS.register("uniform")
class UniformLengths(_Lengths):
    """Independent uniform integers, both bounds inclusive."""

    prompt_min: int = Field(ge=1)
    prompt_max: int = Field(ge=1)
    output_min: int = Field(ge=1)
    output_max: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> UniformLengths:
        for kind in ("prompt", "output"):
            lo, hi = getattr(self, f"{kind}_min"), getattr(self, f"{kind}_max")
            if hi < lo:
                raise ValueError(f"{kind}_max ({hi}) must be >= {kind}_min ({lo})")
        return self

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        prompt = rng.integers(self.prompt_min, self.prompt_max, size=n, endpoint=True, dtype=np.int64)
        output = rng.integers(self.output_min, self.output_max, size=n, endpoint=True, dtype=np.int64)
        return prompt, output


@LENGTHS.register("lognormal")
class LognormalLengths(_Lengths):
    """Independent lognormals given by median and log-space sigma, rounded, clipped to ``[1, max_*]``.

    Clipping (rather than redrawing) puts a spike at the cap, as real traces show at their context or output
    limits (Azure code prompts at ~7437, Azure conv outputs at 1000). ``max_*`` of ``None`` means no cap.
    """

    prompt_median: float = Field(gt=0)
    prompt_sigma: float = Field(ge=0)
    output_median: float = Field(gt=0)
    output_sigma: float = Field(ge=0)
    max_prompt: int | None = Field(default=None, ge=1)
    max_output: int | None = Field(default=None, ge=1)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        prompt = _lognormal_ints(rng, n, self.prompt_median, self.prompt_sigma, self.max_prompt)
        output = _lognormal_ints(rng, n, self.output_median, self.output_sigma, self.max_output)
        return prompt, output


def _lognormal_ints(
    rng: np.random.Generator, n: int, median: float, sigma: float, cap: int | None
) -> np.ndarray:
    x = rng.lognormal(np.log(median), sigma, size=n)
    return np.clip(np.rint(x), 1, _HARD_CAP if cap is None else cap).astype(np.int64)


@LENGTHS.register("geometric")
class GeometricLengths(_Lengths):
    """Independent geometric lengths on {1, 2, ...} with the given means.

    The discrete analogue of the exponential: with service time proportional to output tokens it gives the
    ~exponential service that M/M/c fidelity tests need.
    """

    prompt_mean: float = Field(ge=1)
    output_mean: float = Field(ge=1)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        prompt = rng.geometric(1.0 / self.prompt_mean, size=n).astype(np.int64)
        output = rng.geometric(1.0 / self.output_mean, size=n).astype(np.int64)
        return prompt, output


@LENGTHS.register("empirical")
class EmpiricalLengths(_Lengths):
    """(prompt, output) pairs resampled jointly, with replacement, from a trace, so their correlation and the
    caps and spikes of the real distribution are kept.

    A relative ``path`` is resolved by the workload source against the scenario's directory, then the
    current working directory (``with_base_dir``); used directly it is relative to the working directory.
    """

    path: str = Field(min_length=1)
    format: TraceFormat

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        table = read_trace(self.path, self.format)  # cached per file
        idx = rng.integers(0, len(table), size=n)
        return table.prompt_tokens[idx], table.output_tokens[idx]

    def with_base_dir(self, base_dir: Path | None) -> EmpiricalLengths:
        return self.model_copy(update={"path": str(resolve_path(self.path, base_dir))})


LengthDist = by_name(_Lengths)
_ADAPTER: TypeAdapter[Any] = TypeAdapter(LengthDist)


def parse_lengths(data: Any) -> _Lengths:
    """Validate a mapping such as ``{"name": "geometric", "params": {"prompt_mean": 500, "output_mean":
    100}}``."""
    if isinstance(data, _Lengths):
        return data
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(lengths)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"bad length distribution: {details}") from None
