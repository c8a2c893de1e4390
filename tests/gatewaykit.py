"""The gateway's tests' shared parts (tests/live/test_gateway*.py): an emulator, a backend that records what
it is sent and one that holds a stream open, the policy the ``gw`` fixture (tests/conftest.py) serves, and
helpers for requests, errors and audit records."""

from __future__ import annotations

import json
import time

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from fleettwin.live.gateway.audit import read_audit
from fleettwin.live.gateway.auth import encode_hs256
from fleettwin.live.gateway.config import hash_key
from fleettwin.live.server import EmulatorSpec
from tests.emukit import SMALL_LIMITS, constant_emulator

KEYS = {
    "alpha": "key-alpha-0123456789",
    "beta": "key-beta-0123456789",
    "quota": "key-quota-0123456789",
    "ids": "key-ids-0123456789",
}
JWT_SECRET = b"j" * 40
BACKEND_TOKEN = "backend-s3cret"


def emulator_spec() -> EmulatorSpec:
    return constant_emulator(0.002, SMALL_LIMITS, token=BACKEND_TOKEN)


def recording_backend(seen: list[dict]) -> FastAPI:
    """An OpenAI-style backend that records each body it gets and answers 3 tokens (streamed or not)."""
    app = FastAPI()

    async def answer(request: Request, chat: bool):
        body = await request.json()
        seen.append(body)
        usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
        if not body.get("stream"):
            return {
                "id": "x",
                "object": "chat.completion",
                "model": body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "length",
                        "message": {"role": "assistant", "content": "a b c"},
                    }
                ],
                "usage": usage,
            }

        async def events():
            for w in ("a", " b", " c"):
                chunk = {"model": body.get("model"), "choices": [{"index": 0, "delta": {"content": w}}]}
                yield f"data: {json.dumps(chunk)}\n\n"
            if body.get("stream_options", {}).get("include_usage"):
                yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await answer(request, True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await answer(request, False)

    return app


def holding_backend(held: dict) -> FastAPI:
    """A backend that streams one event and then stays silent until its caller hangs up, which it records
    (plain ASGI: it waits on ``receive()`` for ``http.disconnect``)."""

    async def asgi(scope, receive, send) -> None:
        while (await receive()).get("more_body"):
            pass
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        event = b'data: {"choices": [{"index": 0, "delta": {"content": "a"}}]}\n\n'
        await send({"type": "http.response.body", "body": event, "more_body": True})
        if (await receive())["type"] == "http.disconnect":
            held["caller_left"] = True

    app = FastAPI()
    app.mount("/", asgi)
    return app


def policy(emu_url: str, rec_url: str, hold_url: str, tmp) -> dict:
    (tmp / "jwt.secret").write_bytes(JWT_SECRET)
    return {
        "tenants": {
            "alpha": {
                "api_keys": [hash_key(KEYS["alpha"])],
                "models": ["emu", "rec"],
                "tools": ["search"],
                "collections": ["handbook"],
                "max_tokens": 64,
                "slo_class": "interactive",
            },
            "beta": {
                "api_keys": [hash_key(KEYS["beta"])],
                "models": ["rec"],
                "max_tokens": 64,
                "detectors": {"prompt_injection": "strip", "email": "log"},
            },
            "quota": {
                "api_keys": [hash_key(KEYS["quota"])],
                "models": ["*"],
                "allow_token_ids": True,
                "quotas": {
                    "requests_per_s": 0.5,
                    "burst_requests": 2,
                    "tokens_per_s": 10,
                    "burst_tokens": 200,
                },
            },
            "gamma": {"models": ["emu"], "max_tokens": 8},
            "ids": {"api_keys": [hash_key("key-ids-0123456789")], "models": ["emu"], "allow_token_ids": True},
            "conc": {
                "api_keys": [hash_key("key-conc-0123456789")],
                "models": ["emu", "hold"],
                "quotas": {"concurrent": 1},
            },
            "both": {
                "api_keys": [hash_key("key-both-0123456789")],
                "auth": ["api_key", "jwt"],
                "models": ["rec"],
            },
        },
        "backends": {
            "emu": {"urls": [emu_url], "token_env": "FT_TEST_BACKEND_TOKEN"},
            "rec": {"urls": [rec_url], "served_model": "recorded-model"},
            "hold": {"urls": [hold_url]},
            "emu-b": {"urls": [emu_url], "served_model": "emu", "token_env": "FT_TEST_BACKEND_TOKEN"},
        },
        "jwt": {"secret_file": "jwt.secret", "audience": "fleettwin-gateway"},
        "audit_log": "audit.jsonl",
    }


def auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


def chat(content: str, **kw) -> dict:
    return {"model": kw.pop("model", "emu"), "messages": [{"role": "user", "content": content}], **kw}


def error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == status and err["message"] and err["type"]
    assert r.headers["x-request-id"].startswith("gw-")
    return err


def audit_of(gw, r: httpx.Response) -> dict:
    rid = r.headers["x-request-id"]
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:  # a stream's record is written as it closes
        recs = [x for x in read_audit(gw["audit"]) if x["request_id"] == rid]
        if recs:
            return recs[0]
        time.sleep(0.02)
    raise AssertionError(f"no audit record for {rid}")


def sse(c: httpx.Client, path: str, headers: dict, body: dict) -> list:
    with c.stream("POST", path, headers=headers, json=body) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    frames = raw.split("\n\n")
    assert frames[-1] == "" and frames[-2] == "data: [DONE]"
    return [json.loads(f[6:]) for f in frames[:-2]]


def jwt(**claims) -> str:
    return encode_hs256(
        {
            "tenant": "gamma",
            "sub": "svc-analytics",
            "aud": "fleettwin-gateway",
            "exp": time.time() + 60,
            **claims,
        },
        JWT_SECRET,
    )


def base_policy(**tenant) -> dict:
    return {
        "tenants": {"t": {"api_keys": [hash_key("k" * 20)], "models": ["m"], **tenant}},
        "backends": {"m": {"urls": ["http://127.0.0.1:8000"]}},
    }
