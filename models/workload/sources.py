"""Workload sources chosen by name in a scenario: real-trace replay and synthetic generators.

    src = WORKLOADS.create("poisson", {"rate": 5, "duration_s": 600,
                                       "lengths": {"name": "geometric",
                                                   "params": {"prompt_mean": 500, "output_mean": 100}}},
                           base_dir=scenario_dir)
    requests = src.requests(rng, model="llama-3-8b")

Every source returns requests sorted by arrival with ids ``0..n-1``. Synthetic sources split ``rng`` into one
stream for arrival times and one for lengths, so changing the length distribution in a sweep leaves the
arrival times unchanged (common random numbers) and vice versa.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from pydantic import Field, model_validator

from fleettwin.models.base import PolicyRef, StrictModel
from fleettwin.models.errors import FleettwinError
from fleettwin.models.registry import Registry
from fleettwin.models.workload.arrival_specs import (
    BurstArrivals,
    DiurnalArrivals,
    GammaArrivals,
    MMPPArrivals,
    PoissonArrivals,
    Window,
)
from fleettwin.models.workload.arrivals import ArrivalProcess
from fleettwin.models.workload.lengths import LengthDist
from fleettwin.models.workload.request import Request
from fleettwin.models.workload.traces import TraceFormat, load_trace, resolve_path


class WorkloadSource(Protocol):
    def requests(self, rng: np.random.Generator, *, model: str | None = None) -> list[Request]: ...


WORKLOADS: Registry[WorkloadSource] = Registry("workload source")


@WORKLOADS.register("trace")
class TraceSource:
    """Replay a window of a real trace (see ``load_trace``); deterministic, so ``rng`` is not used."""

    class Params(StrictModel):
        path: str = Field(min_length=1)
        format: TraceFormat
        start_s: float = Field(default=0.0, ge=0, allow_inf_nan=False)
        duration_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
        speedup: float = Field(default=1.0, gt=0, allow_inf_nan=False)
        max_requests: int | None = Field(default=None, ge=1)
        tenant: str = "default"

    def __init__(self, params: Params, *, base_dir: Path | None = None):
        self.params = params
        self.path = resolve_path(params.path, base_dir)  # fail at load time, not at the first run

    def requests(self, rng: np.random.Generator, *, model: str | None = None) -> list[Request]:
        p = self.params
        return load_trace(
            self.path,
            p.format,
            start_s=p.start_s,
            duration_s=p.duration_s,
            speedup=p.speedup,
            max_requests=p.max_requests,
            model=model,
            tenant=p.tenant,
        )


class _SyntheticParams(Window):
    lengths: LengthDist
    tenant: str = "default"


class _Synthetic:
    """An arrival process plus a length distribution: a source's parameters are an arrival process's
    (``arrival_specs.py``) and these, and the process is built from them (``rate_series`` builds its own)."""

    def __init__(self, params: Any, *, base_dir: Path | None = None):
        self.params = params
        self.lengths = params.lengths.with_base_dir(base_dir)
        self.arrivals = self._arrivals(params)

    def _arrivals(self, params: Any) -> ArrivalProcess:
        return params.process()

    def requests(self, rng: np.random.Generator, *, model: str | None = None) -> list[Request]:
        arrival_rng, length_rng = rng.spawn(2)
        times = self.arrivals.times(arrival_rng).tolist()
        prompt, output = self.lengths.sample(length_rng, len(times))
        prompt, output = prompt.tolist(), output.tolist()
        tenant = self.params.tenant
        return [
            Request(
                id=i,
                arrival_s=t,
                prompt_tokens=prompt[i],
                output_tokens=output[i],
                model=model,
                tenant=tenant,
            )
            for i, t in enumerate(times)
        ]


@WORKLOADS.register("poisson")
class PoissonSource(_Synthetic):
    """Poisson arrivals at ``rate`` per second."""

    class Params(PoissonArrivals, _SyntheticParams):
        pass


@WORKLOADS.register("gamma")
class GammaSource(_Synthetic):
    """Renewal arrivals with Gamma gaps: ``cv`` 1 is Poisson, above 1 bursty."""

    class Params(GammaArrivals, _SyntheticParams):
        pass


@WORKLOADS.register("mmpp")
class MMPPSource(_Synthetic):
    """Markov-modulated Poisson arrivals (see ``arrivals.MMPP``): bursts and lulls of exponential length."""

    class Params(MMPPArrivals, _SyntheticParams):
        pass


@WORKLOADS.register("diurnal")
class DiurnalSource(_Synthetic):
    """Poisson arrivals whose rate follows a daily sinusoid (see ``arrivals.Diurnal``)."""

    class Params(DiurnalArrivals, _SyntheticParams):
        pass


@WORKLOADS.register("burst")
class BurstSource(_Synthetic):
    """Poisson arrivals at ``rate`` with one burst ``factor`` times as fast for ``burst_s`` seconds from
    ``burst_start_s`` (a noisy neighbour)."""

    class Params(BurstArrivals, _SyntheticParams):
        pass


class Component(PolicyRef):
    """A mixture's component: a workload source of this registry by name (checked by the mixture, which
    also refuses a mixture inside a mixture); ``registry`` lets the old-form walk reach its parameters."""

    registry: ClassVar[Registry[Any]] = WORKLOADS


@WORKLOADS.register("mixture")
class MixtureSource:
    """Several sources at once, e.g. one per tenant: ``components`` are ``{name, params}`` choices of this
    registry (a ``tenant`` among each one's parameters).

    Component ``k`` draws from the ``k``-th child stream of ``rng``, so appending a component leaves the
    others' requests unchanged. The requests are merged by arrival (ties keep the components' order) and
    numbered ``0..n-1``."""

    class Params(StrictModel):
        components: list[Component] = Field(min_length=1)

        @model_validator(mode="after")
        def _known_components(self) -> MixtureSource.Params:
            for i, c in enumerate(self.components):
                if c.name == "mixture":
                    raise ValueError(f"components[{i}]: a mixture cannot contain a mixture")
                try:
                    WORKLOADS.validate_params(c.name, c.params)
                except FleettwinError as exc:
                    raise ValueError(f"components[{i}]: {exc}") from None
            return self

    def __init__(self, params: Params, *, base_dir: Path | None = None):
        self.params = params
        self.components = [WORKLOADS.create(c.name, c.params, base_dir=base_dir) for c in params.components]

    def requests(self, rng: np.random.Generator, *, model: str | None = None) -> list[Request]:
        streams = rng.spawn(len(self.components))
        merged = [
            r for src, g in zip(self.components, streams, strict=True) for r in src.requests(g, model=model)
        ]
        merged.sort(key=lambda r: r.arrival_s)
        return [dataclasses.replace(r, id=i) for i, r in enumerate(merged)]


def summarize(requests: list[Request]) -> dict[str, float]:
    """Headline numbers of a request list for the CLI: count, span (first to last arrival), rate
    (count / span, as the trace SOURCE.md files compute it) and token mean/p50/p99 (linear interpolation)."""
    n = len(requests)
    out: dict[str, float] = {"count": n}
    if n == 0:
        nan = float("nan")
        return (
            out
            | {"span_s": 0.0, "rate_per_s": nan}
            | {f"{k}_{s}": nan for k in ("prompt", "output") for s in ("mean", "p50", "p99")}
        )
    arrivals = np.fromiter((r.arrival_s for r in requests), dtype=float, count=n)
    span = float(arrivals.max() - arrivals.min())
    out["span_s"] = span
    out["rate_per_s"] = n / span if span > 0 else float("nan")
    for key, attr in (("prompt", "prompt_tokens"), ("output", "output_tokens")):
        x = np.fromiter((getattr(r, attr) for r in requests), dtype=float, count=n)
        p50, p99 = np.percentile(x, [50, 99])
        out |= {f"{key}_mean": float(x.mean()), f"{key}_p50": float(p50), f"{key}_p99": float(p99)}
    return out


# registers "rate_series"
from fleettwin.models.workload import rate_series as _rate_series  # noqa: E402, F401
