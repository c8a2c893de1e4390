"""The routes every fleettwin service (emulator, gateway, retrieval service) answers the same way:
``GET /version`` names the component and the fleettwin release, ``GET /metrics`` is its Prometheus text."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from fleettwin import __version__


def add_version_and_metrics(app: FastAPI, component: str, exposition: Callable[[], bytes]) -> None:
    """``/version`` as ``fleettwin-<component> <version>``; ``/metrics`` from ``exposition()`` at each
    scrape."""

    @app.get("/version")
    async def version() -> dict:
        return {"version": f"fleettwin-{component} {__version__}"}

    @app.get("/metrics")
    async def metrics_page() -> Response:
        return Response(exposition(), media_type=CONTENT_TYPE_LATEST)
