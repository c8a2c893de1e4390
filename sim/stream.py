"""Long runs in bounded memory: request rows streamed to Parquet in row groups, summaries from sketches.

A ``RequestLog`` keeps one row per request until the end of the run (about 0.9 KB each with the frame built
from them): ten million requests do not fit a laptop. ``StreamingLog`` keeps the rows of one chunk: when
``chunk_rows`` have ended (and every reader, such as a controller, has read them), the chunk becomes a frame
with the derived latencies, goes into per-pool ``RequestStats`` (REQ sketches, sim/stats.py) and, unless the
run is summary-only, is appended to ``requests.parquet`` as a row group; then it is dropped. The workload's
requests themselves are built one at a time from compact arrays where the source allows it
(models/workload/reshape.py), so what stays in memory grows with the pools, not with the requests.

The file is written under a temporary name and renamed when the run ends (a crash leaves no half file under
the final name); its rows are in the order the requests ended, not by id.

Scenarios whose summaries need every row at the end (regions, tenants, workflows) are refused with a clear
error: their per-region, per-tenant and per-workflow tables are computed from the whole frame.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from fleettwin.models.errors import ConfigError
from fleettwin.sim.metrics import RequestLog
from fleettwin.sim.stats import RequestStats, Slo

CHUNK_ROWS = 65_536
_SCHEMA = {
    "id": "int64",
    "pool": "string",
    "replica": "int64",
    "arrival_s": "float64",
    "first_scheduled_s": "float64",
    "first_token_s": "float64",
    "finish_s": "float64",
    "prompt_tokens": "int64",
    "output_tokens": "int64",
    "preemptions": "int64",
    "status": "string",
    "reason": "string",
    "queue_s": "float64",
    "ttft_s": "float64",
    "e2e_s": "float64",
    "tpot_s": "float64",
    "retries": "int64",
    "lost_s": "float64",
    "mitigation": "string",
}


def check_streamable(cfg) -> None:
    """A scenario whose summary needs every request row at the end cannot stream; say which section."""
    for section in ("regions", "tenants", "workflows"):
        if getattr(cfg, section, None) is not None:
            raise ConfigError(
                f"{cfg.source}: {section}: its summary needs every request in memory; run without "
                "--stream / --summary-only"
            )


class StreamingLog(RequestLog):
    """A request log that writes its rows out in chunks (``path``; None: summary only) and keeps sketches."""

    def __init__(self, slo: Slo, path: str | Path | None = None, *, chunk_rows: int = CHUNK_ROWS):
        super().__init__()
        self.slo, self.chunk_rows = slo, chunk_rows
        self.path = Path(path) if path is not None else None
        self._partial = self.path.with_name(self.path.name + ".partial") if self.path is not None else None
        self._writer = None
        self.stats: dict[str, RequestStats] = {}
        self.row_groups = 0

    def completed(self, pool, replica, seqs) -> None:
        super().completed(pool, replica, seqs)
        if len(self.rows) >= self.chunk_rows:
            self.flush()

    def flush(self, *, final: bool = False) -> None:
        """Summarise and write the rows every reader has read (all of them at the end) and drop them."""
        keep_from = len(self.rows) if final or not self._read else min(self._read.values()) - self.base
        if keep_from <= 0:
            return
        chunk, self.rows = self.rows[:keep_from], self.rows[keep_from:]
        self.base += len(chunk)
        df = self._frame(chunk)
        for pool, part in df.groupby("pool", sort=False):
            self.stats.setdefault(str(pool), RequestStats(exact=False)).add(part, self.slo)
        if self._partial is not None:
            self._write(df)

    def _frame(self, rows: list[tuple]) -> pd.DataFrame:
        saved, self.rows = self.rows, rows
        try:
            df = RequestLog.to_frame(self)
        finally:
            self.rows = saved
        if self.frame_hook is not None:
            self.frame_hook(df)
        return df.astype(_SCHEMA)

    def _write(self, df: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(df, preserve_index=False)
        if self._writer is None:
            self._partial.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self._partial, table.schema)
        self._writer.write_table(table)
        self.row_groups += 1

    def to_frame(self) -> pd.DataFrame:
        """Flush what is left, close the file (renamed to its final name) and return an empty frame: the rows
        are in the file, the numbers in ``pool_stats``."""
        self.flush(final=True)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            os.replace(self._partial, self.path)
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in _SCHEMA.items()})

    def end_s(self, df: pd.DataFrame, now: float) -> float:
        last = max((s.last_finish_s for s in self.stats.values()), default=-math.inf)
        return last if math.isfinite(last) else float(now)

    def pool_stats(self) -> dict[str, RequestStats]:
        return self.stats


def merged_stats(stats: dict[str, RequestStats], pool: str | None) -> RequestStats:
    """One pool's statistics, or all pools' merged (the rows of requests no pool took included)."""
    out = RequestStats(exact=False)
    for name, s in stats.items():
        if pool is None or name == pool:
            out.merge(s)
    return out
