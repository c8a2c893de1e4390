"""The OpenAI-compatible request and response bodies the emulator speaks, as vLLM serves them.

Parsing is strict where vLLM is strict and returns one ``ApiError`` (status, OpenAI-style type, message,
param) per problem, so the server never answers a bad request with a traceback.

Token counts without a tokenizer (documented approximations, deterministic):
- ``/v1/completions`` ``prompt`` as a list of token ids: exactly ``len(prompt)``; as a string: ``ceil(chars / 4)``
  (OpenAI's rule of thumb for English text), at least 1.
- chat: for each message ``ceil(chars of its text / 4) + 4`` (role header and end-of-turn markers), plus 3 for
  the assistant header the template appends.
Output: exactly ``max_tokens`` tokens (``max_completion_tokens`` for chat takes precedence), whether or not
``ignore_eos`` is set — the emulator has no EOS to stop at — so ``finish_reason`` is always ``"length"``.
Without ``max_tokens``: 16 for completions (vLLM's default), the rest of the context for chat (vLLM's).
The text is deterministic filler, one word per token (``filler_text``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

FILLER = (
    " the",
    " quick",
    " brown",
    " fox",
    " jumps",
    " over",
    " a",
    " lazy",
    " dog",
    " and",
    " runs",
    " far",
)
COMPLETION_DEFAULT_MAX_TOKENS = 16
CHAT_MESSAGE_OVERHEAD = 4
CHAT_REPLY_OVERHEAD = 3


class ApiError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}`` with HTTP ``status``."""

    TYPES = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError",
             405: "MethodNotAllowedError", 503: "ServiceUnavailableError", 500: "InternalServerError"}  # fmt: skip

    def __init__(self, status: int, message: str, *, param: str | None = None, type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.type = type or self.TYPES.get(status, "APIError")

    def body(self) -> dict[str, Any]:
        return {
            "error": {"message": self.message, "type": self.type, "param": self.param, "code": self.status}
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationParams:
    chat: bool
    model: str
    prompt_tokens: int
    max_tokens: int
    stream: bool
    include_usage: bool
    continuous_usage: bool


def text_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def filler_text(start: int, n: int) -> str:
    """Output tokens ``start .. start + n - 1`` as text: one filler word per token."""
    return "".join(FILLER[k % len(FILLER)] for k in range(start, start + n))


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _bad("request body must be a JSON object")
    return body


def _int_field(body: dict, name: str, *, minimum: int) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(f"{name} must be an integer, got {json.dumps(v)[:40]}", name)
    if v < minimum:
        raise _bad(f"{name} must be at least {minimum}, got {v}", name)
    return v


def _bool_field(body: dict, name: str, default: bool = False) -> bool:
    v = body.get(name, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise _bad(f"{name} must be a boolean, got {json.dumps(v)[:40]}", name)
    return v


def prompt_tokens_of(prompt: Any) -> int:
    """Tokens of a completions ``prompt``: a string, a list of token ids, or a one-element list of either."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise _bad("prompt cannot be empty", "prompt")
        return max(1, text_tokens(prompt))
    if isinstance(prompt, list):
        if not prompt:
            raise _bad("prompt cannot be empty", "prompt")
        if all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt):
            return len(prompt)
        if all(isinstance(t, str | list) for t in prompt):
            raise _bad(
                "batched prompts (a list of several prompts) are not supported by the emulator", "prompt"
            )
        raise _bad("prompt must be a string or a list of non-negative token ids", "prompt")
    raise _bad("prompt must be a string or a list of token ids", "prompt")


def chat_tokens_of(messages: Any) -> int:
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty list", "messages")
    total = CHAT_REPLY_OVERHEAD
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _bad(f"messages[{i}] must be an object with a string 'role'", "messages")
        content = m.get("content")
        if content is None:
            text = ""
        elif isinstance(content, str):
            text = content
        elif isinstance(content, list):  # content parts: count the text ones
            text = "".join(
                p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
            )
        else:
            raise _bad(f"messages[{i}].content must be a string or a list of parts", "messages")
        total += text_tokens(text) + CHAT_MESSAGE_OVERHEAD
    return total


def parse_generation(
    body: dict[str, Any], *, chat: bool, served_model: str, max_model_len: int
) -> GenerationParams:
    """Validate a completions / chat completions body. Raises ``ApiError`` (400, or 404 for an unknown model)."""
    model = body.get("model")
    if model is None:
        model = served_model
    elif not isinstance(model, str):
        raise _bad("model must be a string", "model")
    elif model != served_model:
        raise ApiError(404, f"The model `{model}` does not exist.", param="model")
    if chat:
        if "messages" not in body:
            raise _bad("missing required field 'messages'", "messages")
        prompt = chat_tokens_of(body["messages"])
        max_tokens = _int_field(body, "max_completion_tokens", minimum=1)
        if max_tokens is None:
            max_tokens = _int_field(body, "max_tokens", minimum=1)
        if max_tokens is None:
            max_tokens = max(max_model_len - prompt, 1)
    else:
        if "prompt" not in body:
            raise _bad("missing required field 'prompt'", "prompt")
        prompt = prompt_tokens_of(body["prompt"])
        max_tokens = _int_field(body, "max_tokens", minimum=1)
        if max_tokens is None:
            max_tokens = COMPLETION_DEFAULT_MAX_TOKENS
    n = _int_field(body, "n", minimum=1)
    if n is not None and n != 1:
        raise _bad("the emulator supports only n = 1", "n")
    _int_field(body, "min_tokens", minimum=0)
    _bool_field(body, "ignore_eos")
    stream = _bool_field(body, "stream")
    opts = body.get("stream_options")
    include_usage = continuous = False
    if opts is not None:
        if not stream:
            raise _bad("stream_options can only be given when stream is true", "stream_options")
        if not isinstance(opts, dict):
            raise _bad("stream_options must be an object", "stream_options")
        include_usage = _bool_field(opts, "include_usage", True)  # vLLM: True once the object is sent
        continuous = _bool_field(opts, "continuous_usage_stats")
    if prompt + max_tokens > max_model_len:
        raise _bad(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt + max_tokens} tokens ({prompt} in the messages, {max_tokens} in the completion). "
            "Please reduce the length of the messages or completion.",
            "max_tokens",
        )
    return GenerationParams(chat=chat, model=model, prompt_tokens=prompt, max_tokens=max_tokens, stream=stream,
                            include_usage=include_usage, continuous_usage=continuous)  # fmt: skip


# -- responses -------------------------------------------------------------------------------------------


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def full_response(p: GenerationParams, rid: str, created: int, text: str, completion_tokens: int,
                  finish_reason: str) -> dict[str, Any]:  # fmt: skip
    if p.chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": finish_reason, "stop_reason": None}  # fmt: skip
        obj = "chat.completion"
    else:
        choice = {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": finish_reason,
            "stop_reason": None,
        }
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": p.model, "choices": [choice],
            "usage": usage(p.prompt_tokens, completion_tokens)}  # fmt: skip


def stream_chunk(p: GenerationParams, rid: str, created: int, *, text: str | None, finish_reason: str | None,
                 role: bool = False, usage_tokens: int | None = None) -> dict[str, Any]:  # fmt: skip
    """One SSE event body; ``text=None`` gives the usage-only chunk (``choices: []``)."""
    if text is None:
        choices: list = []
    elif p.chat:
        delta: dict[str, Any] = {"role": "assistant", "content": text} if role else {"content": text}
        choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    else:
        choices = [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason,
                    "stop_reason": None}]  # fmt: skip
    chunk: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk" if p.chat else "text_completion",
                             "created": created, "model": p.model, "choices": choices}  # fmt: skip
    if usage_tokens is not None:
        chunk["usage"] = usage(p.prompt_tokens, usage_tokens)
    return chunk


def sse(data: dict[str, Any] | str) -> bytes:
    """``data: <json>`` and a blank line (``data: [DONE]`` for the terminator)."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()
