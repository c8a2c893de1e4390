"""Issue 9's zero-trust links end to end, with certificates from ``fleettwin data certs`` (``make_certs``) in
tmp_path:

- the retrieval service (``fleettwin live retrieval`` as a subprocess, mTLS + bearer token) answers a client
  with a valid certificate and the right token, and refuses one without a certificate, with one from another
  CA, with a server certificate, with one issued to a component it does not serve (403), and with a wrong or
  missing token;
- the shadow controller's scraper reaches an mTLS emulator with its client certificate (global or per pool,
  paths relative to the scenario) and reports the backend down with a TLS reason without one or with a foreign
  one;
- ``fleettwin live loadgen`` replays against an mTLS emulator with ``--tls-*`` and fails without a
  certificate;
- the gateway forwards ``/v1/retrieve`` over mTLS only for collections the tenant may use (a forbidden one
  never reaches the service), and reports its own missing certificate or wrong service token as 502.
"""

from __future__ import annotations

import asyncio
import json
import os

import httpx
import pandas as pd
import pytest

from fleettwin.cli import main
from fleettwin.live import launch
from fleettwin.live.certs import make_certs
from fleettwin.live.client import tls_verify
from fleettwin.live.config import parse_live
from fleettwin.live.decision_log import DecisionLog
from fleettwin.live.gateway.app import create_gateway_app
from fleettwin.live.gateway.config import hash_key, parse_gateway
from fleettwin.live.loadgen import replay
from fleettwin.live.promtext import parse
from fleettwin.live.retrieval_service import build_collection
from fleettwin.live.server import serve_in_thread
from fleettwin.live.shadow import ShadowController
from fleettwin.models.engine.queue import EngineLimits
from fleettwin.models.errors import ConfigError
from fleettwin.models.workload.request import Request
from tests.emukit import constant_emulator

LIMITS = EngineLimits(
    num_blocks=128, block_size=16, max_num_seqs=8, max_num_batched_tokens=256, max_model_len=512
)
SPEC = constant_emulator(0.001, LIMITS)
SERVICE_TOKEN = "retrieval-service-token-0123456789"
KEY_A, KEY_B = "ft-tenant-a-" + "a" * 20, "ft-tenant-b-" + "b" * 20


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    good, other = tmp_path_factory.mktemp("pki"), tmp_path_factory.mktemp("other-pki")
    make_certs(good, ["retrieval", "emulator", "gateway", "controller"], days=2)
    make_certs(other, ["gateway", "controller"], days=2)
    return good, other


def pair(d, stem: str) -> tuple[str, str]:
    return str(d / f"{stem}.pem"), str(d / f"{stem}.key")


@pytest.fixture(scope="module")
def retrieval(pki, tmp_path_factory):
    """``fleettwin live retrieval`` with two collections, requiring a client certificate and a token."""
    good, _ = pki
    d = tmp_path_factory.mktemp("stores")
    build_collection(
        d / "docs.faiss",
        [{"text": f"public handbook page {i} on gpu fleets {i}"} for i in range(12)],
        embedder_params={"dim": 32},
    )
    build_collection(
        d / "secret.faiss", [{"text": f"salary record {i}"} for i in range(6)], embedder_params={"dim": 32}
    )
    cmd = launch.fleettwin(
        "serve-retrieval",
        *("--collection", f"docs={d / 'docs.faiss'}", "--collection", f"secret={d / 'secret.faiss'}"),
        *("--port", "0", "--token-env", "FT_ZT_SERVICE_TOKEN"),
        *("--tls-cert", str(good / "retrieval.pem"), "--tls-key", str(good / "retrieval.key")),
        *("--tls-ca", str(good / "ca.pem")),
    )
    with launch.running(cmd, {**os.environ, "FT_ZT_SERVICE_TOKEN": SERVICE_TOKEN}) as service:
        assert service.url.startswith("https://") and "client certificates required" in service.status
        yield service.url


@pytest.fixture(scope="module")
def emulator(pki):
    good, _ = pki
    with serve_in_thread(
        SPEC,
        ssl_certfile=str(good / "emulator.pem"),
        ssl_keyfile=str(good / "emulator.key"),
        ssl_ca_certs=str(good / "ca.pem"),
    ) as srv:
        yield srv


def refused(url: str, verify, **kw) -> None:
    with pytest.raises(httpx.TransportError):  # the handshake, or the first read after it, fails
        httpx.post(f"{url}/v1/retrieve", verify=verify, timeout=5, **kw)


# -- the retrieval service -----------------------------------------------------------------------------------


def test_retrieval_service_wants_a_certificate_from_its_ca_and_the_token(pki, retrieval):
    good, other = pki
    ca = str(good / "ca.pem")
    body = {"collection": "docs", "query": "handbook page 3 on gpu fleets 3", "k": 2}
    auth = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
    trusted = tls_verify(ca, pair(good, "gateway-client"))
    r = httpx.post(f"{retrieval}/v1/retrieve", json=body, headers=auth, verify=trusted, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["ids"][0] == 3 and r.json()["passages"][0]["text"].startswith("public handbook page 3")
    refused(retrieval, tls_verify(ca), json=body, headers=auth)  # no client certificate
    refused(retrieval, tls_verify(ca, pair(other, "gateway-client")), json=body, headers=auth)  # another CA
    refused(retrieval, tls_verify(ca, pair(good, "gateway")), json=body, headers=auth)  # a server certificate
    r = httpx.post(
        f"{retrieval}/v1/retrieve",
        json=body,
        headers=auth,
        verify=tls_verify(ca, pair(good, "emulator-client")),
        timeout=10,
    )
    assert (
        r.status_code == 403
        and "client certificate for emulator is not accepted" in r.json()["error"]["message"]
    )
    with pytest.raises(
        httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"
    ):  # and the client checks the server
        httpx.post(f"{retrieval}/v1/retrieve", json=body, headers=auth, verify=True, timeout=5)
    for headers in ({"Authorization": "Bearer wrong"}, {}):  # a valid certificate does not replace the token
        r = httpx.post(f"{retrieval}/v1/retrieve", json=body, headers=headers, verify=trusted, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["type"] == "AuthenticationError"


# -- the shadow controller's scraper -------------------------------------------------------------------------


def scenario(url: str, base, *, scrape_tls: dict | None, pool_tls: dict | None = None):
    pool = {"name": "chat", "gpu": "h100-80g", "model": "llama-3-8b", "backends": [url]}
    if pool_tls is not None:
        pool["tls"] = pool_tls
    data = {
        "name": "zt",
        "pools": [pool],
        "scrape": {"timeout_s": 2.0} | ({"tls": scrape_tls} if scrape_tls else {}),
        "controller": {"allocator": {"name": "reactive", "params": {"target": 4}}, "interval_s": 1.0},
    }
    return parse_live(data, source="live.yaml", base_dir=base)


def scrape_once(cfg, tmp_path) -> dict:
    async def go() -> dict:
        with DecisionLog(tmp_path / "log.jsonl") as log:
            ctl = ShadowController(cfg, log)
            try:
                _, rows = await ctl.scrape_round()
            finally:
                await ctl.aclose()
        return rows[0]

    return asyncio.run(go())


def test_shadow_scraper_presents_its_certificate_and_names_tls_when_refused(pki, emulator, tmp_path):
    good, other = pki
    mine = {
        "ca": "ca.pem",
        "cert": "controller-client.pem",
        "key": "controller-client.key",
    }  # relative to base
    row = scrape_once(scenario(emulator.url, good, scrape_tls=mine), tmp_path)
    assert row["status"] == "up" and row["error"] == "" and row["running"] == 0
    row = scrape_once(scenario(emulator.url, good, scrape_tls={"ca": "ca.pem"}), tmp_path)
    assert row["status"] == "down" and row["error"].startswith("TLS:")
    assert "no client certificate was presented" in row["error"]
    foreign = {
        "ca": str(good / "ca.pem"),
        "cert": str(other / "controller-client.pem"),
        "key": str(other / "controller-client.key"),
    }
    row = scrape_once(scenario(emulator.url, good, scrape_tls=foreign), tmp_path)
    assert row["status"] == "down" and "the client certificate presented was refused" in row["error"]
    # a pool's own tls overrides the global one for its backends
    row = scrape_once(scenario(emulator.url, good, scrape_tls={"ca": "ca.pem"}, pool_tls=mine), tmp_path)
    assert row["status"] == "up"
    with (
        DecisionLog(tmp_path / "x.jsonl") as log,
        pytest.raises(ConfigError, match=r"scrape.tls: cannot load .*missing"),
    ):
        ShadowController(scenario(emulator.url, good, scrape_tls={"ca": "missing.pem"}), log)
    with pytest.raises(ConfigError, match=r"scrape.tls: cert and key go together"):
        scenario(emulator.url, good, scrape_tls={"cert": "controller-client.pem"})


# -- the load generator --------------------------------------------------------------------------------------


def test_loadgen_replays_against_an_mtls_emulator(pki, emulator, tmp_path, capsys):
    good, _ = pki
    trace = tmp_path / "trace.csv"
    rows = [f"2023-11-16 18:15:46.{i * 50000:07d},{20 + i},{2 + i % 3}" for i in range(8)]
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(rows) + "\n")
    out = tmp_path / "replay.parquet"
    cert, key = pair(good, "controller-client")
    code = main(
        [
            "loadgen",
            "--trace",
            str(trace),
            "--targets",
            emulator.url,
            "--speedup",
            "4",
            "--duration",
            "5",
            "--max-requests",
            "8",
            "--tls-ca",
            str(good / "ca.pem"),
            "--tls-cert",
            cert,
            "--tls-key",
            key,
            "--out",
            str(out),
        ]
    )
    assert code == 0
    df = pd.read_parquet(out)
    assert len(df) == 8 and (df["status"] == "completed").all()
    assert list(df["completion_tokens"]) == [2 + i % 3 for i in range(8)]
    reqs = [Request(id=i, arrival_s=0.01 * i, prompt_tokens=8, output_tokens=2) for i in range(3)]
    df = asyncio.run(
        replay(reqs, [emulator.url], model="emu", verify=str(good / "ca.pem"), retries=0, drain_timeout_s=10)
    )
    assert (df["status"] == "error").all()  # no client certificate: every request fails, none hangs
    capsys.readouterr()
    assert main(["loadgen", "--trace", str(trace), "--targets", emulator.url, "--tls-cert", cert]) == 2
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err


# -- the gateway in front of the retrieval service -----------------------------------------------------------


def gateway_policy(url: str, good, tmp_path, **retrieval) -> dict:
    tls = {
        "ca": str(good / "ca.pem"),
        "cert": str(good / "gateway-client.pem"),
        "key": str(good / "gateway-client.key"),
    }
    return {
        "tenants": {
            "a": {"api_keys": [hash_key(KEY_A)], "models": ["emu"], "collections": ["docs"]},
            "b": {"api_keys": [hash_key(KEY_B)], "models": ["emu"], "collections": ["*"]},
        },
        "backends": {"emu": {"urls": ["http://127.0.0.1:1"]}},
        "retrieval": {"url": url, "token_env": "FT_ZT_GATEWAY_SERVICE_TOKEN", "tls": tls, **retrieval},
        "audit_log": str(tmp_path / "audit.jsonl"),
    }


def service_count(url: str, good, collection: str) -> float:
    page = httpx.get(
        f"{url}/metrics", verify=tls_verify(str(good / "ca.pem"), pair(good, "controller-client"))
    )
    fam = parse(page.text)["fleettwin_retrieval_requests_total"]
    return sum(
        s.value for s in fam.samples if s.name.endswith("_total") and s.labels["collection"] == collection
    )


def test_gateway_forwards_retrieval_only_for_allowed_collections(pki, retrieval, tmp_path, monkeypatch):
    good, _ = pki
    monkeypatch.setenv("FT_ZT_GATEWAY_SERVICE_TOKEN", SERVICE_TOKEN)
    app = create_gateway_app(parse_gateway(gateway_policy(retrieval, good, tmp_path)))
    secret_before = service_count(retrieval, good, "secret")
    with serve_in_thread(app) as gw:

        def ask(key: str, body: dict) -> httpx.Response:
            return httpx.post(
                f"{gw.url}/v1/retrieve", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10
            )

        r = ask(KEY_A, {"collection": "docs", "query": "handbook page 5 on gpu fleets 5", "k": 3})
        assert (
            r.status_code == 200 and r.json()["ids"][0] == 5 and r.headers["x-request-id"].startswith("gw-")
        )
        r = ask(KEY_A, {"collection": "secret", "query": "salary record 1"})
        assert r.status_code == 403 and r.json()["error"]["type"] == "PermissionDeniedError"
        assert "may not search collection 'secret'" in r.json()["error"]["message"]
        assert service_count(retrieval, good, "secret") == secret_before  # it never reached the service
        r = ask(KEY_B, {"collection": "secret", "query": "salary record 1", "k": 1})
        assert r.status_code == 200 and r.json()["ids"] == [1]
        assert service_count(retrieval, good, "secret") == secret_before + 1
        assert (
            ask(KEY_B, {"collection": "elsewhere", "query": "x"}).status_code == 404
        )  # the service's answer
        assert ask(KEY_A, {"query": "x"}).status_code == 400
        assert ask("ft-wrong-" + "x" * 20, {"collection": "docs", "query": "x"}).status_code == 401
    audit = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(a["route"], a["status"]) for a in audit] == [
        ("retrieve", s) for s in (200, 403, 200, 404, 400, 401)
    ]
    assert (
        audit[0]["collection"] == "docs"
        and audit[0]["tenant"] == "a"
        and SERVICE_TOKEN not in json.dumps(audit)
    )


def test_gateway_without_its_certificate_or_token_gets_502_not_the_callers_fault(
    pki, retrieval, tmp_path, monkeypatch
):
    good, _ = pki
    body = {"collection": "docs", "query": "handbook"}
    headers = {"Authorization": f"Bearer {KEY_A}"}
    monkeypatch.setenv("FT_ZT_GATEWAY_SERVICE_TOKEN", SERVICE_TOKEN)
    no_cert = gateway_policy(retrieval, good, tmp_path, tls={"ca": str(good / "ca.pem")})
    with serve_in_thread(create_gateway_app(parse_gateway(no_cert))) as gw:
        r = httpx.post(f"{gw.url}/v1/retrieve", json=body, headers=headers, timeout=10)
        msg = r.json()["error"]["message"]
        assert (
            r.status_code == 502
            and "did not answer: TLS:" in msg
            and "no client certificate was presented" in msg
        )
    monkeypatch.setenv("FT_ZT_GATEWAY_SERVICE_TOKEN", "not-the-service-token")
    with serve_in_thread(create_gateway_app(parse_gateway(gateway_policy(retrieval, good, tmp_path)))) as gw:
        r = httpx.post(f"{gw.url}/v1/retrieve", json=body, headers=headers, timeout=10)
        assert r.status_code == 502 and "refused the gateway's credentials" in r.json()["error"]["message"]
    plain = gateway_policy(retrieval, good, tmp_path)
    del plain["retrieval"]
    with serve_in_thread(create_gateway_app(parse_gateway(plain))) as gw:
        r = httpx.post(f"{gw.url}/v1/retrieve", json=body, headers=headers, timeout=10)
        assert r.status_code == 404 and "no retrieval service" in r.json()["error"]["message"]
    monkeypatch.delenv("FT_ZT_GATEWAY_SERVICE_TOKEN")
    with pytest.raises(
        ConfigError, match="retrieval token: environment variable FT_ZT_GATEWAY_SERVICE_TOKEN"
    ):
        create_gateway_app(parse_gateway(gateway_policy(retrieval, good, tmp_path)))
