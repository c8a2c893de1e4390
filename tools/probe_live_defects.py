"""Issue 16's defects 3-6, probed over HTTP with only the APIs that the code before and after the fix share,
so that the same script says what an older checkout does. One line per check: FIXED (behaves as the issue
wants) or DEFECT, then a JSON count. Defect 2 (a 50 MB body stalling another tenant) is
``benchmarks/bench_isolation.py``.

    .venv/bin/python tools/probe_live_defects.py
    # an older tree, laid out as in docs/live.md (Limits and hardening):
    PYTHONPATH=/tmp/basepkg .venv/bin/python tools/probe_live_defects.py

Takes about 30 s (12 s of it waiting for half-open connections to be closed).
"""

# ruff: noqa: E401, E402, E702, E731, B023
import base64
import hashlib
import hmac
import importlib.util
import json
import tempfile
import time
from pathlib import Path

import httpx
from fastapi import FastAPI, Request

from fleettwin.live.certs import make_certs
from fleettwin.live.client import tls_verify
from fleettwin.live.gateway.app import create_gateway_app
from fleettwin.live.gateway.audit import read_audit
from fleettwin.live.gateway.config import hash_key, parse_gateway
from fleettwin.live.promtext import parse
from fleettwin.live.retrieval_service import build_collection, create_retrieval_app, load_collection
from fleettwin.live.server import EmulatorSpec, serve_in_thread
from fleettwin.models.engine.queue import EngineLimits
from fleettwin.models.perf.constant import ConstantModel

# by path: ``tests`` is not importable from tools/, and this checkout's kit works against any older server
_kit = importlib.util.spec_from_file_location(
    "halfopenkit", Path(__file__).resolve().parents[1] / "tests/halfopenkit.py"
)
halfopenkit = importlib.util.module_from_spec(_kit)
_kit.loader.exec_module(halfopenkit)

L = EngineLimits(
    num_blocks=256, block_size=16, max_num_seqs=8, max_num_batched_tokens=512, max_model_len=1024
)
SPEC = EmulatorSpec(served_model_name="emu", limits=L, perf=ConstantModel(ConstantModel.Params(step_s=0.002)))
tmp = Path(tempfile.mkdtemp())
res = []


def check(defect, what, ok):
    res.append((defect, what, bool(ok)))
    print(f"{'FIXED ' if ok else 'DEFECT'} [{defect}] {what}", flush=True)


def safe(f):
    try:
        return f()
    except Exception as e:
        return e


seen = []
rec = FastAPI()


@rec.post("/v1/chat/completions")
async def _c(request: Request):
    b = await request.json()
    seen.append(b)
    return {
        "id": "x",
        "object": "chat.completion",
        "model": b.get("model"),
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "length"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


(tmp / "jwt").write_bytes(b"j" * 40)
build_collection(tmp / "docs.faiss", [{"text": f"p {i}"} for i in range(4)], embedder_params={"dim": 8})
KA, KS = "key-a-0123456789", "key-s-0123456789"
with (
    serve_in_thread(SPEC) as emu,
    serve_in_thread(rec) as recu,
    serve_in_thread(create_retrieval_app({"docs": load_collection("docs", tmp / "docs.faiss")})) as ret,
):
    cfg = parse_gateway(
        {
            "tenants": {
                "a": {"api_keys": [hash_key(KA)], "models": ["emu", "rec"]},
                "s": {"api_keys": [hash_key(KS)], "models": ["emu"], "quotas": {"concurrent": 1}},
            },
            "backends": {
                "emu": {"urls": [emu.url]},
                "rec": {"urls": [recu.url], "served_model": "served-name"},
            },
            "jwt": {"secret_file": str(tmp / "jwt")},
            "audit_log": str(tmp / "audit.jsonl"),
        }
    )
    with serve_in_thread(create_gateway_app(cfg)) as gw:
        A = {"Authorization": f"Bearer {KA}"}
        e, g, r = emu.url, gw.url, ret.url
        # defect 3: non-streamed hang-up
        safe(
            lambda: httpx.post(e + "/v1/completions", json={"prompt": "hi", "max_tokens": 1000}, timeout=0.2)
        )
        time.sleep(0.6)
        running = parse(httpx.get(e + "/metrics").text)["vllm:num_requests_running"].samples[0].value
        check(3, "emulator: non-streamed hang-up aborts the generation", running == 0)
        time.sleep(2.0)
        safe(
            lambda: httpx.post(
                g + "/v1/completions",
                json={"model": "emu", "prompt": "hi", "max_tokens": 1000},
                headers={"Authorization": f"Bearer {KS}"},
                timeout=0.2,
            )
        )
        time.sleep(0.6)
        r2 = httpx.post(
            g + "/v1/completions",
            json={"model": "emu", "prompt": "hi", "max_tokens": 1},
            headers={"Authorization": f"Bearer {KS}"},
            timeout=10,
        )
        check(3, "gateway: hang-up frees the tenant's slot at once", r2.status_code == 200)
        time.sleep(2.5)
        recs = [x for x in read_audit(tmp / "audit.jsonl") if x.get("tenant") == "s"]
        check(
            3,
            "gateway: hang-up audited as cancelled (499)",
            recs and recs[0]["status"] == 499 and recs[0].get("outcome") == "cancelled",
        )
        # defect 4
        deep = b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}"
        for name, url, path, h in (
            ("emulator", e, "/v1/completions", {}),
            ("gateway", g, "/v1/completions", A),
            ("retrieval", r, "/v1/retrieve", {}),
        ):
            x = httpx.post(url + path, content=deep, headers={"content-type": "application/json", **h})
            check(4, f"{name}: 5000-deep JSON is a 400 (got {x.status_code})", x.status_code == 400)
        n0 = len(read_audit(tmp / "audit.jsonl"))
        x = httpx.post(
            g + "/v1/chat/completions",
            content=b'{"model": "rec", "messages": [{"role": "user", "content": "SECRETX\\ud800"}]}',
            headers={"content-type": "application/json", **A},
        )
        check(4, f"gateway: lone surrogate is a 400 (got {x.status_code})", x.status_code == 400)
        check(4, "gateway: the error does not echo the body", "SECRETX" not in x.text)
        recs = read_audit(tmp / "audit.jsonl")[n0:]
        check(
            4,
            f"gateway: audited as 400, not 499 (got {[y['status'] for y in recs]})",
            recs and recs[-1]["status"] == 400,
        )

        # defect 5
        def comp(**kw):
            return httpx.post(e + "/v1/completions", json={"prompt": "hi", "max_tokens": 10, **kw})

        x = comp(stop=["fox"]).json()["choices"][0]
        check(
            5,
            "stop ends the text before it, finish_reason stop",
            "fox" not in x["text"] and x["finish_reason"] == "stop",
        )
        x = comp(logprobs=2)
        check(5, "logprobs returned", x.status_code == 200 and x.json()["choices"][0]["logprobs"])
        x = comp(echo=True)
        check(
            5,
            "echo returns the prompt",
            x.status_code == 200 and x.json()["choices"][0]["text"].startswith("hi"),
        )
        x = httpx.post(
            e + "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "x"}], "tool_choice": "required", "max_tokens": 2},
        )
        check(5, f"tool_choice required: 400 (got {x.status_code})", x.status_code == 400)
        x = httpx.post(e + "/v1/completions", json={"prompt": [10**26], "max_tokens": 2})
        check(5, f"token id 1e26: 400 (got {x.status_code})", x.status_code == 400)
        x = httpx.post(
            e + "/v1/completions", content=b'{"prompt": "hi"}', headers={"content-type": "text/plain"}
        )
        check(5, f"text/plain: 400 (got {x.status_code})", x.status_code == 400)
        for p in ("/openapi.json", "/docs"):
            check(5, f"GET {p}", httpx.get(e + p).status_code == 200)
        check(5, "POST /tokenize", httpx.post(e + "/tokenize", json={"prompt": "hello"}).status_code == 200)
        check(
            5, "POST /detokenize", httpx.post(e + "/detokenize", json={"tokens": [1000]}).status_code == 200
        )
        check(
            5,
            "readiness and liveness",
            httpx.get(e + "/readyz").status_code == 200 and httpx.get(e + "/livez").status_code == 200,
        )
        check(5, "prefix-cache counters", "vllm:prefix_cache_queries_total" in httpx.get(e + "/metrics").text)
        x = httpx.post(
            g + "/v1/chat/completions",
            json={"model": "rec", "messages": [{"role": "user", "content": "hi"}]},
            headers=A,
        )
        check(
            5,
            f"gateway returns the requested model name (got {x.json().get('model')})",
            x.json().get("model") == "rec",
        )
        # defect 6
        text = (
            "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe sk_live_4eC39HqLyjWDarjtT1zdp7dc password=hunter2 "
            "DE89 3704 0044 0532 0130 00"
        )
        httpx.post(
            g + "/v1/chat/completions",
            json={
                "model": "rec",
                "user": "bob@example.com",
                "messages": [
                    {"role": "user", "name": "carol@example.com", "content": text},
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "1",
                                "type": "function",
                                "function": {"name": "f", "arguments": '{"card": "4111 1111 1111 1111"}'},
                            }
                        ],
                    },
                ],
            },
            headers=A,
        )
        sent = seen[-1]
        c0 = sent["messages"][0]["content"]
        check(6, "GCP AIza key redacted", "AIzaSy" not in c0)
        check(6, "Stripe sk_live key redacted", "sk_live_4e" not in c0)
        check(6, "password=... redacted", "hunter2" not in c0)
        check(6, "IBAN redacted as iban, not phone", "REDACTED:iban" in c0 and "REDACTED:phone" not in c0)
        check(6, "message name inspected", "carol@" not in sent["messages"][0].get("name", ""))
        check(6, "top-level user inspected", "bob@" not in sent.get("user", ""))
        check(
            6,
            "tool-call arguments inspected",
            "4111" not in sent["messages"][1]["tool_calls"][0]["function"]["arguments"],
        )

        def jwt(header, claims):
            h = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
            p = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
            s = (
                base64.urlsafe_b64encode(hmac.new(b"j" * 40, f"{h}.{p}".encode(), hashlib.sha256).digest())
                .rstrip(b"=")
                .decode()
            )
            return f"{h}.{p}.{s}"

        t = jwt({"alg": "HS256", "crit": ["x"], "x": 1}, {"tenant": "a", "exp": time.time() + 60})
        x = httpx.post(
            g + "/v1/chat/completions",
            json={"model": "rec", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {t}"},
        )
        check(6, f"JWT with crit refused (got {x.status_code})", x.status_code == 401)
        t = jwt({"alg": "HS256"}, {"tenant": "a", "exp": time.time() + 60})
        x = httpx.post(
            g + "/v1/chat/completions",
            json={"model": "rec", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {t}"},
        )
        check(6, f"JWT naming an API-key tenant refused (got {x.status_code})", x.status_code == 401)
        socks = halfopenkit.connections(g, 20)
        for s in socks:
            s.sendall(halfopenkit.REQUEST_LINE)
        time.sleep(12)
        closed = halfopenkit.closed_by_server(socks, wait_s=0.2)
        for s in socks:
            s.close()
        check(
            6,
            f"half-open connections closed by a header timeout ({closed}/20 closed after 12 s)",
            closed == 20,
        )
# certificate identity and TLS reasons
pki = tmp / "pki"
make_certs(pki, ["gateway", "emulator", "controller", "retrieval"], days=2)
ca = str(pki / "ca.pem")
with serve_in_thread(
    SPEC, ssl_certfile=str(pki / "emulator.pem"), ssl_keyfile=str(pki / "emulator.key"), ssl_ca_certs=ca
) as emu:
    # the CLI sets the accepted names; here the same as `fleettwin live emulate --tls-ca` does by default when
    # available
    try:
        import dataclasses

        from fleettwin.live.http_guard import HttpLimits

        spec2 = dataclasses.replace(SPEC, http=HttpLimits(allowed_clients=("gateway", "controller")))
    except (ImportError, TypeError):
        spec2 = SPEC
    with serve_in_thread(
        spec2, ssl_certfile=str(pki / "emulator.pem"), ssl_keyfile=str(pki / "emulator.key"), ssl_ca_certs=ca
    ) as emu2:
        x = safe(
            lambda: httpx.post(
                emu2.url + "/v1/completions",
                json={"prompt": "hi", "max_tokens": 1},
                verify=tls_verify(ca, (str(pki / "retrieval-client.pem"), str(pki / "retrieval-client.key"))),
            )
        )
        check(
            6,
            f"emulator refuses the retrieval client's certificate (got {getattr(x, 'status_code', x)})",
            getattr(x, "status_code", 0) == 403,
        )
    cfg = parse_gateway(
        {
            "tenants": {"a": {"api_keys": [hash_key(KA)], "models": ["emu"]}},
            "backends": {"emu": {"urls": [emu.url]}},
            "backend_tls": {"ca": ca},
            "audit_log": str(tmp / "a2.jsonl"),
        }
    )
    with serve_in_thread(create_gateway_app(cfg)) as gw:
        x = httpx.post(
            gw.url + "/v1/completions",
            json={"model": "emu", "prompt": "hi", "max_tokens": 1},
            headers={"Authorization": f"Bearer {KA}"},
        )
        msg = x.json()["error"]["message"]
        check(
            6,
            f"backend TLS failure reported with its reason: {msg[:110]!r}",
            "TLS" in msg and "certificate" in msg,
        )
print(json.dumps({"fixed": sum(ok for *_, ok in res), "defects": sum(not ok for *_, ok in res)}))
