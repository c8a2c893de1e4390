"""``reactive``: the Kubernetes Horizontal Pod Autoscaler (autoscaling/v2), one per inference pool.

Followed line by line from ``pkg/controller/podautoscaler`` (``replica_calculator.go``, ``horizontal.go``):

1. With the pool's replicas ``current`` (ready + provisioning), outside ``[min_replicas, max_replicas]`` the
   target is the violated bound; at 0 it is raised to ``min_replicas`` (Kubernetes would leave a deployment
   scaled to zero alone; a fleet pool at zero is a cold start).
2. ``ratio = metric / target`` over ready replicas. Within ``tolerance`` (|1 - ratio| <= 0.1) nothing changes;
   otherwise ``desired = ceil(ratio * ready)``. When scaling up while replicas are still provisioning, those
   count with metric 0 (they will take load), and the change is cancelled if that flips its direction.
   No ready replica: no metric, no change.
3. Stabilisation: the recommendation is held between the minimum of recommendations over the last
   ``scale_up.stabilization_window_s`` (default 0) and the maximum over the last
   ``scale_down.stabilization_window_s`` (default 300 s), so a dip must last five minutes to scale down.
4. Rate policies: each period, scale up by at most the largest of +100 % and +4 replicas, and down by at most
   100 % (the defaults), counted from the replicas at the start of the period.

Metrics (per ready replica): ``concurrency`` (running + waiting), ``waiting``, ``arrival_rate`` (req/s) and
``kv_usage`` (0..1). Time is the snapshot's, so the same object runs simulated or live. Job pools backfill
what the inference pools leave of the inventory (operational first), preempting jobs when they shrink, as
Kubernetes priority classes would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field

from fleettwin.models.allocators.base import ALLOCATORS, Allocator
from fleettwin.models.allocators.common import Plan, backfill_jobs
from fleettwin.models.base import StrictModel
from fleettwin.models.decision import Decision
from fleettwin.models.snapshot import FleetSnapshot, PoolState


class ScalingPolicy(StrictModel):
    type: Literal["pods", "percent"]
    value: int = Field(gt=0)
    period_s: float = Field(gt=0, le=1800)


class ScalingRules(StrictModel):
    stabilization_window_s: float = Field(ge=0, le=3600)
    select_policy: Literal["max", "min", "disabled"] = "max"
    policies: list[ScalingPolicy] = Field(min_length=1)


DEFAULT_UP = ScalingRules(
    stabilization_window_s=0,
    policies=[
        ScalingPolicy(type="percent", value=100, period_s=15),
        ScalingPolicy(type="pods", value=4, period_s=15),
    ],
)
DEFAULT_DOWN = ScalingRules(
    stabilization_window_s=300, policies=[ScalingPolicy(type="percent", value=100, period_s=15)]
)


@dataclass
class HpaState:
    """What one HPA remembers: recent recommendations and scale events, both timestamped."""

    recommendations: list[tuple[float, int]] = field(default_factory=list)
    up_events: list[tuple[float, int]] = field(default_factory=list)
    down_events: list[tuple[float, int]] = field(default_factory=list)
    started: bool = False  # the scale-down window is seeded with the current size once, on the first call


@ALLOCATORS.register("reactive")
class ReactiveAllocator(Allocator):
    class Params(StrictModel):
        metric: Literal["concurrency", "waiting", "arrival_rate", "kv_usage"] = "concurrency"
        target: float = Field(default=32.0, gt=0)
        """Desired metric value per ready replica (kv_usage: a fraction, e.g. 0.7)."""
        tolerance: float = Field(default=0.1, ge=0)
        min_replicas: int = Field(default=1, ge=1)
        max_replicas: int | None = Field(default=None, ge=1)
        scale_up: ScalingRules = DEFAULT_UP
        scale_down: ScalingRules = DEFAULT_DOWN
        backfill_jobs: bool = True
        """Job pools take what inference leaves; False: they keep their current GPUs (within inventory)."""

    def __init__(self, params: Params | None = None, **deps):
        super().__init__(params, **deps)
        self.state_: dict[str, HpaState] = {}

    def decide(self, snapshot: FleetSnapshot) -> Decision:
        plan = Plan(snapshot, self.registry_name)
        for pool in snapshot.pools_of("inference"):
            tp = self.capacity.tp(pool.gpu, pool.model, pool.tp) or 1  # type: ignore[arg-type]
            replicas = self.replicas(pool, snapshot.time_s, tp)
            plan.grant(pool, replicas * tp, step=tp)
        if self.params.backfill_jobs:
            backfill_jobs(plan, reason="reactive: inference scaled up")
        else:
            for pool in snapshot.pools:
                if pool.tier != "inference":
                    plan.keep(pool)
        return plan.decision()

    # ---- the HPA ---------------------------------------------------------------------------------------
    def replicas(self, pool: PoolState, now: float, tp: int) -> int:
        """The HPA's new replica count for ``pool`` at ``now`` (records the scale event it implies)."""
        p = self.params
        state = self.state_.setdefault(pool.name, HpaState())
        ready = pool.held(pool.key, states=("active",), lent=False) // tp
        unready = pool.held(pool.key, states=("provisioning",), lent=False) // tp
        current = ready + unready
        top = p.max_replicas if p.max_replicas is not None else math.inf
        if current == 0:
            desired = p.min_replicas
        elif current > top:
            desired = int(top)
        elif current < p.min_replicas:
            desired = p.min_replicas
        else:
            metric = self._metric(pool, ready)
            if metric is None:
                return current
            if not state.started and p.scale_down.stabilization_window_s > 0:
                state.recommendations.append((now, current))
            state.started = True
            raw = self.metric_replicas(metric, ready=ready, unready=unready, current=current)
            desired = self._stabilize(state, now, current, raw)
            desired = self._rate_limit(state, now, current, desired)
        if desired > current:
            state.up_events.append((now, desired - current))
        elif desired < current:
            state.down_events.append((now, current - desired))
        self._forget(state, now)
        return desired

    def _metric(self, pool: PoolState, ready: int) -> float | None:
        s = pool.serving
        if ready == 0 or s is None:
            return None
        return {
            "concurrency": (s.running + s.waiting) / ready,
            "waiting": s.waiting / ready,
            "arrival_rate": s.current_rate / ready,
            "kv_usage": s.kv_usage,
        }[self.params.metric]

    def metric_replicas(self, metric: float, *, ready: int, unready: int, current: int) -> int:
        """``calcPlainMetricReplicas``: desired replicas from the mean metric over ready replicas."""
        tol = self.params.tolerance
        ratio = metric / self.params.target
        if not (unready > 0 and ratio > 1.0):
            if abs(1.0 - ratio) <= tol:
                return current
            return math.ceil(ratio * ready - 1e-9)
        new_ratio = metric * ready / (self.params.target * (ready + unready))  # unready replicas at 0
        if abs(1.0 - new_ratio) <= tol or new_ratio < 1.0:
            return current
        new = math.ceil(new_ratio * (ready + unready) - 1e-9)
        return current if new < current else new

    def _stabilize(self, state: HpaState, now: float, current: int, desired: int) -> int:
        """``stabilizeRecommendationWithBehaviors``."""
        up_cut = now - self.params.scale_up.stabilization_window_s
        down_cut = now - self.params.scale_down.stabilization_window_s
        up, down = desired, desired
        for t, rec in state.recommendations:
            if t > up_cut:
                up = min(up, rec)
            if t > down_cut:
                down = max(down, rec)
        state.recommendations.append((now, desired))
        return min(max(current, up), down)

    def _rate_limit(self, state: HpaState, now: float, current: int, desired: int) -> int:
        """``convertDesiredReplicasWithBehaviorRate``: rate policies, then min/max replicas."""
        p = self.params
        top = p.max_replicas if p.max_replicas is not None else math.inf
        if desired > current:
            limit = self._limit(p.scale_up, state, now, current, up=True)
            return int(min(desired, max(limit, current), top))
        if desired < current:
            limit = self._limit(p.scale_down, state, now, current, up=False)
            return max(desired, min(limit, current), p.min_replicas)
        return desired

    @staticmethod
    def _limit(rules: ScalingRules, state: HpaState, now: float, current: int, *, up: bool) -> int:
        if rules.select_policy == "disabled":
            return current
        proposals = []
        for pol in rules.policies:
            added = sum(n for t, n in state.up_events if t > now - pol.period_s)
            removed = sum(n for t, n in state.down_events if t > now - pol.period_s)
            start = current - added + removed
            if pol.type == "pods":
                proposals.append(start + pol.value if up else start - pol.value)
            elif up:
                proposals.append(math.ceil(start * (1 + pol.value / 100) - 1e-9))
            else:
                proposals.append(int(start * (1 - pol.value / 100) + 1e-9))
        most_change = (max if up else min)(proposals)
        least_change = (min if up else max)(proposals)
        return most_change if rules.select_policy == "max" else least_change

    def _forget(self, state: HpaState, now: float) -> None:
        keep = max(self.params.scale_up.stabilization_window_s, self.params.scale_down.stabilization_window_s)
        state.recommendations = [(t, r) for t, r in state.recommendations if t > now - keep - 1e-9]
        horizon = max(
            pol.period_s for rules in (self.params.scale_up, self.params.scale_down) for pol in rules.policies
        )
        state.up_events = [(t, n) for t, n in state.up_events if t > now - horizon]
        state.down_events = [(t, n) for t, n in state.down_events if t > now - horizon]
