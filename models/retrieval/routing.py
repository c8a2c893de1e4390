"""Which vector stores a RAG query goes to, and what recall the merged answer has.

The knowledge fabric is several stores that split one corpus by domain (or tenant). Every store uses the same
embedding model, so distances from different stores can be compared and merged. A query has a true ``topic``.

**Where a query's true neighbours are.** ``locality`` (L) is the fraction of a query's exact top-k (over the
whole corpus) that lies in the store holding its topic. The rest, 1 − L, is spread over all stores in
proportion to their size. L = 1 is the best case for routing: the domains separate perfectly. The experiment
also runs lower values.

**Recall of a merged answer.** Each queried store returns its own approximate top-k. The fabric merges those
lists by distance and keeps k. A true global top-k neighbour ranks above every other vector, so it survives
the merge whenever its store returned it. Its store returns it with that store's recall@10 r_i. That figure is
a little pessimistic for the first few ranks, which ANN search finds more often. So

    recall = Σ over queried stores i of share_i(topic) · r_i

This is the expected recall given the route; the realised randomness is the route itself. A store that is not
queried contributes nothing, and that is how a misroute loses recall.

**The routed classifier.** A content classifier sees the query and predicts a domain with a confidence c. It
is modelled as calibrated: c ~ Beta(κ·a, κ·(1 − a)), and the prediction is right with probability c. The
overall accuracy is then a, and raising the threshold keeps the predictions more likely to be right. A wrong
prediction picks one of the other domains uniformly. If c ≥ threshold, only the predicted store is queried;
otherwise the query fans out to every store. The classifier adds ``classifier_ms`` before the store queries
start (a linear head over the query embedding, which dense retrieval computes anyway: an assumption).

**Hybrid lexical + dense (reciprocal rank fusion)** is a store option. BM25 runs in parallel with the dense
search on its own engine, so the store answers when the slower of the two is done (``sim/retrieval/rag.py``).
Its effect on recall is an assumed relative cut in misses, ``recall_uplift``: r' = 1 − (1 − r)(1 − u).
Published gains are nDCG@10, not recall@10: RRF hybrids beat dense-only by roughly 5-15 % on BEIR, and by 6.1
% on TREC-COVID (arXiv 2604.13728). So u is a scenario assumption, not a measured figure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from pydantic import BaseModel, Field

from fleettwin.models.base import StrictModel
from fleettwin.models.errors import ConfigError
from fleettwin.models.registry import Registry
from fleettwin.models.workload.request import Request

ALL_DOMAINS = "*"  # a store holding every domain (the monolithic store)


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreView:
    """What a retrieval router sees of one store."""

    name: str
    domain: str
    n_vectors: int
    recall: float  # recall@10 of the store's own top-10 (hybrid uplift applied)


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutePlan:
    """A router's decision for one query: which stores (by index) to query and why."""

    stores: tuple[int, ...]
    fanned_out: bool
    predicted: str | None = None
    confidence: float | None = None
    overhead_s: float = 0.0  # time spent deciding (the classifier) before any store is queried


class RetrievalRouter(Protocol):
    def check(self, stores: Sequence[StoreView]) -> None:
        """Raise ``ConfigError`` if the router cannot work with these stores."""

    def plan(self, topic: str | None, stores: Sequence[StoreView], rng: np.random.Generator) -> RoutePlan: ...


RETRIEVAL_ROUTERS: Registry[RetrievalRouter] = Registry("retrieval router")


def domains(stores: Sequence[StoreView]) -> list[str]:
    return sorted({s.domain for s in stores if s.domain != ALL_DOMAINS})


def topic_shares(topic: str | None, stores: Sequence[StoreView], locality: float) -> np.ndarray:
    """Fraction of a query's exact global top-k held by each store (sums to 1)."""
    n = np.array([s.n_vectors for s in stores], dtype=float)
    spread = n / n.sum()
    home = np.array([s.domain == topic or s.domain == ALL_DOMAINS for s in stores])
    if topic is None or not home.any():
        return spread
    local = np.where(home, n, 0.0) / n[home].sum()
    return locality * local + (1.0 - locality) * spread


def merged_recall(
    topic: str | None, queried: Sequence[int], stores: Sequence[StoreView], locality: float
) -> float:
    """Expected recall@k of the merged top-k from the ``queried`` stores (see the module docstring)."""
    shares = topic_shares(topic, stores, locality)
    return float(sum(shares[i] * stores[i].recall for i in set(queried)))


def hybrid_recall(dense_recall: float, uplift: float) -> float:
    """Recall after reciprocal rank fusion with BM25, modelled as cutting misses by ``uplift``."""
    return 1.0 - (1.0 - dense_recall) * (1.0 - uplift)


@RETRIEVAL_ROUTERS.register("fanout_all")
class FanoutAll:
    """Query every store and merge: the best recall, the latency of the slowest store, every store loaded."""

    def __init__(self, params: BaseModel):
        self.params = params

    def check(self, stores: Sequence[StoreView]) -> None:
        pass

    def plan(self, topic: str | None, stores: Sequence[StoreView], rng: np.random.Generator) -> RoutePlan:
        return RoutePlan(stores=tuple(range(len(stores))), fanned_out=True)


@RETRIEVAL_ROUTERS.register("monolithic")
class Monolithic:
    """One store holding the whole corpus (domain ``*``)."""

    def __init__(self, params: BaseModel):
        self.params = params

    def check(self, stores: Sequence[StoreView]) -> None:
        if len(stores) != 1 or stores[0].domain != ALL_DOMAINS:
            raise ConfigError(
                f"router 'monolithic' needs exactly one store with domain '{ALL_DOMAINS}', got "
                f"{[(s.name, s.domain) for s in stores]}"
            )

    def plan(self, topic: str | None, stores: Sequence[StoreView], rng: np.random.Generator) -> RoutePlan:
        return RoutePlan(stores=(0,), fanned_out=False)


@RETRIEVAL_ROUTERS.register("routed")
class Routed:
    """A calibrated content classifier sends a confident query to its predicted domain's store and fans the
    rest out to every store."""

    class Params(StrictModel):
        accuracy: float = Field(0.95, gt=0.0, le=1.0)  # P(predicted domain = true topic), over all queries
        concentration: float = Field(20.0, gt=0.0)  # κ of the Beta confidence; larger = confidences nearer a
        threshold: float = Field(0.8, ge=0.0, le=1.0)  # route when confidence >= threshold, else fan out
        classifier_ms: float = Field(0.1, ge=0.0)

    def __init__(self, params: Params):
        self.params = params

    def check(self, stores: Sequence[StoreView]) -> None:
        doms = [s.domain for s in stores]
        if ALL_DOMAINS in doms:
            raise ConfigError(
                "router 'routed' needs one store per domain; a store with domain '*' holds them all"
            )
        if len(set(doms)) != len(doms):
            raise ConfigError(f"router 'routed' needs one store per domain, got domains {doms}")

    def confidence(self, rng: np.random.Generator) -> float:
        a, k = self.params.accuracy, self.params.concentration
        return 1.0 if a >= 1.0 else float(rng.beta(k * a, k * (1.0 - a)))

    def plan(self, topic: str | None, stores: Sequence[StoreView], rng: np.random.Generator) -> RoutePlan:
        p = self.params
        overhead = p.classifier_ms / 1000.0
        doms = domains(stores)
        c = self.confidence(rng)
        correct = rng.random() < c
        others = [d for d in doms if d != topic]
        predicted = (
            topic if (correct and topic in doms) or not others else others[int(rng.integers(len(others)))]
        )
        if c >= p.threshold:
            return RoutePlan(
                stores=tuple(i for i, s in enumerate(stores) if s.domain == predicted),
                fanned_out=False,
                predicted=predicted,
                confidence=c,
                overhead_s=overhead,
            )
        return RoutePlan(
            stores=tuple(range(len(stores))),
            fanned_out=True,
            predicted=predicted,
            confidence=c,
            overhead_s=overhead,
        )


def tag_rag(
    requests: Sequence[Request], *, fraction: float, topic_mix: Mapping[str, float], rng: np.random.Generator
) -> list[Request]:
    """Mark a ``fraction`` of ``requests`` as RAG and give those a topic drawn from ``topic_mix`` (weights,
    any scale). A request that already has a topic (from a trace) keeps it."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    names = sorted(topic_mix)
    weights = np.array([topic_mix[t] for t in names], dtype=float)
    if not names or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(f"topic_mix needs at least one positive weight, got {dict(topic_mix)}")
    rag = rng.random(len(requests)) < fraction
    topics = rng.choice(len(names), size=len(requests), p=weights / weights.sum())
    return [
        dataclasses.replace(r, rag=True, topic=r.topic or names[t]) if is_rag else r
        for r, is_rag, t in zip(requests, rag, topics, strict=True)
    ]
