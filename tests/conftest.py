"""Fixtures shared by several test modules."""

from __future__ import annotations

import json
import os

import httpx
import pytest

from fleettwin.live.gateway.app import create_gateway_app
from fleettwin.live.gateway.config import load_gateway
from fleettwin.live.server import serve_in_thread
from tests.gatewaykit import BACKEND_TOKEN, emulator_spec, holding_backend, policy, recording_backend


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    """A gateway (in a thread) with the policy of ``gatewaykit.policy`` in front of an emulator, a recording
    backend and a holding one; per module, so each test file starts from fresh quotas and an empty audit
    log."""
    tmp = tmp_path_factory.mktemp("gw")
    seen: list[dict] = []
    held = {"caller_left": False}
    os.environ["FT_TEST_BACKEND_TOKEN"] = BACKEND_TOKEN
    try:
        with (
            serve_in_thread(emulator_spec()) as emu,
            serve_in_thread(recording_backend(seen)) as rec,
            serve_in_thread(holding_backend(held)) as hold,
        ):
            (tmp / "gateway.yaml").write_text(
                json.dumps(policy(emu.url, rec.url, hold.url, tmp))
            )  # JSON is YAML
            cfg = load_gateway(tmp / "gateway.yaml")
            with serve_in_thread(create_gateway_app(cfg)) as g:
                with httpx.Client(base_url=g.url, timeout=10) as client:
                    yield {
                        "client": client,
                        "url": g.url,
                        "emu": emu.url,
                        "seen": seen,
                        "audit": cfg.audit_log,
                        "held": held,
                    }
    finally:
        os.environ.pop("FT_TEST_BACKEND_TOKEN", None)
