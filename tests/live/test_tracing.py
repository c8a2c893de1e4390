"""OpenTelemetry tracing of the live path: one trace from a workflow's LLM call through the gateway (request,
checks, routing, backend call) into the emulator, linked parent to child by W3C traceparent headers; retrieval
spans; nothing when off (no spans, no traceparent sent upstream); exporter configuration errors."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from fastapi import FastAPI, Request

from fleettwin.live.client import VllmClient, prompt_ids
from fleettwin.live.gateway.app import create_gateway_app
from fleettwin.live.gateway.config import hash_key, parse_gateway
from fleettwin.live.hybrid import HybridRetriever, Passage
from fleettwin.live.server import create_app, serve_in_thread
from fleettwin.live.tracing import NOOP, setup_tracing, tracing_from_env
from fleettwin.models.engine.queue import EngineLimits
from fleettwin.models.errors import ConfigError
from tests.emukit import constant_emulator

pytest.importorskip("opentelemetry.sdk", reason="tracing needs opentelemetry-sdk (the live extra)")
KEY = "trace-key-0123456789"
LIMITS = EngineLimits(num_blocks=256, max_num_seqs=8, max_num_batched_tokens=512, max_model_len=1024)
SPEC = constant_emulator(0.002, LIMITS)


def gateway_config(backend_url: str, tmp_path) -> object:
    return parse_gateway(
        {
            "tenants": {"t": {"api_keys": [hash_key(KEY)], "models": ["emu"], "allow_token_ids": True}},
            "backends": {"emu": {"urls": [backend_url]}},
            "audit_log": str(tmp_path / "audit.jsonl"),
        }
    )


@pytest.fixture(scope="module")
def traced_stack(tmp_path_factory):
    """An emulator and a gateway in front of it, each with its own in-memory exporter."""
    emu_tr, gw_tr = (
        setup_tracing("fleettwin-emulator", "memory"),
        setup_tracing("fleettwin-gateway", "memory"),
    )
    with serve_in_thread(create_app(SPEC, tracing=emu_tr)) as emu:
        cfg = gateway_config(emu.url, tmp_path_factory.mktemp("gw"))
        with serve_in_thread(create_gateway_app(cfg, tracing=gw_tr)) as gw:
            yield {"gw": gw.url, "emu_tr": emu_tr, "gw_tr": gw_tr}


def by_name(spans) -> dict[str, list]:
    out: dict[str, list] = {}
    for s in spans:
        out.setdefault(s.name, []).append(s)
    return out


def finished(tr, *names: str, timeout_s: float = 5.0) -> dict[str, list]:
    """The exporter's spans by name once every one of ``names`` has ended: a streamed response's spans end
    just after its last byte, which the client may have read already."""
    deadline = time.monotonic() + timeout_s
    while True:
        spans = by_name(tr.exporter.get_finished_spans())
        if all(n in spans for n in names) or time.monotonic() > deadline:
            return spans
        time.sleep(0.01)


def parent_of(span) -> int | None:
    return span.parent.span_id if span.parent is not None else None


@pytest.mark.parametrize("stream", [True, False])
def test_one_trace_runs_from_the_client_through_the_gateway_into_the_emulator(traced_stack, stream):
    client_tr = setup_tracing("client", "memory")
    for tr in (traced_stack["emu_tr"], traced_stack["gw_tr"]):
        tr.exporter.clear()
    call = client_tr.start("workflow.llm", kind="client")

    async def send():
        async with VllmClient(traced_stack["gw"], token=KEY, retries=0) as c:
            return await c.completion(
                prompt_ids(20), 5, model="emu", stream=stream, headers=client_tr.headers(call)
            )

    res = asyncio.run(send())
    client_tr.end(call)
    assert res.ok and res.output_tokens == 5
    gw = finished(traced_stack["gw_tr"], "gateway.request", "gateway.backend")
    emu = finished(traced_stack["emu_tr"], "emulator.generate")
    [request], [check], [route], [backend] = (
        gw["gateway.request"],
        gw["gateway.check"],
        gw["gateway.route"],
        gw["gateway.backend"],
    )
    [generate] = emu["emulator.generate"]
    trace_id = call.get_span_context().trace_id
    assert {s.context.trace_id for s in (request, check, route, backend, generate)} == {trace_id}
    assert parent_of(request) == call.get_span_context().span_id and request.parent.is_remote
    assert parent_of(check) == parent_of(route) == parent_of(backend) == request.context.span_id
    assert parent_of(generate) == backend.context.span_id and generate.parent.is_remote
    assert (
        request.attributes["http.response.status_code"] == 200
        and request.attributes["fleettwin.tenant"] == "t"
    )
    assert backend.attributes["gen_ai.usage.output_tokens"] == 5
    assert (
        generate.attributes["gen_ai.usage.input_tokens"] == 20
        and generate.attributes["fleettwin.stream"] == stream
    )
    # nested in time: the emulator's handling inside the backend call inside the gateway's request
    assert request.start_time <= backend.start_time <= generate.start_time
    assert generate.end_time <= backend.end_time <= request.end_time
    assert str(request.resource.attributes["service.name"]) == "fleettwin-gateway"


def test_a_refused_request_ends_its_span_with_the_reason_and_calls_no_backend(traced_stack):
    traced_stack["gw_tr"].exporter.clear()
    r = httpx.post(
        traced_stack["gw"] + "/v1/completions",
        json={"model": "emu", "prompt": "hi", "max_tokens": 2},
        headers={"Authorization": "Bearer wrong-key-000000000"},
    )
    assert r.status_code == 401
    spans = by_name(traced_stack["gw_tr"].exporter.get_finished_spans())
    [request] = spans["gateway.request"]
    assert request.attributes["fleettwin.refusal"] == "unauthenticated" and "gateway.backend" not in spans
    assert request.parent is None  # no traceparent came in: a new trace


def test_a_bad_request_to_the_emulator_is_an_error_span(traced_stack):
    traced_stack["emu_tr"].exporter.clear()
    r = httpx.post(
        f"{traced_stack['gw']}/v1/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": "emu", "prompt": prompt_ids(1000), "max_tokens": 100},
    )  # over max_model_len
    assert r.status_code == 400
    [generate] = traced_stack["emu_tr"].exporter.get_finished_spans()
    assert (
        generate.status.status_code.name == "ERROR"
        and generate.attributes["http.response.status_code"] == 400
    )


def header_recorder(seen: list[dict]) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/completions")
    async def completions(request: Request):
        seen.append(dict(request.headers))
        return {
            "id": "x",
            "object": "text_completion",
            "choices": [{"index": 0, "text": "a", "finish_reason": "length"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    return app


def test_off_by_default_no_spans_and_no_traceparent_upstream(tmp_path, monkeypatch):
    monkeypatch.delenv("FLEETTWIN_TRACING", raising=False)
    assert tracing_from_env("x") is NOOP and not NOOP.enabled and NOOP.headers(None) == {}
    assert (
        NOOP.start("a") is None
        and NOOP.server_span("a", {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}) is None
    )
    seen: list[dict] = []
    with serve_in_thread(header_recorder(seen)) as rec:
        off = create_gateway_app(gateway_config(rec.url, tmp_path))
        on_tr = setup_tracing("gw", "memory")
        on = create_gateway_app(gateway_config(rec.url, tmp_path), tracing=on_tr)
        for app in (off, on):
            with serve_in_thread(app) as gw:
                r = httpx.post(
                    gw.url + "/v1/completions",
                    headers={"Authorization": f"Bearer {KEY}"},
                    json={"model": "emu", "prompt": "hello", "max_tokens": 1},
                )
                assert r.status_code == 200
    assert "traceparent" not in seen[0]
    [backend] = [s for s in on_tr.exporter.get_finished_spans() if s.name == "gateway.backend"]
    version, trace_id, span_id, flags = seen[1]["traceparent"].split("-")
    assert (int(trace_id, 16), int(span_id, 16)) == (backend.context.trace_id, backend.context.span_id)
    assert int(flags, 16) & 1  # sampled


def test_retrieval_spans_are_children_of_the_search():
    tr = setup_tracing("r", "memory")
    passages = [
        Passage("a", "the cat sat on the mat near the door"),
        Passage("b", "dogs chase cats around the yard"),
        Passage("c", "prefill and decode share one batch in the engine"),
    ]
    retriever = HybridRetriever(passages, dim=2)
    parent = tr.start("retrieval.search")
    hits = retriever.search("cat mat", 2, tracing=tr, parent=parent)
    tr.end(parent)
    assert hits[0].passage == 0
    spans = by_name(tr.exporter.get_finished_spans())
    assert {parent_of(spans[n][0]) for n in ("retrieval.lexical", "retrieval.dense", "retrieval.fuse")} == {
        parent.get_span_context().span_id
    }


def test_exporter_settings_are_checked_and_console_writes_one_json_span_per_line(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"FLEETTWIN_TRACING='jaeger': tracing exporter 'jaeger': expected one of "
        r"none, console, otlp, memory",
    ):
        tracing_from_env("x", {"FLEETTWIN_TRACING": "jaeger"})
    with pytest.raises(ConfigError, match=r"FLEETTWIN_TRACING_RATIO='half'"):
        tracing_from_env("x", {"FLEETTWIN_TRACING": "console", "FLEETTWIN_TRACING_RATIO": "half"})
    with pytest.raises(ConfigError, match=r"sample ratio 0.0"):
        setup_tracing("x", "console", ratio=0.0)
    path = tmp_path / "spans.jsonl"
    tr = tracing_from_env("svc", {"FLEETTWIN_TRACING": "console", "FLEETTWIN_TRACING_FILE": str(path)})
    for name in ("a", "b"):
        tr.end(tr.start(name))
    tr.shutdown()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [s["name"] for s in lines] == ["a", "b"] and lines[0]["resource"]["attributes"][
        "service.name"
    ] == "svc"


def test_otlp_without_an_exporter_package_says_what_to_install():
    try:
        import opentelemetry.exporter.otlp  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="pip install opentelemetry-exporter-otlp-proto-http"):
            tracing_from_env("x", {"FLEETTWIN_TRACING": "otlp"})
    else:
        pytest.skip("an OTLP exporter is installed here")


def test_a_search_through_the_gateway_is_traced_into_the_retrieval_service(tmp_path):
    from fleettwin.live.retrieval_service import build_collection, create_retrieval_app, load_collection

    passages = [{"text": f"passage {i} about kv cache blocks and prefill number{i}"} for i in range(8)]
    build_collection(tmp_path / "docs.faiss", passages, embedder_params={"dim": 32})
    svc_tr, gw_tr = (
        setup_tracing("fleettwin-retrieval", "memory"),
        setup_tracing("fleettwin-gateway", "memory"),
    )
    cols = {"docs": load_collection("docs", tmp_path / "docs.faiss")}
    with serve_in_thread(create_retrieval_app(cols, tracing=svc_tr)) as svc:
        cfg = parse_gateway(
            {
                "tenants": {"t": {"api_keys": [hash_key(KEY)], "models": ["emu"], "collections": ["docs"]}},
                "backends": {"emu": {"urls": ["http://127.0.0.1:9"]}},
                "retrieval": {"url": svc.url},
                "audit_log": str(tmp_path / "a.jsonl"),
            }
        )
        with serve_in_thread(create_gateway_app(cfg, tracing=gw_tr)) as gw:
            r = httpx.post(
                gw.url + "/v1/retrieve",
                headers={"Authorization": f"Bearer {KEY}"},
                json={"collection": "docs", "query": "passage 3 number3", "k": 2},
            )
    assert r.status_code == 200 and len(r.json()["ids"]) == 2
    gw_spans = by_name(gw_tr.exporter.get_finished_spans())
    [request], [call] = gw_spans["gateway.request"], gw_spans["gateway.retrieval"]
    [served] = svc_tr.exporter.get_finished_spans()
    assert served.name == "retrieval.retrieve" and parent_of(served) == call.context.span_id
    assert parent_of(call) == request.context.span_id and served.context.trace_id == request.context.trace_id
    assert served.attributes["fleettwin.hits"] == 2 and call.attributes["fleettwin.collection"] == "docs"
