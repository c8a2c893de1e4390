"""Measurement: a per-request sink, a pool time-series sampler, and the summary statistics.

Results are plain records collected here; writing files happens at the edges (``sim/report.py``, the CLI).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import simpy

from fleettwin.models.engine.queue import SeqState
from fleettwin.models.workload.request import Request
from fleettwin.sim.pool import Pool

# Outcomes (failed: retries exhausted, dropped by a policy: sim/failures/injectors.py) and the summary
# statistics live in sim/stats.py; re-exported here, where every caller imports them from.
from fleettwin.sim.stats import (  # noqa: F401
    COMPLETED,
    DROPPED,
    FAILED,
    PERCENTILES,
    REJECTED,
    UNFINISHED,
    RequestStats,
    Slo,
    Values,
    slo_met,
)


class RequestLog:
    """Collects one row per request outcome, column-wise (cheap appends in the hot path).

    Retries and mitigations are rare, so they live in side tables keyed by request id and join the rows in
    ``to_frame`` (columns ``retries``, ``lost_s``: time spent in attempts that were thrown away,
    ``mitigation``) rather than widening every row (the controller reads rows by position)."""

    COLUMNS = (
        "id",
        "pool",
        "replica",
        "arrival_s",
        "first_scheduled_s",
        "first_token_s",
        "finish_s",
        "prompt_tokens",
        "output_tokens",
        "preemptions",
        "status",
        "reason",
    )

    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self.retries: dict[int, int] = {}
        self.lost_s: dict[int, float] = {}
        self.mitigation: dict[int, str] = {}
        # Request id -> called once with the request's row when it ends, whatever the outcome: requests
        # created during the run (an agent workflow's calls, sim/workflows/driver.py) wait on their outcome
        # here.
        self.on_outcome: dict[int, Callable[[tuple], None]] = {}
        self.base = 0  # rows already handed on (a streaming log writes them out: sim/stream.py)
        # Applied to each chunk's frame by a streaming log before it is summarised and written
        self.frame_hook: Callable[[pd.DataFrame], None] | None = None
        # Pool -> the API server's latency for a prompt of n tokens (sim/runner.simulate): rows record the
        # first token and the finish as the client sees them, so every reader (workflows, controllers) sees
        # those
        self.frontend: dict[str, Callable[[int], float]] = {}
        self._read: dict[int, int] = {}  # id(reader) -> rows it has read (read_new)

    @property
    def done(self) -> int:
        return self.base + len(self.rows)

    def read_new(self, reader: object) -> list[tuple]:
        """The rows added since ``reader``'s previous call (all of them on its first). A streaming log keeps
        rows until every reader has read them, so a reader should make its first call at the start of the
        run."""
        key = id(reader)  # readers need not be hashable (a dataclass controller is not)
        pos = self._read.get(key, 0)
        rows = self.rows[max(pos - self.base, 0) :]
        self._read[key] = self.base + len(self.rows)
        return rows

    def end_s(self, df: pd.DataFrame, now: float) -> float:
        """When the last completed request finished (``now`` when none did): where a run's clock stops."""
        done = df["status"] == COMPLETED
        return float(df.loc[done, "finish_s"].max()) if done.any() else float(now)

    def pool_stats(self) -> dict[str, RequestStats] | None:
        """Summary statistics per pool gathered during the run (a streaming log); None: summarise the
        frame."""
        return None

    def completed(self, pool: str, replica: int, seqs: list[SeqState]) -> None:
        append = self.rows.append
        frontend = self.frontend.get(pool) if self.frontend else None
        for s in seqs:
            r = s.req
            late = frontend(r.prompt_tokens) if frontend is not None else 0.0
            append(
                (
                    r.id,
                    pool,
                    replica,
                    r.arrival_s,
                    s.first_scheduled_s,
                    s.first_token_s + late,
                    s.finish_s + late,
                    r.prompt_tokens,
                    s.num_output,
                    s.preemptions,
                    COMPLETED,
                    "",
                )
            )
        if self.on_outcome:
            for row in self.rows[len(self.rows) - len(seqs) :]:
                self._notify(row)

    def rejected(self, pool: str, req: Request, reason: str, status: str = REJECTED) -> None:
        """A request that never reached a replica (``status`` UNFINISHED: it never arrived)."""
        nan = math.nan
        self.rows.append(
            (req.id, pool, -1, req.arrival_s, nan, nan, nan, req.prompt_tokens, 0, 0, status, reason)
        )
        if self.on_outcome:
            self._notify(self.rows[-1])

    def failed(self, pool: str, req: Request, reason: str) -> None:
        self.rejected(pool, req, reason, status=FAILED)

    def dropped(self, pool: str, req: Request, reason: str) -> None:
        self.rejected(pool, req, reason, status=DROPPED)

    def retried(self, req_id: int, lost_s: float) -> None:
        """Request ``req_id`` starts again; the ``lost_s`` seconds of its failed attempt are attributed to
        it."""
        self.retries[req_id] = self.retries.get(req_id, 0) + 1
        self.lost_s[req_id] = self.lost_s.get(req_id, 0.0) + lost_s

    def mitigated(self, req_id: int, what: str) -> None:
        """A policy changed the request (truncated, compressed, re-routed, fell back to another pool)."""
        prior = self.mitigation.get(req_id)
        self.mitigation[req_id] = f"{prior}; {what}" if prior else what

    def unfinished(self, pool: str, replica: int, seq: SeqState, reason: str) -> None:
        r = seq.req
        frontend = self.frontend.get(pool) if self.frontend else None
        first = seq.first_token_s + (frontend(r.prompt_tokens) if frontend is not None else 0.0)
        self.rows.append(
            (
                r.id,
                pool,
                replica,
                r.arrival_s,
                seq.first_scheduled_s,
                first,
                math.nan,
                r.prompt_tokens,
                seq.num_output,
                seq.preemptions,
                UNFINISHED,
                reason,
            )
        )
        if self.on_outcome:
            self._notify(self.rows[-1])

    def _notify(self, row: tuple) -> None:
        callback = self.on_outcome.pop(row[0], None)
        if callback is not None:
            callback(row)

    def to_frame(self) -> pd.DataFrame:
        df = pd.DataFrame.from_records(self.rows, columns=list(self.COLUMNS))
        df = df.sort_values("id", kind="stable").reset_index(drop=True)
        df["queue_s"] = df["first_scheduled_s"] - df["arrival_s"]
        df["ttft_s"] = df["first_token_s"] - df["arrival_s"]
        df["e2e_s"] = df["finish_s"] - df["arrival_s"]
        decode_tokens = (df["output_tokens"] - 1).where(df["output_tokens"] > 1)
        df["tpot_s"] = (df["finish_s"] - df["first_token_s"]) / decode_tokens
        # The side tables are empty in most runs: constant columns then, without a lookup per row.
        ids = df["id"]
        df["retries"] = ids.map(self.retries).fillna(0).astype(int) if self.retries else 0
        df["lost_s"] = ids.map(self.lost_s).fillna(0.0).astype(float) if self.lost_s else 0.0
        df["mitigation"] = (
            ids.map(self.mitigation).astype(object).fillna("")
            if self.mitigation
            else pd.Series("", index=df.index, dtype=object)
        )
        return df


class PoolSampler:
    """Samples each pool's state every ``interval_s`` of simulated time (a SimPy process)."""

    COLUMNS = ("time_s", "pool", "replicas", "running", "waiting", "kv_usage", "busy_fraction")

    def __init__(self, env: simpy.Environment, pools: list[Pool], interval_s: float):
        self.env, self.pools, self.interval_s = env, pools, interval_s
        self.rows: list[tuple] = []
        self._last_busy = {p.name: 0.0 for p in pools}
        self._last_held = {p.name: 0.0 for p in pools}  # replica-seconds of GPUs held so far
        env.process(self._loop())

    def _loop(self):
        env = self.env
        while True:
            yield env.timeout(self.interval_s)
            now = env.now
            for pool in self.pools:
                # Busy time over the replica-seconds held during the interval (replicas come and go); KV use
                # over the replicas holding GPUs now.
                held = [pool.replicas[i] for i, (_, end) in enumerate(pool.lifetimes) if end > now]
                busy = sum(r.busy_time(now) for r in pool.replicas)
                held_s = pool.replica_seconds(now)
                frac = (busy - self._last_busy[pool.name]) / max(held_s - self._last_held[pool.name], 1e-9)
                self._last_busy[pool.name], self._last_held[pool.name] = busy, held_s
                kv = sum(r.kv_usage(now) for r in held) / max(len(held), 1)
                self.rows.append((now, pool.name, len(held), pool.running, pool.waiting, kv, frac))

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame.from_records(self.rows, columns=list(self.COLUMNS))


def percentiles(values: pd.Series | np.ndarray) -> dict[str, float]:
    """Mean and p50/p95/p99 of the non-NaN values (NaN when there are none)."""
    v = Values(exact=True)
    v.add(np.asarray(values, dtype=float))
    return v.summary()


def latency_summary(df: pd.DataFrame, slo: Slo, duration_s: float) -> dict:
    """Latency percentiles, throughput, goodput and SLO targets of one set of requests over ``duration_s``."""
    return RequestStats(exact=True).add(df, slo).summary(slo, duration_s)
