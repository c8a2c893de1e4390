"""The emulator's synthetic text and tokenizer: deterministic, model-free, consistent with its token counts.

- **Output.** Choice ``j`` of a request writes the filler words ``FILLER[(j + k) % 12]`` for its tokens
  ``k = 0, 1, ...``; the word's token id is ``OUTPUT_ID_BASE + (j + k) % 12``. So the text is the same every
  time, and ``/detokenize`` of the output's ids gives the output text back.
- **Prompt text.** Split into pieces of 4 characters (the ``ceil(chars / 4)`` counting rule of
  ``live/protocol.py``); a piece's id is a stable hash into ``[PIECE_ID_BASE, vocab_size)``. Ids of prompt
  pieces cannot be turned back into their text (``/detokenize`` shows them as filler words): the emulator has
  no vocabulary, only the counts a real tokenizer would approximately give.
- **Stop conditions** (``plan_output``): the first stop string completed at or after token ``min_tokens`` ends
  the text before it (or after it, with ``include_stop_str_in_output``), ``finish_reason: "stop"`` and
  ``stop_reason`` naming it; a stop token id likewise ends it (the token's own text is left out). The engine
  is then asked for just the tokens up to that point, so the timing is that of the shorter generation.
- **Logprobs.** The chosen word has the highest log probability, the next words follow in order with lower
  ones; all deterministic.
"""

from __future__ import annotations

import math
import zlib
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
OUTPUT_ID_BASE = 1000
PIECE_ID_BASE = 2000
CHARS_PER_TOKEN = 4
MESSAGE_IDS = (1, 2, 3, 4)  # role header and end-of-turn markers of one chat message
REPLY_IDS = (5, 6, 7)  # the assistant header the chat template appends


def output_word(k: int) -> str:
    return FILLER[k % len(FILLER)]


def output_id(k: int) -> int:
    return OUTPUT_ID_BASE + k % len(FILLER)


def filler_text(start: int, n: int) -> str:
    """Output words ``start .. start + n - 1``."""
    return "".join(output_word(k) for k in range(start, start + n))


def pieces(text: str) -> list[str]:
    return [text[i : i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN)]


class Tokenizer:
    """Token ids for text and chat messages, within ``vocab_size``."""

    def __init__(self, vocab_size: int):
        if vocab_size <= PIECE_ID_BASE:
            raise ValueError(f"vocab_size must exceed {PIECE_ID_BASE}, got {vocab_size}")
        self.vocab_size = vocab_size

    def piece_id(self, piece: str) -> int:
        return PIECE_ID_BASE + zlib.crc32(piece.encode("utf-8", "surrogatepass")) % (
            self.vocab_size - PIECE_ID_BASE
        )

    def encode(self, text: str) -> list[int]:
        return [self.piece_id(p) for p in pieces(text)]

    def encode_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> list[int]:
        ids: list[int] = []
        for m in messages:
            ids += [*MESSAGE_IDS, *self.encode(message_text(m))]
        return ids + list(REPLY_IDS) if add_generation_prompt else ids

    def token_str(self, token_id: int) -> str:
        if OUTPUT_ID_BASE <= token_id < OUTPUT_ID_BASE + len(FILLER):
            return FILLER[token_id - OUTPUT_ID_BASE]
        if token_id < PIECE_ID_BASE:
            return ""  # a special token (skip_special_tokens, vLLM's default)
        return output_word(token_id)

    def decode(self, ids: list[int]) -> str:
        return "".join(self.token_str(t) for t in ids)


def message_text(m: dict[str, Any]) -> str:
    """The text of a chat message that counts as prompt: its content (text parts) and tool-call arguments."""
    content = m.get("content")
    if isinstance(content, list):
        text = "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    else:
        text = content if isinstance(content, str) else ""
    calls = m.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
            text += fn["arguments"]
    return text


def text_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


# -- one choice's output ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutputPlan:
    """What one choice will produce: ``tokens`` engine tokens whose visible text is ``pieces`` (one per
    token, possibly empty after a stop), ending with ``finish_reason`` / ``stop_reason``."""

    offset: int
    tokens: int
    pieces: tuple[str, ...]
    finish_reason: str
    stop_reason: str | int | None

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def plan_output(
    offset: int,
    max_tokens: int,
    *,
    min_tokens: int = 0,
    stop: tuple[str, ...] = (),
    stop_token_ids: tuple[int, ...] = (),
    include_stop: bool = False,
) -> OutputPlan:
    """The output of a choice starting at filler word ``offset``, cut by the first stop condition met."""
    words = [output_word(offset + k) for k in range(max_tokens)] if (stop or stop_token_ids) else None
    if words is None:
        return OutputPlan(
            offset, max_tokens, tuple(output_word(offset + k) for k in range(max_tokens)), "length", None
        )
    first = max(min_tokens - 1, 0)  # vLLM checks stop conditions once min_tokens are out
    ends, total = [], 0
    for w in words:
        total += len(w)
        ends.append(total)
    best: tuple[int, int, int, str | int] | None = None  # (token, cut position, keep length, reason)
    for k in range(first, max_tokens):
        if output_id(offset + k) in stop_token_ids:
            best = (k, ends[k] - len(words[k]), 0, output_id(offset + k))
            break
    text = "".join(words)
    for s in stop:
        pos = text.find(s, 0)
        while pos >= 0:
            k = _token_at(ends, pos + len(s))
            if k >= first:
                if best is None or (k, pos) < best[:2]:
                    best = (k, pos, len(s) if include_stop else 0, s)
                break
            pos = text.find(s, pos + 1)
    if best is None:
        return OutputPlan(offset, max_tokens, tuple(words), "length", None)
    k, cut, keep, reason = best
    visible = text[: cut + keep]
    starts = [e - len(w) for e, w in zip(ends, words, strict=True)]
    out = tuple(visible[starts[i] : ends[i]] for i in range(k + 1))
    return OutputPlan(offset, k + 1, out, "stop", reason)


def _token_at(ends: list[int], end: int) -> int:
    """The token whose text covers character position ``end - 1``."""
    lo, hi = 0, len(ends) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if ends[mid] >= end:
            hi = mid
        else:
            lo = mid + 1
    return lo


# -- logprobs --------------------------------------------------------------------------------------------


def _alternatives(k: int, top: int) -> list[tuple[str, int, float]]:
    """(text, id, logprob) of the chosen word at output position ``k`` and ``top - 1`` runners-up."""
    base = -0.05 - 0.01 * (k % 7)
    return [(output_word(k + r), output_id(k + r), round(base - 1.5 * r, 4)) for r in range(max(top, 1))]


def completion_logprobs(
    plan: OutputPlan,
    top: int,
    *,
    start: int = 0,
    end: int | None = None,
    text_offset: int = 0,
    prompt: list[str] | None = None,
) -> dict[str, Any]:
    """``choices[].logprobs`` of ``/v1/completions`` for tokens ``start .. end - 1`` of ``plan`` (``prompt``:
    the echoed prompt's tokens first, the first of them without a logprob, as vLLM gives them)."""
    tokens, lps, tops, offsets = [], [], [], []
    pos = text_offset
    for i, piece in enumerate(prompt or ()):
        tokens.append(piece)
        lps.append(None if i == 0 else -1.0)
        tops.append(None if i == 0 else {piece: -1.0})
        offsets.append(pos)
        pos += len(piece)
    for k in range(start, plan.tokens if end is None else end):
        alts = _alternatives(plan.offset + k, top)
        word = plan.pieces[k]
        tokens.append(alts[0][0])
        lps.append(alts[0][2])
        tops.append({w: lp for w, _, lp in alts[: max(top, 1)]})
        offsets.append(pos)
        pos += len(word)
    return {"text_offset": offsets, "token_logprobs": lps, "tokens": tokens, "top_logprobs": tops}


def chat_logprobs(plan: OutputPlan, top: int, *, start: int = 0, end: int | None = None) -> dict[str, Any]:
    """``choices[].logprobs`` of ``/v1/chat/completions`` for tokens ``start .. end - 1``."""
    content = []
    for k in range(start, plan.tokens if end is None else end):
        alts = _alternatives(plan.offset + k, max(top, 1))
        w, _, lp = alts[0]
        content.append(
            {
                "token": w,
                "logprob": lp,
                "bytes": list(w.encode()),
                "top_logprobs": [
                    {"token": a, "logprob": b, "bytes": list(a.encode())} for a, _, b in alts[:top]
                ],
            }
        )
    return {"content": content}
