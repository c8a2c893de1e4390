"""Vector stores and the knowledge fabric as SimPy processes.

A :class:`VectorStore` serves ``servers`` queries at a time from one FIFO queue. Service times are lognormal
draws from the store's table profile (``models/retrieval/model.py``), and each store has its own seeded
generator. A hybrid store also runs BM25 in parallel with the dense search. BM25 runs on its own lexical
engine, assumed to be provisioned separately, so it has no queue here and takes none of the store's slots; the
store answers once both searches are done.

:class:`KnowledgeFabric` turns one RAG query into a route (``models/retrieval/routing.py``). It queries the
chosen stores in parallel, each waiting in its own queue, and once the slowest of them answers it merges the
lists. The result is a :class:`RetrievalOutcome`: latency, expected recall, the stores queried and the context
tokens the prompt gains (k passages × tokens per passage). :class:`RagStage` wraps this as the pre-submit
stage of the request path: a RAG request retrieves first and is then submitted with the longer prompt. Its
``arrival_s`` is not changed, so TTFT and E2E include the retrieval time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import simpy

from fleettwin.models.retrieval.config import HybridConfig, RetrievalConfig
from fleettwin.models.retrieval.model import Lognormal, RetrievalModel, StoreProfile
from fleettwin.models.retrieval.routing import (
    ALL_DOMAINS,
    RETRIEVAL_ROUTERS,
    RetrievalRouter,
    StoreView,
    merged_recall,
    tag_rag,
)
from fleettwin.models.workload.request import Request

STREAM = 0xFAB  # the knowledge fabric's branch of the scenario seed
_ROUTER, _TAGS = 10_000, 20_000  # sub-streams of STREAM beside the stores' 0, 1, 2, ...


class VectorStore:
    """One vector store: ``servers`` parallel queries, a FIFO queue, lognormal service times."""

    def __init__(
        self,
        env: simpy.Environment,
        name: str,
        profile: StoreProfile,
        *,
        servers: int,
        rng: np.random.Generator,
        hybrid: HybridConfig | None = None,
    ):
        self.env = env
        self.name = name
        self.profile = profile
        self.servers = servers
        self.rng = rng
        self.dense = profile.latency_s
        self.lexical = (
            Lognormal.from_quantiles(hybrid.lexical_ms_p50 / 1000.0, hybrid.lexical_ms_p95 / 1000.0)
            if hybrid
            else None
        )
        self.resource = simpy.Resource(env, capacity=servers)
        self.arrived = self.served = 0
        self.busy_s = 0.0  # summed service time: utilisation = busy_s / (servers x elapsed)

    def query(self) -> Generator[simpy.Event, object, tuple[float, float]]:
        """Wait for a free slot, hold it for one dense search (and wait for the lexical one of a hybrid store,
        started on arrival); returns (queue wait, dense service time) in seconds."""
        self.arrived += 1
        t0 = self.env.now
        lexical = self.lexical.sample(self.rng) if self.lexical else 0.0
        with self.resource.request() as slot:
            yield slot
            wait = self.env.now - t0
            service = self.dense.sample(self.rng)
            yield self.env.timeout(service)
        if self.env.now - t0 < lexical:
            yield self.env.timeout(lexical - (self.env.now - t0))
        self.served += 1
        self.busy_s += service
        return wait, service

    @property
    def in_system(self) -> int:
        return len(self.resource.queue) + self.resource.count


@dataclass(frozen=True, slots=True, kw_only=True)
class RetrievalOutcome:
    request_id: int
    topic: str | None
    start_s: float
    latency_s: float
    recall: float  # expected recall@10 of the merged answer given the route
    stores: tuple[str, ...]
    fanned_out: bool
    predicted: str | None  # the classifier's domain (routed only)
    misrouted: bool  # sent to one store that does not hold the topic
    max_wait_s: float  # the longest queue wait among the stores queried
    context_tokens: int


class KnowledgeFabric:
    """Stores by domain behind a retrieval router; ``retrieve`` is a SimPy process returning the outcome."""

    def __init__(
        self,
        env: simpy.Environment,
        stores: Sequence[VectorStore],
        views: Sequence[StoreView],
        router: RetrievalRouter,
        *,
        rng: np.random.Generator,
        k: int = 10,
        tokens_per_passage: int = 128,
        locality: float = 1.0,
        merge_s: float = 0.0,
    ):
        if len(stores) != len(views):
            raise ValueError("one view per store")
        router.check(views)
        self.env = env
        self.stores, self.views, self.router = list(stores), list(views), router
        self.rng = rng
        self.k, self.tokens_per_passage, self.locality, self.merge_s = (
            k,
            tokens_per_passage,
            locality,
            merge_s,
        )
        self.outcomes: list[RetrievalOutcome] = []

    @property
    def context_tokens(self) -> int:
        return self.k * self.tokens_per_passage

    def retrieve(
        self, request_id: int, topic: str | None
    ) -> Generator[simpy.Event, object, RetrievalOutcome]:
        env = self.env
        start = env.now
        plan = self.router.plan(topic, self.views, self.rng)
        if plan.overhead_s > 0:
            yield env.timeout(plan.overhead_s)
        done = yield env.all_of([env.process(self.stores[i].query()) for i in plan.stores])
        waits = [w for w, _ in done.values()]
        if len(plan.stores) > 1 and self.merge_s > 0:
            yield env.timeout(self.merge_s)
        outcome = RetrievalOutcome(
            request_id=request_id,
            topic=topic,
            start_s=start,
            latency_s=env.now - start,
            recall=merged_recall(topic, plan.stores, self.views, self.locality),
            stores=tuple(self.stores[i].name for i in plan.stores),
            fanned_out=plan.fanned_out,
            predicted=plan.predicted,
            misrouted=not plan.fanned_out
            and all(self.views[i].domain not in (topic, ALL_DOMAINS) for i in plan.stores),
            max_wait_s=max(waits),
            context_tokens=self.context_tokens,
        )
        self.outcomes.append(outcome)
        return outcome

    def outcomes_frame(self) -> pd.DataFrame:
        cols = [f.name for f in dataclasses.fields(RetrievalOutcome)]
        df = pd.DataFrame([dataclasses.astuple(o) for o in self.outcomes], columns=cols)
        df["stores_queried"] = df["stores"].map(len)
        return df


def build_fabric(
    env: simpy.Environment, cfg: RetrievalConfig, *, seed: int, model: RetrievalModel | None = None
) -> KnowledgeFabric:
    """The stores and router of a ``retrieval:`` section, each store on its own branch of ``seed``."""
    stores = [
        VectorStore(
            env,
            s.name,
            s.profile(model),
            servers=s.servers,
            hybrid=s.hybrid,
            rng=np.random.default_rng([seed, STREAM, i]),
        )
        for i, s in enumerate(cfg.stores)
    ]
    router = RETRIEVAL_ROUTERS.create(cfg.router.name, cfg.router.params)
    return KnowledgeFabric(
        env,
        stores,
        cfg.views(model),
        router,
        rng=np.random.default_rng([seed, STREAM, _ROUTER]),
        k=cfg.k,
        tokens_per_passage=cfg.tokens_per_passage,
        locality=cfg.locality,
        merge_s=cfg.merge_ms / 1000.0,
    )


def tag_requests(cfg: RetrievalConfig, requests: Sequence[Request], seed: int) -> list[Request]:
    """The scenario's RAG requests: ``rag_fraction`` of them, with topics from ``topic_mix`` (own seed
    stream)."""
    return tag_rag(
        requests,
        fraction=cfg.rag_fraction,
        topic_mix=cfg.topics(),
        rng=np.random.default_rng([seed, STREAM, _TAGS]),
    )


class RagStage:
    """A pre-submit stage (``sim/stages.py``): a RAG request retrieves, then goes on with its prompt grown by
    the retrieved context; other requests pass straight through without any delay.

    The fabric is built on the first call, in that call's environment, so the stage can be handed to the
    simulator before the environment exists. ``pending`` holds the requests retrieving right now (the stage
    pipeline and the regions front door report those as unfinished if the run ends first)."""

    def __init__(self, cfg: RetrievalConfig, *, seed: int, model: RetrievalModel | None = None):
        self.cfg, self.seed, self.model = cfg, seed, model
        self.fabric: KnowledgeFabric | None = None
        self.pending: dict[int, Request] = {}

    def fabric_for(self, env: simpy.Environment) -> KnowledgeFabric:
        if self.fabric is None or self.fabric.env is not env:
            self.fabric = build_fabric(env, self.cfg, seed=self.seed, model=self.model)
        return self.fabric

    def __call__(self, env: simpy.Environment, req: Request) -> Generator[simpy.Event, object, Request]:
        if not req.rag:
            return req
        fabric = self.fabric_for(env)
        self.pending[req.id] = req
        outcome = yield env.process(fabric.retrieve(req.id, req.topic))
        del self.pending[req.id]
        return dataclasses.replace(req, prompt_tokens=req.prompt_tokens + outcome.context_tokens)

    def summary(self) -> dict:
        """Retrieval figures of the run (empty if no request retrieved)."""
        if self.fabric is None or not self.fabric.outcomes:
            return {}
        df = self.fabric.outcomes_frame()
        lat = df["latency_s"].to_numpy()
        return {
            "queries": len(df),
            "p50_s": float(np.percentile(lat, 50)),
            "p95_s": float(np.percentile(lat, 95)),
            "recall_at_10": float(df["recall"].mean()),
            "stores_queried_mean": float(df["stores_queried"].mean()),
            "context_tokens": self.fabric.context_tokens,
            "router": self.cfg.router.name,
            "stores": {
                s.name: {"queries": s.served, "busy_s": s.busy_s, "servers": s.servers}
                for s in self.fabric.stores
            },
        }
