"""The emulator's API edges as vLLM has them (issue 16, defect 5): ``stop`` strings and ``stop_token_ids`` end
the text with ``finish_reason: "stop"`` (and a shorter generation), ``n > 1`` and batched prompts give one
choice per (prompt, sample) with vLLM's usage arithmetic, ``logprobs``/``top_logprobs`` and ``echo`` have
vLLM's shapes, anything the emulator cannot honour is a 400 naming the field (``tool_choice: required``,
``logit_bias``, an out-of-vocabulary token id, ``text/plain``), ``/tokenize`` and ``/detokenize`` agree with
the token counts, ``/openapi.json`` and ``/docs`` are served, liveness and readiness are separate endpoints,
the prefix-cache counters have vLLM's names and count hits, and a client that hangs up on a non-streamed
request aborts it."""

from __future__ import annotations

import dataclasses
import json
import time

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleettwin.live.promtext import parse
from fleettwin.live.server import serve_in_thread
from fleettwin.live.synthetic import FILLER, OUTPUT_ID_BASE, Tokenizer, filler_text, plan_output
from tests.emukit import SMALL_LIMITS, constant_emulator

LIMITS = dataclasses.replace(SMALL_LIMITS, max_num_seqs=16, enable_prefix_caching=True)


@pytest.fixture(scope="module")
def emu():
    spec = constant_emulator(0.002, LIMITS)
    with serve_in_thread(spec) as srv:
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            yield c


def ok(r: httpx.Response) -> dict:
    assert r.status_code == 200, r.text
    return r.json()


def bad(r: httpx.Response, param: str | None) -> str:
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "BadRequestError" and err["code"] == 400 and err["param"] == param
    return err["message"]


def metric(c: httpx.Client, name: str) -> float:
    fams = parse(c.get("/metrics").text)
    return sum(s.value for s in fams[name].samples if not s.name.endswith("_created"))


def test_a_stop_string_ends_the_text_before_it_and_the_generation_early(emu):
    full = filler_text(0, 10)  # " the quick brown fox jumps over a lazy dog and"
    body = ok(emu.post("/v1/completions", json={"prompt": "hi", "max_tokens": 10, "stop": ["fox"]}))
    choice = body["choices"][0]
    assert choice["text"] == full[: full.index("fox")] and "fox" not in choice["text"]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == "fox"
    assert body["usage"]["completion_tokens"] == 4  # " the quick brown fox": the engine stopped there
    kept = ok(
        emu.post(
            "/v1/completions",
            json={"prompt": "hi", "max_tokens": 10, "stop": "fox", "include_stop_str_in_output": True},
        )
    )["choices"][0]
    assert kept["text"] == " the quick brown fox"
    late = ok(
        emu.post("/v1/completions", json={"prompt": "hi", "max_tokens": 20, "stop": ["the"], "min_tokens": 3})
    )
    assert (
        late["choices"][0]["text"] == filler_text(0, 12) + " "
    )  # the second "the" (token 12): min_tokens first
    by_id = ok(
        emu.post(
            "/v1/completions", json={"prompt": "hi", "max_tokens": 10, "stop_token_ids": [OUTPUT_ID_BASE + 2]}
        )
    )["choices"][0]
    assert by_id["text"] == " the quick" and by_id["stop_reason"] == OUTPUT_ID_BASE + 2
    none = ok(emu.post("/v1/completions", json={"prompt": "hi", "max_tokens": 3, "stop": ["zebra"]}))[
        "choices"
    ][0]
    assert none["finish_reason"] == "length" and none["text"] == filler_text(0, 3)
    finished = parse(emu.get("/metrics").text)["vllm:request_success_total"].samples
    assert any(s.labels["finished_reason"] == "stop" and s.value >= 3 for s in finished)


def test_streamed_stop_matches_the_full_response(emu):
    body = {
        "prompt": "hi",
        "max_tokens": 12,
        "stop": "lazy",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with emu.stream("POST", "/v1/completions", json=body) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    text = "".join(e["choices"][0]["text"] for e in events if e["choices"])
    assert text == filler_text(0, 12)[: filler_text(0, 12).index("lazy")]
    assert (
        events[-2]["choices"][0]["finish_reason"] == "stop" and events[-1]["usage"]["completion_tokens"] == 8
    )


def test_n_and_batched_prompts_give_a_choice_each_with_vllms_usage(emu):
    body = ok(
        emu.post("/v1/completions", json={"prompt": ["first prompt", "second"], "max_tokens": 3, "n": 2})
    )
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert body["choices"][0]["text"] == filler_text(0, 3) and body["choices"][1]["text"] == filler_text(1, 3)
    assert body["usage"] == {
        "prompt_tokens": 3 + 2,
        "completion_tokens": 12,
        "total_tokens": 17,
    }  # prompts once
    ids = ok(emu.post("/v1/completions", json={"prompt": [[1, 2, 3], [4, 5]], "max_tokens": 1}))
    assert ids["usage"]["prompt_tokens"] == 5 and len(ids["choices"]) == 2
    chat = ok(
        emu.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "n": 3, "max_tokens": 2},
        )
    )
    assert len(chat["choices"]) == 3 and chat["usage"]["completion_tokens"] == 6
    with emu.stream(
        "POST", "/v1/completions", json={"prompt": "x", "max_tokens": 3, "n": 2, "stream": True}
    ) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    for i in (0, 1):
        assert "".join(
            e["choices"][0]["text"] for e in events if e["choices"][0]["index"] == i
        ) == filler_text(i, 3)


def test_logprobs_top_logprobs_and_echo_have_vllms_shapes(emu):
    c = ok(emu.post("/v1/completions", json={"prompt": "hello", "max_tokens": 3, "logprobs": 2}))["choices"][
        0
    ]
    lp = c["logprobs"]
    assert lp["tokens"] == [FILLER[0], FILLER[1], FILLER[2]] and lp["text_offset"] == [0, 4, 10]
    assert all(
        len(t) == 2 and max(t.values()) == p
        for t, p in zip(lp["top_logprobs"], lp["token_logprobs"], strict=True)
    )
    e = ok(
        emu.post("/v1/completions", json={"prompt": "hello", "max_tokens": 2, "echo": True, "logprobs": 0})
    )
    e = e["choices"][0]
    assert e["text"] == "hello" + filler_text(0, 2)
    assert e["logprobs"]["token_logprobs"][0] is None and e["logprobs"]["tokens"][:2] == ["hell", "o"]
    ids = ok(
        emu.post("/v1/completions", json={"prompt": [OUTPUT_ID_BASE + 3], "max_tokens": 1, "echo": True})
    )
    assert ids["choices"][0]["text"] == " fox the"
    chat = ok(
        emu.post(
            "/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2,
                "logprobs": True,
                "top_logprobs": 3,
            },
        )
    )["choices"][0]
    content = chat["logprobs"]["content"]
    assert [x["token"] for x in content] == [FILLER[0], FILLER[1]] and all(
        len(x["top_logprobs"]) == 3 for x in content
    )
    assert content[0]["bytes"] == list(FILLER[0].encode())
    echo = ok(
        emu.post(
            "/v1/chat/completions",
            json={
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "Once upon"},
                ],
                "max_tokens": 1,
                "echo": True,
            },
        )
    )
    assert echo["choices"][0]["message"]["content"] == "Once upon" + FILLER[0]
    assert "top_logprobs" in bad(
        emu.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}
        ),
        "top_logprobs",
    )
    bad(
        emu.post("/v1/completions", json={"prompt": "x", "logprobs": 21}), "logprobs"
    )  # vLLM's max_logprobs 20


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"tool_choice": "required"}, "tool_choice"),
        (
            "/v1/chat/completions",
            {"tool_choice": {"type": "function", "function": {"name": "f"}}},
            "tool_choice",
        ),
        ("/v1/chat/completions", {"response_format": {"type": "json_object"}}, "response_format"),
        ("/v1/completions", {"logit_bias": {"50256": -100}}, "logit_bias"),
        ("/v1/completions", {"suffix": "end"}, "suffix"),
        ("/v1/completions", {"best_of": 3}, "best_of"),
        ("/v1/completions", {"prompt": [10**26]}, "prompt"),
        ("/v1/completions", {"prompt": [32000]}, "prompt"),
        ("/v1/completions", {"priority": 5}, "priority"),
        ("/v1/completions", {"n": 200}, "n"),
        ("/v1/completions", {"stop": [""]}, "stop"),
    ],
)
def test_what_cannot_be_honoured_is_a_400_naming_the_field(emu, path, body, param):
    base = {"messages": [{"role": "user", "content": "hi"}]} if "chat" in path else {"prompt": "hi"}
    bad(emu.post(path, json={**base, "max_tokens": 2, **body}), param)


def test_honourable_tool_choices_and_unknown_fields_pass(emu):
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    for choice in ("auto", "none", None):
        ok(
            emu.post(
                "/v1/chat/completions",
                json={
                    "messages": [{"role": "user", "content": "hi"}],
                    "tools": [tool],
                    "tool_choice": choice,
                    "max_tokens": 1,
                },
            )
        )
    ok(
        emu.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1, "some_future_field": 1})
    )  # as vLLM: ignored
    ok(
        emu.post(
            "/v1/completions",
            json={
                "prompt": "hi",
                "max_tokens": 1,
                "temperature": 0.7,
                "seed": 3,
                "logit_bias": {},
                "response_format": None,
            },
        )
    )


def test_a_wrong_media_type_is_a_400(emu):
    r = emu.post("/v1/completions", content=b'{"prompt": "hi"}', headers={"content-type": "text/plain"})
    assert "Only 'application/json' is allowed" in bad(r, None)


def test_tokenize_and_detokenize_agree_with_the_counts(emu):
    t = ok(emu.post("/tokenize", json={"prompt": "x" * 41, "return_token_strs": True}))
    assert t["count"] == 11 == len(t["tokens"]) and t["max_model_len"] == 1024 and len(t["token_strs"]) == 11
    usage = ok(emu.post("/v1/completions", json={"prompt": "x" * 41, "max_tokens": 1}))["usage"]
    assert usage["prompt_tokens"] == t["count"]
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello there, emulator"},
    ]
    tc = ok(emu.post("/tokenize", json={"messages": messages}))
    assert (
        tc["count"]
        == ok(emu.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 1}))["usage"][
            "prompt_tokens"
        ]
    )
    assert (
        ok(emu.post("/tokenize", json={"messages": messages, "add_generation_prompt": False}))["count"]
        == tc["count"] - 3
    )
    out = ok(emu.post("/v1/completions", json={"prompt": "hi", "max_tokens": 5, "logprobs": 0}))["choices"][0]
    ids = [OUTPUT_ID_BASE + k for k in range(5)]
    assert ok(emu.post("/detokenize", json={"tokens": ids}))["prompt"] == out["text"]
    bad(emu.post("/detokenize", json={"tokens": [32000]}), "tokens")
    assert emu.post("/tokenize", json={"prompt": "x", "model": "gpt-9"}).status_code == 404


def test_openapi_docs_liveness_and_readiness(emu):
    doc = ok(emu.get("/openapi.json"))
    for path in ("/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"):
        assert "requestBody" in doc["paths"][path]["post"], path
    assert "stop_token_ids" in doc["components"]["schemas"]["CompletionRequest"]["properties"]
    assert emu.get("/docs").status_code == 200 and "swagger" in emu.get("/docs").text.lower()
    assert ok(emu.get("/livez"))["status"] == "alive" and ok(emu.get("/readyz"))["status"] == "ready"
    assert emu.get("/health").status_code == 200


def test_prefix_cache_counters_have_vllms_names_and_count_hits(emu):
    info = parse(emu.get("/metrics").text)["vllm:cache_config_info"].samples[0].labels
    assert info["enable_prefix_caching"] == "True"
    q0, h0 = metric(emu, "vllm:prefix_cache_queries_total"), metric(emu, "vllm:prefix_cache_hits_total")
    prompt = list(range(500, 600))  # 100 tokens: 6 full blocks of 16
    ok(emu.post("/v1/completions", json={"prompt": prompt, "max_tokens": 1}))
    ok(emu.post("/v1/completions", json={"prompt": prompt, "max_tokens": 1}))
    assert metric(emu, "vllm:prefix_cache_queries_total") - q0 == 200
    assert metric(emu, "vllm:prefix_cache_hits_total") - h0 == 96  # the second request's six blocks


def test_a_client_that_hangs_up_on_a_non_streamed_request_aborts_it(emu):
    done = metric(emu, "vllm:request_success_total")
    with pytest.raises(httpx.ReadTimeout):
        emu.post(
            "/v1/completions", json={"prompt": "hi", "max_tokens": 1000}, timeout=0.2
        )  # 2 s of generation
    deadline = time.monotonic() + 1.0
    while metric(emu, "vllm:num_requests_running") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert metric(emu, "vllm:num_requests_running") == 0
    time.sleep(0.1)
    assert metric(emu, "vllm:request_success_total") == done  # aborted, not counted as a success


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 11),
    st.integers(1, 60),
    st.integers(0, 10),
    st.lists(st.sampled_from(["the", "fox", "o", " a", "dog and", "zzz", "s f"]), max_size=3),
    st.booleans(),
)
def test_plan_output_matches_a_scan_of_the_text(offset, max_tokens, min_tokens, stop, include):
    """Property: the planned cut is where a token-by-token scan (vLLM's) first finds a stop string."""
    plan = plan_output(offset, max_tokens, min_tokens=min_tokens, stop=tuple(stop), include_stop=include)
    text = ""
    for k in range(max_tokens):
        text += FILLER[(offset + k) % 12]
        if k + 1 < max(min_tokens, 1) or not stop:
            continue
        hits = [
            (text.find(s, max(0, len(text) - len(FILLER[(offset + k) % 12]) - len(s) + 1)), s) for s in stop
        ]
        hits = [(p, s) for p, s in hits if p >= 0]
        if hits:
            p, s = min(hits)
            assert plan.finish_reason == "stop" and plan.tokens == k + 1
            assert plan.text == text[: p + (len(s) if include else 0)]
            return
    assert plan.finish_reason == "length" and plan.tokens == max_tokens and plan.text == text


def test_tokenizer_ids_stay_in_the_vocabulary():
    tok = Tokenizer(32000)
    ids = tok.encode("some text with unicode ✓ and more") + tok.encode_chat(
        [{"role": "user", "content": "x"}]
    )
    assert all(0 <= t < 32000 for t in ids)
