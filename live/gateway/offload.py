"""Where a request's body is examined (``pipeline.examine``): on the event loop when it is small, in a pool of
worker processes when it is large.

The detectors are regular expressions; Python's ``re`` holds the GIL for the whole of a scan, so a scan of a
few megabytes (about a second for the injection detector over 6 MB) in a *thread* still stops the event loop,
and every other tenant's request with it. A worker process does not. Bodies up to ``inline_check_bytes``
(32 KiB by default: a few milliseconds of scanning) stay inline, so the common case pays no hand-off; larger
ones cost one pickling of the raw bytes each way. The pool (``check_workers`` processes, started with
``spawn`` because the server is threaded) is made on first use, so a gateway that never sees a large body
never starts one.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from fleettwin.live.api_error import ApiError
from fleettwin.live.gateway.auth import Principal
from fleettwin.live.gateway.config import GatewayConfig
from fleettwin.live.gateway.pipeline import Examined, Gatekeeper, Rejected, examine
from fleettwin.live.gateway.sanitize import Sanitizer

_worker: dict[str, Any] = {}


def _init(cfg: GatewayConfig) -> None:
    _worker["cfg"], _worker["sanitizers"] = cfg, {}


def _examine(tenant: str, route: str, raw: bytes) -> Examined | Rejected:
    cfg: GatewayConfig = _worker["cfg"]
    sanitizers: dict[str, Sanitizer] = _worker["sanitizers"]
    if tenant not in sanitizers:
        sanitizers[tenant] = Sanitizer(cfg.actions_for(tenant))
    return examine(cfg, sanitizers[tenant], tenant, route, raw)


class Checker:
    def __init__(self, gate: Gatekeeper):
        self.gate = gate
        self.workers = gate.cfg.check_workers
        self.inline_bytes = gate.cfg.inline_check_bytes
        self._pool: ProcessPoolExecutor | None = None
        self.offloaded = 0  # bodies examined in a worker (tests and metrics read it)

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init,
                initargs=(self.gate.cfg,),
            )
        return self._pool

    async def examine(self, principal: Principal, route: str, raw: bytes) -> Examined:
        """``Gatekeeper.examine``, off the loop for large bodies; raises ``Refused``."""
        if len(raw) <= self.inline_bytes:
            return self.gate.examine(principal, route, raw)
        loop = asyncio.get_running_loop()
        try:
            got = await loop.run_in_executor(self._get_pool(), _examine, principal.tenant, route, raw)
        except BrokenProcessPool:  # a worker died (killed, out of memory): start afresh for the next request
            self.close()
            raise ApiError(
                503,
                "the gateway's checker process stopped while examining this request; retry",
                type="ServiceUnavailableError",
            ) from None
        self.offloaded += 1
        if isinstance(got, Rejected):
            raise got.refused(principal)
        return got

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
