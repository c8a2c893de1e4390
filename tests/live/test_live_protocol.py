"""The emulator's HTTP surface as a vLLM client sees it: completions and chat, streaming or not, SSE framing,
exact usage, /v1/models, /health, /metrics with vLLM's names, types and buckets, OpenAI-style errors,
bearer tokens and TLS. One emulator per module, on 127.0.0.1 and a free port."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import time

import httpx
import pytest

from fleettwin.live import prom
from fleettwin.live.promtext import parse
from fleettwin.live.server import EmulatorSpec, serve_in_thread
from tests.emukit import SMALL_LIMITS, constant_emulator

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def spec(**kw) -> EmulatorSpec:
    return constant_emulator(0.002, SMALL_LIMITS, name="emu-model", **kw)


@pytest.fixture(scope="module")
def server():
    with serve_in_thread(spec(token=TOKEN)) as srv:
        with httpx.Client(base_url=srv.url, headers=AUTH, timeout=10) as client:
            yield client


def events(client: httpx.Client, path: str, body: dict) -> tuple[str, list]:
    with client.stream("POST", path, json=body) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    frames = raw.split("\n\n")
    assert frames[-1] == "" and frames[-2] == "data: [DONE]", raw[-200:]
    assert all(f.startswith("data: ") and "\n" not in f for f in frames[:-1])
    return raw, [json.loads(f[6:]) for f in frames[:-2]]


def test_completion_with_token_ids_gives_exact_usage_and_filler_text(server):
    r = server.post(
        "/v1/completions",
        json={"model": "emu-model", "prompt": list(range(37)), "max_tokens": 7, "ignore_eos": True},
    )
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == "emu-model"
    assert body["usage"] == {"prompt_tokens": 37, "completion_tokens": 7, "total_tokens": 44}
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length" and len(choice["text"].split()) == 7
    again = server.post("/v1/completions", json={"prompt": list(range(37)), "max_tokens": 7}).json()
    assert again["choices"][0]["text"] == choice["text"], "deterministic filler"


def test_string_prompt_counts_four_characters_per_token(server):
    body = server.post("/v1/completions", json={"prompt": "x" * 41, "max_tokens": 2}).json()
    assert body["usage"]["prompt_tokens"] == 11  # ceil(41 / 4)


def test_streaming_completion_sse_framing_one_event_per_token_then_usage(server):
    _, chunks = events(
        server,
        "/v1/completions",
        {"prompt": [1, 2, 3], "max_tokens": 5, "stream": True, "stream_options": {"include_usage": True}},
    )
    content, usage = chunks[:-1], chunks[-1]
    assert len(content) == 5 and all(c["object"] == "text_completion" for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in content] == [None] * 4 + ["length"]
    assert usage["choices"] == [] and usage["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 5,
        "total_tokens": 8,
    }


def test_streaming_without_stream_options_has_no_usage(server):
    _, chunks = events(server, "/v1/completions", {"prompt": [1], "max_tokens": 3, "stream": True})
    assert len(chunks) == 3 and not any("usage" in c for c in chunks)


def test_chat_completion_and_chat_stream(server):
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello there, emulator"},
    ]
    body = server.post("/v1/chat/completions", json={"messages": messages, "max_completion_tokens": 4}).json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] == 4
    assert body["usage"]["prompt_tokens"] == (2 + 4) + (6 + 4) + 3  # ceil(chars/4) + 4 per message, + 3
    _, chunks = events(
        server,
        "/v1/chat/completions",
        {"messages": messages, "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    texts = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert len(texts) == 3 and all(texts)
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 3


def test_models_health_version(server):
    models = server.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["emu-model"]
    assert models["data"][0]["max_model_len"] == 1024
    health = server.get("/health")
    assert health.status_code == 200 and health.content == b""
    assert "version" in server.get("/version").json()


def test_metrics_have_vllm_names_types_labels_and_buckets(server):
    server.post("/v1/completions", json={"prompt": [5] * 20, "max_tokens": 4})
    r = server.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    fams = parse(r.text)
    types = {
        "vllm:num_requests_running": "gauge",
        "vllm:num_requests_waiting": "gauge",
        "vllm:kv_cache_usage_perc": "gauge",
        "vllm:prompt_tokens_total": "counter",
        "vllm:generation_tokens_total": "counter",
        "vllm:request_success_total": "counter",
        "vllm:num_preemptions_total": "counter",
        "vllm:time_to_first_token_seconds": "histogram",
        "vllm:inter_token_latency_seconds": "histogram",
        "vllm:e2e_request_latency_seconds": "histogram",
        "vllm:request_time_per_output_token_seconds": "histogram",
        "vllm:request_queue_time_seconds": "histogram",
    }
    for name, kind in types.items():
        assert fams[name].type == kind, name
        for s in fams[name].samples:
            assert s.labels["model_name"] == "emu-model" and s.labels["engine"] == "0", s
    assert "vllm:gpu_cache_usage_perc" not in fams  # gone from current vLLM; --legacy-metrics adds it
    bounds = {
        "vllm:time_to_first_token_seconds": prom.TTFT_BUCKETS,
        "vllm:inter_token_latency_seconds": prom.ITL_BUCKETS,
        "vllm:e2e_request_latency_seconds": prom.REQUEST_LATENCY_BUCKETS,
    }
    for name, expected in bounds.items():
        les = [float(s.labels["le"]) for s in fams[name].samples if s.name.endswith("_bucket")]
        assert les == [*expected, float("inf")], name
    assert len(prom.TTFT_BUCKETS) == 22 and 2.0 not in prom.TTFT_BUCKETS  # as the reference says
    assert len(prom.ITL_BUCKETS) == 19 and len(prom.REQUEST_LATENCY_BUCKETS) == 21
    success = fams["vllm:request_success_total"].samples
    # one series per finish reason from the start, as vLLM creates them; the requests here all hit max_tokens
    totals = {s.labels["finished_reason"]: s.value for s in success if s.name.endswith("_total")}
    assert set(totals) == {"stop", "length", "abort"} and totals["stop"] == totals["abort"] == 0
    assert totals["length"] > 0


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", b"{not json", None),
        ("/v1/completions", b"[1, 2]", None),
        ("/v1/completions", b'{"max_tokens": 3}', "prompt"),
        ("/v1/completions", b'{"prompt": "hi", "max_tokens": 0}', "max_tokens"),
        ("/v1/completions", b'{"prompt": "hi", "max_tokens": "many"}', "max_tokens"),
        ("/v1/completions", b'{"prompt": "", "max_tokens": 3}', "prompt"),
        ("/v1/completions", b'{"prompt": [1, 2], "max_tokens": 1023}', "max_tokens"),
        ("/v1/completions", b'{"prompt": [1], "max_tokens": 2, "stream_options": {}}', "stream_options"),
        ("/v1/completions", b'{"prompt": [1], "n": 0}', "n"),
        ("/v1/chat/completions", b'{"max_tokens": 3}', "messages"),
        ("/v1/chat/completions", b'{"messages": [{"content": "no role"}]}', "messages"),
    ],
)
def test_bad_requests_get_openai_style_400(server, path, body, param):
    r = server.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "BadRequestError" and err["code"] == 400 and err["message"]
    assert err["param"] == param


def test_too_long_request_names_the_context_limit(server):
    err = server.post("/v1/completions", json={"prompt": [1] * 1000, "max_tokens": 100}).json()["error"]
    assert "maximum context length is 1024 tokens" in err["message"] and "1100" in err["message"]


def test_unknown_model_is_404_and_unknown_route_is_json(server):
    r = server.post("/v1/completions", json={"model": "gpt-9", "prompt": "hi"})
    assert r.status_code == 404 and r.json()["error"]["type"] == "NotFoundError"
    r = server.get("/v1/nothing-here")
    assert r.status_code == 404 and "error" in r.json()


def test_bearer_token_guards_v1_only(server):
    url = str(server.base_url)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "hi", "max_tokens": 1}, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == 401
        assert httpx.get(f"{url}/v1/models", headers=headers).status_code == 401
    assert httpx.get(f"{url}/health").status_code == 200  # as in vLLM, health and metrics stay open
    assert httpx.get(f"{url}/metrics").status_code == 200


def test_server_survives_a_client_that_hangs_up_mid_stream(server):
    with server.stream(
        "POST", "/v1/completions", json={"prompt": [1], "max_tokens": 500, "stream": True}
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                break  # leave after the first token; the emulator aborts the request
    r = server.post("/v1/completions", json={"prompt": [1], "max_tokens": 2})
    assert r.status_code == 200 and server.get("/health").status_code == 200
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:  # the abandoned request leaves the batch (its KV blocks are freed)
        running = parse(server.get("/metrics").text)["vllm:num_requests_running"].samples[0].value
        if running == 0:
            break
        time.sleep(0.05)
    assert running == 0


@pytest.mark.skipif(
    shutil.which("openssl") is None, reason="needs the openssl CLI to make a test certificate"
)
def test_tls(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    with serve_in_thread(spec(), ssl_certfile=str(cert), ssl_keyfile=str(key)) as srv:
        assert srv.url.startswith("https://")
        trust = ssl.create_default_context(cafile=str(cert))
        r = httpx.post(f"{srv.url}/v1/completions", json={"prompt": [1, 2], "max_tokens": 2}, verify=trust)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
        with pytest.raises(httpx.ConnectError):  # an unverified certificate is refused by default
            httpx.get(f"{srv.url}/health")
