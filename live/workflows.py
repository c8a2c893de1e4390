"""Run agent/RAG workflow instances against OpenAI-compatible servers (the gateway or emulators), live.

The instances are the simulator's (``models.workload.workflows.sample_instances`` with the scenario's seed),
so one scenario gives the same DAGs, token lengths and tool delays in both worlds. Each workflow starts at
``arrival_s / speedup`` after the start (open loop: workflows do not wait for each other); inside it a node
starts as soon as all its parents have completed, as an asyncio task:

- ``llm``: one streamed completion of exactly ``prompt_tokens`` token ids and ``output_tokens`` outputs
  (``max_tokens`` + ``ignore_eos``, as ``live/loadgen.py``; ``chat`` sends text instead) to the target a
  replica router picks over this executor's own in-flight counts; ``rag: true`` first runs a retrieval and
  sends ``context_tokens`` more prompt tokens, as the simulator's RAG stage does;
- ``retrieval``: a hybrid BM25 + dense search of a local corpus (``live/hybrid.py``), in a worker thread so
  the event loop keeps going; the query is a window of a corpus paragraph drawn from the workflow's own
  stream. With ``retrieval_collection`` the search goes instead to ``POST /v1/retrieve`` of the first target
  — a gateway in front of a retrieval service (``live/retrieval_service.py``), or the service itself — in
  that collection;
- ``tool``: a sleep of the instance's delay (not sped up: ``speedup`` compresses the arrivals only, as in the
  load generator, never the work).

A failed call (HTTP error, connection failure) fails the node, its descendants are skipped. Bounded like the
load generator: no workflow starts at or after ``duration_s``, at most ``max_workflows``, and whatever still
runs ``drain_timeout_s`` after the last start is cancelled (nodes ``unfinished``). Results: one row per
workflow started and one per node, with the simulator's columns (``models/workflows/records.py``); times are
seconds since the start on this process's clock. With tracing on (``live/tracing.py``) each workflow is a
trace: a ``workflow`` span, a span per node, retrieval's lexical/dense/fuse steps, and each LLM call's
``traceparent`` continued by the gateway and the emulator.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Sequence

import httpx
import numpy as np
import pandas as pd

from fleettwin.live.client import VllmClient, prompt_ids, tls_verify
from fleettwin.live.hybrid import HybridRetriever
from fleettwin.live.loadgen import discover_models
from fleettwin.live.metrics import InFlightView
from fleettwin.live.tracing import NOOP, Tracing
from fleettwin.models.routing.replica import REPLICA_ROUTERS
from fleettwin.models.workflows.records import NodeOutcome, WorkflowProgress, frames
from fleettwin.models.workflows.templates import (
    COMPLETED,
    FAILED,
    LLM,
    RETRIEVAL,
    TOOL,
    UNFINISHED,
    WorkflowInstance,
)
from fleettwin.models.workload.request import Request


class ServiceRetriever:
    """Retrieval nodes answered by ``POST /v1/retrieve`` (a retrieval service, or a gateway in front of one)
    in ``collection``; a refusal or an unreachable service fails the node with the reason."""

    def __init__(
        self,
        url: str,
        collection: str,
        *,
        token: str | None = None,
        verify: bool | str = True,
        timeout_s: float = 30.0,
    ):
        self.url, self.collection = url.rstrip("/"), collection
        self._http = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {token}"} if token else {},
            verify=tls_verify(verify),
            timeout=timeout_s,
        )

    async def search(self, query: str, k: int, headers: dict[str, str]) -> int:
        """The number of hits."""
        r = await self._http.post(
            f"{self.url}/v1/retrieve",
            json={"collection": self.collection, "query": query, "k": k},
            headers=headers,
        )
        if r.status_code != 200:
            raise RuntimeError(f"retrieval HTTP {r.status_code}: {r.text[:200]}")
        return len(r.json().get("ids") or [])

    async def aclose(self) -> None:
        await self._http.aclose()


@dataclasses.dataclass
class _Calls:
    """What the nodes of every workflow share: the clients, the router's view, the retriever, the clock."""

    clients: list[VllmClient]
    targets: list[str]
    models: list[str | None]
    picker: object
    view: InFlightView
    clock: object
    chat: bool
    stream: bool
    retriever: HybridRetriever | None
    service: ServiceRetriever | None
    k: int
    context_tokens: int
    tracing: Tracing
    ids: itertools.count = dataclasses.field(default_factory=itertools.count)


async def _retrieve(calls: _Calls, inst: WorkflowInstance, i: int, parent) -> int:
    """Run one retrieval (in a thread); returns the number of passages found."""
    span = calls.tracing.start("retrieval.search", parent=parent, attributes={"fleettwin.k": calls.k})
    _, query = calls.retriever.sample_query(np.random.default_rng([inst.id, i]))
    try:
        if calls.service is not None:
            hits = await calls.service.search(query, calls.k, calls.tracing.headers(span))
        else:
            hits = len(
                await asyncio.to_thread(
                    calls.retriever.search, query, calls.k, tracing=calls.tracing, parent=span
                )
            )
    except BaseException as exc:
        calls.tracing.end(span, error=exc)
        raise
    calls.tracing.end(span, **{"fleettwin.hits": hits})
    return hits


async def _llm(calls: _Calls, inst: WorkflowInstance, i: int, parent, start: float) -> NodeOutcome:
    node = inst.nodes[i]
    prompt = node.prompt_tokens
    if node.rag:
        await _retrieve(calls, inst, i, parent)
        prompt += calls.context_tokens
    rid = next(calls.ids)
    req = Request(id=rid, arrival_s=start, prompt_tokens=prompt, output_tokens=node.output_tokens)
    t = calls.picker.choose(req, calls.view, calls.clock())
    calls.view.counts[t] += 1
    span = calls.tracing.start(
        "workflow.llm",
        parent=parent,
        kind="client",
        attributes={
            "server.address": calls.targets[t],
            "gen_ai.usage.input_tokens": prompt,
            "gen_ai.request.max_tokens": node.output_tokens,
        },
    )
    headers = calls.tracing.headers(span)
    kw = {"model": calls.models[t], "stream": calls.stream, "headers": headers}
    try:
        if calls.chat:
            res = await calls.clients[t].chat(
                [{"role": "user", "content": " tok" * prompt}], node.output_tokens, **kw
            )
        else:
            res = await calls.clients[t].completion(prompt_ids(prompt, rid), node.output_tokens, **kw)
    except BaseException as exc:
        calls.tracing.end(span, error=exc)
        raise
    finally:
        calls.view.counts[t] -= 1
    calls.tracing.end(
        span, error=None if res.ok else res.error, **{"gen_ai.usage.output_tokens": res.output_tokens}
    )
    return NodeOutcome(
        status=COMPLETED if res.ok else FAILED,
        start_s=start,
        end_s=res.finish_s if res.ok else float("nan"),
        prompt_tokens=res.prompt_tokens or prompt,
        output_tokens=res.output_tokens,
        request_id=rid,
        reason=res.error,
    )


async def _node(calls: _Calls, inst: WorkflowInstance, i: int, root, start: float) -> NodeOutcome:
    """Run one node that may start (its parents completed); a failure is its outcome, never an exception."""
    tr, node = calls.tracing, inst.nodes[i]
    span = None
    try:
        if node.kind == LLM:  # the call's own span, with its traceparent
            return await _llm(calls, inst, i, root, start)
        span = tr.start(f"workflow.{node.kind}", parent=root, attributes={"fleettwin.node": node.key})
        if node.kind == RETRIEVAL:
            await _retrieve(calls, inst, i, span)
        elif node.kind == TOOL:
            await asyncio.sleep(node.delay_s)
        else:
            raise AssertionError(f"unknown node kind {node.kind!r}")
    except Exception as exc:  # a broken retriever fails the node, not the executor
        tr.end(span, error=exc)
        return NodeOutcome(status=FAILED, start_s=start, reason=f"{type(exc).__name__}: {exc}")
    tr.end(span)
    return NodeOutcome(status=COMPLETED, start_s=start, end_s=calls.clock())


async def _workflow(calls: _Calls, inst: WorkflowInstance, sink: dict[int, list[NodeOutcome]]) -> None:
    """Every node of one workflow, each as soon as its parents completed (``WorkflowProgress``, the
    simulator's bookkeeping); its outcomes, in node order, go to ``sink[inst.id]`` however it ends (a workflow
    cancelled at the drain deadline keeps what it finished)."""
    tr = calls.tracing
    root = tr.start(
        "workflow", attributes={"fleettwin.workflow": inst.id, "fleettwin.template": inst.template}
    )
    progress = WorkflowProgress(inst)
    running: dict[asyncio.Task, int] = {}

    def start(i: int) -> None:
        progress.start(i, now := calls.clock())
        running[asyncio.create_task(_node(calls, inst, i, root, now))] = i

    try:
        for i in progress.roots():
            start(i)
        while running:
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                for child in progress.settle(running.pop(task), task.result()):
                    start(child)
    finally:
        for task in running:
            task.cancel()
        drained = "cancelled at the drain deadline"
        out = progress.outcomes(running=drained, not_started=drained)
        failed = [o.reason for o in out if o.status == FAILED]
        tr.end(root, error=failed[0] if failed else None)
        sink[inst.id] = out


async def run_workflows(
    instances: Sequence[WorkflowInstance],
    targets: Sequence[str],
    *,
    speedup: float = 1.0,
    duration_s: float | None = None,
    max_workflows: int | None = None,
    router: str = "round_robin",
    model: str | None = None,
    token: str | None = None,
    verify: bool | str = True,
    chat: bool = False,
    stream: bool = True,
    timeout_s: float = 60.0,
    drain_timeout_s: float = 60.0,
    retries: int = 3,
    retriever: HybridRetriever | None = None,
    retrieval_collection: str | None = None,
    k: int = 10,
    context_tokens: int = 0,
    tracing: Tracing = NOOP,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Execute ``instances`` (sorted by arrival) against ``targets``; (one row per workflow, one per node).
    ``retriever`` gives the query text, and answers it unless ``retrieval_collection`` sends the searches to
    the first target's ``/v1/retrieve``."""
    if not targets:
        raise ValueError("at least one target URL is needed")
    if speedup <= 0:
        raise ValueError(f"speedup must be > 0, got {speedup}")
    if retriever is None and any(n.kind == RETRIEVAL or n.rag for w in instances for n in w.nodes):
        raise ValueError("these workflows retrieve: give a retriever (live/hybrid.py)")
    todo = list(instances)[: max_workflows if max_workflows is not None else None]
    t0 = time.perf_counter()

    def clock() -> float:
        return time.perf_counter() - t0

    clients = [
        VllmClient(u, token=token, verify=verify, timeout_s=timeout_s, retries=retries, clock=clock)
        for u in targets
    ]
    service = (
        ServiceRetriever(targets[0], retrieval_collection, token=token, verify=verify, timeout_s=timeout_s)
        if retrieval_collection
        else None
    )
    runs: dict[asyncio.Task, WorkflowInstance] = {}
    results: dict[int, list[NodeOutcome]] = {}
    try:
        models = [model] * len(targets) if model is not None else await discover_models(clients)
        calls = _Calls(
            clients,
            list(targets),
            models,
            REPLICA_ROUTERS.create(router),
            InFlightView(len(targets)),
            clock,
            chat,
            stream,
            retriever,
            service,
            k,
            context_tokens,
            tracing,
        )
        t0 = time.perf_counter()  # the run starts after discovery

        for inst in todo:
            at = inst.arrival_s / speedup
            if duration_s is not None and at >= duration_s:
                break
            if (delay := at - clock()) > 0:
                await asyncio.sleep(delay)
            runs[asyncio.create_task(_workflow(calls, inst, results))] = inst
        if runs:
            _, pending = await asyncio.wait(runs, timeout=drain_timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
    finally:
        for task in runs:
            task.cancel()
        await asyncio.gather(
            *(c.aclose() for c in clients), *([service.aclose()] if service else []), return_exceptions=True
        )
    never_ran = NodeOutcome(status=UNFINISHED, reason="cancelled")
    return frames(
        (
            dataclasses.replace(inst, arrival_s=inst.arrival_s / speedup),
            results.get(inst.id) or [never_ran] * len(inst.nodes),
        )
        for inst in runs.values()
    )
