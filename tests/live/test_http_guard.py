"""Issue 16's hardening of the three servers (emulator, gateway, retrieval service), each on loopback with
small limits: a body over the limit is 413 before it is read (by Content-Length and by counting chunks), slow
headers and slow bodies are 408 and closed (half-open connections are not held), bodies that are valid JSON
but not valid text (a lone surrogate), nested too deep, or carrying NaN are 400 (they were 500s:
``RecursionError``, ``UnicodeEncodeError``), a non-JSON media type is 400 as on vLLM, and an unexpected fault
is one 500 that names only the exception's type, is counted and audited as a 500 (not a 499 "cancelled"), and
logs one line without a traceback."""

from __future__ import annotations

import json
import logging
import socket
import time
from urllib.parse import urlparse

import httpx
import pytest

from fleettwin.live.gateway.app import create_gateway_app
from fleettwin.live.gateway.audit import read_audit
from fleettwin.live.gateway.config import hash_key, parse_gateway
from fleettwin.live.http_guard import HttpLimits, check_json, strict_json
from fleettwin.live.promtext import parse
from fleettwin.live.protocol import ApiError
from fleettwin.live.retrieval_service import build_collection, create_retrieval_app, load_collection
from fleettwin.live.server import serve_in_thread
from tests import halfopenkit
from tests.emukit import SMALL_LIMITS, constant_emulator

LIMITS = HttpLimits(max_body_bytes=64 * 1024, header_timeout_s=0.5, body_timeout_s=0.5)
KEY = "key-guard-0123456789"
SECRET_TEXT = "do-not-echo-this-text"


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("guard")
    spec = constant_emulator(0.001, SMALL_LIMITS, http=LIMITS)
    build_collection(
        tmp / "docs.faiss", [{"text": f"page {i}"} for i in range(8)], embedder_params={"dim": 16}
    )
    retrieval = create_retrieval_app({"docs": load_collection("docs", tmp / "docs.faiss")}, limits=LIMITS)
    with serve_in_thread(spec) as emu, serve_in_thread(retrieval) as ret:
        cfg = parse_gateway(
            {
                "tenants": {"t": {"api_keys": [hash_key(KEY)], "models": ["emu"], "collections": ["*"]}},
                "backends": {"emu": {"urls": [emu.url]}},
                "retrieval": {"url": ret.url},
                "limits": LIMITS.model_dump(),
                "audit_log": str(tmp / "audit.jsonl"),
            }
        )
        app = create_gateway_app(cfg)
        with serve_in_thread(app) as gw:
            yield {
                "emulator": emu.url,
                "retrieval": ret.url,
                "gateway": gw.url,
                "audit": cfg.audit_log,
                "app": app,
            }


PATHS = {"emulator": "/v1/completions", "gateway": "/v1/completions", "retrieval": "/v1/retrieve"}
AUTH = {"gateway": {"Authorization": f"Bearer {KEY}"}}


def raw_exchange(url: str, data: bytes, *, wait_s: float = 3.0) -> tuple[bytes, float]:
    """Send ``data`` on a fresh connection and read until the server closes it (or ``wait_s``)."""
    u = urlparse(url)
    t0 = time.monotonic()
    with socket.create_connection((u.hostname, u.port), timeout=wait_s) as s:
        s.sendall(data)
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return got, time.monotonic() - t0


@pytest.mark.parametrize("which", ["emulator", "gateway", "retrieval"])
def test_a_body_over_the_limit_is_413_before_it_is_read(servers, which):
    url, path = servers[which], PATHS[which]
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
        f"{50 * 2**20}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in AUTH.get(which, {}).items()) + "\r\n"
    ).encode()
    got, took = raw_exchange(url, head)  # 50 MB announced, none sent: the answer cannot wait for it
    assert got.startswith(b"HTTP/1.1 413 "), got[:200]
    assert took < 2.0 and b"limit of 65536 bytes" in got
    chunks = (b"x" * 16384 for _ in range(40))  # 640 kB, chunked: no length to judge by
    r = httpx.post(
        url + path, content=chunks, headers={"content-type": "application/json", **AUTH.get(which, {})}
    )
    assert r.status_code == 413 and r.json()["error"]["type"] == "RequestTooLargeError"


@pytest.mark.parametrize("which", ["emulator", "gateway", "retrieval"])
def test_slow_headers_and_slow_bodies_are_408_and_closed(servers, which):
    url = servers[which]
    u = urlparse(url)
    t0 = time.monotonic()
    with socket.create_connection((u.hostname, u.port), timeout=5) as s:  # one byte of header every 0.2 s
        got = b""
        for c in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"y" * 40:
            try:
                s.sendall(bytes([c]))
                time.sleep(0.2 if time.monotonic() - t0 < 3 else 0)
                s.setblocking(False)
                got += s.recv(4096)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                pass
            finally:
                s.setblocking(True)
            if got:
                break
    assert got.startswith(b"HTTP/1.1 408 "), got[:120]
    assert time.monotonic() - t0 < 2.0  # the 0.5 s header timeout, not the trickle, decided
    head = (
        f"POST {PATHS[which]} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
        "100\r\n" + "".join(f"{k}: {v}\r\n" for k, v in AUTH.get(which, {}).items()) + '\r\n{"pro'
    ).encode()
    got, took = raw_exchange(url, head)
    assert got.startswith(b"HTTP/1.1 408 ") and b"did not arrive within 0.5 s" in got and took < 2.0


def test_half_open_connections_are_not_held(servers):
    socks = halfopenkit.connections(servers["gateway"], 100, timeout_s=5)
    try:
        for s in socks[1::2]:
            s.sendall(halfopenkit.REQUEST_LINE)  # half the headers, then silence
        time.sleep(1.5)  # three header timeouts
        assert halfopenkit.closed_by_server(socks, wait_s=0.5) == 100
    finally:
        for s in socks:
            s.close()
    assert httpx.get(servers["gateway"] + "/health").status_code == 200


BAD_BODIES = {
    "deep": b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    "deep-but-parsable": b'{"prompt": "x", "user": ' + b"[" * 200 + b"]" * 200 + b"}",
    "surrogate": b'{"model": "emu", "collection": "docs", "prompt": "'
    + SECRET_TEXT.encode()
    + b'\\ud800", "query": "x"}',
    "nan": b'{"model": "emu", "collection": "docs", "prompt": "x", "max_tokens": NaN}',
    "not utf-8": b'{"prompt": "\xff\xfe"}',
}


@pytest.mark.parametrize("which", ["emulator", "gateway", "retrieval"])
@pytest.mark.parametrize("kind", list(BAD_BODIES))
def test_bodies_that_are_not_text_or_nest_too_deep_are_400(servers, which, kind):
    r = httpx.post(
        servers[which] + PATHS[which],
        content=BAD_BODIES[kind],
        headers={"content-type": "application/json", **AUTH.get(which, {})},
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "BadRequestError" and SECRET_TEXT not in r.text


@pytest.mark.parametrize("which", ["emulator", "gateway", "retrieval"])
def test_a_body_that_is_not_json_is_400_as_on_vllm(servers, which):
    r = httpx.post(
        servers[which] + PATHS[which],
        content=b"prompt=hi",
        headers={"content-type": "text/plain", **AUTH.get(which, {})},
    )
    assert r.status_code == 400 and "Only 'application/json' is allowed" in r.json()["error"]["message"]


def test_the_gateway_audits_bad_bodies_as_400_not_cancelled(servers):
    before = len(read_audit(servers["audit"]))
    for kind in ("deep", "surrogate"):
        httpx.post(
            servers["gateway"] + "/v1/chat/completions",
            content=BAD_BODIES[kind],
            headers={"content-type": "application/json", **AUTH["gateway"]},
        )
    recs = read_audit(servers["audit"])[before:]
    assert [(r["status"], r["reasons"]) for r in recs] == [(400, ["bad_request"])] * 2
    assert SECRET_TEXT not in servers["audit"].read_text()


def test_an_unexpected_fault_is_one_500_counted_and_audited(servers, monkeypatch, caplog, capfd):
    app = servers["app"]

    def broken(*args, **kwargs):
        raise RuntimeError(f"boom with {SECRET_TEXT}")

    g = servers["gateway"]
    before = len(read_audit(servers["audit"]))
    body = {"model": "emu", "prompt": SECRET_TEXT, "max_tokens": 2}
    with caplog.at_level(logging.ERROR):
        monkeypatch.setattr(app.state.gatekeeper, "examine", broken)  # before admission
        r1 = httpx.post(g + "/v1/completions", json=body, headers=AUTH["gateway"])
        monkeypatch.undo()
        upstreams = app.state.gateway["upstreams"]
        monkeypatch.setattr(upstreams, "send", broken)  # after admission: the slot must come back
        r2 = httpx.post(g + "/v1/completions", json=body, headers=AUTH["gateway"])
        monkeypatch.undo()
    for r in (r1, r2):
        assert r.status_code == 500 and r.json()["error"]["type"] == "InternalServerError"
        assert "RuntimeError" in r.text and SECRET_TEXT not in r.text
    recs = read_audit(servers["audit"])[before:]
    assert [(x["status"], x["decision"], x.get("outcome")) for x in recs] == [
        (500, "error", "error"),
        (500, "allow", "error"),
    ]
    fams = parse(httpx.get(g + "/metrics").text)
    statuses: dict[str, float] = {}
    for s in fams["fleettwin_gateway_requests_total"].samples:
        if s.name.endswith("_total") and s.labels["route"] == "completions":
            statuses[s.labels["status"]] = statuses.get(s.labels["status"], 0) + s.value
    assert statuses.get("500") == 2 and "499" not in statuses
    assert {s.labels["tenant"]: s.value for s in fams["fleettwin_gateway_in_flight"].samples}["t"] == 0
    logged = "\n".join(rec.getMessage() for rec in caplog.records) + capfd.readouterr().err
    assert "Traceback" not in logged and SECRET_TEXT not in logged and "RuntimeError" in logged
    assert httpx.post(g + "/v1/completions", json=body, headers=AUTH["gateway"]).status_code == 200


def test_the_emulator_answers_an_unexpected_fault_with_one_500(servers, monkeypatch, caplog, capfd):
    from fleettwin.live import protocol

    def broken(*args, **kwargs):
        raise KeyError(SECRET_TEXT)

    monkeypatch.setattr(protocol, "parse_generation", broken)
    with caplog.at_level(logging.ERROR):
        r = httpx.post(servers["emulator"] + "/v1/completions", json={"prompt": SECRET_TEXT})
    assert r.status_code == 500 and "KeyError" in r.text and SECRET_TEXT not in r.text
    logged = "\n".join(rec.getMessage() for rec in caplog.records) + capfd.readouterr().err
    assert "Traceback" not in logged and SECRET_TEXT not in logged


def test_strict_json_units():
    assert strict_json(b'{"a": [1, {"b": "c"}]}') == {"a": [1, {"b": "c"}]}
    for raw, words in [
        (b"[" * 70 + b"]" * 70, "deeper than 64"),
        (b'{"a": Infinity}', "not valid JSON"),
        (b'{"k\\udfff": 1}', "surrogate"),
        (b"\xff", "UTF-8"),
    ]:
        with pytest.raises(ApiError, match=words):
            strict_json(raw)
    check_json([[["x"]]], max_depth=3)
    with pytest.raises(ApiError, match=r"messages\[0\]\.content"):
        check_json({"messages": [{"content": "a\ud83d"}]})
    assert json.loads(json.dumps({"ok": "\U0001f600"})) == strict_json(b'{"ok": "\\ud83d\\ude00"}')
