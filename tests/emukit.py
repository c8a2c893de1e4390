"""The emulated vLLM servers the live tests run: a constant step time (``ConstantModel``), so that what a test
waits for is predictable, and the small engine most of them share."""

from __future__ import annotations

from typing import Any

from fleettwin.live.server import EmulatorSpec
from fleettwin.models.engine.queue import EngineLimits
from fleettwin.models.perf.constant import ConstantModel

SMALL_LIMITS = EngineLimits(
    num_blocks=256, block_size=16, max_num_seqs=8, max_num_batched_tokens=512, max_model_len=1024
)


def constant_emulator(
    step_s: float, limits: EngineLimits, *, name: str = "emu", per_prefill_token_s: float = 0.0, **spec: Any
) -> EmulatorSpec:
    """An emulator serving ``name`` whose every step takes ``step_s`` (plus ``per_prefill_token_s`` a prompt
    token); ``spec`` sets the rest of the :class:`EmulatorSpec` (token, http limits...)."""
    perf = ConstantModel(ConstantModel.Params(step_s=step_s, per_prefill_token_s=per_prefill_token_s))
    return EmulatorSpec(served_model_name=name, limits=limits, perf=perf, **spec)
