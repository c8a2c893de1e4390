"""What breaks, when, and what a request does about it: failure specs and the policies that answer them.

Pure data and arithmetic (no SimPy, no I/O), so the simulator's injectors (``sim/failures/injectors.py``) and
a live chaos harness can share them. A failure is a kind (replica failure, straggler, coherence degradation,
region outage, network partition, RTT spike) plus a ``Timing``: at fixed times, or at random by rate (MTBF,
MTTR) from a generator the caller seeds per injector. Policies are chosen by name from registries:

- ``TRUNCATION_POLICIES``: a prompt (with its retrieved context) that does not fit the pool's window is
  truncated to its last tokens, compressed at a latency cost, or re-routed to a pool with a longer window;
- ``COHERENCE_POLICIES``: an answer flagged bad is retried on another replica or sent to a larger model's
  pool.

Each returns a frozen record (``Admission``, ``Reissue``); the simulator carries it out.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, Field, PositiveInt, SerializeAsAny, field_validator, model_validator

from fleettwin.models.base import PolicyRef, StrictModel
from fleettwin.models.errors import FleettwinError
from fleettwin.models.registry import Registry, legacy_key_form

# -- when ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Episode:
    start_s: float
    duration_s: float

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


class Timing(StrictModel):
    """When a failure starts and how long it lasts: at the times in ``at_s``, or at random with mean time
    between failures ``mtbf_s`` (per target: a pool of n replicas fails n times as often) inside
    ``[start_s, end_s)``. Each episode lasts ``mttr_s`` (repair or replacement time, outage length, slowdown
    period), fixed or exponentially distributed."""

    at_s: tuple[Annotated[float, Field(ge=0, allow_inf_nan=False)], ...] = ()
    mtbf_s: float | None = Field(None, gt=0, allow_inf_nan=False)
    mttr_s: float = Field(0.0, ge=0)  # inf: the episode lasts to the end of the run
    repair: Literal["fixed", "exponential"] = "fixed"
    start_s: float = Field(0.0, ge=0, allow_inf_nan=False)
    end_s: float = Field(math.inf, gt=0)

    @model_validator(mode="after")
    def _one_way(self) -> Timing:
        if bool(self.at_s) == (self.mtbf_s is not None):
            raise ValueError("give either at_s (scheduled failures) or mtbf_s (failures by rate), not both")
        if self.end_s <= self.start_s:
            raise ValueError(f"end_s ({self.end_s}) must be after start_s ({self.start_s})")
        return self

    def duration(self, rng: np.random.Generator) -> float:
        if self.repair == "fixed" or self.mttr_s in (0.0, math.inf):
            return self.mttr_s
        return float(rng.exponential(self.mttr_s))

    def gap(self, rng: np.random.Generator, targets: int = 1) -> float:
        """Time to the next failure among ``targets`` independent ones (exponential, rate targets / MTBF)."""
        return float(rng.exponential(self.mtbf_s / max(targets, 1)))

    def episodes(self, rng: np.random.Generator, *, renewal: bool = True) -> Iterator[Episode]:
        """The episodes of one target in start order. By rate with ``renewal`` the next up-time starts when
        the previous repair ends (an alternating renewal process); otherwise starts form a Poisson stream."""
        if self.mtbf_s is None:
            for t in sorted(self.at_s):
                yield Episode(t, self.duration(rng))
            return
        t = self.start_s
        while True:
            t += self.gap(rng)
            if t >= self.end_s:
                return
            ep = Episode(t, self.duration(rng))
            yield ep
            if renewal:
                t = ep.end_s


# -- policies --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Admission:
    """What happens to a request too long for its pool's window (``max_model_len``)."""

    action: Literal["admit", "reroute", "drop"]
    prompt_tokens: int
    delay_s: float = 0.0  # spent before the request reaches a replica (e.g. compressing the prompt)
    pool: str | None = None  # the target of a re-route
    note: str = ""  # why it was dropped, or what was done ("truncated 9000->8000")


class TruncationPolicy(ABC):
    registry_name: ClassVar[str] = "?"

    def __init__(self, params: BaseModel):
        self.params: Any = params

    @abstractmethod
    def admit(
        self, prompt_tokens: int, output_tokens: int, window: int, others: Sequence[tuple[str, int]] = ()
    ) -> Admission:
        """Decide for a request of ``prompt_tokens`` (retrieved context included) that must leave room for
        ``output_tokens`` in a window of ``window`` tokens; ``others`` are (pool, window) of the other pools
        serving the same model or a longer-context one, for re-routing."""


TRUNCATION_POLICIES: Registry[TruncationPolicy] = Registry("truncation policy")


def fits(prompt_tokens: int, output_tokens: int, window: int) -> bool:
    return prompt_tokens + output_tokens <= window


@TRUNCATION_POLICIES.register("truncate")
class Truncate(TruncationPolicy):
    """Keep the last ``window - output_tokens`` prompt tokens (the question sits at the end of a RAG prompt;
    vLLM's ``truncate_prompt_tokens`` keeps the tail too). Dropped when the output alone fills the window."""

    def admit(self, prompt_tokens, output_tokens, window, others=()) -> Admission:
        if fits(prompt_tokens, output_tokens, window):
            return Admission("admit", prompt_tokens)
        keep = window - output_tokens
        if keep < 1:
            return Admission(
                "drop",
                prompt_tokens,
                note=f"output {output_tokens} tokens alone fills the window of {window}",
            )
        return Admission("admit", keep, note=f"truncated {prompt_tokens}->{keep}")


@TRUNCATION_POLICIES.register("compress")
class Compress(TruncationPolicy):
    """Compress the prompt to ``ceil(ratio x prompt)`` tokens (a summariser or LLMLingua-style pruner) before
    admission, paying ``fixed_s + s_per_1k_tokens x prompt / 1000`` of latency; dropped if it still does not
    fit."""

    class Params(StrictModel):
        ratio: float = Field(0.5, gt=0, lt=1)
        fixed_s: float = Field(0.05, ge=0, allow_inf_nan=False)
        s_per_1k_tokens: float = Field(0.01, ge=0, allow_inf_nan=False)

    def admit(self, prompt_tokens, output_tokens, window, others=()) -> Admission:
        if fits(prompt_tokens, output_tokens, window):
            return Admission("admit", prompt_tokens)
        p = self.params
        new = math.ceil(prompt_tokens * p.ratio)
        delay = p.fixed_s + p.s_per_1k_tokens * prompt_tokens / 1000.0
        if not fits(new, output_tokens, window):
            return Admission(
                "drop",
                new,
                delay,
                note=f"compressed prompt {new} + output {output_tokens} tokens "
                f"still exceeds the window of {window}",
            )
        return Admission("admit", new, delay, note=f"compressed {prompt_tokens}->{new}")


@TRUNCATION_POLICIES.register("reroute")
class Reroute(TruncationPolicy):
    """Send the request whole to another pool whose window holds it: the first of ``pools`` that fits, or
    (``pools`` empty) the fitting pool with the smallest window. Dropped when none fits."""

    class Params(StrictModel):
        pools: tuple[str, ...] = ()

    def admit(self, prompt_tokens, output_tokens, window, others=()) -> Admission:
        if fits(prompt_tokens, output_tokens, window):
            return Admission("admit", prompt_tokens)
        wanted = self.params.pools
        if wanted:
            windows = dict(others)
            candidates = [(name, windows[name]) for name in wanted if name in windows]
        else:
            candidates = sorted(others, key=lambda o: (o[1], o[0]))
        for name, w in candidates:
            if fits(prompt_tokens, output_tokens, w):
                return Admission("reroute", prompt_tokens, pool=name, note=f"rerouted to {name}")
        need = prompt_tokens + output_tokens
        return Admission("drop", prompt_tokens, note=f"no pool has a window of {need} tokens")


@dataclass(frozen=True, slots=True)
class Reissue:
    """Send a request again: to ``pool`` (a fallback), or to another replica of the same pool (None)."""

    pool: str | None = None


class CoherencePolicy(ABC):
    """Decides what a request whose answer was flagged incoherent does next."""

    registry_name: ClassVar[str] = "?"

    def __init__(self, params: BaseModel):
        self.params: Any = params

    def reissue(self, attempts: int) -> Reissue | None:
        """After ``attempts`` answers (all flagged bad): the next attempt, or None to give up (failed)."""
        return self._target() if attempts < self.params.max_attempts else None

    @abstractmethod
    def _target(self) -> Reissue: ...


COHERENCE_POLICIES: Registry[CoherencePolicy] = Registry("coherence policy")


@COHERENCE_POLICIES.register("retry")
class RetryElsewhere(CoherencePolicy):
    """Retry on another replica of the same pool (the same one when it is the only one routable, or the pool
    has a central queue), up to ``max_attempts`` answers in all."""

    class Params(StrictModel):
        max_attempts: PositiveInt = 3

    def _target(self) -> Reissue:
        return Reissue(None)


@COHERENCE_POLICIES.register("fallback")
class Fallback(CoherencePolicy):
    """Send the request to ``pool`` (a larger model), up to ``max_attempts`` answers in all."""

    class Params(StrictModel):
        pool: str
        max_attempts: PositiveInt = 2

    def _target(self) -> Reissue:
        return Reissue(self.params.pool)


# -- what breaks ------------------------------------------------------------------------------------------


FAILURE_INJECTORS: Registry[Any] = Registry("failure injector")
"""What can break, by name; each entry is its own parameter model (pool or region, timing, severity)."""


class _Spec(StrictModel):
    timing: Timing

    @property
    def kind(self) -> str:
        """The injector's registered name (``replica_failure``, ``straggler``, ...)."""
        return type(self).registry_name  # type: ignore[attr-defined]


@FAILURE_INJECTORS.register("replica_failure")
class ReplicaFailure(_Spec):
    """Replicas of ``pool`` die (GPU, NIC or host failure): the requests they hold are re-queued on the other
    replicas with their progress lost, and a replacement takes requests ``timing.mttr_s`` later."""

    pool: str
    count: PositiveInt = 1  # replicas failing together at each scheduled time (by rate: one per failure)
    max_retries: int = Field(3, ge=0)  # a request is re-queued at most this many times, then it fails


@FAILURE_INJECTORS.register("straggler")
class Straggler(_Spec):
    """A replica's iterations take ``factor`` times as long for ``timing.mttr_s`` (thermal throttling, a bad
    NVLink, a noisy neighbour)."""

    pool: str
    replica: int | None = Field(None, ge=0)  # None: one serving replica picked at random
    factor: float = Field(gt=0, allow_inf_nan=False)


@FAILURE_INJECTORS.register("coherence")
class Coherence(_Spec):
    """Answers from some replicas of ``pool`` are flagged bad with ``probability`` while an episode lasts (a
    corrupted shard, a bad adapter): the request is re-issued per ``policy``. Default: the whole run."""

    pool: str
    replicas: tuple[Annotated[int, Field(ge=0)], ...] = (0,)
    probability: float = Field(ge=0, le=1)
    policy: PolicyRef = PolicyRef(name="retry")
    timing: Timing = Timing(at_s=(0.0,), mttr_s=math.inf)

    @field_validator("policy")
    @classmethod
    def _known(cls, v: PolicyRef) -> PolicyRef:
        return v.check(COHERENCE_POLICIES)


@FAILURE_INJECTORS.register("region_outage")
class RegionOutage(_Spec):
    """Every pool of ``region`` is unreachable for ``timing.mttr_s``: arrivals go to other regions, requests
    in flight there are retried elsewhere."""

    region: str
    max_retries: int = Field(3, ge=0)


@FAILURE_INJECTORS.register("network_partition")
class NetworkPartition(_Spec):
    """Clients in ``region`` cannot reach the regions in ``unreachable`` (all others when empty)."""

    region: str
    unreachable: tuple[str, ...] = ()


@FAILURE_INJECTORS.register("rtt_spike")
class RttSpike(_Spec):
    """Round-trip times to and from ``region`` are multiplied by ``multiplier`` (a congested link)."""

    region: str
    multiplier: float = Field(gt=0, allow_inf_nan=False)


FailureSpec = ReplicaFailure | Straggler | Coherence | RegionOutage | NetworkPartition | RttSpike


class Injector(StrictModel):
    """One failure injector: ``{name: straggler, params: {pool: chat, factor: 3, timing: {...}}}``; ``params``
    is validated into the injector's own model (``FAILURE_INJECTORS``), which the simulator reads directly."""

    name: str
    params: SerializeAsAny[_Spec]

    @model_validator(mode="before")
    @classmethod
    def _typed_params(cls, data: Any) -> Any:
        if (
            isinstance(data, dict)
            and isinstance(data.get("name"), str)
            and not isinstance(data.get("params"), _Spec)
        ):
            try:
                params = FAILURE_INJECTORS.validate_params(data["name"], data.get("params"))
            except FleettwinError as exc:
                raise ValueError(str(exc)) from None
            data = {**data, "params": params}
        return data

    @classmethod
    def from_legacy(cls, raw: Any) -> dict[str, Any] | None:
        """``{kind: straggler, pool: chat, ...}`` (the kind beside its parameters)."""
        return legacy_key_form(raw, "kind")


REGION_KINDS = ("region_outage", "network_partition", "rtt_spike")
