"""The request bodies the emulator accepts, as pydantic models: the types and ranges of every field it reads
(checked before ``live/protocol.py`` looks at what the fields mean), and the schemas its ``/openapi.json``
publishes (what ``/docs`` shows and what the schemathesis fuzz test generates from).

Field names, types and defaults follow vLLM's ``CompletionRequest`` / ``ChatCompletionRequest`` /
``Tokenize*Request`` / ``DetokenizeRequest``. As in vLLM, unknown fields are allowed (and ignored, with one
log line per field name); fields vLLM implements but the emulator cannot honour are listed in ``UNSUPPORTED``
and refused with a 400 naming them (``protocol.refuse_unsupported``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_LOGPROBS = 20  # vLLM's default --max-logprobs
MAX_N = 128  # choices per prompt (vLLM has no such cap; the emulator bounds the work one request can queue)
MAX_SEQUENCES = 256  # prompts x n in one request
MAX_STOP = 16  # stop strings or stop token ids (vLLM: no cap; a bound keeps the per-token search cheap)

TokenId = Annotated[int, Field(ge=0)]
Stop = str | list[str] | None


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool | None = True
    continuous_usage_stats: bool | None = False


class _Sampling(_Body):
    """Fields both generation routes share. Sampling knobs (temperature, top_p, ...) are validated as vLLM
    validates them; the emulator's text is synthetic, so they do not change it."""

    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    stop: Stop = Field(
        None, description=f"stop strings (at most {MAX_STOP}); the visible text ends before one"
    )
    stop_token_ids: list[TokenId] | None = Field(None, max_length=MAX_STOP)
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    min_tokens: Annotated[int, Field(ge=0)] = 0
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, Field(ge=0)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: int | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    seed: int | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0)] | None = None
    user: str | None = None
    priority: int = 0
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True


class CompletionRequest(_Sampling):
    """``POST /v1/completions``."""

    prompt: str | list[TokenId] | list[str] | list[list[TokenId]] = Field(
        description="a string, token ids, or a batch of either (one choice per prompt and n)"
    )
    echo: bool | None = False
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None


class ContentPart(_Body):
    type: str
    text: str | None = None


class ToolCallFunction(_Body):
    name: str
    arguments: str


class ToolCall(_Body):
    id: str | None = None
    type: str = "function"
    function: ToolCallFunction


class Message(_Body):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDef(_Body):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Body):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedToolChoice(_Body):
    type: Literal["function"] = "function"
    function: dict[str, Any]


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    echo: bool = False
    add_generation_prompt: bool = True
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None


class TokenizeCompletionRequest(_Body):
    """``POST /tokenize`` with a prompt."""

    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool | None = False


class TokenizeChatRequest(_Body):
    """``POST /tokenize`` with chat messages (counted as ``/v1/chat/completions`` counts them)."""

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    add_generation_prompt: bool = True
    return_token_strs: bool | None = False


class DetokenizeRequest(_Body):
    """``POST /detokenize``."""

    model: str | None = None
    tokens: list[TokenId]


# Fields vLLM implements that the emulator cannot honour: a 400 naming the field, never silently ignored.
# (A field whose value is its default, or null, is fine.)
UNSUPPORTED: dict[str, str] = {
    "suffix": "suffix (fill-in-the-middle) is not supported by the emulator",
    "best_of": "best_of is not supported (vLLM V1 removed it)",
    "use_beam_search": "beam search is not supported by the emulator",
    "logit_bias": "logit_bias cannot be honoured: the emulator's text is synthetic",
    "allowed_token_ids": "allowed_token_ids cannot be honoured: the emulator's text is synthetic",
    "bad_words": "bad_words cannot be honoured: the emulator's text is synthetic",
    "prompt_logprobs": "prompt_logprobs is not supported by the emulator (use echo with logprobs)",
    "logprob_token_ids": "logprob_token_ids is not supported by the emulator",
    "response_format": "response_format other than {'type': 'text'} is not supported by the emulator",
    "structured_outputs": "structured outputs are not supported by the emulator",
    "guided_json": "guided decoding is not supported by the emulator",
    "guided_regex": "guided decoding is not supported by the emulator",
    "guided_choice": "guided decoding is not supported by the emulator",
    "guided_grammar": "guided decoding is not supported by the emulator",
    "prompt_embeds": "prompt_embeds are not supported by the emulator",
    "truncate_prompt_tokens": "truncate_prompt_tokens is not supported by the emulator",
    "return_tokens_as_token_ids": "return_tokens_as_token_ids is not supported by the emulator",
    "continue_final_message": "continue_final_message is not supported by the emulator",
    "kv_transfer_params": "kv_transfer_params (disaggregated serving) is not supported by the emulator",
}
DEFAULTS_OK: dict[str, tuple[Any, ...]] = {  # values of UNSUPPORTED fields that ask for nothing
    "best_of": (None, 1),
    "use_beam_search": (None, False),
    "logit_bias": (None, {}),
    "bad_words": (None, []),
    "allowed_token_ids": (None,),
    "prompt_logprobs": (None,),
    "logprob_token_ids": (None,),
    "response_format": (None, {"type": "text"}),
    "continue_final_message": (None, False),
    "return_tokens_as_token_ids": (None, False),
}
