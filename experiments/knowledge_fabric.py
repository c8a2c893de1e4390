"""``fleettwin sim experiment knowledge-fabric``: routed multi-store retrieval vs one monolithic store vs
fan-out.

For each index type and load it simulates the same Poisson query stream, with the same topics, against three
set-ups. The monolithic set-up is one store holding the whole corpus. The other two split the corpus into
equal domain stores, either fanning every query out to all of them or routing it with a content classifier.
The total number of vectors and the total query parallelism are the same in all three. It reports retrieval
p50/p95 and mean recall@10, and sets them beside the seed paper's claim that the fabric cuts retrieval latency
by 40-55 % at 99.2 % recall. Its inputs are the retrieval tables (measured where ``fleettwin data
calibrate-retrieval`` has run, estimates otherwise; the report says which) and the routing assumptions in
``configs/experiments/knowledge_fabric.yaml``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import simpy
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from fleettwin.experiments import CONFIG_DIR
from fleettwin.experiments.base import ExperimentProgress, ExperimentResult, load_yaml, progress_ticker
from fleettwin.io import write_csv
from fleettwin.models.retrieval.config import HybridConfig, RetrievalConfig
from fleettwin.models.retrieval.model import StoreProfile
from fleettwin.sim.retrieval.rag import KnowledgeFabric, build_fabric

CONFIG = CONFIG_DIR / "knowledge_fabric.yaml"
CLAIM = (
    "retrieval latency -40 to -55 % with semantic recall 99.2 % (multi-vector-store fabric, routed queries)"
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Corpus(_Strict):
    n_vectors: PositiveInt
    dim: PositiveInt
    domains: PositiveInt


class IndexSpec(_Strict):
    index_type: str
    hardware: str = "cpu"
    search_param: int = Field(0, ge=0)
    servers: PositiveInt  # total concurrent queries, split evenly over the domain stores


class Load(_Strict):
    name: str
    utilization: float = Field(gt=0.0)  # of the monolithic store's capacity


class PolicySpec(_Strict):
    label: str
    router: str
    params: dict[str, Any] = Field(default_factory=dict)
    hybrid: HybridConfig | None = None


class Sensitivity(_Strict):
    index_types: list[str]
    accuracy: list[float]
    locality: list[float]
    threshold: float = 0.8
    queries: PositiveInt = 5000


class Quick(_Strict):
    queries: PositiveInt
    index_types: list[str]
    sensitivity_queries: PositiveInt


class FabricExperiment(_Strict):
    seed: int = 0
    corpus: Corpus
    k: PositiveInt = 10
    tokens_per_passage: PositiveInt = 128
    locality: float = Field(1.0, ge=0.0, le=1.0)
    queries: PositiveInt
    loads: list[Load] = Field(min_length=1)
    indexes: list[IndexSpec] = Field(min_length=1)
    policies: list[PolicySpec] = Field(min_length=1)
    sensitivity: Sensitivity
    quick: Quick


def load_config(path: Path = CONFIG) -> FabricExperiment:
    return load_yaml(FabricExperiment, path, "experiment config")


def fabric_config(
    exp: FabricExperiment,
    spec: IndexSpec,
    policy: PolicySpec,
    *,
    locality: float | None = None,
    params: dict | None = None,
) -> RetrievalConfig:
    """The ``retrieval:`` section of one set-up: one store of the whole corpus, or one store per domain."""
    c = exp.corpus
    base = {
        "index_type": spec.index_type,
        "hardware": spec.hardware,
        "dim": c.dim,
        "search_param": spec.search_param,
        "hybrid": policy.hybrid.model_dump() if policy.hybrid else None,
    }
    if policy.router == "monolithic":
        stores = [{**base, "name": "all", "domain": "*", "n_vectors": c.n_vectors, "servers": spec.servers}]
    else:
        stores = [
            {
                **base,
                "name": f"d{j}",
                "domain": f"d{j}",
                "n_vectors": c.n_vectors // c.domains,
                "servers": max(1, spec.servers // c.domains),
            }
            for j in range(c.domains)
        ]
    return RetrievalConfig.model_validate(
        {
            "stores": stores,
            "router": {"name": policy.router, "params": params or policy.params},
            "k": exp.k,
            "tokens_per_passage": exp.tokens_per_passage,
            "locality": exp.locality if locality is None else locality,
        }
    )


def query_stream(rate: float, n: int, domains: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Poisson arrivals and uniform topics; the same stream for every policy (common random numbers)."""
    rng = np.random.default_rng([seed, 1])
    return np.cumsum(rng.exponential(1.0 / rate, n)), [f"d{j}" for j in rng.integers(domains, size=n)]


def simulate_fabric(
    cfg: RetrievalConfig, arrivals: np.ndarray, topics: list[str], seed: int
) -> KnowledgeFabric:
    env = simpy.Environment()
    fabric = build_fabric(env, cfg, seed=seed)

    def source():
        for i, (t, topic) in enumerate(zip(arrivals, topics, strict=True)):
            if t > env.now:
                yield env.timeout(t - env.now)
            env.process(fabric.retrieve(i, topic))

    env.process(source())
    env.run()
    return fabric


def summarize(fabric: KnowledgeFabric) -> dict:
    df = fabric.outcomes_frame()
    lat = df["latency_s"].to_numpy() * 1000.0
    end = float((df["start_s"] + df["latency_s"]).max())
    span = max(end - float(df["start_s"].min()), 1e-12)
    util = [s.busy_s / (s.servers * end) for s in fabric.stores]
    return {
        "retrieval_p50_ms": float(np.percentile(lat, 50)),
        "retrieval_p95_ms": float(np.percentile(lat, 95)),
        "retrieval_mean_ms": float(lat.mean()),
        "recall_at_10": float(df["recall"].mean()),
        "queries_per_s": len(df) / span,
        "stores_queried_mean": float(df["stores_queried"].mean()),
        "fanout_fraction": float(df["fanned_out"].mean()),
        "misroute_fraction": float(df["misrouted"].mean()),
        "store_utilization_max": max(util),
        "queries": len(df),
    }


def table_inputs(profile: StoreProfile) -> dict:
    """Where one set-up's latency and recall come from: the table (measured or estimate), the axes on which
    the lookup left its rows, and the looked-up figures of the store queried (the whole corpus or one
    domain)."""
    return {
        "table": "measured" if "measured" in Path(profile.source).name else "estimate",
        "table_source": profile.source,
        "extrapolated": ",".join(profile.extrapolated),
        "store_n_vectors": profile.n_vectors,
        "store_p50_ms": profile.p50_ms,
        "store_p95_ms": profile.p95_ms,
        "store_recall": profile.recall,
    }


def _monolithic_rate(exp: FabricExperiment, spec: IndexSpec, utilization: float) -> float:
    mono = fabric_config(exp, spec, PolicySpec(label="m", router="monolithic")).stores[0]
    return utilization * mono.servers / mono.profile().latency_s.mean


def run(
    out: Path, *, quick: bool, progress: ExperimentProgress | None = None, config: Path = CONFIG
) -> ExperimentResult:
    wall0 = time.perf_counter()
    exp = load_config(config)
    indexes = [s for s in exp.indexes if not quick or s.index_type in exp.quick.index_types]
    n = exp.quick.queries if quick else exp.queries
    sens = exp.sensitivity
    sens_n = exp.quick.sensitivity_queries if quick else sens.queries
    sens_grid = [(1.0, 0.95)] if quick else [(loc, a) for loc in sens.locality for a in sens.accuracy]
    sens_idx = [s for s in indexes if s.index_type in sens.index_types]
    total = len(indexes) * len(exp.loads) * len(exp.policies) + len(sens_idx) * len(sens_grid)
    tick = progress_ticker(progress, total)

    rows, sources = [], {}
    for spec in indexes:
        for load in exp.loads:
            rate = _monolithic_rate(exp, spec, load.utilization)
            arrivals, topics = query_stream(rate, n, exp.corpus.domains, exp.seed)
            for policy in exp.policies:
                tick(f"{spec.index_type} {load.name} {policy.label}")
                cfg = fabric_config(exp, spec, policy)
                profile = cfg.stores[0].profile()
                sources[spec.index_type] = profile.source
                rows.append(
                    {
                        "index_type": spec.index_type,
                        "hardware": spec.hardware,
                        "search_param": spec.search_param,
                        "load": load.name,
                        "offered_qps": rate,
                        "policy": policy.label,
                        **summarize(simulate_fabric(cfg, arrivals, topics, exp.seed)),
                        **table_inputs(profile),
                    }
                )
    results = _add_deltas(pd.DataFrame(rows))

    sens_rows = []
    moderate = max(exp.loads, key=lambda ld: ld.utilization)
    routed = next((p for p in exp.policies if p.router == "routed" and not p.hybrid), None)
    for spec in sens_idx if routed else []:
        rate = _monolithic_rate(exp, spec, moderate.utilization)
        arrivals, topics = query_stream(rate, sens_n, exp.corpus.domains, exp.seed)
        for loc, acc in sens_grid:
            tick(f"sensitivity {spec.index_type} locality {loc} accuracy {acc}")
            params = {**routed.params, "accuracy": acc, "threshold": sens.threshold}
            cfg = fabric_config(exp, spec, routed, locality=loc, params=params)
            s = summarize(simulate_fabric(cfg, arrivals, topics, exp.seed))
            sens_rows.append(
                {
                    "index_type": spec.index_type,
                    "locality": loc,
                    "accuracy": acc,
                    "threshold": sens.threshold,
                    **s,
                    **table_inputs(cfg.stores[0].profile()),
                }
            )
    sensitivity = pd.DataFrame(sens_rows)
    figures = [write_csv(Path(out) / "sensitivity.csv", sensitivity)] if len(sensitivity) else []

    from fleettwin.experiments.knowledge_fabric_report import report

    return ExperimentResult(
        name="knowledge-fabric",
        results=results,
        report_md=report(exp, results, sensitivity, sources, quick=quick, config=config),
        wall_time_s=time.perf_counter() - wall0,
        figures=figures,
        extra={
            "quick": quick,
            "seed": exp.seed,
            "config": str(config),
            "queries_per_run": n,
            "table_sources": sources,
            "claim": CLAIM,
        },
    )


def _add_deltas(df: pd.DataFrame) -> pd.DataFrame:
    """Latency change of every set-up against the monolithic store at the same index type and load, in %."""
    keys = ["index_type", "load"]
    mono = df.loc[df["policy"] == "monolithic", [*keys, "retrieval_p50_ms", "retrieval_p95_ms"]]
    merged = df.merge(mono, on=keys, how="left", suffixes=("", "_mono"))
    for q in ("p50", "p95"):
        merged[f"{q}_vs_monolithic_pct"] = 100.0 * (
            merged[f"retrieval_{q}_ms"] / merged[f"retrieval_{q}_ms_mono"] - 1
        )
    return merged.drop(columns=["retrieval_p50_ms_mono", "retrieval_p95_ms_mono"])
