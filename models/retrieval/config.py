"""The scenario's ``retrieval:`` section: vector stores, the retrieval router and which requests are RAG.

    retrieval:
      stores:
        - {name: hr, domain: hr, index_type: hnsw, n_vectors: 1000000, dim: 768, search_param: 64, servers: 2}
        - {name: eng, domain: eng, index_type: hnsw, n_vectors: 1000000, dim: 768, search_param: 64,
           servers: 2, hybrid: {lexical_ms_p50: 5, lexical_ms_p95: 15, recall_uplift: 0.3}}
      router: {name: routed, params: {accuracy: 0.95, threshold: 0.8}}
      k: 10
      tokens_per_passage: 128
      rag_fraction: 0.5
      topic_mix: {hr: 1, eng: 3}

Each store is checked against the retrieval tables on load, so a table missing that index type or hardware
fails here, before any simulation starts. This module does not import ``models.config``; the root config
imports it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from fleettwin.models.base import StrictModel
from fleettwin.models.errors import FleettwinError
from fleettwin.models.registry import Choice
from fleettwin.models.retrieval.model import INDEX_TYPES, RetrievalModel, StoreProfile, default_model
from fleettwin.models.retrieval.routing import ALL_DOMAINS, RETRIEVAL_ROUTERS, StoreView, hybrid_recall

IndexType = Literal[INDEX_TYPES]  # type: ignore[valid-type]


class HybridConfig(StrictModel):
    """Lexical (BM25) search run beside the dense one and fused by reciprocal rank fusion. The defaults are
    the 5-20 ms "top 100 from OpenSearch/Elasticsearch" budget quoted in practitioner write-ups;
    ``recall_uplift`` (the share of dense misses that fusion recovers) is an assumption you must state
    (default 0)."""

    lexical_ms_p50: PositiveFloat = 5.0
    lexical_ms_p95: PositiveFloat = 15.0
    recall_uplift: float = Field(0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _quantiles(self) -> HybridConfig:
        if self.lexical_ms_p95 < self.lexical_ms_p50:
            raise ValueError(
                f"lexical_ms_p95 ({self.lexical_ms_p95}) is below lexical_ms_p50 ({self.lexical_ms_p50})"
            )
        return self


class StoreConfig(StrictModel):
    name: str = Field(min_length=1)
    domain: str = ALL_DOMAINS  # the content domain (or tenant) it holds; '*' = the whole corpus
    index_type: IndexType
    n_vectors: PositiveInt
    dim: PositiveInt
    search_param: NonNegativeInt = 0  # nprobe (IVF), efSearch (HNSW), itopk_size (CAGRA), 0 (flat)
    hardware: str = "cpu"  # 'cpu' = one core per concurrent query; GPU rows use the catalog id (h100-80g)
    servers: PositiveInt = 1  # queries the store runs at once; more wait in its FIFO queue
    hybrid: HybridConfig | None = None

    def profile(self, model: RetrievalModel | None = None) -> StoreProfile:
        return (model or default_model()).lookup(
            self.index_type, self.hardware, self.n_vectors, self.dim, self.search_param
        )


class RetrievalRouterRef(Choice):
    """``{name: routed, params: {...}}``, checked against the retrieval-router registry."""

    registry = RETRIEVAL_ROUTERS
    name: str = "fanout_all"


class RetrievalConfig(StrictModel):
    stores: list[StoreConfig] = Field(min_length=1)
    router: RetrievalRouterRef = RetrievalRouterRef()
    k: PositiveInt = 10  # passages added to the prompt (recall is the tables' recall@10 whatever k)
    tokens_per_passage: PositiveInt = 128
    locality: float = Field(1.0, ge=0.0, le=1.0)  # share of a query's true neighbours in its topic's store
    merge_ms: float = Field(0.0, ge=0.0)  # merging the stores' lists after a fan-out
    rag_fraction: float = Field(1.0, ge=0.0, le=1.0)  # share of the workload's requests that retrieve
    topic_mix: dict[str, PositiveFloat] = Field(default_factory=dict)  # default: equal over the store domains

    @model_validator(mode="after")
    def _cross_checks(self) -> RetrievalConfig:
        names = [s.name for s in self.stores]
        if len(set(names)) != len(names):
            raise ValueError(f"store names must be unique, got {names}")
        if any(s.domain == ALL_DOMAINS for s in self.stores) and len(self.stores) > 1:
            raise ValueError(
                f"a store with domain '{ALL_DOMAINS}' holds the whole corpus and must be the only one"
            )
        for i, s in enumerate(self.stores):
            try:
                s.profile()
            except FleettwinError as exc:
                raise ValueError(f"stores[{i}] ({s.name}): {exc}") from None
        covered = {s.domain for s in self.stores}
        unknown = sorted(t for t in self.topic_mix if t not in covered and ALL_DOMAINS not in covered)
        if unknown:
            raise ValueError(
                f"topic_mix names topics no store holds: {', '.join(unknown)} "
                f"(store domains: {', '.join(sorted(covered))})"
            )
        router = RETRIEVAL_ROUTERS.create(self.router.name, self.router.params)
        try:
            router.check(self.views())
        except FleettwinError as exc:
            raise ValueError(str(exc)) from None
        return self

    def views(self, model: RetrievalModel | None = None) -> list[StoreView]:
        """What the retrieval router sees: each store's size, domain and recall (hybrid uplift applied)."""
        out = []
        for s in self.stores:
            recall = s.profile(model).recall
            if s.hybrid:
                recall = hybrid_recall(recall, s.hybrid.recall_uplift)
            out.append(StoreView(name=s.name, domain=s.domain, n_vectors=s.n_vectors, recall=recall))
        return out

    def topics(self) -> dict[str, float]:
        """The topic mix, defaulting to equal weights over the store domains."""
        if self.topic_mix:
            return dict(self.topic_mix)
        doms = sorted({s.domain for s in self.stores})
        return {d: 1.0 for d in doms}
