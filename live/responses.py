"""The emulator's answers, shaped as vLLM shapes them: full responses and SSE streams, one choice per
(prompt, n) pair, with echo, logprobs, stop reasons and usage.

Choice ``i * n + j`` is prompt ``i``'s ``j``-th sample. ``usage.prompt_tokens`` counts each prompt once (not
``n`` times) and ``completion_tokens`` sums every choice, as vLLM does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fleettwin.live.api_error import ApiError
from fleettwin.live.emulator import ABORT, Generation
from fleettwin.live.protocol import GenerationParams, PromptInput, sse, usage
from fleettwin.live.synthetic import OutputPlan, Tokenizer, chat_logprobs, completion_logprobs, pieces


@dataclass(slots=True)
class Choice:
    index: int
    prompt: PromptInput
    plan: OutputPlan
    gen: Generation


def echo_of(p: GenerationParams, prompt: PromptInput, tok: Tokenizer) -> str:
    if not p.echo:
        return ""
    if p.chat:
        return p.echo_text
    return prompt.text if prompt.text is not None else tok.decode(list(prompt.ids or ()))


def _echo_tokens(prompt: PromptInput, tok: Tokenizer) -> list[str]:
    return pieces(prompt.text) if prompt.text is not None else [tok.token_str(t) for t in prompt.ids or ()]


def full_response(p: GenerationParams, rid: str, created: int, choices: list[Choice], tok: Tokenizer) -> dict:
    out, completion = [], 0
    for c in choices:
        n_out = c.gen.num_output
        completion += n_out
        echo = echo_of(p, c.prompt, tok)
        text = echo + "".join(c.plan.pieces[:n_out])
        base = {
            "index": c.index,
            "logprobs": None,
            "finish_reason": c.plan.finish_reason,
            "stop_reason": c.plan.stop_reason,
        }
        if p.chat:
            if p.logprobs is not None:
                base["logprobs"] = chat_logprobs(c.plan, p.logprobs, end=n_out)
            out.append({**base, "message": {"role": "assistant", "content": text, "tool_calls": []}})
        else:
            if p.logprobs is not None:
                base["logprobs"] = completion_logprobs(
                    c.plan, p.logprobs, end=n_out, prompt=_echo_tokens(c.prompt, tok) if p.echo else None
                )
            out.append({**base, "text": text})
    return {
        "id": rid,
        "object": "chat.completion" if p.chat else "text_completion",
        "created": created,
        "model": p.model,
        "choices": out,
        "usage": usage(p.prompt_tokens, completion),
    }


def chunk(
    p: GenerationParams,
    rid: str,
    created: int,
    index: int,
    text: str | None,
    *,
    finish_reason: str | None = None,
    stop_reason: str | int | None = None,
    role: bool = False,
    logprobs: dict | None = None,
    usage_tokens: int | None = None,
) -> dict[str, Any]:
    """One SSE event body; ``text=None`` gives the usage-only chunk (``choices: []``)."""
    if text is None:
        choices: list = []
    elif p.chat:
        delta: dict[str, Any] = {"role": "assistant", "content": text} if role else {"content": text}
        choices = [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]
        if finish_reason is not None:
            choices[0]["stop_reason"] = stop_reason
    else:
        choices = [
            {
                "index": index,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": finish_reason,
                "stop_reason": stop_reason,
            }
        ]
    out: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk" if p.chat else "text_completion",
        "created": created,
        "model": p.model,
        "choices": choices,
    }
    if usage_tokens is not None:
        out["usage"] = usage(p.prompt_tokens, usage_tokens)
    return out


def _token_logprobs(p: GenerationParams, c: Choice, k: int, text_offset: int) -> dict | None:
    if p.logprobs is None:
        return None
    if p.chat:
        return chat_logprobs(c.plan, p.logprobs, start=k, end=k + 1)
    return completion_logprobs(c.plan, p.logprobs, start=k, end=k + 1, text_offset=text_offset)


async def stream(
    p: GenerationParams, rid: str, created: int, choices: list[Choice], tok: Tokenizer
) -> AsyncIterator[bytes]:
    """SSE events: per choice the role chunk (chat) and the echo, then one event per output token as the
    engine produces it (choices interleaved), the last of each with its ``finish_reason``, then the usage
    chunk when asked for, then ``data: [DONE]``. A client that goes away aborts every choice."""
    queue: asyncio.Queue[tuple[Choice, bool]] = asyncio.Queue()

    async def pump(c: Choice) -> None:
        async for _ in c.gen:
            queue.put_nowait((c, True))
        queue.put_nowait((c, False))

    tasks = [asyncio.ensure_future(pump(c)) for c in choices]
    sent = [0] * len(choices)
    offset = [0] * len(choices)
    total = 0
    cont = p.continuous_usage
    try:
        for c in choices:
            if p.chat:  # vLLM opens a chat stream with the assistant role and empty content
                yield sse(chunk(p, rid, created, c.index, "", role=True, usage_tokens=0 if cont else None))
            echo = echo_of(p, c.prompt, tok)
            if echo:
                offset[c.index] = len(echo)
                yield sse(chunk(p, rid, created, c.index, echo, usage_tokens=0 if cont else None))
        remaining, aborted = len(choices), False
        while remaining:
            c, token = await queue.get()
            if not token:
                remaining -= 1
                aborted = aborted or c.gen.finish_reason == ABORT
                continue
            k = sent[c.index]
            sent[c.index] += 1
            total += 1
            last = sent[c.index] == c.plan.tokens
            piece = c.plan.pieces[k]
            yield sse(
                chunk(
                    p,
                    rid,
                    created,
                    c.index,
                    piece,
                    finish_reason=c.plan.finish_reason if last else None,
                    stop_reason=c.plan.stop_reason if last else None,
                    logprobs=_token_logprobs(p, c, k, offset[c.index]),
                    usage_tokens=total if cont else None,
                )
            )
            offset[c.index] += len(piece)
        if aborted:
            yield sse(ApiError(503, "the request was aborted by the engine").body())
        elif p.include_usage:
            yield sse(chunk(p, rid, created, 0, None, usage_tokens=total))
        yield sse("[DONE]")
    finally:
        for t in tasks:
            t.cancel()
        for c in choices:
            c.gen.abort()
