"""Schemathesis against the served OpenAPI of the emulator, the gateway and the retrieval service (issue 16):
bodies generated from each operation's schema, valid and invalid (positive and negative modes), sent over HTTP
to the real servers on loopback; no answer may be a 5xx.

Bounded and deterministic: ``derandomize`` fixes the examples; the default suite runs ``FAST`` examples per
operation and mode (about half a minute for the three servers), ``pytest -m slow tests/live/test_fuzz.py``
runs 100. The emulator is small (``max_model_len`` 128, 0.2 ms steps) so that a generated ``max_tokens`` is
quick to serve.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

schemathesis = pytest.importorskip(
    "schemathesis", reason="schemathesis is in the dev extra (pip install -e .[dev])"
)

from hypothesis import HealthCheck, settings  # noqa: E402

from fleettwin.live.gateway.app import create_gateway_app  # noqa: E402
from fleettwin.live.gateway.config import hash_key, parse_gateway  # noqa: E402
from fleettwin.live.retrieval_service import (  # noqa: E402
    build_collection,
    create_retrieval_app,
    load_collection,
)
from fleettwin.live.server import create_app, serve_in_thread  # noqa: E402
from fleettwin.models.engine.queue import EngineLimits  # noqa: E402
from tests.emukit import constant_emulator  # noqa: E402

FAST, FULL = 6, 100
TOKEN, KEY = "fuzz-backend-token", "fuzz-tenant-key-0123456789"
LIMITS = EngineLimits(
    num_blocks=512,
    max_num_seqs=64,
    max_num_batched_tokens=2048,
    max_model_len=128,
    enable_prefix_caching=True,
)
SPEC = constant_emulator(0.0002, LIMITS, token=TOKEN)
STORE = Path(
    tempfile.mkdtemp(prefix="fleettwin-fuzz-")
)  # the schemas are built at collection: no tmp_path yet
atexit.register(shutil.rmtree, STORE, ignore_errors=True)


def _retrieval_app():
    STORE.mkdir(parents=True, exist_ok=True)
    path = build_collection(
        STORE / "docs.faiss",
        [{"text": f"page {i} about fleets"} for i in range(16)],
        embedder_params={"dim": 16},
    )
    return create_retrieval_app({"docs": load_collection("docs", path)})


def _gateway_cfg(emu_url: str = "http://127.0.0.1:9", retrieval_url: str = "http://127.0.0.1:9"):
    return parse_gateway(
        {
            "tenants": {
                "t": {
                    "api_keys": [hash_key(KEY)],
                    "models": ["emu"],
                    "tools": ["*"],
                    "collections": ["*"],
                    "max_tokens": 64,
                }
            },
            "backends": {"emu": {"urls": [emu_url], "token_env": "FT_FUZZ_TOKEN"}},
            "retrieval": {"url": retrieval_url},
            "audit_log": str(STORE / "audit.jsonl"),
        }
    )


os.environ.setdefault("FT_FUZZ_TOKEN", TOKEN)
EMULATOR = create_app(SPEC)
RETRIEVAL = _retrieval_app()
SCHEMAS = {
    "emulator": schemathesis.openapi.from_dict(EMULATOR.openapi()),
    "retrieval": schemathesis.openapi.from_dict(RETRIEVAL.openapi()),
    "gateway": schemathesis.openapi.from_dict(create_gateway_app(_gateway_cfg()).openapi()),
}
for _schema in SCHEMAS.values():
    _schema.config.generation.update(modes=["positive", "negative"], deterministic=True)


@pytest.fixture(scope="module")
def urls():
    with serve_in_thread(EMULATOR) as emu, serve_in_thread(RETRIEVAL) as ret:
        with serve_in_thread(create_gateway_app(_gateway_cfg(emu.url, ret.url))) as gw:
            yield {"emulator": emu.url, "retrieval": ret.url, "gateway": gw.url}


HEADERS = {
    "emulator": {"Authorization": f"Bearer {TOKEN}"},
    "gateway": {"Authorization": f"Bearer {KEY}"},
    "retrieval": {},
}


def _no_5xx(which: str, case, urls) -> None:
    response = case.call(base_url=urls[which], headers=HEADERS[which], timeout=30)
    assert response.status_code < 500, (
        f"{case.method} {case.path}: {response.status_code} {response.text[:300]}"
    )


def _fuzz(which: str, examples: int):
    checks = settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )

    @SCHEMAS[which].parametrize()
    @checks
    def test(case, urls):
        _no_5xx(which, case, urls)

    return test


test_emulator_answers_no_5xx = _fuzz("emulator", FAST)
test_gateway_answers_no_5xx = _fuzz("gateway", FAST)
test_retrieval_service_answers_no_5xx = _fuzz("retrieval", FAST)
test_emulator_answers_no_5xx_full = pytest.mark.slow(_fuzz("emulator", FULL))
test_gateway_answers_no_5xx_full = pytest.mark.slow(_fuzz("gateway", FULL))
test_retrieval_service_answers_no_5xx_full = pytest.mark.slow(_fuzz("retrieval", FULL))
