"""``milp``: the cheapest mix of GPU types and purchase options that meets every tier's demand.

One mixed-integer program per decision (``scipy.optimize.milp``, HiGHS). Integer variables: replicas
``y[p, g, u]`` of each inference pool on GPU type ``g`` bought as ``u`` (``tp_g`` GPUs each), and GPUs
``x[j, g, u]`` of each job pool. Minimise

    sum price[g, u] * GPUs  -  training_value_usd_h * training GPUs  +  shortfall_penalty_usd_h * shortfall

subject to, per inference pool, ``sum cap[p, g] * y + short_p >= demand_p * (1 + headroom)`` (``cap`` the
replica's requests/s at the pool's SLO and request mix from ``models/capacity.py``; ``demand`` the current
rate plus backlog, or the forecast peak when ``forecast`` is set); per job pool ``required <= sum x + short``
and ``sum x <= desired`` (the elastic range: jobs at minimum size and deadlines met, up to every job at
``max_gpus``; with ``keep_busy``, the lower bound is at least the GPUs running jobs use, so a job the pool's
scheduler widened onto idle GPUs is not preempted just to save one interval's cost); per (g, u, region) the
inventory limit; per pool, spot GPUs at most ``max_spot_share`` of its GPUs. Shortfall variables keep the
program feasible when the inventory cannot meet demand; the decision's notes report them. It is myopic (one
interval, no switching cost) and may change a pool's GPU type, so the actuator must run replicas of several
types in one pool, or ``gpu_types`` must pin one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field

from fleettwin.models.allocators.base import ALLOCATORS
from fleettwin.models.allocators.common import (
    ForecastingAllocator,
    ForecastSettings,
    Plan,
    forecast_peak,
    job_demand,
    pool_capacity,
    preempt_to_fit,
    rate_now,
)
from fleettwin.models.base import StrictModel
from fleettwin.models.capacity import CapacityParams
from fleettwin.models.decision import Decision
from fleettwin.models.snapshot import FleetSnapshot, GpuKey, PoolState, Tier


@dataclass(frozen=True, slots=True)
class _Var:
    pool: PoolState
    key: GpuKey
    gpus_per_unit: int  # tp for inference replicas, 1 for job GPUs
    capacity: float  # requests/s per unit (inference), 0 for jobs


@ALLOCATORS.register("milp")
class MilpAllocator(ForecastingAllocator):
    class Params(StrictModel):
        headroom: float = Field(default=0.2, ge=0)
        forecast: ForecastSettings | None = None
        """None: size inference for the current rate; else for the forecast peak to the horizon."""
        gpu_types: list[str] | None = None
        """Types inference pools may use (None: every inventory type the model fits and meets the SLO on)."""
        job_gpu_types: list[str] | None = None
        """Types job pools may use, counted one for one (None: each pool's configured type only)."""
        max_spot_share: dict[Tier, float] = Field(
            default_factory=lambda: {"inference": 0.5, "training": 1.0, "operational": 1.0}
        )
        training_value_usd_h: float = Field(default=0.0, ge=0)
        """Worth of one training GPU-hour above the jobs' minimum; 0: training gets its minimum only."""
        keep_busy: bool = True
        """Job pools keep the GPUs their running jobs use (a preemption throws work away and one interval's
        saving rarely pays for it); False: only the required GPUs (myopic), preempting the rest."""
        shortfall_penalty_usd_h: float = Field(default=1e4, gt=0)
        """Cost of one GPU (or one replica's req/s) of unmet demand; far above any price."""
        time_limit_s: float = Field(default=10.0, gt=0)
        capacity: CapacityParams = CapacityParams()

    def decide(self, snapshot: FleetSnapshot) -> Decision:
        plan = Plan(snapshot, self.registry_name)
        solution = self.solve(snapshot, plan)
        for var, units in solution.items():
            plan.grant(var.pool, units * var.gpus_per_unit, var.key)
        for pool in snapshot.pools:
            if pool.tier != "inference":
                preempt_to_fit(plan, pool, sum(plan.targets[pool.name].values()), "milp: cheaper mix")
        return plan.decision()

    # ---- the program -----------------------------------------------------------------------------------
    def variables(self, snapshot: FleetSnapshot, plan: Plan) -> list[_Var]:
        out = []
        for pool in snapshot.pools:
            for item in snapshot.inventory:
                if item.region != pool.region or item.limit == 0:
                    continue
                key = (item.gpu, item.purchase)
                if pool.tier == "inference":
                    if self.params.gpu_types is not None and item.gpu not in self.params.gpu_types:
                        continue
                    cap = pool_capacity(self.capacity, pool, item.gpu)
                    if cap.requests_per_s > 0:
                        out.append(_Var(pool, key, cap.gpus, cap.requests_per_s))
                    else:
                        plan.note(f"{pool.name}: {item.gpu} excluded ({cap.limit})")
                elif item.gpu in (self.params.job_gpu_types or [pool.gpu]):
                    out.append(_Var(pool, key, 1, 0.0))
        return out

    def demand(self, snapshot: FleetSnapshot, pool: PoolState, plan: Plan) -> tuple[float, float]:
        """(lower, upper) bound: req/s with headroom for inference, GPUs for job pools."""
        if pool.tier == "inference":
            rate = rate_now(snapshot, pool)
            if self.params.forecast is not None:
                peak, note = forecast_peak(self.params.forecast, snapshot, pool, self.forecasts)
                plan.note(note)
                rate = max(rate, peak)
            return rate * (1 + self.params.headroom), np.inf
        d = job_demand(snapshot, pool)
        low = max(d.required, d.used) if self.params.keep_busy else d.required
        return float(low), float(max(d.desired, low))

    def solve(self, snapshot: FleetSnapshot, plan: Plan) -> dict[_Var, int]:
        """Optimal units per variable (replicas or GPUs), and notes on shortfall, into ``plan``."""
        p = self.params
        vars_ = self.variables(snapshot, plan)
        pools = list(snapshot.pools)
        n, m = len(vars_), len(pools)  # columns: units per variable, then one shortfall per pool
        if m == 0:
            return {}
        cost = np.zeros(n + m)
        upper = np.zeros(n + m)
        for i, v in enumerate(vars_):
            cost[i] = v.gpus_per_unit * snapshot.price(v.key, v.pool.region)
            if v.pool.tier == "training":
                cost[i] -= p.training_value_usd_h
            upper[i] = snapshot.limit(v.key, v.pool.region) // v.gpus_per_unit
        rows, lo, hi = [], [], []
        for k, pool in enumerate(pools):
            low, high = self.demand(snapshot, pool, plan)
            cols = [i for i, v in enumerate(vars_) if v.pool is pool]
            unit = np.zeros(n + m)
            for i in cols:
                unit[i] = vars_[i].capacity if pool.tier == "inference" else 1.0
            unit[n + k] = 1.0
            rows.append(unit)
            lo.append(low)
            hi.append(np.inf)
            cost[n + k] = p.shortfall_penalty_usd_h * (
                1.0 / _mean_cap(vars_, cols) if pool.tier == "inference" else 1.0
            )
            upper[n + k] = max(low, 0.0)
            if np.isfinite(high):
                gpus = np.zeros(n + m)
                gpus[cols] = 1.0
                rows.append(gpus)
                lo.append(-np.inf)
                hi.append(high)
            share = p.max_spot_share.get(pool.tier, 1.0)
            if share < 1.0 and cols:
                spot = np.zeros(n + m)
                for i in cols:
                    g = vars_[i].gpus_per_unit
                    spot[i] = g * (1 - share) if vars_[i].key[1] == "spot" else -g * share
                rows.append(spot)
                lo.append(-np.inf)
                hi.append(0.0)
        for key, region in {(v.key, v.pool.region) for v in vars_}:
            row = np.zeros(n + m)
            for i, v in enumerate(vars_):
                if v.key == key and v.pool.region == region:
                    row[i] = v.gpus_per_unit
            rows.append(row)
            lo.append(-np.inf)
            hi.append(snapshot.limit(key, region))
        # scipy.optimize costs about 0.6 s to import: loading a scenario (which checks allocator names against
        # the registry) should not pay it unless this allocator decides
        from scipy.optimize import Bounds, LinearConstraint, milp

        res = milp(
            cost,
            constraints=LinearConstraint(np.array(rows), lo, hi),
            integrality=np.r_[np.ones(n), np.zeros(m)],
            bounds=Bounds(np.zeros(n + m), upper),
            options={"time_limit": p.time_limit_s},
        )
        if res.x is None:
            plan.note(f"milp: no solution ({res.message}); keeping the current allocation")
            return {v: v.pool.held(v.key) // v.gpus_per_unit for v in vars_}
        for k, pool in enumerate(pools):
            if res.x[n + k] > 1e-6:
                plan.note(
                    f"{pool.name}: demand short by {res.x[n + k]:.3g} "
                    f"{'req/s' if pool.tier == 'inference' else 'GPUs'} (inventory)"
                )
        return {v: int(round(res.x[i])) for i, v in enumerate(vars_)}


def _mean_cap(vars_: list[_Var], cols: list[int]) -> float:
    """Requests/s per GPU of the pool's usable types, to price unmet req/s like missing GPUs."""
    caps = [vars_[i].capacity / vars_[i].gpus_per_unit for i in cols]
    return float(np.mean(caps)) if caps else 1.0
