"""Scenario fields for the training and operational tiers: job pools and the job streams that feed them.

A job pool holds GPUs of one type and runs jobs on them; a stream submits jobs of one shape to one pool at
given times. Training jobs are elastic and have no deadline (their goal is throughput); operational jobs
(batch inference, evaluation, embedding) must finish by a deadline counted from their submission::

    jobs:
      pools:
        - {name: train, tier: training, gpu: h100-80g, gpus: 16}
        - {name: ops, tier: operational, gpu: h100-80g}
      streams:
        - {name: pretrain, pool: train, at_s: [0], count: 2, min_gpus: 8, max_gpus: 16, work_gpu_h: 10000,
           scaling: 0.9, checkpoint_s: 1800, restore_s: 300}
        - {name: eval, pool: ops, every_s: 7200, until_s: 86400, min_gpus: 1, max_gpus: 4, work_gpu_h: 6,
           deadline_h: 3}

Work is GPU-hours at the job's reference size (``min_gpus``, where scaling is linear); with ``g`` GPUs a job
progresses at ``min_gpus * (g / min_gpus) ** scaling`` GPU-seconds per second (``sim/tiers/jobs.py``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    model_validator,
)

from fleettwin.models.base import StrictModel


class JobPoolConfig(StrictModel):
    name: str = Field(min_length=1)
    tier: Literal["training", "operational"]
    gpu: str
    purchase: Literal["on_demand", "spot"] = "on_demand"
    gpus: int = Field(0, ge=0)
    """GPUs held at the start (an allocator resizes the pool when the scenario has a controller)."""


class JobStreamConfig(StrictModel):
    """Jobs of one shape submitted to ``pool`` at ``at_s`` and then every ``every_s`` until ``until_s``."""

    name: str = Field(min_length=1)
    pool: str
    at_s: list[NonNegativeFloat] = Field(default_factory=list)
    every_s: PositiveFloat | None = None
    start_s: NonNegativeFloat = 0.0
    """First submission of the ``every_s`` series."""
    until_s: PositiveFloat | None = None
    """No submission of the ``every_s`` series at or after this time (required with ``every_s``)."""
    count: PositiveInt = 1
    """Jobs submitted at each time."""
    jitter_s: NonNegativeFloat = 0.0
    """Each submission is delayed by a uniform draw in ``[0, jitter_s)`` (seeded)."""
    min_gpus: PositiveInt = 1
    max_gpus: PositiveInt = 1
    work_gpu_h: PositiveFloat | tuple[PositiveFloat, PositiveFloat]
    """GPU-hours at the reference size; ``[low, high]`` draws each job's work uniformly (seeded)."""
    deadline_h: PositiveFloat | None = None
    """Hours after submission by which an operational job must finish."""
    checkpoint_s: PositiveFloat = 1800.0
    """Compute time between checkpoints; a preemption loses the progress since the last one."""
    restore_s: NonNegativeFloat = 120.0
    """Time to load the checkpoint (or inputs) whenever the job (re)starts; GPUs are held, nothing
    computes."""
    scaling: float = Field(1.0, gt=0, le=1)
    """Scaling-efficiency exponent above ``min_gpus`` (1: linear)."""
    priority: int = 0

    @model_validator(mode="after")
    def _shape(self) -> JobStreamConfig:
        if self.max_gpus < self.min_gpus:
            raise ValueError(f"stream {self.name}: max_gpus ({self.max_gpus}) < min_gpus ({self.min_gpus})")
        if not self.at_s and self.every_s is None:
            raise ValueError(f"stream {self.name}: give submission times (at_s) or a period (every_s)")
        if self.every_s is not None and self.until_s is None:
            raise ValueError(f"stream {self.name}: every_s needs until_s (when the series stops)")
        if isinstance(self.work_gpu_h, tuple) and self.work_gpu_h[0] > self.work_gpu_h[1]:
            raise ValueError(f"stream {self.name}: work_gpu_h range {list(self.work_gpu_h)} is reversed")
        return self

    def times(self) -> list[float]:
        """Submission times before jitter, sorted."""
        out = list(self.at_s)
        if self.every_s is not None and self.until_s is not None:
            n = 0
            while self.start_s + n * self.every_s < self.until_s - 1e-9:
                out.append(self.start_s + n * self.every_s)
                n += 1
        return sorted(out)


class JobsConfig(StrictModel):
    pools: list[JobPoolConfig] = Field(min_length=1)
    streams: list[JobStreamConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _links(self) -> JobsConfig:
        tiers = {p.name: p.tier for p in self.pools}
        if len(tiers) != len(self.pools):
            raise ValueError("jobs.pools: pool names must be unique")
        names = [s.name for s in self.streams]
        if len(set(names)) != len(names):
            raise ValueError("jobs.streams: stream names must be unique (they prefix the job ids)")
        for i, s in enumerate(self.streams):
            if s.pool not in tiers:
                raise ValueError(f"jobs.streams[{i}].pool: no job pool {s.pool!r}; pools: {', '.join(tiers)}")
            if tiers[s.pool] == "operational" and s.deadline_h is None:
                raise ValueError(f"jobs.streams[{i}].deadline_h: operational jobs need a deadline")
            if tiers[s.pool] == "training" and s.deadline_h is not None:
                raise ValueError(
                    f"jobs.streams[{i}].deadline_h: training jobs have a throughput goal, not a "
                    "deadline (put deadline work in an operational pool)"
                )
        return self

    def check(self, inference_pools: list[str], catalog) -> None:
        """Cross-checks against the rest of the scenario (names shared with inference pools, catalog GPUs)."""
        from fleettwin.models.errors import FleettwinError

        for i, p in enumerate(self.pools):
            if p.name in inference_pools:
                raise ValueError(f"jobs.pools[{i}].name: {p.name!r} is also an inference pool")
            try:
                catalog.gpu(p.gpu)
            except FleettwinError as exc:
                raise ValueError(f"jobs.pools[{i}].gpu: {exc}") from None
