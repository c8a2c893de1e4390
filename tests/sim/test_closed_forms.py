"""Fidelity against queueing theory: Erlang-C (M/M/c) waiting time and Little's law."""

from __future__ import annotations

import heapq
import math

import numpy as np

from fleettwin.models.engine.queue import EngineLimits
from fleettwin.models.perf.constant import ConstantModel
from fleettwin.models.workload.request import Request
from tests.simkit import poisson_requests, run_pool


def erlang_c_wait(arrival_rate: float, service_rate: float, servers: int) -> float:
    """Mean time in queue of an M/M/c system."""
    a = arrival_rate / service_rate  # offered load in Erlangs
    rho = a / servers
    assert rho < 1
    top = a**servers / math.factorial(servers) / (1 - rho)
    p_wait = top / (sum(a**k / math.factorial(k) for k in range(servers)) + top)
    return p_wait / (servers * service_rate - arrival_rate)


def mmc_run(seed: int, n: int, servers: int, dt: float, mean_tokens: int, rho: float):
    """One run of a pool that is an M/M/c queue: ``servers`` replicas with max_num_seqs=1 behind a central
    FCFS queue; a request needs (output tokens) steps of ``dt`` (the prefill step emits the first token), and
    geometric output lengths with a large mean make service exponential up to a CV^2 of 1 - 1/mean."""
    service_rate = 1.0 / (dt * mean_tokens)
    arrival_rate = rho * servers * service_rate
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / arrival_rate, n))
    outputs = rng.geometric(1.0 / mean_tokens, n)
    reqs = [
        Request(id=i, arrival_s=float(arrivals[i]), prompt_tokens=1, output_tokens=int(outputs[i]))
        for i in range(n)
    ]
    limits = EngineLimits(num_blocks=10_000, max_num_seqs=1, max_model_len=100_000, block_size=16)
    raw = run_pool(
        reqs,
        limits,
        replicas=servers,
        perf=ConstantModel(ConstantModel.Params(step_s=dt)),
        central_queue=True,
        router="round_robin",
    )
    return raw.requests, arrivals, outputs * dt, arrival_rate, service_rate


def fcfs_multiserver_waits(arrivals: np.ndarray, services: np.ndarray, servers: int) -> np.ndarray:
    """Exact waits of a FCFS queue with ``servers`` identical servers (Kiefer-Wolfowitz recursion)."""
    free = [0.0] * servers
    waits = np.empty(len(arrivals))
    for i, (a, s) in enumerate(zip(arrivals, services, strict=True)):
        start = max(heapq.heappop(free), a)
        waits[i] = start - a
        heapq.heappush(free, start + s)
    return waits


def test_pool_with_batch_size_one_is_exactly_a_fcfs_multiserver_queue():
    df, arrivals, services, *_ = mmc_run(seed=1, n=5000, servers=3, dt=0.01, mean_tokens=100, rho=0.9)
    assert (df["status"] == "completed").all()
    np.testing.assert_allclose(df["finish_s"] - df["first_scheduled_s"], services, rtol=1e-9)
    np.testing.assert_allclose(df["queue_s"], fcfs_multiserver_waits(arrivals, services, 3), atol=1e-8)


def test_pool_with_batch_size_one_matches_erlang_c():
    # Independent replications give an honest confidence interval for a strongly autocorrelated output.
    servers, runs, n = 4, 8, 15_000
    means = []
    for seed in range(runs):
        df, _, _, lam, mu = mmc_run(seed=100 + seed, n=n, servers=servers, dt=0.01, mean_tokens=200, rho=0.7)
        means.append(df["queue_s"].to_numpy()[n // 10 :].mean())  # drop the warm-up from an empty system
    mean = float(np.mean(means))
    half = 3.499 * float(np.std(means, ddof=1)) / math.sqrt(runs)  # 99 % t-interval, 7 degrees of freedom
    expected = erlang_c_wait(lam, mu, servers)
    assert abs(mean - expected) <= half, f"mean wait {mean:.3f}s vs Erlang-C {expected:.3f}s (+-{half:.3f})"
    assert half < 0.3 * expected  # the interval is tight enough to mean something


def test_littles_law_holds_on_a_saturating_run():
    # L (time-average number in system, from the sampler) = lambda (arrival rate) x W (mean time in system,
    # from the request records): two independent measurements of the same run.
    reqs = poisson_requests(seed=11, n=4000, rate=40.0)
    limits = EngineLimits(num_blocks=3000, max_num_seqs=48, max_num_batched_tokens=2048, max_model_len=4096)
    raw = run_pool(reqs, limits, replicas=3, sample_interval_s=0.05)
    df, ts = raw.requests, raw.timeseries
    assert (df["status"] == "completed").all()
    in_system = (ts["running"] + ts["waiting"]).to_numpy()
    L = in_system.mean()
    lam = len(df) / raw.end_s
    W = df["e2e_s"].mean()
    assert ts["waiting"].max() > 0  # the run actually queues
    assert abs(L - lam * W) / (lam * W) < 0.02, f"L={L:.2f} vs lambda*W={lam * W:.2f}"
