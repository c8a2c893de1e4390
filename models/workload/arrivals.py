"""Arrival processes over ``[0, duration_s)``: each ``times(rng)`` returns sorted arrival times in seconds.

All are vectorised with numpy (no per-arrival Python loop), so a million arrivals take well under a second,
and all are stationary from t = 0 where that has a meaning (the gamma renewal process and the MMPP start in
equilibrium), so the expected count over any window is ``mean_rate * window``.

Parameters are checked here with ``ValueError`` (a programming error); user input reaches these classes
through the pydantic ``Params`` of ``fleettwin.models.workload.sources``, which report ``ConfigError``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class ArrivalProcess(Protocol):
    duration_s: float

    @property
    def mean_rate(self) -> float:
        """Long-run arrivals per second."""
        ...

    def times(self, rng: np.random.Generator) -> np.ndarray:
        """Sorted arrival times in ``[0, duration_s)``, float seconds."""
        ...


def _check_duration(duration_s: float) -> None:
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"duration_s must be a finite number > 0, got {duration_s}")


def _check_rate(name: str, rate: float) -> None:
    if not (math.isfinite(rate) and rate >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {rate}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Poisson:
    """Homogeneous Poisson process: exponential inter-arrivals with mean ``1 / rate``."""

    rate: float
    duration_s: float

    def __post_init__(self) -> None:
        _check_rate("rate", self.rate)
        _check_duration(self.duration_s)

    @property
    def mean_rate(self) -> float:
        return self.rate

    def times(self, rng: np.random.Generator) -> np.ndarray:
        # Given the count, Poisson arrivals are iid uniform over the interval: one draw, one sort.
        n = rng.poisson(self.rate * self.duration_s)
        return np.sort(rng.uniform(0.0, self.duration_s, n))


@dataclass(frozen=True, slots=True, kw_only=True)
class Gamma:
    """Renewal process with Gamma inter-arrivals of mean ``1 / rate`` and coefficient of variation ``cv``.

    ``cv = 1`` is Poisson, ``cv > 1`` bursty (clustered arrivals with long gaps), ``cv < 1`` smoother than
    Poisson. The first arrival is drawn from the equilibrium (forward-recurrence) distribution, so the process
    is stationary from t = 0 instead of starting with an arrival-free stretch.
    """

    rate: float
    cv: float
    duration_s: float

    def __post_init__(self) -> None:
        _check_rate("rate", self.rate)
        if not (math.isfinite(self.cv) and self.cv > 0):
            raise ValueError(f"cv must be a finite number > 0, got {self.cv}")
        _check_duration(self.duration_s)

    @property
    def mean_rate(self) -> float:
        return self.rate

    def times(self, rng: np.random.Generator) -> np.ndarray:
        if self.rate == 0:
            return np.empty(0)
        shape = 1.0 / self.cv**2
        scale = self.cv**2 / self.rate  # = 1 / (rate * shape), without underflowing to 1/0 for tiny rates
        # Equilibrium start: the interval covering t = 0 is length-biased, Gamma(shape + 1), and t = 0 falls
        # uniformly inside it.
        first = rng.uniform() * rng.gamma(shape + 1.0, scale)
        expected = self.rate * self.duration_s
        chunks = [np.array([first])]
        last = first
        while last < self.duration_s:
            n = int(expected + 6.0 * self.cv * math.sqrt(expected) + 16)
            gaps = rng.gamma(shape, scale, n)
            chunk = last + np.cumsum(gaps)
            chunks.append(chunk)
            last = chunk[-1]
        t = np.concatenate(chunks)
        return t[: np.searchsorted(t, self.duration_s, side="left")]


@dataclass(frozen=True, slots=True, kw_only=True)
class MMPP:
    """Markov-modulated Poisson process: a hidden continuous-time Markov chain picks the current rate.

    State ``i`` arrives at ``rates[i]`` per second and lasts an exponential sojourn of mean
    ``mean_sojourn_s`` (one number for all states, or one per state). When a sojourn ends the chain jumps to
    one of the *other* states chosen uniformly (not cyclically: uniform switching makes every state reachable
    in one step, and for two states the two rules coincide). The embedded jump chain is then uniform, so the
    chain spends a fraction ``pi_i = s_i / sum(s)`` of the time in state ``i`` and the long-run rate is
    ``sum(rates[i] * s_i) / sum(s)``. The initial state is drawn from ``pi`` and, sojourns being memoryless,
    the process is stationary from t = 0.
    """

    rates: tuple[float, ...]
    mean_sojourn_s: float | tuple[float, ...]
    duration_s: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "rates", tuple(float(r) for r in self.rates))
        if not self.rates:
            raise ValueError("rates must list at least one state")
        for i, r in enumerate(self.rates):
            _check_rate(f"rates[{i}]", r)
        if not isinstance(self.mean_sojourn_s, int | float):
            object.__setattr__(self, "mean_sojourn_s", tuple(float(s) for s in self.mean_sojourn_s))
            if len(self.mean_sojourn_s) != len(self.rates):
                raise ValueError(
                    f"mean_sojourn_s has {len(self.mean_sojourn_s)} entries but rates has {len(self.rates)}"
                )
        if not all(math.isfinite(s) and s > 0 for s in self._sojourns()):
            raise ValueError(f"mean_sojourn_s must be finite and > 0, got {self.mean_sojourn_s}")
        _check_duration(self.duration_s)

    def _sojourns(self) -> np.ndarray:
        s = self.mean_sojourn_s
        return (
            np.full(len(self.rates), float(s)) if isinstance(s, int | float) else np.asarray(s, dtype=float)
        )

    @property
    def stationary(self) -> np.ndarray:
        """Long-run fraction of time spent in each state."""
        s = self._sojourns()
        return s / s.sum()

    @property
    def mean_rate(self) -> float:
        return float(np.dot(self.stationary, self.rates))

    def times(self, rng: np.random.Generator) -> np.ndarray:
        states, starts, lengths = self._segments(rng)
        rates = np.asarray(self.rates)[states]
        counts = rng.poisson(rates * lengths)
        # Within a segment the rate is constant, so its arrivals are uniform over it.
        offsets = rng.uniform(size=counts.sum()) * np.repeat(lengths, counts)
        return np.sort(np.repeat(starts, counts) + offsets)

    def _segments(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """States visited and the [start, start + length) piece of [0, duration_s) each occupies."""
        k = len(self.rates)
        sojourns = self._sojourns()
        state = int(rng.choice(k, p=self.stationary))
        if k == 1:
            return np.array([0]), np.array([0.0]), np.array([self.duration_s])
        all_states, all_ends = [], []
        t = 0.0
        n = int(self.duration_s / sojourns.min() * 1.2) + 16
        while t < self.duration_s:
            # Jump to another state uniformly: add 1..k-1 modulo k, cumulated along the chunk.
            steps = rng.integers(1, k, size=n)
            chunk_states = (state + np.concatenate(([0], np.cumsum(steps[:-1])))) % k
            ends = t + np.cumsum(rng.exponential(sojourns[chunk_states]))
            all_states.append(chunk_states)
            all_ends.append(ends)
            state = int((chunk_states[-1] + steps[-1]) % k)
            t = float(ends[-1])
        states = np.concatenate(all_states)
        ends = np.concatenate(all_ends)
        used = int(np.searchsorted(ends, self.duration_s, side="left")) + 1
        states, ends = states[:used], np.minimum(ends[:used], self.duration_s)
        starts = np.concatenate(([0.0], ends[:-1]))
        return states, starts, ends - starts


@dataclass(frozen=True, slots=True, kw_only=True)
class Diurnal:
    """Non-homogeneous Poisson process with a sinusoidal daily rate, generated by thinning.

    ``rate(t) = mean_rate * (1 + a * cos(2 pi (t - peak_at_s) / period_s))`` with ``a = (peak_to_trough - 1) /
    (peak_to_trough + 1)``, so the peak is ``peak_to_trough`` times the trough and the average over a whole
    period is ``mean_rate``. The default peak at 14:00 assumes t = 0 is midnight, matching the afternoon peak
    of interactive traffic.
    """

    mean_rate: float
    peak_to_trough: float
    duration_s: float
    period_s: float = 86400.0
    peak_at_s: float = 14 * 3600.0

    def __post_init__(self) -> None:
        _check_rate("mean_rate", self.mean_rate)
        if not (math.isfinite(self.peak_to_trough) and self.peak_to_trough >= 1):
            raise ValueError(f"peak_to_trough must be a finite number >= 1, got {self.peak_to_trough}")
        if not (math.isfinite(self.period_s) and self.period_s > 0):
            raise ValueError(f"period_s must be a finite number > 0, got {self.period_s}")
        if not math.isfinite(self.peak_at_s):
            raise ValueError(f"peak_at_s must be finite, got {self.peak_at_s}")
        _check_duration(self.duration_s)

    @property
    def amplitude(self) -> float:
        return (self.peak_to_trough - 1.0) / (self.peak_to_trough + 1.0)

    def rate_at(self, t: np.ndarray | float) -> np.ndarray | float:
        """Instantaneous rate at time(s) ``t``."""
        phase = 2.0 * np.pi * (np.asarray(t) - self.peak_at_s) / self.period_s
        return self.mean_rate * (1.0 + self.amplitude * np.cos(phase))

    @property
    def mean_rate_over_duration(self) -> float:
        """Exact average rate over ``[0, duration_s)``, which differs from ``mean_rate`` for partial
        periods."""
        w = 2.0 * np.pi / self.period_s
        integral = (np.sin(w * (self.duration_s - self.peak_at_s)) - np.sin(w * -self.peak_at_s)) / w
        return float(self.mean_rate * (1.0 + self.amplitude * integral / self.duration_s))

    def times(self, rng: np.random.Generator) -> np.ndarray:
        peak = self.mean_rate * (1.0 + self.amplitude)
        candidates = Poisson(rate=peak, duration_s=self.duration_s).times(rng)
        if peak == 0:
            return candidates
        keep = rng.uniform(size=len(candidates)) * peak < self.rate_at(candidates)
        return candidates[keep]


@dataclass(frozen=True, slots=True, kw_only=True)
class Burst:
    """Poisson arrivals at ``rate``, ``factor`` times that during ``[start_s, start_s + length_s)``: the
    superposition of the base process and one of rate ``(factor - 1) * rate`` over the window."""

    rate: float
    factor: float
    start_s: float
    length_s: float
    duration_s: float

    def _window(self) -> float:
        return max(0.0, min(self.start_s + self.length_s, self.duration_s) - self.start_s)

    @property
    def mean_rate(self) -> float:
        return self.rate * (1.0 + (self.factor - 1.0) * self._window() / self.duration_s)

    def times(self, rng: np.random.Generator) -> np.ndarray:
        base = Poisson(rate=self.rate, duration_s=self.duration_s).times(rng)
        window = self._window()
        if window <= 0 or self.factor == 1.0:
            return base
        extra = Poisson(rate=(self.factor - 1.0) * self.rate, duration_s=window).times(rng) + self.start_s
        return np.sort(np.concatenate([base, extra]))
