"""The policy seam's records: validation, JSON round-trip, and the conservation check on decisions."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleettwin.models.decision import Decision, Lend, Preemption, Target, conserve, planned
from fleettwin.models.snapshot import (
    FleetSnapshot,
    GpuGroup,
    InventoryItem,
    Job,
    PoolState,
    SeamError,
    ServingStats,
    Slo,
)
from tests.snapshotkit import running_training_job

H100, A100 = "h100-80g", "a100-80g"

# ------------------------------------------------------------------------------------ strategies


@st.composite
def fleet_snapshots(draw, max_pools: int = 4) -> FleetSnapshot:
    """Valid snapshots: holdings within inventory, running jobs within their pool's GPUs, loans from
    inference pools of the same region. Shared with ``test_allocators.py``."""
    now = draw(st.floats(0, 7 * 86400, allow_nan=False))
    regions = draw(st.sampled_from([("default",), ("default", "eu")]))
    gpus = [H100, A100, "l40s"]
    pools, jobs, held = [], [], {}
    n_inf = draw(st.integers(1, 2))
    tiers = ["inference"] * n_inf + draw(
        st.lists(st.sampled_from(["training", "operational"]), max_size=max_pools - n_inf)
    )
    for i, tier in enumerate(tiers):
        region = draw(st.sampled_from(regions))
        gpu = draw(st.sampled_from(gpus[:2]))  # few types, so that pools compete for inventory
        purchase = draw(st.sampled_from(["on_demand", "on_demand", "spot"]))
        groups = [
            GpuGroup(gpu=gpu, purchase=purchase, count=draw(st.integers(0, 6))),
            GpuGroup(gpu=gpu, purchase=purchase, state="provisioning", count=draw(st.integers(0, 2))),
        ]
        if draw(st.booleans()):
            groups.append(
                GpuGroup(gpu=gpu, purchase=purchase, state="draining", count=draw(st.integers(1, 2)))
            )
        name = f"{tier[:3]}{i}"
        serving = None
        if tier == "inference":
            history = draw(st.lists(st.one_of(st.none(), st.floats(0, 200, allow_nan=False)), max_size=24))
            serving = ServingStats(
                running=draw(st.integers(0, 400)),
                waiting=draw(st.integers(0, 200)),
                kv_usage=draw(st.floats(0, 1)),
                arrival_rate_history=tuple(history),
                mean_prompt_tokens=draw(st.sampled_from([200.0, 1000.0, 3000.0])),
                mean_output_tokens=draw(st.sampled_from([50.0, 200.0, 600.0])),
            )
        else:
            lenders = [p for p in pools if p.tier == "inference" and p.region == region]
            if lenders and draw(st.booleans()):
                lender = draw(st.sampled_from(lenders))
                groups.append(
                    GpuGroup(
                        gpu=lender.gpu,
                        purchase=lender.purchase,
                        count=draw(st.integers(1, 3)),
                        lent_from=lender.name,
                    )
                )
            active = sum(g.count for g in groups if g.state == "active")
            for k in range(draw(st.integers(0, 3))):
                lo = draw(st.integers(1, 3))
                hi = lo + draw(st.integers(0, 4))
                gpus_now = draw(st.integers(lo, hi))
                running = draw(st.booleans()) and gpus_now <= active
                active -= gpus_now if running else 0
                jobs.append(
                    Job(
                        id=f"{name}-j{k}",
                        pool=name,
                        tier=tier,
                        state="running" if running else "queued",
                        gpus=gpus_now if running else 0,
                        min_gpus=lo,
                        max_gpus=hi,
                        remaining_gpu_s=draw(st.floats(0, 1e6)),
                        started_s=now - 3600 if running else None,
                        last_checkpoint_s=now - draw(st.floats(0, 3000)) if running else None,
                        restore_s=draw(st.floats(0, 300)),
                        deadline_s=now + draw(st.floats(-600, 86400)) if tier == "operational" else None,
                    )
                )
        pool = PoolState(
            name=name,
            tier=tier,
            region=region,
            gpu=gpu,
            purchase=purchase,
            model=draw(st.sampled_from(["llama-3-8b", "mistral-7b", "llama-3-70b"]))
            if tier == "inference"
            else None,
            gpus=tuple(g for g in groups if g.count),
            serving=serving,
            slo=Slo(ttft_s=draw(st.sampled_from([1.0, 2.0])), tpot_s=draw(st.sampled_from([0.05, 0.1]))),
        )
        pools.append(pool)
        for g in pool.gpus:
            if g.state != "draining":
                held[(g.gpu, g.purchase, region)] = held.get((g.gpu, g.purchase, region), 0) + g.count
    inventory = []
    for gpu in gpus:
        for purchase in ("on_demand", "spot"):
            for region in regions:
                have = held.get((gpu, purchase, region), 0)
                if have or draw(st.booleans()):
                    inventory.append(
                        InventoryItem(
                            gpu=gpu,
                            purchase=purchase,
                            region=region,
                            limit=have + draw(st.integers(0, 12)),
                            price_usd_h=draw(st.floats(0.5, 6)),
                            provisioning_delay_s=draw(st.sampled_from([0, 300, 900])),
                        )
                    )
    snap = FleetSnapshot(
        time_s=now,
        control_interval_s=draw(st.sampled_from([60.0, 300.0])),
        pools=tuple(pools),
        inventory=tuple(inventory),
        jobs=tuple(jobs),
    )
    snap.check()
    return snap


def small_snapshot() -> FleetSnapshot:
    return FleetSnapshot(
        time_s=3600.0,
        pools=(
            PoolState(
                name="chat",
                tier="inference",
                gpu=H100,
                model="llama-3-8b",
                gpus=(GpuGroup(gpu=H100, count=4), GpuGroup(gpu=H100, state="provisioning", count=1)),
                serving=ServingStats(running=40, waiting=2, arrival_rate_history=(10.0, None, 12.0)),
            ),
            PoolState(
                name="train",
                tier="training",
                gpu=H100,
                gpus=(GpuGroup(gpu=H100, count=2), GpuGroup(gpu=H100, count=2, lent_from="chat")),
            ),
        ),
        inventory=(
            InventoryItem(gpu=H100, limit=10, price_usd_h=2.69, provisioning_delay_s=600),
            InventoryItem(gpu=A100, purchase="spot", limit=4, price_usd_h=0.86),
        ),
        jobs=(running_training_job(4, remaining_gpu_s=1e5, last_checkpoint_s=3000.0, restore_s=30.0),),
    )


def decision(*targets: tuple[str, str, int], lends=(), preemptions=(), purchase="on_demand") -> Decision:
    return Decision(
        time_s=3600.0,
        targets=tuple(Target(pool=p, gpu=g, purchase=purchase, gpus=n) for p, g, n in targets),
        lends=tuple(lends),
        preemptions=tuple(preemptions),
    )


# ------------------------------------------------------------------------------------------ records


def test_records_are_frozen_and_keyword_only():
    snap = small_snapshot()
    with pytest.raises(AttributeError):
        snap.time_s = 0.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        GpuGroup(H100, "on_demand", "active", 1)  # type: ignore[misc]


def test_lookups():
    snap = small_snapshot()
    chat, train = snap.pool("chat"), snap.pool("train")
    assert chat.held((H100, "on_demand")) == 5
    assert chat.held((H100, "on_demand"), states=("active",)) == 4
    assert train.held(lent=False) == 2 and train.held(lent=True) == 2
    assert snap.lent_out("chat") == 2 and snap.used_gpus("train") == 4
    assert chat.serving.current_rate == 12.0
    assert snap.limit((A100, "spot")) == 4 and snap.limit((A100, "on_demand")) == 0
    assert snap.jobs[0].lost_work_s(3600.0) == 600.0


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: GpuGroup(gpu=H100, count=-1), "count"),
        (lambda: Job(id="j", pool="p", tier="training", min_gpus=3, max_gpus=2), "min_gpus"),
        (lambda: Job(id="j", pool="p", tier="training", state="running", gpus=9, max_gpus=8), "outside"),
        (lambda: Job(id="j", pool="p", tier="training", gpus=2), "queued"),
        (lambda: ServingStats(kv_usage=1.5), "kv_usage"),
        (lambda: PoolState(name="x", tier="inference", gpu=H100), "model"),
        (
            lambda: FleetSnapshot(time_s=0, pools=(PoolState(name="x", tier="training", gpu=H100),) * 2),
            "repeat",
        ),
        (
            lambda: FleetSnapshot(
                time_s=0,
                pools=(PoolState(name="x", tier="training", gpu=H100),),
                jobs=(Job(id="j", pool="y", tier="training"),),
            ),
            "unknown pool",
        ),
        (
            lambda: FleetSnapshot(
                time_s=0,
                pools=(PoolState(name="x", tier="training", gpu=H100),),
                jobs=(Job(id="j", pool="x", tier="operational"),),
            ),
            "tier",
        ),
        (
            lambda: FleetSnapshot(
                time_s=0,
                pools=(
                    PoolState(
                        name="x",
                        tier="training",
                        gpu=H100,
                        gpus=(GpuGroup(gpu=H100, count=1, lent_from="nobody"),),
                    ),
                ),
            ),
            "lent from unknown",
        ),
    ],
)
def test_invalid_records_are_refused(make, match):
    with pytest.raises(SeamError, match=match):
        make()


def test_snapshot_check_catches_overfull_fleet():
    snap = small_snapshot()
    snap.check()
    over = FleetSnapshot(
        time_s=0, pools=snap.pools, inventory=(InventoryItem(gpu=H100, limit=8, price_usd_h=1),)
    )
    with pytest.raises(SeamError, match="holds 9 h100-80g"):
        over.check()


# --------------------------------------------------------------------------------------------- JSON


def test_json_round_trip_by_hand():
    snap = small_snapshot()
    text = snap.to_json()
    data = json.loads(text)
    assert data["pools"][0]["serving"]["arrival_rate_history"] == [10.0, None, 12.0]  # a gap stays a gap
    assert FleetSnapshot.from_json(text) == snap
    assert FleetSnapshot.from_dict(snap.to_dict()) == snap
    d = decision(
        ("chat", H100, 6),
        lends=[Lend(from_pool="train", to_pool="chat", gpu=H100, count=2, kind="reclaim")],
        preemptions=[
            Preemption(
                job_id="t1", pool="train", gpus=2, reason="r", lost_work_s=600, restore_s=30, job_gpus=4
            )
        ],
    )
    assert Decision.from_json(d.to_json()) == d
    assert d.preemptions[0].cost_gpu_s == 630 * 4


def test_json_errors_name_the_field():
    data = small_snapshot().to_dict()
    data["pools"][0]["gpus"][0]["cuont"] = 3
    with pytest.raises(SeamError, match=r"pools\.0\.gpus\.0\.cuont"):
        FleetSnapshot.from_dict(data)
    data = small_snapshot().to_dict()
    data["pools"][1]["tier"] = "batch"
    with pytest.raises(SeamError, match=r"pools\.1\.tier"):
        FleetSnapshot.from_dict(data)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleet_snapshots())
def test_json_round_trip_random(snap):
    assert FleetSnapshot.from_json(snap.to_json()) == snap


# ----------------------------------------------------------------------------------------- conserve


def test_conserve_accepts_a_fitting_decision():
    snap = small_snapshot()
    d = decision(("chat", H100, 6), ("train", H100, 4))
    conserve(snap, d)
    assert planned(snap, d)["chat"] == {(H100, "on_demand"): 6}
    assert d.cost_usd_h(snap) == pytest.approx(10 * 2.69)


def test_conserve_counts_pools_left_alone_at_what_they_hold():
    snap = small_snapshot()
    conserve(snap, decision(("chat", H100, 6)))  # train keeps its 4: 10 in all
    with pytest.raises(
        SeamError, match="allocates 11 h100-80g/on_demand GPUs in default; the inventory has 10"
    ):
        conserve(snap, decision(("chat", H100, 7)))


def test_conserve_refuses_types_without_inventory_and_unknown_pools():
    snap = small_snapshot()
    with pytest.raises(SeamError, match="inventory has 0"):
        conserve(snap, decision(("chat", A100, 1)))
    with pytest.raises(SeamError, match="unknown pool"):
        conserve(snap, decision(("nope", H100, 1)))


def test_conserve_checks_lends():
    snap = small_snapshot()
    ok = Lend(from_pool="chat", to_pool="train", gpu=H100, count=4)
    conserve(snap, decision(("chat", H100, 1), ("train", H100, 8), lends=[ok]))
    more_than_own = Lend(from_pool="chat", to_pool="train", gpu=H100, count=5)
    with pytest.raises(SeamError, match="has 4 ready own ones"):
        conserve(snap, decision(("chat", H100, 0), ("train", H100, 9), lends=[more_than_own]))
    more_than_borrowed = Lend(from_pool="train", to_pool="chat", gpu=H100, count=3, kind="reclaim")
    with pytest.raises(SeamError, match="borrowed 2"):
        conserve(snap, decision(("chat", H100, 8), ("train", H100, 1), lends=[more_than_borrowed]))
    with pytest.raises(SeamError, match="its target is 3"):
        conserve(snap, decision(("chat", H100, 1), ("train", H100, 3), lends=[ok]))


def test_conserve_checks_preemptions():
    snap = small_snapshot()
    p = Preemption(job_id="t1", pool="train", gpus=2, reason="r")
    conserve(snap, decision(("train", H100, 2), preemptions=[p]))
    with pytest.raises(SeamError, match="twice"):
        conserve(snap, decision(preemptions=[p, p]))
    with pytest.raises(SeamError, match="holds 4"):
        conserve(snap, decision(preemptions=[Preemption(job_id="t1", pool="train", gpus=5, reason="r")]))
    with pytest.raises(SeamError, match="unknown job"):
        conserve(snap, decision(preemptions=[Preemption(job_id="zz", pool="train", gpus=1, reason="r")]))


def test_decision_refuses_duplicate_targets():
    with pytest.raises(SeamError, match="twice"):
        decision(("chat", H100, 1), ("chat", H100, 2))
