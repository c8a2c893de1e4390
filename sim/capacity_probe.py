"""Measure a replica's capacity in the simulator: the highest Poisson arrival rate per replica at which a pool
of identical replicas keeps p95 TTFT and p95 TPOT within the SLO.

This is the knee that ``models/capacity.py`` approximates in closed form; the allocators size pools with one
or the other (``CapacityParams.measured``). Bisection on the rate, each step a short simulation with the same
seed (so the result is deterministic)::

    lengths = {"name": "empirical", "params": {"path": "traces/azure2023_conv/...", "format": "azure"}}
    knee = measure_knee({"gpu": "h100-80g", "model": "llama-3-70b", "tp": 2}, lengths,
                        ttft_s=2.0, tpot_s=0.1, base_dir=Path("."))
    knee.requests_per_s, knee.closed_form_rps
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleettwin.models.capacity import CapacityModel
from fleettwin.models.config import parse_scenario
from fleettwin.models.snapshot import Slo
from fleettwin.sim.runner import generate_requests, run_scenario


@dataclass(frozen=True)
class Knee:
    requests_per_s: float  # per replica, the highest rate tried that met the SLO
    closed_form_rps: float  # models/capacity.py for the same replica and the sampled mix
    key: str  # "gpu/model/tp", as CapacityParams.measured wants it
    probes: list[tuple[float, float, float, bool]] = field(
        default_factory=list
    )  # (rate, ttft p95, tpot p95, ok)

    @property
    def ratio(self) -> float:
        return self.requests_per_s / self.closed_form_rps if self.closed_form_rps else float("nan")


def measure_knee(
    pool: dict[str, Any],
    lengths: dict[str, Any],
    *,
    ttft_s: float,
    tpot_s: float,
    base_dir: Path | None = None,
    replicas: int = 4,
    duration_s: float = 900.0,
    seed: int = 1,
    steps: int = 7,
) -> Knee:
    """Bisect the per-replica rate between 0 and above the closed form (``steps`` halvings)."""
    base = {
        "name": "capacity-probe",
        "seed": seed,
        "slo": {"ttft_s": ttft_s, "tpot_s": tpot_s},
        "pools": [{"name": "probe", **pool, "replicas": replicas}],
    }

    def scenario(rate: float):
        workload = {
            "name": "poisson",
            "params": {"rate": rate * replicas, "duration_s": duration_s, "lengths": lengths},
        }
        return parse_scenario({**base, "workload": workload}, source="capacity probe", base_dir=base_dir)

    reqs = generate_requests(scenario(1.0), seed)
    mix = {
        "prompt_tokens": sum(r.prompt_tokens for r in reqs) / len(reqs),
        "output_tokens": sum(r.output_tokens for r in reqs) / len(reqs),
    }
    cfg0 = scenario(1.0)
    p = cfg0.pools[0]
    model = CapacityModel(catalog=cfg0.build_catalog())
    tp = model.tp(p.gpu, p.model, p.tp)
    closed = model.replica(p.gpu, p.model, tp=tp, slo=Slo(ttft_s=ttft_s, tpot_s=tpot_s), **mix).requests_per_s
    probes: list[tuple[float, float, float, bool]] = []

    def ok(rate: float) -> bool:
        s = run_scenario(scenario(rate)).summary
        ttft, tpot = s["latency_s"]["ttft"]["p95"], s["latency_s"]["tpot"]["p95"]
        good = (
            s["requests"]["completed"] == s["requests"]["total"] - s["requests"]["rejected"]
            and ttft <= ttft_s
            and tpot <= tpot_s
        )
        probes.append((rate, ttft, tpot, good))
        return good

    lo, hi = 0.0, max(closed, 0.1) * 1.2
    while ok(hi):  # make sure the upper end fails
        lo, hi = hi, hi * 2
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return Knee(requests_per_s=lo, closed_form_rps=closed, key=f"{p.gpu}/{p.model}/{tp}", probes=probes)
