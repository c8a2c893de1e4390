"""Training and operational jobs: progress, checkpoints and preemption arithmetic by hand, the job pool's
local scheduler (deadlines, growth at checkpoints, preemption), job streams and their configuration errors."""

from __future__ import annotations

import math

import pytest
import simpy

from fleettwin.models.config import parse_scenario
from fleettwin.models.errors import ConfigError
from fleettwin.models.tiers.config import JobsConfig
from fleettwin.sim.tiers.build import build_jobs
from fleettwin.sim.tiers.job_pool import JobPool
from fleettwin.sim.tiers.jobs import SimJob
from tests.scenariokit import scenario


def job(**kw) -> SimJob:
    base = dict(
        id="j",
        pool="train",
        tier="training",
        min_gpus=4,
        max_gpus=8,
        work_gpu_s=36_000.0,
        submitted_s=0.0,
        checkpoint_s=600.0,
        restore_s=60.0,
        scaling=0.5,
    )
    return SimJob(**(base | kw))


def ops_job(**kw) -> SimJob:
    """An operational job in the ``ops`` pool: 1 to 4 GPUs, scaling linearly."""
    return job(**({"pool": "ops", "tier": "operational", "min_gpus": 1, "max_gpus": 4, "scaling": 1.0} | kw))


# ------------------------------------------------------------------------------------------ arithmetic


def test_progress_checkpoint_and_preemption_by_hand():
    j = job()
    assert j.rate(4) == 4.0 and j.rate(8) == pytest.approx(4 * 2**0.5)  # min * (g / min) ** 0.5
    j.start(0.0, 4)
    assert j.done_gpu_s(60.0) == 0.0  # restoring: nothing computed
    assert j.done_gpu_s(760.0) == pytest.approx(4 * 700)  # 700 s of compute at 4 GPU-s/s
    assert j.last_checkpoint_s(760.0) == 660.0  # compute began at 60, one checkpoint 600 s later
    assert j.saved_gpu_s(760.0) == pytest.approx(2400.0)
    assert j.next_checkpoint_s(760.0) == 1260.0
    seam = j.snapshot(760.0)
    assert (seam.state, seam.gpus, seam.remaining_gpu_s) == ("running", 4, pytest.approx(36_000 - 2800))
    assert seam.lost_work_s(760.0) == pytest.approx(100.0)  # wall seconds since the checkpoint
    assert j.stop(760.0) == pytest.approx(400.0)  # 100 s x 4 GPU-s/s thrown away
    assert (j.gpus, j.running, j.preemptions, j.run_base_gpu_s) == (0, False, 1, pytest.approx(2400.0))
    assert j.snapshot(800.0).state == "queued" and j.remaining_gpu_s(800.0) == pytest.approx(33_600.0)
    j.start(1000.0, 8)  # restart larger: pays the restore again, resumes from the checkpoint
    finish = 1060.0 + 33_600.0 / (4 * 2**0.5)
    assert j.finish_time() == pytest.approx(finish)
    j.finish(j.finish_time())
    at_end = j.at(finish)
    assert at_end["done"] == pytest.approx(36_000.0) and at_end["lost"] == pytest.approx(400.0)
    assert at_end["busy"] == pytest.approx(4 * 700 + 8 * (finish - 1060.0))  # GPU-seconds computing
    assert at_end["restoring"] == pytest.approx(4 * 60 + 8 * 60)
    mid = j.at(900.0)  # between the runs: the checkpoint's work, the loss already counted
    assert (mid["done"], mid["lost"], mid["busy"]) == (
        pytest.approx(2400.0),
        pytest.approx(400.0),
        pytest.approx(2800.0),
    )


def test_a_job_stopped_while_restoring_loses_nothing_and_a_restart_at_a_checkpoint_loses_nothing():
    j = job()
    j.start(0.0, 4)
    assert j.stop(30.0) == 0.0 and j.at(30.0)["busy"] == 0.0
    j.start(100.0, 4)
    assert j.stop(100.0 + 60.0 + 1200.0) == pytest.approx(0.0)  # exactly at its second checkpoint
    assert j.run_base_gpu_s == pytest.approx(4 * 1200)


def test_deadline_outcomes():
    late = job(tier="operational", deadline_s=100.0)
    assert late.missed(50.0) is None and late.missed(150.0) is True  # unfinished past its deadline
    late.start(0.0, 8)
    late.finish(120.0)
    assert late.missed(200.0) is True
    ok = job(tier="operational", deadline_s=100.0)
    ok.start(0.0, 8)
    ok.finish(99.0)
    assert ok.missed(200.0) is False
    assert job().missed(1e9) is None  # training: no deadline


# ------------------------------------------------------------------------------------------ job pool


def pool(env, gpus: int, tier: str = "training") -> JobPool:
    p = JobPool(env, "train" if tier == "training" else "ops", tier, "h100-80g")
    p.add_own(gpus)
    return p


def test_operational_jobs_start_earliest_deadline_first_with_the_gpus_their_deadline_needs():
    env = simpy.Environment()
    p = pool(env, 6, "operational")
    # b: 7200 GPU-s due at 3700 (100 s restore): ceil(7200 / 3600) = 2 GPUs; a: due at 1100: ceil(3600/1000) =
    # 4
    b = ops_job(id="b", work_gpu_s=7200.0, deadline_s=3700.0, restore_s=100.0)
    a = ops_job(id="a", work_gpu_s=3600.0, deadline_s=1100.0, restore_s=100.0)
    p.submit(b)
    assert b.gpus == 4  # alone: its need (2), widened to its maximum with the idle GPUs before it computes
    p.submit(a)  # a arrives later and waits for GPUs: 2 idle, it needs 4 but starts with what there is
    assert a.gpus == 2
    env.run(until=5000)
    assert b.finished_s == pytest.approx(100 + 7200 / 4) and not b.missed(5000)
    assert a.finished_s == pytest.approx(100 + 3600 / 2) and a.missed(5000)  # 1900 > 1100: a miss counted


def test_a_job_that_would_miss_its_deadline_grows_at_once_when_gpus_arrive():
    env = simpy.Environment()
    p = pool(env, 1, "operational")
    late = ops_job(id="late", work_gpu_s=10_800.0, deadline_s=3660.0, restore_s=60.0, checkpoint_s=600.0)
    p.submit(late)
    assert late.gpus == 1 and late.finish_time() == pytest.approx(10_860.0)  # would miss by two hours
    env.run(until=100)
    p.add_own(2)  # it needs ceil(10800 / 3500) = 4; 3 is what there is, and restarting now finishes sooner
    assert late.gpus == 3 and late.run_start_s == 100.0 and late.finish_time() == pytest.approx(3760.0)
    env.run(until=200)
    p.add_own(1)
    assert late.gpus == 4 and late.finish_time() == pytest.approx(2960.0)
    env.run(until=4000)
    assert late.finished_s == pytest.approx(2960.0) and not late.missed(4000.0)
    assert late.preemptions == 0  # resizes
    assert late.lost_work_gpu_s == pytest.approx(40.0 * 1 + 40.0 * 3)  # computed since the (no) checkpoint


def test_training_job_grows_at_its_next_checkpoint_when_gpus_free_up():
    env = simpy.Environment()
    p = pool(env, 8)
    big = job(
        id="big", min_gpus=4, max_gpus=8, work_gpu_s=1e9, scaling=1.0, checkpoint_s=600.0, restore_s=60.0
    )
    small = job(
        id="small", min_gpus=4, max_gpus=4, work_gpu_s=4 * 1000.0, scaling=1.0, restore_s=0.0, priority=1
    )
    p.submit(small)
    p.submit(big)
    assert (small.gpus, big.gpus) == (4, 4)
    env.run(until=1300)  # small ends at 1000; big's checkpoints: 660, 1260
    assert small.done and big.gpus == 8 and big.run_start_s == 1260.0
    assert big.lost_work_gpu_s == pytest.approx(0.0) and big.preemptions == 0  # a resize, not a preemption
    assert big.at(1300.0)["done"] == pytest.approx(4 * 1200)  # still restoring on 8 GPUs


def test_pool_preempts_the_cheapest_jobs_when_gpus_are_taken():
    env = simpy.Environment()
    p = pool(env, 12)
    a = job(id="a", min_gpus=4, max_gpus=8, work_gpu_s=1e9, restore_s=0.0, scaling=1.0)
    b = job(id="b", min_gpus=4, max_gpus=4, work_gpu_s=1e9, restore_s=0.0, scaling=1.0, priority=1)
    p.submit(b)
    p.submit(a)
    assert (a.gpus, b.gpus) == (8, 4)
    env.run(until=900)  # checkpoints at 600: a has lost 300 s x 8 GPU-s/s since, b 300 s x 4
    assert p.take(3, reason="test") == 3
    assert (a.gpus, b.gpus) == (5, 4) and a.preemptions == 1  # a: lower priority; shrinking frees enough
    assert a.lost_work_gpu_s == pytest.approx(300 * 8)
    assert p.take(5, reason="test") == 5  # a at 5 cannot give 5 and stay at 4: it stops and waits
    assert a.gpus == 0 and a in p.queue and b.gpus == 4 and p.own == 4


def test_preemption_of_a_job_through_the_seam_and_its_gpu_count():
    env = simpy.Environment()
    p = pool(env, 8)
    j = job(min_gpus=2, max_gpus=8, restore_s=0.0, work_gpu_s=1e9)
    p.submit(j)
    env.run(until=10)
    assert p.preempt(j.id, 3, reason="test") == 3 and j.gpus == 5  # shrink: restarts at once, smaller
    assert p.preempt(j.id, 4, reason="test", reschedule=False) == 5 and j.gpus == 0  # 1 left < min: stop
    assert p.idle == 8 and j in p.queue and [r for *_, r in p.preempted] == ["test", "test"]
    p.schedule()  # the GPUs stayed: the job starts again on all of them (a third restore)
    assert j.gpus == 8 and j.preemptions == 2 and len(j.runs) == 3


# --------------------------------------------------------------------------------------------- config

JOBS = {
    "pools": [
        {"name": "train", "tier": "training", "gpu": "h100-80g"},
        {"name": "ops", "tier": "operational", "gpu": "h100-80g"},
    ],
    "streams": [
        {
            "name": "ft",
            "pool": "train",
            "every_s": 3600,
            "until_s": 10800,
            "count": 2,
            "jitter_s": 60,
            "min_gpus": 2,
            "max_gpus": 4,
            "work_gpu_h": [1, 2],
        },
        {"name": "ev", "pool": "ops", "at_s": [100], "work_gpu_h": 1, "deadline_h": 2},
    ],
}


def test_streams_make_seeded_jobs_with_deadlines():
    cfg = JobsConfig.model_validate(JOBS)
    jobs = build_jobs(cfg, seed=5)
    assert [j.id for j in jobs] == ["ft-0", "ft-1", "ft-2", "ft-3", "ft-4", "ft-5", "ev-0"]
    ft = [j for j in jobs if j.stream == "ft"]
    assert all(t <= j.submitted_s < t + 60 for j, t in zip(ft, [0, 0, 3600, 3600, 7200, 7200], strict=True))
    assert all(3600 <= j.work_gpu_s <= 7200 for j in ft)
    ev = jobs[-1]
    assert (ev.tier, ev.deadline_s, ev.work_gpu_s) == ("operational", 100 + 7200.0, 3600.0)
    assert [(j.submitted_s, j.work_gpu_s) for j in build_jobs(cfg, seed=5)] == [
        (j.submitted_s, j.work_gpu_s) for j in jobs
    ]


SCENARIO = scenario("t")


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"streams": [{"name": "x", "pool": "ops", "at_s": [0], "work_gpu_h": 1}]},
            r"streams\[0\].deadline_h: "
            "operational jobs need a deadline",
        ),
        (
            {"streams": [{"name": "x", "pool": "train", "at_s": [0], "work_gpu_h": 1, "deadline_h": 1}]},
            "training jobs have a throughput goal",
        ),
        (
            {"streams": [{"name": "x", "pool": "gpu-farm", "at_s": [0], "work_gpu_h": 1}]},
            "no job pool 'gpu-farm'",
        ),
        ({"streams": [{"name": "x", "pool": "train", "at_s": [0], "work_gpu_h": [3, 1]}]}, "reversed"),
        (
            {"streams": [{"name": "x", "pool": "train", "every_s": 60, "work_gpu_h": 1}]},
            "every_s needs until_s",
        ),
        (
            {
                "streams": [
                    {"name": "x", "pool": "train", "at_s": [0], "work_gpu_h": 1, "min_gpus": 4, "max_gpus": 2}
                ]
            },
            r"max_gpus \(2\) < min_gpus \(4\)",
        ),
        (
            {"pools": [{"name": "chat", "tier": "training", "gpu": "h100-80g"}]},
            "'chat' is also an inference pool",
        ),
        ({"pools": [{"name": "train", "tier": "training", "gpu": "h100-800g"}]}, r"jobs.pools\[0\].gpu"),
        (
            {"pools": [{"name": "train", "tier": "batch", "gpu": "h100-80g"}]},
            r"s.yaml: jobs.pools\[0\].tier: Input should be",
        ),
    ],
)
def test_bad_job_config_names_the_field(change, message):
    with pytest.raises(ConfigError, match=message):
        parse_scenario({**SCENARIO, "jobs": {**JOBS, "streams": [], **change}}, source="s.yaml")


def test_rate_is_linear_up_to_the_minimum_and_zero_without_gpus():
    j = job(min_gpus=4, scaling=0.7)
    assert j.rate(0) == 0.0 and j.rate(4) == 4.0 and j.rate(16) == pytest.approx(4 * 4**0.7)
    assert math.isclose(j.rate(16) / 16, 4**0.7 / 4)
