"""The simulated control loop: observe the fleet as a ``FleetSnapshot``, ask an allocator, carry out its
decision.

The allocator is the same policy object the live shadow controller runs; this module is the simulator's side
of the seam. Every ``interval_s`` it builds the snapshot — inference pools (replicas by state,
running/waiting, KV use, the arrival-rate history, recent latency percentiles), job pools (own and borrowed
GPUs by state) and their jobs (progress, checkpoint, deadline) — calls ``decide``, checks the decision with
``conserve`` and hands it to the actuator (``sim/tiers/actuator.py``): preemptions, lends and reclaims, then
targets, with the delays of the real thing (GPU acquisition, weight load from storage, drain on scale-down,
checkpoint restore). The inventory is enforced by the fleet (``sim/tiers/fleet.py``), which never lets the
pools hold more GPUs than exist.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import simpy

from fleettwin.models.allocators.base import Allocator
from fleettwin.models.control.pool import ControlledPool
from fleettwin.models.decision import Decision, conserve
from fleettwin.models.snapshot import FleetSnapshot, InventoryItem, ServingStats
from fleettwin.sim.metrics import COMPLETED, RequestLog
from fleettwin.sim.pool import Pool
from fleettwin.sim.tiers.actuator import Actuator
from fleettwin.sim.tiers.fleet import Fleet


@dataclass
class Controller:
    allocator: Allocator
    pools: Sequence[ControlledPool]
    inventory: Sequence[InventoryItem]
    interval_s: float = 60.0
    history_buckets: int = 2016  # a week of 5-minute buckets at most
    fleet: Fleet | None = None  # the job pools and the inventory ledger; None: inference pools only
    prior_history: dict[str, list[float | None]] = field(default_factory=dict)
    """Arrival rates (req/s per ``interval_s`` bucket) before t = 0, per pool: with it, the first decision is
    taken at t = 0 (a live controller has its metrics history from before)."""
    decisions: list[Decision] = field(default_factory=list)
    held: list[tuple[float, str, str, int]] = field(default_factory=list)  # (time, pool, tier, GPUs paid for)
    actuator: Actuator | None = None
    _history: dict[str, list[float | None]] = field(default_factory=dict)
    _last_arrived: dict[str, int] = field(default_factory=dict)
    log: RequestLog | None = None
    forecast_fallbacks: dict[str, dict] = field(default_factory=dict)
    """Why a forecaster fell back to the last value: reason -> first time, decisions (reported once)."""

    def process(self, env: simpy.Environment, pools: list[Pool], log: RequestLog):
        """The SimPy process (pass ``controller.process`` to ``simulate(processes=...)``)."""
        self.log = log
        log.read_new(self)  # a reader from the start: a streaming log keeps rows until it has read them
        if self.fleet is None:
            self.fleet = Fleet(
                inference=self.pools, limits={(i.gpu, i.purchase, i.region): i.limit for i in self.inventory}
            )
        self.fleet.attach(env, pools)
        self.actuator = Actuator(self.fleet)
        for name, rates in self.prior_history.items():
            self._history[name] = list(rates)[-self.history_buckets :]
        if not self.prior_history:
            yield env.timeout(self.interval_s)
        while True:
            self.tick(env.now)
            yield env.timeout(self.interval_s)

    def tick(self, now: float) -> Decision:
        """One control step: observe, decide, check, act."""
        assert self.fleet is not None and self.actuator is not None
        self.fleet.reconcile()
        snapshot = self.snapshot(now)
        decision = self.allocator.decide(snapshot)
        conserve(snapshot, decision)  # a policy bug stops the run here, not as a silent over-allocation
        self.decisions.append(decision)
        note_fallbacks(self.forecast_fallbacks, decision)
        self.actuator.apply(decision)
        fleet = self.fleet  # GPUs paid for right after acting (draining and provisioning included)
        for meta in self.pools:
            self.held.append((now, meta.name, "inference", fleet.pools[meta.name].replicas_held * meta.tp))
        for jp in fleet.job_pools.values():
            self.held.append((now, jp.name, jp.tier, jp.held))
        return decision

    # -- observe ---------------------------------------------------------------------------------------

    def snapshot(self, now: float) -> FleetSnapshot:
        assert self.fleet is not None
        fleet = self.fleet
        recent = self._recent_latencies()
        states = []
        for meta in self.pools:
            pool = fleet.pools[meta.name]
            states.append(
                meta.state(
                    self._serving(meta, pool, now, recent),
                    active=len(pool.routable),
                    provisioning=len(pool.provisioning),
                    draining=len(pool.draining),
                    provisioning_gpus=fleet.pending(meta.name),
                )
            )
        jobs = []
        for jp in fleet.job_pools.values():
            states.append(jp.state(pending=fleet.pending(jp.name)))
            jobs.extend(jp.jobs_state(now))
        return FleetSnapshot(
            time_s=now,
            control_interval_s=self.interval_s,
            pools=tuple(states),
            inventory=tuple(self.inventory),
            jobs=tuple(jobs),
        )

    def _serving(self, meta: ControlledPool, pool: Pool, now: float, recent: dict) -> ServingStats:
        hist = self._history.setdefault(meta.name, [])
        arrived = pool.arrived - self._last_arrived.get(meta.name, 0)
        self._last_arrived[meta.name] = pool.arrived
        if now > 0:  # the decision at t = 0 (with a prior history) has no interval of its own to count
            hist.append(arrived / self.interval_s)
            del hist[: -self.history_buckets]
        n = pool.arrived
        # Nothing arrived yet (a decision at t = 0): the seam's default request mix, not 1-token requests.
        mix = (
            {
                "mean_prompt_tokens": max(1.0, pool.arrived_prompt_tokens / n),
                "mean_output_tokens": max(1.0, pool.arrived_output_tokens / n),
            }
            if n
            else {}
        )
        ttft, tpot = recent.get(meta.name, ((), ()))
        return ServingStats(
            running=pool.running,
            waiting=pool.waiting,
            kv_usage=min(
                1.0,
                float(np.mean([pool.replicas[i].kv_usage(now) for i in pool.routable]))
                if pool.routable
                else 0.0,
            ),
            arrival_rate_history=tuple(hist),
            history_bucket_s=self.interval_s,
            **mix,
            ttft_p50_s=_pct(ttft, 50),
            ttft_p95_s=_pct(ttft, 95),
            ttft_p99_s=_pct(ttft, 99),
            tpot_p50_s=_pct(tpot, 50),
            tpot_p95_s=_pct(tpot, 95),
            tpot_p99_s=_pct(tpot, 99),
            latency_window_s=self.interval_s,
        )

    def _recent_latencies(self) -> dict[str, tuple[list[float], list[float]]]:
        """TTFT and TPOT of the requests completed since the last tick, per pool."""
        assert self.log is not None
        rows = self.log.read_new(self)
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


def note_fallbacks(seen: dict[str, dict], decision: Decision) -> None:
    """Count the decision's forecast fallbacks by reason (numbers blanked, so "history of 12 buckets" and "of
    13 buckets" are one reason); print each reason once, to stderr, when it first happens."""
    from fleettwin.models.allocators.common import FALLBACK_NOTE

    for note in decision.notes:
        for part in note.split("; "):
            if FALLBACK_NOTE not in part:
                continue
            reason = part.split(FALLBACK_NOTE, 1)[1]
            key = re.sub(r"\d+(\.\d+)?", "N", reason)
            entry = seen.setdefault(key, {"first_s": decision.time_s, "first": reason, "decisions": 0})
            entry["decisions"] += 1
            if entry["decisions"] == 1:
                print(
                    f"note: at t={decision.time_s:g} s the {FALLBACK_NOTE}{reason} (said once; every "
                    "occurrence is counted in summary.json controller.forecast_fallbacks)",
                    file=sys.stderr,
                )


def _pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None
