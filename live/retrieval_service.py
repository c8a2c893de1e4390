"""The retrieval service: saved FAISS stores (``live/faiss_store.py``) served by collection name over HTTP.

    POST /v1/retrieve     {"collection": "docs", "query": "text" | "vector": [...], "k": 5, "nprobe": 8}
                          -> {"collection", "index_type", "ids", "scores", "passages" (when stored),
                              "took_ms"}
    GET  /v1/collections  name, index type, vectors, dimension, embedder and search knob of each collection
    GET  /health          200 (every collection is loaded before the server listens); /livez, /readyz alike
    GET  /metrics         Prometheus text: requests by collection and status, latency per collection
    GET  /openapi.json, /docs

A collection is a store saved by ``VectorStore.save`` (``PATH`` and ``PATH.meta.json``) plus two optional
files that ``save_collection`` writes beside it: ``PATH.embedder.json`` (the embedder that made the vectors,
so a text query is embedded the same way; without it only vector queries are accepted) and
``PATH.passages.jsonl`` (line i is the passage of id i, returned with the hits). ``scores`` are the index's
own: inner product for ``ip`` stores (higher is closer), squared L2 for ``l2`` ones (lower is closer). The
search knob (``nprobe``, ``ef_search``, ``itopk_size``) is per request, as in ``VectorStore.search``.

As on the emulator, a bearer token, when set, guards ``/v1/*`` only; TLS and mTLS are the server's
(``live/server.py``: ``serve``, ``serve_in_thread`` with ``ssl_ca_certs``). Requests pass
``live/http_guard.py`` first (body size, timeouts, JSON depth and text, the client certificate's identity);
searches run on a worker thread (FAISS releases the GIL), so a long one does not hold up ``/health``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from fleettwin.io import atomic_write, write_json
from fleettwin.live.api_error import ApiError
from fleettwin.live.embed import Embedder, make_embedder
from fleettwin.live.faiss_store import SEARCH_PARAM, IndexSpec, VectorStore, VectorStoreError
from fleettwin.live.http_guard import HttpLimits, parse_json_body
from fleettwin.live.metric_set import MetricSet
from fleettwin.live.openapi_doc import document_bodies
from fleettwin.live.retrieval_api import MAX_K, RetrieveRequest, parse_request
from fleettwin.live.server import bearer_guard, server_app
from fleettwin.live.service_routes import add_version_and_metrics
from fleettwin.live.tracing import Tracing, tracing_from_env
from fleettwin.models.errors import ConfigError

EMBEDDER_SUFFIX, PASSAGES_SUFFIX = ".embedder.json", ".passages.jsonl"
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
UNKNOWN = "(unknown)"  # the collection label of requests naming no served collection (bounded cardinality)
__all__ = [
    "MAX_K",
    "Collection",
    "build_collection",
    "create_retrieval_app",
    "load_collection",
    "save_collection",
]


@dataclass(frozen=True)
class Collection:
    """One served store, with what a text query needs (its embedder) and what a hit returns (its passages)."""

    name: str
    store: VectorStore
    embedder: Embedder | None = None
    embedder_ref: dict[str, Any] | None = None  # {"name", "params"} as saved
    passages: tuple[dict[str, Any], ...] | None = None

    def describe(self) -> dict[str, Any]:
        s = self.store
        return {
            "name": self.name,
            "index_type": s.spec.index_type,
            "vectors": s.ntotal,
            "dim": s.dim,
            "metric": s.spec.metric,
            "search_param": SEARCH_PARAM[s.spec.index_type],
            "embedder": self.embedder_ref,
            "passages": self.passages is not None,
        }


def _sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def save_collection(
    path: str | Path,
    store: VectorStore,
    *,
    embedder: str | None = None,
    embedder_params: dict[str, Any] | None = None,
    passages: Sequence[dict[str, Any]] | None = None,
) -> Path:
    """Save ``store`` at ``path`` with the embedder that made its vectors and the passage of each row."""
    path = Path(path)
    if passages is not None and len(passages) != store.ntotal:
        raise ConfigError(f"{path}: {len(passages)} passages for {store.ntotal} vectors; row i is passage i")
    store.save(path)
    if embedder is not None:
        write_json(_sidecar(path, EMBEDDER_SUFFIX), {"name": embedder, "params": dict(embedder_params or {})})
    if passages is not None:
        lines = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in passages)
        atomic_write(_sidecar(path, PASSAGES_SUFFIX), lambda p: p.write_text(lines, encoding="utf-8"))
    return path


def build_collection(
    path: str | Path,
    passages: Sequence[dict[str, Any]],
    *,
    embedder: str = "hashing",
    embedder_params: dict[str, Any] | None = None,
    index_type: str = "flat",
    seed: int = 0,
) -> Path:
    """Embed ``passages`` (dicts with ``text``), build a store of ``index_type`` and save it as a
    collection."""
    if not passages:
        raise ConfigError(f"{path}: no passages to index")
    emb = make_embedder(embedder, embedder_params)
    vectors = emb.encode([p["text"] for p in passages])
    store = VectorStore.build(IndexSpec(index_type=index_type, dim=emb.dim), vectors, seed=seed)
    return save_collection(path, store, embedder=embedder, embedder_params=embedder_params, passages=passages)


def load_collection(name: str, path: str | Path) -> Collection:
    """A collection saved at ``path``; a missing or unreadable file is a ``ConfigError`` naming it."""
    path = Path(path)
    try:
        store = VectorStore.load(path)
    except VectorStoreError as exc:  # includes a missing index or metadata file
        raise ConfigError(f"collection {name!r}: {exc}") from None
    ref = emb = passages = None
    emb_path, pass_path = _sidecar(path, EMBEDDER_SUFFIX), _sidecar(path, PASSAGES_SUFFIX)
    if emb_path.is_file():
        try:
            ref = json.loads(emb_path.read_text())
            emb = make_embedder(ref["name"], ref.get("params"))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"collection {name!r}: {emb_path}: not an embedder record: {exc}") from None
        if emb.dim != store.dim:
            raise ConfigError(
                f"collection {name!r}: embedder {ref['name']} makes {emb.dim}-dimensional vectors, "
                f"the index has dimension {store.dim}"
            )
    if pass_path.is_file():
        lines = pass_path.read_text(encoding="utf-8").splitlines()
        try:
            passages = tuple(json.loads(x) for x in lines)
        except ValueError as exc:
            raise ConfigError(f"collection {name!r}: {pass_path}: {exc}") from None
        if len(passages) != store.ntotal:
            raise ConfigError(
                f"collection {name!r}: {pass_path} has {len(passages)} lines for {store.ntotal} vectors"
            )
    return Collection(name, store, emb, ref, passages)


class RetrievalMetrics(MetricSet):
    def __init__(self, collections: dict[str, Collection]):
        super().__init__("retrieval")
        self.requests = self.counter(
            "requests", "Retrieve requests by collection and HTTP status.", ("collection", "status")
        )
        self.duration = self.histogram(
            "request_duration_seconds",
            "Retrieve requests, body read to answer ready (embedding and search included).",
            ("collection",),
            buckets=LATENCY_BUCKETS,
        )
        self.search = self.histogram(
            "search_seconds", "Time in the index search alone.", ("collection",), buckets=LATENCY_BUCKETS
        )
        vectors = self.gauge(
            "collection_vectors", "Vectors in each served collection.", ("collection", "index_type")
        )
        for name, c in collections.items():
            vectors.labels(name, c.store.spec.index_type).set(c.store.ntotal)
            self.duration.labels(name)
            self.search.labels(name)


def _search(c: Collection, req: RetrieveRequest) -> tuple[list[int], list[float], float]:
    """Embed (text queries) and search; runs on a worker thread, as FAISS and the embedders block."""
    if req.query is not None:
        if c.embedder is None:
            raise ApiError(
                400,
                f"collection '{c.name}' has no embedder record, so it takes 'vector' queries only",
                param="query",
            )
        q = c.embedder.encode([req.query])
    else:
        q = [req.vector]
    t0 = time.perf_counter()
    try:
        res = c.store.search(
            q,
            min(req.k, max(1, c.store.ntotal)),
            nprobe=req.nprobe,
            ef_search=req.ef_search,
            itopk_size=req.itopk_size,
        )
    except VectorStoreError as exc:
        raise ApiError(400, str(exc)) from None
    took = time.perf_counter() - t0
    ids, scores = res.ids[0], res.distances[0]
    keep = ids >= 0  # -1: fewer than k vectors were reachable (IVF with a small nprobe)
    return [int(i) for i in ids[keep]], [float(s) for s in scores[keep]], took


def create_retrieval_app(
    collections: dict[str, Collection],
    *,
    token: str | None = None,
    tracing: Tracing | None = None,
    limits: HttpLimits | None = None,
) -> FastAPI:
    """The app over already-loaded ``collections`` (so a bad store fails before the server listens).
    ``tracing`` (default: from ``FLEETTWIN_TRACING``, off unless set; ``live/tracing.py``): a server span per
    search that continues the caller's ``traceparent`` (the gateway's)."""
    if not collections:
        raise ConfigError("serve at least one collection")
    tracing = tracing or tracing_from_env("fleettwin-retrieval")
    metrics = RetrievalMetrics(collections)
    limits = limits or HttpLimits()
    app = server_app(
        "fleettwin retrieval service",
        "FAISS collections served by name (docs/live.md, Retrieval service).",
        limits,
    )
    document_bodies(app, {"/v1/retrieve": (RetrieveRequest,)}, bearer_paths=("/v1/",) if token else ())
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(bearer_guard(token))])

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/livez")
    async def livez() -> dict:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> dict:
        """Every collection was loaded before the server listened, so a listening service is ready."""
        return {"status": "ready", "collections": len(collections)}

    add_version_and_metrics(app, "retrieval", metrics.exposition)

    @v1.get("/collections")
    async def list_collections() -> dict:
        return {"object": "list", "data": [c.describe() for c in collections.values()]}

    @v1.post("/retrieve")
    async def retrieve(request: Request) -> dict:
        t0 = time.perf_counter()
        label = UNKNOWN
        span = tracing.server_span("retrieval.retrieve", request.headers, {"http.route": "/v1/retrieve"})
        try:
            body = await parse_json_body(await request.body(), max_depth=limits.max_json_depth)
            name = body.get("collection") if isinstance(body, dict) else None
            if isinstance(name, str) and name in collections:
                label = name
            req = parse_request(body)
            c = collections.get(req.collection)
            if c is None:
                raise ApiError(
                    404,
                    f"no collection '{req.collection}'; served: {', '.join(collections)}",
                    param="collection",
                )
            ids, scores, search_s = await run_in_threadpool(_search, c, req)
        except ApiError as exc:
            metrics.requests.labels(label, str(exc.status)).inc()
            tracing.end(span, error=exc, **{"http.response.status_code": exc.status})
            raise
        took = time.perf_counter() - t0
        metrics.requests.labels(label, "200").inc()
        metrics.duration.labels(label).observe(took)
        metrics.search.labels(label).observe(search_s)
        out: dict[str, Any] = {
            "collection": c.name,
            "index_type": c.store.spec.index_type,
            "ids": ids,
            "scores": [s if math.isfinite(s) else None for s in scores],
            "took_ms": round(took * 1e3, 3),
        }
        if c.passages is not None:
            out["passages"] = [c.passages[i] for i in ids]
        tracing.end(
            span,
            **{
                "http.response.status_code": 200,
                "fleettwin.collection": c.name,
                "fleettwin.hits": len(ids),
                "fleettwin.search_ms": round(search_s * 1e3, 3),
            },
        )
        return out

    app.include_router(v1)
    return app
