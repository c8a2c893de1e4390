"""Before a run starts: roughly how long it will take and how much memory it will need, so that a scenario
that would run for hours or exhaust the machine says so first (``fleettwin sim run`` prints the warning).

The costs are measured, not guessed (2-core development machine, compiled hot path; see docs/performance.md):
``benchmarks/bench_memory.py`` gives the memory per request held in memory and streamed; the cost of a replica
per simulated second is the pool sampler's (5,000 idle llama-3-8b replicas over 426 s took 3.4 s more than
10). They are deliberately round: the warning is about orders of magnitude.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

REQUESTS_PER_S = (
    15_000.0  # simulated requests per wall-second (bench_serving: 22-31k at 64 replicas, compiled)
)
PURE_PYTHON_SLOWDOWN = 1.4  # without the compiled hot path (docs/performance.md)
REPLICA_SECOND_S = 1.6e-6  # wall seconds per replica per sample interval
BASE_BYTES = 250e6  # interpreter, numpy, pandas, pyarrow, SimPy
BYTES_PER_REQUEST = 900.0  # in memory: Request, log row, frame (the 3.8 GB for 4.3 M requests)
BYTES_PER_REQUEST_STREAMED = 40.0  # streaming: arrival arrays of the reshaped workload, nothing per row kept
BYTES_PER_REPLICA = 2_000.0
WALL_LIMIT_S = 3600.0


@dataclass(frozen=True)
class RunEstimate:
    wall_s: float
    rss_bytes: float
    available_bytes: float | None

    def warnings(self, *, streaming: bool) -> list[str]:
        out = []
        if self.wall_s > WALL_LIMIT_S:
            out.append(
                f"this run may take about {self.wall_s / 3600:.1f} h of wall time (estimate); shorten the "
                "workload or use fewer replicas to try it first"
            )
        if self.available_bytes is not None and self.rss_bytes > self.available_bytes:
            hint = "" if streaming else "; --stream or --summary-only keep memory bounded"
            out.append(
                f"this run may need about {self.rss_bytes / 1e9:.1f} GB of memory (estimate) and "
                f"{self.available_bytes / 1e9:.1f} GB are available{hint}"
            )
        return out


def estimate(
    requests: int,
    replicas: int,
    duration_s: float,
    *,
    sample_interval_s: float = 1.0,
    streaming: bool = False,
    compiled: bool = True,
) -> RunEstimate:
    """The estimate for ``requests`` over ``duration_s`` simulated seconds on ``replicas`` replicas in all."""
    per_request = 1.0 / REQUESTS_PER_S * (1.0 if compiled else PURE_PYTHON_SLOWDOWN)
    wall = requests * per_request + replicas * (duration_s / sample_interval_s) * REPLICA_SECOND_S
    rss = (
        BASE_BYTES
        + requests * (BYTES_PER_REQUEST_STREAMED if streaming else BYTES_PER_REQUEST)
        + replicas * BYTES_PER_REPLICA
    )
    return RunEstimate(wall_s=wall, rss_bytes=rss, available_bytes=available_memory())


def available_memory() -> float | None:
    """Bytes of memory available now (Linux MemAvailable; else free physical pages), None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def oversized_pools(replicas: dict[str, int], requests: int) -> list[str]:
    """Pools with more replicas than the run has requests: most of them can never be busy (a typo?)."""
    return [
        f"pool {name!r} has {n} replicas for {requests} requests in the whole run: most would never serve "
        "one (a typo?)"
        for name, n in replicas.items()
        if n > max(requests, 1)
    ]
