"""Small builders shared by the simulator tests: request lists (tenants too) and a cheap, exactly-known perf
model."""

from __future__ import annotations

import numpy as np

from fleettwin.models.engine.queue import EngineLimits
from fleettwin.models.engine.resolve import PoolSpec
from fleettwin.models.perf.base import BatchStats, PerformanceModel
from fleettwin.models.tenancy.quotas import Tenancy
from fleettwin.models.workload.request import Request
from fleettwin.sim.runner import RawRun, simulate


class LinearPerf(PerformanceModel):
    """Step time linear in every batch aggregate, so event skipping has a context-dependent decode cost."""

    registry_name = "linear-test"

    def __init__(self, base=0.005, per_prefill=2e-5, per_decode=1e-4, per_ctx=2e-8):
        self.base, self.per_prefill, self.per_decode, self.per_ctx = base, per_prefill, per_decode, per_ctx

    def step_time(self, b: BatchStats) -> float:
        return (
            self.base
            + self.per_prefill * b.prefill_tokens
            + self.per_decode * b.decode_seqs
            + self.per_ctx * (b.decode_ctx_tokens + b.prefill_ctx_tokens)
        )

    def decode_times(self, num_seqs: int, ctx_tokens: int, steps: int) -> np.ndarray:
        ctx = ctx_tokens + num_seqs * np.arange(steps)
        return self.base + self.per_decode * num_seqs + self.per_ctx * ctx


def queued_by(policy: str, tenancy: Tenancy, **sizes: int) -> EngineLimits:
    """Engine limits of the given sizes whose waiting queue orders ``tenancy``'s tenants by ``policy``."""
    return EngineLimits(waiting_policy=policy, tenancy=tenancy, **sizes)


def poisson_requests(seed: int, n: int, rate: float, prompt=(1, 2000), output=(1, 400)) -> list[Request]:
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, n))
    prompts = rng.integers(prompt[0], prompt[1] + 1, n)
    outputs = rng.integers(output[0], output[1] + 1, n)
    return [
        Request(
            id=i, arrival_s=float(arrivals[i]), prompt_tokens=int(prompts[i]), output_tokens=int(outputs[i])
        )
        for i in range(n)
    ]


def with_tenants(reqs: list[Request], tenants) -> list[Request]:
    """``reqs`` again (id, arrival and lengths only), the i-th one sent by ``tenants[i]``."""
    return [
        Request(
            id=r.id,
            arrival_s=r.arrival_s,
            prompt_tokens=r.prompt_tokens,
            output_tokens=r.output_tokens,
            tenant=t,
        )
        for r, t in zip(reqs, tenants, strict=True)
    ]


def run_pool(
    requests,
    limits: EngineLimits,
    *,
    replicas=1,
    perf=None,
    mode="skip",
    router="least_outstanding",
    central_queue=False,
    **kw,
) -> RawRun:
    spec = PoolSpec(
        "pool", limits, perf or LinearPerf(), replicas=replicas, router=router, central_queue=central_queue
    )
    return simulate(requests, [spec], mode=mode, **kw)


def assert_matches_oracle(skip: RawRun, oracle: RawRun) -> None:
    """Event skipping (``skip``) and the per-iteration oracle on the same inputs: the same outcome, replica
    and preemptions for every request, the same times up to float rounding, and the same number of engine
    steps."""
    ra, rb = skip.requests, oracle.requests
    assert list(ra["status"]) == list(rb["status"])
    assert list(ra["replica"]) == list(rb["replica"])
    assert list(ra["preemptions"]) == list(rb["preemptions"])
    for col in ("first_scheduled_s", "first_token_s", "finish_s"):
        np.testing.assert_allclose(ra[col], rb[col], rtol=1e-9, atol=1e-9, equal_nan=True)
    steps = [sum(r.scheduler.steps for r in run.pools[0].replicas) for run in (skip, oracle)]
    assert steps[0] == steps[1]
