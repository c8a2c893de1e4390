"""What a request asks for, and whether its tenant may ask for it.

``inspect`` reads the policy-relevant fields of a completions / chat body (model, max_tokens, tools, the
collections its retrieved documents come from, whether the prompt is token ids) and estimates its prompt
tokens with the emulator's documented rules (``live/protocol.py``). ``authorize`` checks them against the
tenant's rules and returns the output-token budget to enforce; a refusal is an OpenAI-style error:
403 ``PermissionDeniedError`` for something the tenant may not use, 400 for a limit or a malformed field,
404 for a model no backend serves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fleettwin.live.gateway.config import GatewayConfig, Tenant
from fleettwin.live.protocol import COMPLETION_DEFAULT_MAX_TOKENS, ApiError, chat_tokens_of, text_tokens


class Forbidden(ApiError):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(403, message, param=param, type="PermissionDeniedError")


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestView:
    model: str
    max_tokens: int | None  # as requested; None: not given
    tools: tuple[str, ...]
    collections: tuple[str, ...]
    token_ids: bool
    prompt_tokens: int


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


def _max_tokens(body: dict[str, Any], chat: bool) -> int | None:
    names = ("max_completion_tokens", "max_tokens") if chat else ("max_tokens",)
    for name in names:
        v = body.get(name)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise _bad(f"{name} must be a positive integer, got {json.dumps(v)[:40]}", name)
        return v
    return None


def _prompt(body: dict[str, Any]) -> tuple[int, bool]:
    """(estimated tokens, whether any part is token ids) of a completions prompt, batched or not."""
    prompt = body.get("prompt")
    if prompt is None:
        raise _bad("missing required field 'prompt'", "prompt")
    items = prompt if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else [prompt]
    total, ids = 0, False
    for p in items:
        if isinstance(p, str):
            total += max(1, text_tokens(p))
        elif isinstance(p, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            total, ids = total + len(p), True
        else:
            raise _bad("prompt must be a string, a list of token ids, or a list of either", "prompt")
    return total, ids


def _tools(body: dict[str, Any]) -> tuple[str, ...]:
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise _bad("tools must be a list", "tools")
    names = []
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _bad(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ...}}}}", "tools")
        names.append(fn["name"])
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        names.append(str(choice["function"].get("name")))
    return tuple(names)


def _collections(body: dict[str, Any]) -> tuple[str, ...]:
    docs = body.get("documents")
    if docs is None:
        return ()
    if not isinstance(docs, list):
        raise _bad("documents must be a list of {collection, title, text} objects", "documents")
    out = []
    for i, d in enumerate(docs):
        if (
            not isinstance(d, dict)
            or not isinstance(d.get("collection"), str)
            or not isinstance(d.get("text"), str)
        ):
            raise _bad(f"documents[{i}] needs a string 'collection' and a string 'text'", "documents")
        out.append(d["collection"])
    return tuple(out)


def inspect(body: dict[str, Any], *, chat: bool) -> RequestView:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model is required (a string naming one of GET /v1/models)", "model")
    if chat:
        if "messages" not in body:
            raise _bad("missing required field 'messages'", "messages")
        prompt, ids = chat_tokens_of(body["messages"]), False
        tools, collections = _tools(body), _collections(body)
    else:
        if "documents" in body or "tools" in body:
            raise _bad("documents and tools are accepted on /v1/chat/completions only")
        (prompt, ids), tools, collections = _prompt(body), (), ()
    return RequestView(
        model=model,
        max_tokens=_max_tokens(body, chat),
        tools=tools,
        collections=collections,
        token_ids=ids,
        prompt_tokens=prompt,
    )


def authorize(cfg: GatewayConfig, tenant_name: str, view: RequestView, *, chat: bool) -> int | None:
    """The max_tokens to enforce (the request's, or the tenant's cap when it gave none; None: no cap and
    none given — a chat backend then uses the rest of the context). Raises on a refusal."""
    t: Tenant = cfg.tenants[tenant_name]
    if view.model not in cfg.backends:
        raise ApiError(404, f"The model `{view.model}` does not exist.", param="model")
    if not t.allows("models", view.model):
        raise Forbidden(f"Tenant '{tenant_name}' is not allowed to use model `{view.model}`.", "model")
    for name in view.tools:
        if not t.allows("tools", name):
            raise Forbidden(f"Tenant '{tenant_name}' is not allowed to use tool '{name}'.", "tools")
    for name in view.collections:
        if not t.allows("collections", name):
            raise Forbidden(
                f"Tenant '{tenant_name}' may not use documents from collection '{name}'.", "documents"
            )
    if view.token_ids and not t.allow_token_ids:
        raise Forbidden(
            f"Tenant '{tenant_name}' may not send token-id prompts: the gateway cannot inspect them.",
            "prompt",
        )
    if t.max_tokens is not None and view.max_tokens is not None and view.max_tokens > t.max_tokens:
        raise _bad(
            f"max_tokens is too large: {view.max_tokens}. Tenant '{tenant_name}' may request at most "
            f"{t.max_tokens} completion tokens.",
            "max_tokens",
        )
    if view.max_tokens is not None:
        return view.max_tokens
    if chat:
        return t.max_tokens
    return min(COMPLETION_DEFAULT_MAX_TOKENS, t.max_tokens or COMPLETION_DEFAULT_MAX_TOKENS)
