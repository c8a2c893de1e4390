"""The gateway end to end on loopback: an emulator (and a recording backend, to see exactly what the gateway
forwards) behind a gateway; requests passed through (streamed or not), quotas and admission, unreachable
backends, the policy file and the command; plus property tests of the token buckets. Authentication and
authorization: test_gateway_auth.py; sanitising: test_gateway_sanitize.py."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleettwin.cli import main
from fleettwin.live import launch
from fleettwin.live.gateway.app import create_gateway_app
from fleettwin.live.gateway.audit import read_audit
from fleettwin.live.gateway.config import GatewayConfig, GatewayQuotas, hash_key, load_gateway, parse_gateway
from fleettwin.live.gateway.quota import TenantLimiter, Ticket, TokenBucket
from fleettwin.live.promtext import parse
from fleettwin.live.server import serve_in_thread
from fleettwin.models.errors import ConfigError
from tests.gatewaykit import BACKEND_TOKEN, KEYS, audit_of, auth, base_policy, chat, emulator_spec, error, sse

# -- passing through -----------------------------------------------------------------------------------------


def test_valid_key_gets_the_backends_answer(gw):
    c = gw["client"]
    r = c.post(
        "/v1/completions", headers=auth("alpha"), json={"model": "emu", "prompt": "x" * 41, "max_tokens": 5}
    )
    body = r.json()
    assert r.status_code == 200 and body["usage"] == {
        "prompt_tokens": 11,
        "completion_tokens": 5,
        "total_tokens": 16,
    }
    assert len(body["choices"][0]["text"].split()) == 5
    rec = audit_of(gw, r)
    assert rec["decision"] == "allow" and rec["tenant"] == "alpha" and rec["outcome"] == "completed"
    assert rec["completion_tokens"] == 5 and rec["backend"] == gw["emu"] and rec["slo_class"] == "interactive"
    r = c.post(
        "/v1/chat/completions",
        headers={"x-api-key": KEYS["alpha"]},
        json=chat("hi", model="emu", max_tokens=2),
    )
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


def test_streaming_is_relayed_event_by_event_with_usage_only_when_asked(gw):
    c = gw["client"]
    chunks = sse(
        c,
        "/v1/chat/completions",
        auth("alpha"),
        chat("hello", max_tokens=4, stream=True, stream_options={"include_usage": True}),
    )
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert (
        len(chunks[1:-1]) == 4
        and chunks[-1]["choices"] == []
        and chunks[-1]["usage"]["completion_tokens"] == 4
    )
    plain = sse(
        c, "/v1/completions", auth("alpha"), {"model": "emu", "prompt": "hi", "max_tokens": 3, "stream": True}
    )
    assert len(plain) == 3 and not any(
        "usage" in x for x in plain
    )  # the gateway's own usage request is hidden


def test_streaming_accounting_uses_the_usage_the_gateway_asked_for(gw):
    c = gw["client"]
    with c.stream(
        "POST",
        "/v1/completions",
        headers=auth("alpha"),
        json={"model": "emu", "prompt": "hi", "max_tokens": 6, "stream": True},
    ) as r:
        r.read()
    rec = audit_of(gw, r)
    assert rec["stream"] and rec["completion_tokens"] == 6 and rec["prompt_tokens"] == 1


def test_the_requested_model_name_comes_back(gw):
    c = gw["client"]
    r = c.post("/v1/chat/completions", headers=auth("beta"), json=chat("hi", model="rec", max_tokens=2))
    assert gw["seen"][-1]["model"] == "recorded-model" and r.json()["model"] == "rec"
    chunks = sse(c, "/v1/chat/completions", auth("beta"), chat("hi", model="rec", max_tokens=2, stream=True))
    assert {x["model"] for x in chunks} == {"rec"}


# -- quotas and admission ------------------------------------------------------------------------------------


def test_quota_exceeded_is_429_with_retry_after(gw):
    c = gw["client"]
    body = {"model": "rec", "prompt": "hi", "max_tokens": 3}
    codes = [c.post("/v1/completions", headers=auth("quota"), json=body) for _ in range(3)]
    assert [x.status_code for x in codes] == [200, 200, 429]  # a burst of 2, then 0.5 requests/s
    r = codes[-1]
    err = error(r, 429)
    assert (
        err["type"] == "RateLimitError" and "quota" in err["message"] and int(r.headers["retry-after"]) >= 1
    )
    assert audit_of(gw, r)["reasons"] == ["quota"]
    too_big = error(c.post("/v1/completions", headers=auth("quota"), json={**body, "max_tokens": 500}), 400)
    assert "burst" in too_big["message"]  # can never fit the bucket: not a 429 to retry forever
    refusals = parse(c.get("/metrics").text)["fleettwin_gateway_refusals_total"].samples
    assert any(s.labels == {"tenant": "quota", "reason": "quota"} and s.value >= 1 for s in refusals)


def test_concurrency_limit_and_a_client_hanging_up_frees_its_slot(gw):
    c = gw["client"]
    headers = {"Authorization": "Bearer key-conc-0123456789"}
    body = {"model": "hold", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with c.stream("POST", "/v1/chat/completions", headers=headers, json=body) as r:
        lines = r.iter_lines()  # held here: dropping a half-read iterator closes the connection at once
        for line in lines:
            if line.startswith("data: "):
                break  # the backend now holds the stream open: the tenant's one slot is taken
        second = c.post(
            "/v1/completions", headers=headers, json={"model": "emu", "prompt": "hi", "max_tokens": 1}
        )
        assert error(second, 429)["message"].endswith("Retry after 1.00 s.")
    # hanging up while the backend is silent: the gateway notices at once, closes the upstream request
    rec = audit_of(gw, r)
    assert rec["outcome"] == "client_closed" and rec["status"] == 200
    deadline = time.monotonic() + 3
    while not gw["held"]["caller_left"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert gw["held"]["caller_left"], "the backend's request was not closed"
    ok = c.post("/v1/completions", headers=headers, json={"model": "emu", "prompt": "hi", "max_tokens": 1})
    assert ok.status_code == 200  # the slot came back
    inflight = parse(c.get("/metrics").text)["fleettwin_gateway_in_flight"].samples
    assert {s.labels["tenant"]: s.value for s in inflight}["conc"] == 0


def test_hanging_up_mid_stream_aborts_the_request_at_the_emulator(gw):
    def finished() -> float:
        fams = parse(httpx.get(f"{gw['emu']}/metrics").text)
        return sum(s.value for s in fams["vllm:request_success_total"].samples if s.name.endswith("_total"))

    def running() -> float:
        return parse(httpx.get(f"{gw['emu']}/metrics").text)["vllm:num_requests_running"].samples[0].value

    before = finished()
    with gw["client"].stream(
        "POST",
        "/v1/completions",
        headers=auth("ids"),
        json={"model": "emu", "prompt": "hi", "max_tokens": 1000, "stream": True},
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                break  # leave after the first of 1000 tokens (2 s of generation)
    deadline = time.monotonic() + 3
    while running() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert running() == 0 and finished() == before  # aborted, not finished: vLLM does not count aborts


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 5), st.floats(0.5, 30)), min_size=1, max_size=60),
    st.floats(1, 50),
    st.floats(5, 60),
)
def test_token_bucket_never_grants_more_than_burst_plus_rate_times_time(steps, rate, burst):
    t, granted, b = 0.0, 0.0, TokenBucket(rate, burst, 0.0)
    for dt, n in steps:
        t += dt
        wait = b.wait_s(n, t)
        if wait == 0:
            b.take(n, t)
            granted += n
        elif not math.isinf(wait):  # waiting as told is enough (asked of a copy: asking refills)
            assert copy.copy(b).wait_s(n, t + wait) == pytest.approx(0, abs=1e-9)
        assert granted <= burst + rate * t + 1e-9


def test_limiter_is_all_or_nothing_and_settles_unused_tokens():
    now = [0.0]
    lim = TenantLimiter(
        "t",
        GatewayQuotas(requests_per_s=100, tokens_per_s=10, burst_tokens=100, concurrent=2),
        clock=lambda: now[0],
    )
    a = lim.admit(60)
    assert isinstance(a, Ticket)
    refused = lim.admit(60)
    assert not isinstance(refused, Ticket) and refused.reason == "tokens_per_s"
    assert refused.retry_after_s == pytest.approx(2.0)
    assert lim.requests.level == pytest.approx(99)  # the refused request took no request token either
    lim.release(a, used_tokens=10)  # 50 unused come back
    assert isinstance(lim.admit(60), Ticket) and lim.in_flight == 1


# -- backends ------------------------------------------------------------------------------------------------


def one_model_gateway(backend: dict, audit: Path) -> GatewayConfig:
    """``base_policy``'s tenant and model ``m`` served by ``backend``."""
    return parse_gateway({**base_policy(), "backends": {"m": backend}, "audit_log": str(audit)})


def ask_for_m(url: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/completions",
        headers={"Authorization": f"Bearer {'k' * 20}"},
        json={"model": "m", "prompt": "hi", "max_tokens": 1},
    )


def test_unreachable_backend_is_502_and_a_backend_refusal_is_passed_on(tmp_path):
    cfg = one_model_gateway({"urls": ["http://127.0.0.1:9"]}, tmp_path / "a.jsonl")
    with serve_in_thread(create_gateway_app(cfg)) as g:
        err = error(ask_for_m(g.url), 502)
        assert err["type"] == "BadGatewayError" and "`m`" in err["message"]
        assert parse(httpx.get(f"{g.url}/metrics").text)["fleettwin_gateway_in_flight"].samples[0].value == 0
    with serve_in_thread(emulator_spec()) as emu:  # the backend wants a token the gateway does not have
        cfg = one_model_gateway({"urls": [emu.url], "served_model": "emu"}, tmp_path / "a.jsonl")
        with serve_in_thread(create_gateway_app(cfg)) as g:
            err = error(ask_for_m(g.url), 502)  # not 401: the caller's credentials were fine
            assert "refused the gateway's credentials (HTTP 401)" in err["message"]
    rec = read_audit(tmp_path / "a.jsonl")[-1]
    assert rec["decision"] == "allow" and rec["outcome"] == "backend_error" and rec["status"] == 502
    assert "bearer token" in rec["error"]  # the backend's own message is kept for the operator


# -- configuration -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"models": ["gpt-9"]},
            "gateway.yaml: tenants.t.models[0]: unknown model 'gpt-9'; backends serve: m",
        ),
        ({"api_keys": ["plain-text-key"]}, "tenants.t.api_keys: an API key must be stored as 'sha256:"),
        ({"detectors": {"telepathy": "block"}}, "tenants.t.detectors: unknown detector 'telepathy'"),
        (
            {"detectors": {"email": "shred"}},
            "tenants.t.detectors.email: Input should be 'block', 'strip', 'redact' or 'log'",
        ),
        (
            {"quotas": {"requests_per_s": -1}},
            "tenants.t.quotas.requests_per_s: Input should be greater than 0",
        ),
        ({"max_tokens": 0}, "tenants.t.max_tokens: Input should be greater than or equal to 1"),
        ({"api_keys": []}, "tenants.t: no api_keys and no jwt section"),
    ],
)
def test_bad_policy_names_file_and_field(tmp_path, change, message):
    path = tmp_path / "gateway.yaml"
    path.write_text(json.dumps(base_policy(**change)))
    with pytest.raises(ConfigError) as exc:
        load_gateway(path)
    assert message.replace("gateway.yaml", str(path)) in str(exc.value)
    assert "plain-text-key" not in str(exc.value)  # a key pasted by mistake is not echoed


def test_bad_yaml_and_cli_errors_are_one_line(tmp_path, capsys):
    path = tmp_path / "g.yaml"
    path.write_text("tenants: [\n")
    assert main(["gateway", "--config", str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"fleettwin gateway: error: {re.escape(str(path))}:\d+:\d+: invalid YAML", err)
    path.write_text(json.dumps({**base_policy(), "jwt": {"secret_env": "FT_TEST_UNSET_SECRET"}}))
    assert main(["gateway", "--config", str(path), "--check"]) == 0
    assert main(["gateway", "--config", str(path), "--port", "0"]) == 2  # the secret is read before listening
    assert "FT_TEST_UNSET_SECRET is not set" in capsys.readouterr().err
    assert main(["gateway", "--new-key"]) == 0
    key, stored = re.findall(r"key:\s+(\S+)\nstored: (\S+)", capsys.readouterr().out)[0]
    assert hash_key(key) == stored and key.startswith("ft-")


def test_fleettwin_gateway_command_serves(tmp_path):
    with serve_in_thread(emulator_spec()) as emu:
        (tmp_path / "g.yaml").write_text(
            json.dumps(
                {
                    "tenants": {"t": {"api_keys": [hash_key("k" * 20)], "models": ["emu"]}},
                    "backends": {"emu": {"urls": [emu.url], "token_env": "FT_TEST_BACKEND_TOKEN"}},
                }
            )
        )
        env = {**os.environ, "FT_TEST_BACKEND_TOKEN": BACKEND_TOKEN}
        with launch.running(launch.gateway_command(tmp_path / "g.yaml"), env) as gw:
            r = httpx.post(
                f"{gw.url}/v1/completions",
                headers={"Authorization": f"Bearer {'k' * 20}"},
                json={"model": "emu", "prompt": "hi", "max_tokens": 2},
                timeout=10,
            )
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
    assert (tmp_path / "gateway-audit.jsonl").exists()
