"""A small async client for Prometheus' HTTP API (``/api/v1/query``, ``/api/v1/query_range``,
``/api/v1/targets``), on httpx.

Thin on purpose: the API is JSON with a documented envelope (``status``, ``data``, ``errorType``, ``error``),
so parsing it is a few lines, and an async client fits the control loop (the ``prometheus-api-client``
package is synchronous and pulls pandas and matplotlib in for what these three calls need). Queries are sent
as POST forms, which Prometheus accepts, so long selectors never hit URL length limits. Every failure is a
``PrometheusError`` naming the server, the query and the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import httpx

from fleettwin.models.errors import FleettwinError


class PrometheusError(FleettwinError):
    """Prometheus unreachable, or it refused a query; the message names the server and the query."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One series of an instant vector: its labels, value and the time Prometheus evaluated it at."""

    labels: dict[str, str]
    value: float
    time_s: float


@dataclass(frozen=True, slots=True)
class Series:
    """One series of a range query: labels and (time, value) points."""

    labels: dict[str, str]
    points: list[tuple[float, float]]


def _float(v: str) -> float:
    """Prometheus writes values as strings, with ``NaN``, ``+Inf`` and ``-Inf``."""
    return float(v) if v not in ("+Inf", "-Inf") else (math.inf if v == "+Inf" else -math.inf)


class PromClient:
    """Queries one Prometheus server (``url`` is its base, e.g. ``http://prometheus:9090``)."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        token: str | None = None,
        verify: bool | str = True,
        client: httpx.AsyncClient | None = None,
    ):
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = client or httpx.AsyncClient(timeout=timeout_s, verify=verify, headers=headers)
        self._own = client is None

    async def aclose(self) -> None:
        if self._own:
            await self._client.aclose()

    async def _call(self, path: str, form: dict[str, str] | None, what: str) -> dict:
        try:
            if form is None:
                resp = await self._client.get(f"{self.url}{path}")
            else:
                resp = await self._client.post(f"{self.url}{path}", data=form)
        except httpx.HTTPError as exc:
            raise PrometheusError(f"prometheus {self.url}: {what}: {type(exc).__name__}: {exc}") from None
        try:
            body = resp.json()
        except ValueError:
            raise PrometheusError(
                f"prometheus {self.url}: {what}: HTTP {resp.status_code}, not JSON: {resp.text[:120]!r}"
            ) from None
        if not isinstance(body, dict) or body.get("status") != "success":
            err = body.get("error", resp.text[:200]) if isinstance(body, dict) else resp.text[:200]
            kind = body.get("errorType", f"HTTP {resp.status_code}") if isinstance(body, dict) else "?"
            raise PrometheusError(f"prometheus {self.url}: {what}: {kind}: {err}")
        return body.get("data") or {}

    async def query(self, expr: str, at: float) -> list[Sample]:
        """An instant query evaluated at Unix time ``at``; a scalar comes back as one unlabelled sample."""
        data = await self._call("/api/v1/query", {"query": expr, "time": f"{at:.3f}"}, f"query {expr!r}")
        kind, result = data.get("resultType"), data.get("result")
        if kind == "scalar":
            return [Sample({}, _float(result[1]), float(result[0]))]
        if kind != "vector":
            raise PrometheusError(f"prometheus {self.url}: query {expr!r}: expected a vector, got {kind}")
        return [Sample(dict(r["metric"]), _float(r["value"][1]), float(r["value"][0])) for r in result]

    async def query_range(self, expr: str, start: float, end: float, step_s: float) -> list[Series]:
        form = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step_s:g}"}
        data = await self._call("/api/v1/query_range", form, f"query_range {expr!r}")
        if data.get("resultType") != "matrix":
            raise PrometheusError(f"prometheus {self.url}: query_range {expr!r}: expected a matrix")
        return [
            Series(dict(r["metric"]), [(float(t), _float(v)) for t, v in r["values"]]) for r in data["result"]
        ]

    async def targets(self) -> list[dict]:
        """The active scrape targets (``scrapeUrl``, ``labels``, ``health``, ``lastError``, ...)."""
        data = await self._call("/api/v1/targets?state=active", None, "targets")
        return list(data.get("activeTargets", ()))
