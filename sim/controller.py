"""The simulated control loop: observe the pools as a ``FleetSnapshot``, ask an allocator, apply its decision.

The allocator is the same policy object the live shadow controller runs; this module is the simulator's side of
the seam. Every ``interval_s`` it builds the snapshot (replicas by state, running/waiting, KV use, the arrival
rate history, recent latency percentiles), calls ``decide``, checks the decision with ``conserve`` and turns each
inference target into ``Pool.scale_up`` (GPUs arrive after the provisioning delay) or ``Pool.scale_down``
(drain). Training and operational tiers are not simulated yet, so lends and preemptions are logged, not applied.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import simpy

from fleettwin.models.allocators.base import Allocator
from fleettwin.models.snapshot import (
    Decision,
    FleetSnapshot,
    GpuGroup,
    InventoryItem,
    PoolState,
    ServingStats,
    Slo,
    conserve,
)
from fleettwin.sim.metrics import COMPLETED, RequestLog
from fleettwin.sim.pool import Pool


@dataclass(frozen=True)
class ControlledPool:
    """What the controller knows about a pool beyond its live state."""

    name: str
    gpu: str
    model: str
    tp: int
    purchase: str
    slo: Slo
    provisioning_delay_s: float

    def state(self, serving: ServingStats, *, active: int, provisioning: int = 0, draining: int = 0) -> PoolState:
        """The pool as a snapshot shows it, from its replicas by state (the live controller builds it here too)."""
        groups = [GpuGroup(gpu=self.gpu, purchase=self.purchase, state=state, count=count * self.tp)
                  for state, count in (("active", active), ("provisioning", provisioning), ("draining", draining))
                  if count]  # fmt: skip
        return PoolState(name=self.name, tier="inference", gpu=self.gpu, purchase=self.purchase, model=self.model,
                         tp=self.tp, gpus=tuple(groups), serving=serving, slo=self.slo)  # fmt: skip


@dataclass
class Controller:
    allocator: Allocator
    pools: Sequence[ControlledPool]
    inventory: Sequence[InventoryItem]
    interval_s: float = 60.0
    history_buckets: int = 2016  # a week of 5-minute buckets at most
    decisions: list[Decision] = field(default_factory=list)
    _history: dict[str, list[float]] = field(default_factory=dict)
    _last_arrived: dict[str, int] = field(default_factory=dict)
    _log_pos: int = 0
    log: RequestLog | None = None

    def process(self, env: simpy.Environment, pools: list[Pool], log: RequestLog):
        """The SimPy process (pass ``controller.process`` to ``simulate(processes=...)``)."""
        self.log = log
        by_name = {p.name: p for p in pools}
        while True:
            yield env.timeout(self.interval_s)
            snapshot = self.snapshot(env.now, by_name)
            decision = self.allocator.decide(snapshot)
            conserve(snapshot, decision)  # a policy bug stops the run here, not as a silent over-allocation
            self.decisions.append(decision)
            self.apply(decision, by_name)

    # -- observe ---------------------------------------------------------------------------------------

    def snapshot(self, now: float, pools: dict[str, Pool]) -> FleetSnapshot:
        recent = self._recent_latencies()
        states = []
        for meta in self.pools:
            pool = pools[meta.name]
            hist = self._history.setdefault(meta.name, [])
            arrived = pool.arrived - self._last_arrived.get(meta.name, 0)
            self._last_arrived[meta.name] = pool.arrived
            hist.append(arrived / self.interval_s)
            del hist[: -self.history_buckets]
            n = max(pool.arrived, 1)
            ttft, tpot = recent.get(meta.name, ((), ()))
            serving = ServingStats(
                running=pool.running,
                waiting=pool.waiting,
                kv_usage=min(1.0, float(np.mean([pool.replicas[i].kv_usage(now) for i in pool.routable]))
                             if pool.routable else 0.0),  # fmt: skip
                arrival_rate_history=tuple(hist),
                history_bucket_s=self.interval_s,
                mean_prompt_tokens=max(1.0, pool.arrived_prompt_tokens / n),
                mean_output_tokens=max(1.0, pool.arrived_output_tokens / n),
                ttft_p50_s=_pct(ttft, 50), ttft_p95_s=_pct(ttft, 95), ttft_p99_s=_pct(ttft, 99),
                tpot_p50_s=_pct(tpot, 50), tpot_p95_s=_pct(tpot, 95), tpot_p99_s=_pct(tpot, 99),
                latency_window_s=self.interval_s,
            )  # fmt: skip
            states.append(meta.state(serving, active=len(pool.routable), provisioning=len(pool.provisioning),
                                     draining=len(pool.draining)))  # fmt: skip
        return FleetSnapshot(time_s=now, control_interval_s=self.interval_s, pools=tuple(states),
                             inventory=tuple(self.inventory))  # fmt: skip

    def _recent_latencies(self) -> dict[str, tuple[list[float], list[float]]]:
        """TTFT and TPOT of the requests completed since the last tick, per pool."""
        rows = self.log.rows[self._log_pos :]
        self._log_pos = len(self.log.rows)
        out: dict[str, tuple[list[float], list[float]]] = {}
        for row in rows:
            # RequestLog columns: id, pool, replica, arrival, first_scheduled, first_token, finish, prompt,
            # output, preemptions, status, reason
            if row[10] != COMPLETED:
                continue
            ttft, tpot = out.setdefault(row[1], ([], []))
            ttft.append(row[5] - row[3])
            if row[8] > 1:
                tpot.append((row[6] - row[5]) / (row[8] - 1))
        return out

    # -- act -------------------------------------------------------------------------------------------

    def apply(self, decision: Decision, pools: dict[str, Pool]) -> None:
        metas = {m.name: m for m in self.pools}
        for target in decision.targets:
            meta = metas.get(target.pool)
            if meta is None or (target.gpu, target.purchase) != (meta.gpu, meta.purchase):
                continue  # a pool of one GPU type for now: other types are logged in the decision only
            pool = pools[target.pool]
            want = target.gpus // meta.tp
            have = len(pool.routable) + len(pool.provisioning)
            if want > have:
                pool.scale_up(want - have, meta.provisioning_delay_s)
            elif want < have:
                pool.scale_down(have - want)


def _pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def provisioning_delay_s(weight_bytes: float, tp: int, *, acquire_s: float, storage_gbps: float) -> float:
    """GPU acquisition plus loading one shard of the weights at the storage bandwidth (GB/s per GPU)."""
    return acquire_s + weight_bytes / tp / (storage_gbps * 1e9) if storage_gbps > 0 else math.inf
