"""Allocators on hand-made snapshots (hand-computed answers), the MILP against brute force, capacity in
closed form, and conservation of GPUs by every allocator on random snapshots."""

from __future__ import annotations

import dataclasses
import itertools
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from fleettwin.models.allocators import ALLOCATORS, Allocator
from fleettwin.models.capacity import CapacityModel, ReplicaCapacity, replica_capacity
from fleettwin.models.decision import Decision, Lend, conserve
from fleettwin.models.errors import ConfigError
from fleettwin.models.perf import PERF_MODELS
from fleettwin.models.snapshot import (
    FleetSnapshot,
    GpuGroup,
    InventoryItem,
    Job,
    PoolState,
    ServingStats,
    Slo,
)
from tests.models.test_snapshot import fleet_snapshots
from tests.snapshotkit import operational_job, running_training_job

ROOT = Path(__file__).resolve().parents[2]
H100, A100 = "h100-80g", "a100-80g"


class FixedCapacity:
    """A capacity model with given requests/s per replica, so sizing can be computed by hand."""

    def __init__(self, rps: dict[str, float], tp: dict[str, int] | None = None):
        self.rps, self._tp = rps, tp or {}

    def tp(self, gpu: str, llm: str, tp: int | None = None) -> int:
        return tp or self._tp.get(gpu, 1)

    def replica(self, gpu: str, llm: str, *, tp: int | None = None, **_) -> ReplicaCapacity:
        rps = self.rps.get(gpu, 0.0)
        return ReplicaCapacity(
            requests_per_s=rps,
            tokens_per_s=rps * 1200,
            output_tokens_per_s=rps * 200,
            batch_size=1,
            step_time_s=0.01,
            ttft_s=0.01,
            limit="test",
            gpus=self.tp(gpu, llm, tp),
        )


def chat_pool(
    active: int,
    *,
    provisioning: int = 0,
    running: int = 0,
    waiting: int = 0,
    history: tuple[float | None, ...] = (),
    gpu: str = H100,
) -> PoolState:
    groups = [GpuGroup(gpu=gpu, count=active)]
    if provisioning:
        groups.append(GpuGroup(gpu=gpu, state="provisioning", count=provisioning))
    return PoolState(
        name="chat",
        tier="inference",
        gpu=gpu,
        model="llama-3-8b",
        gpus=tuple(groups),
        serving=ServingStats(running=running, waiting=waiting, arrival_rate_history=history),
    )


def snapshot(
    *pools: PoolState,
    t: float = 0.0,
    jobs=(),
    limit: int = 100,
    interval: float = 300.0,
    delay: float = 600.0,
    extra=(),
) -> FleetSnapshot:
    inv = (InventoryItem(gpu=H100, limit=limit, price_usd_h=2.69, provisioning_delay_s=delay), *extra)
    return FleetSnapshot(time_s=t, control_interval_s=interval, pools=pools, inventory=inv, jobs=tuple(jobs))


def decide(alloc: Allocator, snap: FleetSnapshot) -> Decision:
    d = alloc.decide(snap)
    conserve(snap, d)
    return d


# ------------------------------------------------------------------------------------------ registry


def test_every_policy_is_registered_and_typos_name_the_field():
    assert ALLOCATORS.names() == ["forecast", "milp", "reactive", "static", "unified"]
    with pytest.raises(ConfigError, match="tolerence"):
        ALLOCATORS.create("reactive", {"tolerence": 0.2})
    with pytest.raises(ConfigError, match=r"scale_down\.policies\.0\.type"):
        ALLOCATORS.create(
            "reactive",
            {
                "scale_down": {
                    "stabilization_window_s": 60,
                    "policies": [{"type": "pod", "value": 1, "period_s": 15}],
                }
            },
        )
    with pytest.raises(ConfigError, match="unknown forecaster 'prophet'"):
        ALLOCATORS.create("forecast", {"forecast": {"forecaster": {"name": "prophet"}}})
    with pytest.raises(ConfigError, match="sum to at most 1"):
        ALLOCATORS.create("static", {"shares": {"inference": 0.8, "training": 0.5}})


@pytest.mark.parametrize(
    "path", sorted((ROOT / "configs" / "allocators").glob("*.yaml")), ids=lambda p: p.stem
)
def test_example_parameter_sets_validate(path):
    data = yaml.safe_load(path.read_text())
    ALLOCATORS.create(data["name"], data.get("params", {}))


def test_docs_example_policy_registers_and_runs():
    text = (ROOT / "docs" / "allocation.md").read_text()
    section = text[text.index("## Write your own policy") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    class_lines = [line for line in code[code.index("@ALLOCATORS.register") :].splitlines() if line.strip()]
    assert len(class_lines) <= 15
    namespace: dict = {}
    exec(compile(code, "docs/allocation.md", "exec"), namespace)
    try:
        alloc = ALLOCATORS.create(
            "keep_half_idle", {"idle_fraction": 0.5}, capacity=FixedCapacity({H100: 10.0})
        )
        snap = snapshot(chat_pool(4, history=(30.0,)), limit=8)
        d = decide(alloc, snap)
        assert d.gpus("chat") == 6  # ceil(30 / 10) = 3 replicas busy, as many again idle
    finally:
        ALLOCATORS._classes.pop("keep_half_idle", None)


# ------------------------------------------------------------------------------------------ capacity


def constant_perf(step_s=0.01, per_decode_seq_s=1e-4):
    return PERF_MODELS.create("constant", {"step_s": step_s, "per_decode_seq_s": per_decode_seq_s})


@pytest.mark.parametrize(
    "kw, batch, limit",
    [
        (dict(slo=Slo(ttft_s=2, tpot_s=0.05)), 256, "max_num_seqs"),  # tau(256) = 0.0356 <= 0.05
        (dict(slo=Slo(ttft_s=2, tpot_s=0.02)), 100, "tpot"),  # 0.01 + 1e-4 B <= 0.02
        (dict(slo=Slo(ttft_s=2, tpot_s=0.05), kv_tokens=10_000), 60, "kv_cache"),  # 150 B <= 9000
        (dict(slo=Slo(ttft_s=2, tpot_s=0.05), max_num_batched_tokens=128), 64, "token_budget"),  # 2 B <= 128
        (dict(slo=Slo(ttft_s=0.01525, tpot_s=0.05)), 52, "ttft"),  # ceil(100 / (8192 - B)) tau <= 0.01525
    ],
)
def test_capacity_in_closed_form(kw, batch, limit):
    args = dict(prompt_tokens=100, output_tokens=100, kv_tokens=1e9, gpus=1) | kw
    cap = replica_capacity(constant_perf(), **args)
    tau = 0.01 + 1e-4 * batch
    assert (cap.batch_size, cap.limit) == (batch, limit)
    assert cap.step_time_s == pytest.approx(tau)
    assert cap.requests_per_s == pytest.approx(batch / (100 * tau))  # B / (O tau)
    assert cap.tokens_per_s == pytest.approx(cap.requests_per_s * 200)


def test_capacity_unfit_and_catalog_ordering():
    cap = replica_capacity(
        constant_perf(step_s=0.1),
        prompt_tokens=100,
        output_tokens=100,
        kv_tokens=1e9,
        gpus=1,
        slo=Slo(tpot_s=0.05),
    )
    assert cap.requests_per_s == 0 and cap.limit == "unfit (tpot at batch 1)"
    model = CapacityModel()
    h100 = model.replica(H100, "llama-3-8b", slo=Slo(tpot_s=0.1))
    a100 = model.replica(A100, "llama-3-8b", slo=Slo(tpot_s=0.1))
    assert h100.requests_per_s > a100.requests_per_s > 0
    assert model.replica(H100, "llama-3-70b").gpus == 2  # min_tensor_parallel
    assert model.replica("l4", "llama-3.1-405b").limit.startswith("unfit")


# ------------------------------------------------------------------------------------ reactive (HPA)


def hpa(**params) -> Allocator:
    base = {"metric": "concurrency", "target": 10.0}
    return ALLOCATORS.create("reactive", base | params, capacity=FixedCapacity({H100: 10.0}))


def replicas(alloc: Allocator, t: float, active: int, load: int, provisioning: int = 0) -> int:
    return decide(alloc, snapshot(chat_pool(active, provisioning=provisioning, running=load), t=t)).gpus(
        "chat"
    )


@pytest.mark.parametrize(
    "load, expected",
    [
        (60, 6),  # metric 15 per replica, ratio 1.5: ceil(1.5 x 4) = 6
        (43, 4),  # ratio 1.075, within the 0.1 tolerance: no change
        (45, 5),  # ratio 1.125: ceil(4.5) = 5
        (200, 8),  # ratio 5 -> 20, limited to max(+100 %, +4) = 8 in one 15 s period
    ],
)
def test_hpa_scale_up_arithmetic(load, expected):
    assert replicas(hpa(), 0.0, 4, load) == expected


def test_hpa_scale_down_waits_for_the_stabilisation_window():
    alloc = hpa()
    assert replicas(alloc, 0.0, 4, 60) == 6  # window now holds 4 (seeded) and 6
    for t in (60.0, 120.0, 180.0, 240.0):
        assert replicas(alloc, t, 6, 12) == 6  # raw ceil(0.2 x 6) = 2, but 6 was recommended < 300 s ago
    assert replicas(alloc, 300.0, 6, 12) == 2  # the t=0 entries leave the (0, 300] window


def test_hpa_scale_up_rate_policy_counts_the_period():
    alloc = hpa()
    assert replicas(alloc, 0.0, 2, 200) == 6  # ratio 10 -> 20; max(2 x 2, 2 + 4) = 6
    assert replicas(alloc, 10.0, 6, 600) == 6  # period start 6 - 4 = 2: limit still 6
    assert replicas(alloc, 20.0, 6, 600) == 12  # the t=0 event left the 15 s period: max(12, 10)


def test_hpa_unready_replicas_count_as_idle_when_scaling_up():
    # 2 ready with metric 15 (ratio 1.5) and 2 provisioning: 30 / (10 x 4) = 0.75 flips direction, no change
    assert replicas(hpa(), 0.0, 2, 30, provisioning=2) == 4
    # metric 30: 60 / 40 = 1.5 -> ceil(1.5 x 4) = 6
    assert replicas(hpa(), 0.0, 2, 60, provisioning=2) == 6


def test_hpa_scale_up_window_and_bounds():
    alloc = hpa(
        scale_up={"stabilization_window_s": 120, "policies": [{"type": "pods", "value": 100, "period_s": 15}]}
    )
    assert replicas(alloc, 0.0, 4, 40) == 4
    assert replicas(alloc, 60.0, 4, 80) == 4  # min over (-60, 60] is 4
    assert replicas(alloc, 130.0, 4, 80) == 8  # (10, 130]: only the 8 at t=60 and now
    assert replicas(hpa(min_replicas=2), 0.0, 0, 0) == 2  # a pool at zero starts at min_replicas
    assert replicas(hpa(max_replicas=3), 0.0, 5, 0) == 3  # above max: max, whatever the metric
    assert replicas(hpa(), 0.0, 0, 0, provisioning=2) == 2  # nothing ready: no metric, no change


def test_reactive_backfills_job_pools_and_preempts_when_inference_grows():
    train = PoolState(name="train", tier="training", gpu=H100, gpus=(GpuGroup(gpu=H100, count=6),))
    job = running_training_job(6, max_gpus=6, remaining_gpu_s=1e6, last_checkpoint_s=100.0, restore_s=20.0)
    snap = snapshot(chat_pool(4, running=60), train, t=400.0, jobs=[job], limit=10)
    d = decide(hpa(), snap)
    assert d.gpus("chat") == 6 and d.gpus("train") == 4
    (p,) = d.preemptions
    assert (p.job_id, p.gpus, p.lost_work_s, p.restore_s) == ("t1", 2, 300.0, 20.0)  # shrink, not stop


# ------------------------------------------------------------------------------------------ forecast


def forecast_alloc(**params) -> Allocator:
    base = {
        "forecast": {
            "forecaster": {"name": "seasonal_naive", "params": {"period": "1h"}},
            "quantile": "mean",
        },
        "headroom": 0.25,
        "min_replicas": 1,
    }
    return ALLOCATORS.create("forecast", base | params, capacity=FixedCapacity({H100: 10.0}))


# An hourly pattern in 5-minute buckets: 40 req/s in the 2nd and 3rd bucket of each hour, 10 otherwise.
HOURLY = tuple(40.0 if i % 12 in (1, 2) else 10.0 for i in range(24))


def train_pool(own: int, borrowed: int = 0) -> PoolState:
    groups = [GpuGroup(gpu=H100, count=own)]
    if borrowed:
        groups.append(GpuGroup(gpu=H100, count=borrowed, lent_from="chat"))
    return PoolState(name="train", tier="training", gpu=H100, gpus=tuple(groups))


def train_job(gpus: int) -> Job:
    return running_training_job(gpus, remaining_gpu_s=1e7, last_checkpoint_s=6600.0, restore_s=45.0)


def test_forecast_provisions_for_the_peak_ahead_and_lends_the_idle_reserve():
    # now 10 req/s: N = ceil(10 x 1.25 / 10) = 2; horizon 600 + 300 s = 3 buckets, whose peak is 40:
    # F = ceil(40 x 1.25 / 10) = 5. Chat owns 5 ready GPUs, 3 idle now: lent to training (max 8, holds 2).
    snap = snapshot(chat_pool(5, history=HOURLY), train_pool(2), t=7200.0, jobs=[train_job(2)])
    d = decide(forecast_alloc(), snap)
    assert d.target("chat") == {(H100, "on_demand"): 2}
    assert d.target("train") == {(H100, "on_demand"): 5}
    assert d.lends == (Lend(from_pool="chat", to_pool="train", gpu=H100, count=3, kind="lend"),)
    assert not d.preemptions


def test_forecast_orders_gpus_for_the_peak_it_does_not_own():
    snap = snapshot(chat_pool(2, history=HOURLY), t=7200.0)
    assert decide(forecast_alloc(), snap).gpus("chat") == 5
    assert (
        decide(
            forecast_alloc(lend=False),
            snapshot(chat_pool(5, history=HOURLY), train_pool(2), t=7200.0, jobs=[train_job(2)]),
        ).lends
        == ()
    )


def test_forecast_reclaims_lent_gpus_by_preemption_with_checkpoint_cost():
    # Load is back at 40 req/s: N = 5, chat has 2 at home and 3 lent to training, whose job runs on all 5.
    history = (*HOURLY[:-1], 40.0)
    snap = snapshot(chat_pool(2, history=history), train_pool(2, borrowed=3), t=7200.0, jobs=[train_job(5)])
    d = decide(forecast_alloc(), snap)
    assert d.lends == (Lend(from_pool="train", to_pool="chat", gpu=H100, count=3, kind="reclaim"),)
    assert d.gpus("chat") == 5 and d.gpus("train") == 2
    (p,) = d.preemptions
    assert (p.job_id, p.gpus, p.lost_work_s, p.restore_s) == ("t1", 3, 600.0, 45.0)  # shrink 5 -> 2
    assert p.cost_gpu_s == pytest.approx(645.0 * 5)


def test_forecast_meets_operational_deadlines_with_own_gpus():
    ops = PoolState(name="ops", tier="operational", gpu=H100)
    job = operational_job(1, 8, remaining_gpu_s=4 * 3600, deadline_s=7200.0 + 600 + 60 + 3600, restore_s=60.0)
    d = decide(forecast_alloc(lend=False), snapshot(chat_pool(5, history=HOURLY), ops, t=7200.0, jobs=[job]))
    assert d.gpus("ops") == 4  # 4 GPU-hours in the 3600 s left after the 600 s provisioning and 60 s restore
    # 3.5 GPU-hours: ceil(12600 / 3600) = 4 GPUs when they must be ordered; with 4 idle GPUs in the pool the
    # job starts at once, 600 s more slack: ceil(12600 / 4200) = 3
    smaller = dataclasses.replace(job, remaining_gpu_s=3.5 * 3600)
    d = decide(
        forecast_alloc(lend=False), snapshot(chat_pool(5, history=HOURLY), ops, t=7200.0, jobs=[smaller])
    )
    assert d.gpus("ops") == 4
    ready = PoolState(name="ops", tier="operational", gpu=H100, gpus=(GpuGroup(gpu=H100, count=4),))
    d = decide(
        forecast_alloc(lend=False), snapshot(chat_pool(5, history=HOURLY), ready, t=7200.0, jobs=[smaller])
    )
    assert d.gpus("ops") == 3


# ---------------------------------------------------------------------------------------------- milp


MILP_INVENTORY = (
    InventoryItem(gpu=H100, limit=4, price_usd_h=2.69),
    InventoryItem(gpu=H100, purchase="spot", limit=2, price_usd_h=1.49),
    InventoryItem(gpu=A100, limit=6, price_usd_h=2.50),
    InventoryItem(gpu=A100, purchase="spot", limit=3, price_usd_h=0.86),
)
CAPS = {H100: 10.0, A100: 6.0}


def milp_instance(rate: float, ops_gpus: int) -> FleetSnapshot:
    ops = PoolState(name="ops", tier="operational", gpu=A100)
    job = operational_job(ops_gpus, ops_gpus, remaining_gpu_s=1.0, deadline_s=1e6)
    return FleetSnapshot(
        time_s=0.0, pools=(chat_pool(0, history=(rate,)), ops), inventory=MILP_INVENTORY, jobs=(job,)
    )


def brute_force(snap: FleetSnapshot, rate: float, ops_gpus: int, spot_share: float) -> float:
    """Cheapest $/h over every integer assignment (chat replicas, ops GPUs) on the four (type, purchase)."""
    keys = [(i.gpu, i.purchase) for i in snap.inventory]
    limits = [i.limit for i in snap.inventory]
    prices = np.array([i.price_usd_h for i in snap.inventory])
    best = np.inf
    for chat in itertools.product(*(range(n + 1) for n in limits)):
        if sum(CAPS[k[0]] * n for k, n in zip(keys, chat, strict=True)) < rate:
            continue
        spot = sum(n for k, n in zip(keys, chat, strict=True) if k[1] == "spot")
        if spot > spot_share * sum(chat):
            continue
        for ops in itertools.product(*(range(n - c + 1) for n, c in zip(limits, chat, strict=True))):
            if sum(ops) == ops_gpus:
                best = min(best, float(prices @ (np.array(chat) + np.array(ops))))
    return best


@pytest.mark.parametrize("rate, ops_gpus, spot_share", [(25.0, 3, 0.5), (47.0, 4, 0.34), (12.0, 6, 0.0)])
def test_milp_optimum_equals_brute_force(rate, ops_gpus, spot_share):
    snap = milp_instance(rate, ops_gpus)
    alloc = ALLOCATORS.create(
        "milp",
        {"headroom": 0.0, "job_gpu_types": [H100, A100], "max_spot_share": {"inference": spot_share}},
        capacity=FixedCapacity(CAPS),
    )
    d = decide(alloc, snap)
    assert not [n for n in d.notes if "short" in n]
    assert d.cost_usd_h(snap) == pytest.approx(brute_force(snap, rate, ops_gpus, spot_share))
    served = sum(CAPS[t.gpu] * t.gpus for t in d.targets if t.pool == "chat")
    assert served >= rate and d.gpus("ops") == ops_gpus


def test_milp_reports_shortfall_instead_of_failing():
    snap = milp_instance(500.0, 2)
    d = decide(ALLOCATORS.create("milp", {}, capacity=FixedCapacity(CAPS)), snap)
    assert any("chat: demand short" in n for n in d.notes)


# -------------------------------------------------------------------------------------- conservation

CAPACITY = CapacityModel()  # shared so each example does not recompute capacities


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleet_snapshots())
def test_every_allocator_conserves_gpus(snap):
    for name in ALLOCATORS.names():
        alloc = ALLOCATORS.create(name, {}, capacity=CAPACITY)
        d = decide(alloc, snap)  # conserve() raises on any violation
        assert Decision.from_json(d.to_json()) == d
        later = FleetSnapshot.from_dict(snap.to_dict() | {"time_s": snap.time_s + snap.control_interval_s})
        decide(alloc, later)  # stateful policies (reactive windows, unified peaks) on a second call
