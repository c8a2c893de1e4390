"""Open-loop load generation: replay a list of ``Request`` records against vLLM-compatible servers.

Each request is sent at its arrival time (``arrival_s / speedup`` after the start), whether or not earlier
ones have finished — open loop, as real users arrive — to a target chosen by a replica router from
``models/routing/replica.py`` (``round_robin``, ``least_outstanding``) over the generator's own count of
requests in flight per target. Prompts are token-id lists of exactly ``prompt_tokens`` ids and ``max_tokens``
= ``output_tokens`` with ``ignore_eos``, so a server produces exactly the trace's lengths (chat mode sends
text instead; token counts are then the server's tokenizer's).

Bounded by construction: at most ``max_requests`` are sent, none after ``duration_s``, and requests still in
flight ``drain_timeout_s`` after the last send are cancelled and reported as ``timeout``. One row per
request sent (see ``COLUMNS``); times are seconds since the replay started, latencies are client-side.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd

from fleettwin.live.client import CompletionResult, VllmClient, prompt_ids
from fleettwin.live.metrics import InFlightView
from fleettwin.models.routing.replica import REPLICA_ROUTERS
from fleettwin.models.workload.request import Request

COLUMNS = (
    "id",
    "target",
    "arrival_s",
    "sent_s",
    "first_token_s",
    "finish_s",
    "prompt_tokens",
    "output_tokens",
    "completion_tokens",
    "ttft_s",
    "tpot_s",
    "e2e_s",
    "lateness_s",
    "status",
    "http_status",
    "error",
    "retries",
)
COMPLETED, REJECTED, ERROR, TIMEOUT = "completed", "rejected", "error", "timeout"


def _row(req: Request, target: str, arrival: float, res: CompletionResult | None, status: str) -> tuple:
    if res is None:  # cancelled at the drain deadline before any result
        nan = math.nan
        return (
            req.id,
            target,
            arrival,
            nan,
            nan,
            nan,
            req.prompt_tokens,
            req.output_tokens,
            0,
            nan,
            nan,
            nan,
            nan,
            status,
            None,
            "cancelled at the drain deadline",
            0,
        )
    return (
        req.id,
        target,
        arrival,
        res.sent_s,
        res.first_token_s,
        res.finish_s,
        req.prompt_tokens,
        req.output_tokens,
        res.output_tokens,
        res.ttft_s,
        res.tpot_s,
        res.e2e_s,
        res.sent_s - arrival,
        status,
        res.status,
        res.error,
        res.retries,
    )


def _status(res: CompletionResult) -> str:
    if res.ok:
        return COMPLETED
    return REJECTED if res.status is not None and 400 <= res.status < 500 else ERROR


async def replay(
    requests: Sequence[Request],
    targets: Sequence[str],
    *,
    speedup: float = 1.0,
    duration_s: float | None = None,
    max_requests: int | None = None,
    router: str = "round_robin",
    chat: bool = False,
    stream: bool = True,
    model: str | None = None,
    token: str | None = None,
    verify: bool | str = True,
    timeout_s: float = 60.0,
    drain_timeout_s: float = 30.0,
    retries: int = 3,
    cert: tuple[str, str] | None = None,
) -> pd.DataFrame:
    """Replay ``requests`` (sorted by arrival) against ``targets`` (base URLs); one row per request sent.

    ``model``: the model name to send; None asks each target's ``/v1/models`` once (first name). ``verify``:
    verify TLS, don't, or a CA file; ``cert``: (certificate, key) to present to targets that require mTLS."""
    if not targets:
        raise ValueError("at least one target URL is needed")
    if speedup <= 0:
        raise ValueError(f"speedup must be > 0, got {speedup}")
    picker = REPLICA_ROUTERS.create(router)
    view = InFlightView(len(targets))
    t0 = time.perf_counter()

    def clock() -> float:
        return time.perf_counter() - t0

    clients = [
        VllmClient(
            u, token=token, verify=verify, timeout_s=timeout_s, retries=retries, clock=clock, cert=cert
        )
        for u in targets
    ]
    rows: list[tuple] = []
    tasks: dict[asyncio.Task, tuple[Request, str, float]] = {}
    try:
        models = [model] * len(targets) if model is not None else await discover_models(clients)
        todo = list(requests)[: max_requests if max_requests is not None else None]
        t0 = time.perf_counter()  # the replay starts after discovery

        async def one(req: Request, i: int) -> None:
            kw = {"model": models[i], "stream": stream}
            try:
                if chat:
                    text = " tok" * req.prompt_tokens
                    res = await clients[i].chat([{"role": "user", "content": text}], req.output_tokens, **kw)
                else:
                    res = await clients[i].completion(
                        prompt_ids(req.prompt_tokens, req.id), req.output_tokens, **kw
                    )
                rows.append(_row(req, targets[i], req.arrival_s / speedup, res, _status(res)))
            finally:
                view.counts[i] -= 1

        for req in todo:
            at = req.arrival_s / speedup
            if duration_s is not None and at >= duration_s:
                break
            delay = at - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            i = picker.choose(req, view, clock())
            view.counts[i] += 1
            tasks[asyncio.create_task(one(req, i))] = (req, targets[i], at)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=drain_timeout_s)
            for task in pending:
                task.cancel()
                req, target, at = tasks[task]
                rows.append(_row(req, target, at, None, TIMEOUT))
            if pending:
                await asyncio.wait(pending, timeout=5.0)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)
    df = pd.DataFrame.from_records(rows, columns=list(COLUMNS))
    return df.sort_values("id", kind="stable").reset_index(drop=True)


async def discover_models(clients: Sequence[VllmClient]) -> list[str | None]:
    async def first_model(c: VllmClient) -> str | None:
        try:
            names = await c.models()
        except Exception:  # an unreachable target is reported per request, not here
            return None
        return names[0] if names else None

    return list(await asyncio.gather(*(first_model(c) for c in clients)))


def summarize(df: pd.DataFrame) -> dict:
    """Counts, throughput and p50/p95/p99 of the client-side latencies of completed requests."""
    done = df[df["status"] == COMPLETED]
    span = float(done["finish_s"].max() - df["sent_s"].min()) if len(done) else 0.0
    out: dict = {
        "requests": {
            "sent": len(df),
            **{s: int((df["status"] == s).sum()) for s in (COMPLETED, REJECTED, ERROR, TIMEOUT)},
        },
        "throughput_rps": len(done) / span if span > 0 else 0.0,
        "output_tokens_per_s": float(done["completion_tokens"].sum()) / span if span > 0 else 0.0,
        "latency_s": {},
    }
    for col in ("ttft_s", "tpot_s", "e2e_s"):
        vals = done[col].dropna().to_numpy()
        out["latency_s"][col.removesuffix("_s")] = {
            f"p{q}": float(np.percentile(vals, q)) if len(vals) else math.nan for q in (50, 95, 99)
        }
    return out
