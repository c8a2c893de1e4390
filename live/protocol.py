"""The OpenAI-compatible request and response bodies the emulator speaks, as vLLM serves them.

Parsing is strict where vLLM is strict and returns one ``ApiError`` (status, OpenAI-style type, message,
param) per problem, so the server never answers a bad request with a traceback. Types and ranges are checked
by the pydantic models of ``live/openai_models.py``; what the fields mean together is checked here.

Token counts without a tokenizer (documented approximations, deterministic; ``live/synthetic.py``):
- ``/v1/completions`` ``prompt`` as a list of token ids: exactly ``len(prompt)`` (each id below the model's
  vocabulary size); as a string: ``ceil(chars / 4)`` (OpenAI's rule of thumb for English text), at least 1.
  A list of prompts is a batch: one choice (times ``n``) per prompt.
- chat: for each message ``ceil(chars of its text / 4) + 4`` (role header and end-of-turn markers; the text
  includes tool-call arguments), plus 3 for the assistant header the template appends.
Output: ``max_tokens`` tokens of synthetic text (``max_completion_tokens`` for chat takes precedence), fewer
when a ``stop`` string or ``stop_token_ids`` ends it (``finish_reason: "stop"``), else ``"length"``: the
emulator has no EOS to stop at, with or without ``ignore_eos``. Without ``max_tokens``: 16 for completions
(vLLM's default), the rest of the context for chat (vLLM's).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from fleettwin.live import openai_models as om
from fleettwin.live.api_error import ApiError
from fleettwin.live.http_guard import strict_json
from fleettwin.live.synthetic import Tokenizer, filler_text, message_text, text_tokens

__all__ = ["ApiError", "GenerationParams", "PromptInput", "filler_text", "parse_generation", "parse_json"]

log = logging.getLogger("fleettwin.emulator")
COMPLETION_DEFAULT_MAX_TOKENS = 16
CHAT_MESSAGE_OVERHEAD = 4
CHAT_REPLY_OVERHEAD = 3
_warned: set[str] = set()


@dataclass(frozen=True, slots=True)
class PromptInput:
    """One prompt: its token count and what it is made of (token ids, or text: a completions string or the
    chat messages rendered), for echo, /tokenize and the prefix cache."""

    tokens: int
    ids: tuple[int, ...] | None = None
    text: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationParams:
    chat: bool
    model: str
    prompts: tuple[PromptInput, ...]
    max_tokens: int
    stream: bool
    include_usage: bool
    continuous_usage: bool
    n: int = 1
    min_tokens: int = 0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    include_stop: bool = False
    logprobs: int | None = None  # top alternatives per token; None: no logprobs
    echo: bool = False
    echo_text: str = ""  # chat: the last assistant message, prepended when echo is set

    @property
    def prompt_tokens(self) -> int:
        return sum(p.tokens for p in self.prompts)


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


def parse_json(raw: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object (``http_guard.strict_json`` checks depth and text)."""
    body = strict_json(raw)
    if not isinstance(body, dict):
        raise _bad("request body must be a JSON object")
    return body


def validated(model: type[BaseModel], body: dict[str, Any]) -> BaseModel:
    """``body`` as ``model``, or a 400 naming the first field that is wrong."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        loc = [str(p) for p in err["loc"] if not str(p).startswith(("function-", "list[", "str", "int"))]
        field = ".".join(loc) or None
        msg = err["msg"] if err["type"] != "missing" else "field required"
        raise _bad(f"{field}: {msg}" if field else msg, loc[0] if loc else None) from None


def refuse_unsupported(body: dict[str, Any], model: type[BaseModel]) -> None:
    """400 for a vLLM feature the emulator cannot honour; unknown fields are ignored as vLLM ignores them
    (logged once per name)."""
    for name, value in body.items():
        if name in om.UNSUPPORTED and value not in om.DEFAULTS_OK.get(name, (None,)):
            raise _bad(om.UNSUPPORTED[name], name)
        if name not in model.model_fields and name not in om.UNSUPPORTED and name not in _warned:
            _warned.add(name)
            log.warning(
                "field %r is not part of the emulated API and is ignored (as vLLM ignores it)", name[:40]
            )


def check_model(model: str | None, served_model: str) -> str:
    if model is None:
        return served_model
    if model != served_model:
        raise ApiError(404, f"The model `{model}` does not exist.", param="model")
    return model


def _check_ids(ids: list[int], vocab_size: int, param: str = "prompt") -> None:
    top = max(ids, default=0)
    if top >= vocab_size:
        raise _bad(f"Token id {top} is out of vocabulary (vocabulary size {vocab_size})", param)


def completion_prompts(prompt: Any, vocab_size: int) -> tuple[PromptInput, ...]:
    """A completions ``prompt``: a string, token ids, or a batch of either."""
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], int)):
        items = [prompt]
    else:
        items = prompt
    if not items:
        raise _bad("prompt cannot be empty", "prompt")
    if len(items) > om.MAX_SEQUENCES:
        raise _bad(f"at most {om.MAX_SEQUENCES} prompts in one request", "prompt")
    out = []
    for p in items:
        if not p:
            raise _bad("prompt cannot be empty", "prompt")
        if isinstance(p, str):
            out.append(PromptInput(max(1, text_tokens(p)), text=p))
        else:
            _check_ids(p, vocab_size)
            out.append(PromptInput(len(p), ids=tuple(p)))
    return tuple(out)


def chat_tokens_of(messages: Any) -> int:
    """Prompt tokens of chat ``messages`` (also the gateway's estimate, so both count alike)."""
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty list", "messages")
    total = CHAT_REPLY_OVERHEAD
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _bad(f"messages[{i}] must be an object with a string 'role'", "messages")
        content = m.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _bad(f"messages[{i}].content must be a string or a list of parts", "messages")
        total += text_tokens(message_text(m)) + CHAT_MESSAGE_OVERHEAD
    return total


def _stop(req: om._Sampling) -> tuple[tuple[str, ...], tuple[int, ...]]:
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    if len(stop) > om.MAX_STOP:
        raise _bad(f"at most {om.MAX_STOP} stop strings", "stop")
    if any(not s for s in stop):
        raise _bad("stop strings cannot be empty", "stop")
    return stop, tuple(req.stop_token_ids or ())


def _stream_options(req: om._Sampling) -> tuple[bool, bool]:
    opts = req.stream_options
    if opts is None:
        return False, False
    if not req.stream:
        raise _bad("stream_options can only be given when stream is true", "stream_options")
    return bool(opts.include_usage), bool(
        opts.continuous_usage_stats
    )  # vLLM: usage on once the object is sent


def _tools(req: om.ChatCompletionRequest) -> None:
    """Tools are accepted, but the emulator never calls one: only choices it can honour pass."""
    choice = req.tool_choice
    if choice is None or choice in ("none", "auto"):
        return
    if choice == "required" or isinstance(choice, om.NamedToolChoice):
        raise _bad(
            "tool_choice 'required' or a named function cannot be honoured: the emulator never calls "
            "tools (use 'auto' or 'none')",
            "tool_choice",
        )


def parse_generation(
    body: dict[str, Any], *, chat: bool, served_model: str, max_model_len: int, vocab_size: int = 32000
) -> GenerationParams:
    """Validate a completions / chat completions body. Raises ``ApiError`` (400, or 404 for an unknown
    model)."""
    kind = om.ChatCompletionRequest if chat else om.CompletionRequest
    if chat and "messages" not in body:
        raise _bad("missing required field 'messages'", "messages")
    if not chat and "prompt" not in body:
        raise _bad("missing required field 'prompt'", "prompt")
    if chat:  # the counting rule's own checks first: they name the message
        chat_tokens_of(body["messages"])
    req = validated(kind, body)
    refuse_unsupported(body, kind)
    model = check_model(req.model, served_model)
    if req.priority != 0:
        raise _bad(
            f"Got priority {req.priority} but priority scheduling is not enabled on this server", "priority"
        )
    echo_text, logprobs = "", None
    if chat:
        _tools(req)
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        tokens = chat_tokens_of(messages) - (0 if req.add_generation_prompt else CHAT_REPLY_OVERHEAD)
        prompts = (PromptInput(tokens, text="".join(f"{m['role']}\n{message_text(m)}\n" for m in messages)),)
        max_tokens = req.max_completion_tokens or req.max_tokens
        if max_tokens is None:
            max_tokens = max(max_model_len - tokens, 1)
        if req.top_logprobs is not None and not req.logprobs:
            raise _bad("top_logprobs can only be given when logprobs is true", "top_logprobs")
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        last = messages[-1]
        if req.echo and last.get("role") == "assistant":
            echo_text = message_text(last)
    else:
        prompts = completion_prompts(req.prompt, vocab_size)
        max_tokens = req.max_tokens or COMPLETION_DEFAULT_MAX_TOKENS
        logprobs = req.logprobs
    if len(prompts) * req.n > om.MAX_SEQUENCES:
        raise _bad(
            f"prompts x n is {len(prompts) * req.n}; the emulator takes at most {om.MAX_SEQUENCES} "
            "sequences per request",
            "n",
        )
    stop, stop_ids = _stop(req)
    include_usage, continuous = _stream_options(req)
    for p in prompts:
        if p.tokens + max_tokens > max_model_len:
            raise _bad(
                f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                f"{p.tokens + max_tokens} tokens ({p.tokens} in the messages, {max_tokens} in the "
                "completion). Please reduce the length of the messages or completion.",
                "max_tokens",
            )
    return GenerationParams(
        chat=chat,
        model=model,
        prompts=prompts,
        max_tokens=max_tokens,
        stream=bool(req.stream),
        include_usage=include_usage,
        continuous_usage=continuous,
        n=req.n,
        min_tokens=req.min_tokens,
        stop=stop,
        stop_token_ids=stop_ids,
        include_stop=req.include_stop_str_in_output,
        logprobs=logprobs,
        echo=bool(req.echo),
        echo_text=echo_text,
    )


# -- /tokenize and /detokenize ------------------------------------------------------------------------------


def tokenize(
    body: dict[str, Any], tok: Tokenizer, *, served_model: str, max_model_len: int
) -> dict[str, Any]:
    """vLLM's ``/tokenize``: ``{count, max_model_len, tokens, token_strs}`` for a prompt or chat messages."""
    if "messages" in body:
        req = validated(om.TokenizeChatRequest, body)
        chat_tokens_of(body["messages"])
        ids = tok.encode_chat(
            [m.model_dump(exclude_none=True) for m in req.messages], req.add_generation_prompt
        )
    else:
        req = validated(om.TokenizeCompletionRequest, body)
        ids = tok.encode(req.prompt)
    check_model(req.model, served_model)
    out: dict[str, Any] = {
        "count": len(ids),
        "max_model_len": max_model_len,
        "tokens": ids,
        "token_strs": None,
    }
    if req.return_token_strs:
        out["token_strs"] = [tok.token_str(t) for t in ids]
    return out


def detokenize(body: dict[str, Any], tok: Tokenizer, *, served_model: str) -> dict[str, Any]:
    req = validated(om.DetokenizeRequest, body)
    check_model(req.model, served_model)
    _check_ids(req.tokens, tok.vocab_size, "tokens")
    return {"prompt": tok.decode(req.tokens)}


def sse(data: dict[str, Any] | str) -> bytes:
    """``data: <json>`` and a blank line (``data: [DONE]`` for the terminator)."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
