"""What every scheduler of a replica is made of: a sequence's state, the engine limits, one iteration's plan
and the queue/KV-pool base class (pure bookkeeping: no SimPy, no clock).

Kept apart from the fast ``Scheduler`` (``scheduler.py``) and the plain ``ReferenceScheduler``
(``reference_scheduler.py``) so that one algorithm can check the other on the same state.
``tools/build_native.py`` compiles this module and ``scheduler.py`` together (one mypyc group), so the
compiled scheduler reads these classes natively.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from mypy_extensions import mypyc_attr

from fleettwin.models.engine.waiting import PolicyQueue, waiting_queue
from fleettwin.models.perf.base import BatchStats
from fleettwin.models.tenancy.quotas import Tenancy
from fleettwin.models.workload.request import Request

NAN = float("nan")


@dataclass(slots=True, eq=False)
class SeqState:
    """Mutable per-request state inside one replica.

    While a sequence is in the fast scheduler's decode group, ``num_computed``/``num_output``/``blocks`` are
    stale; the true values are ``key + T``, ``okey + T`` and the blocks for that many tokens (see
    ``Scheduler.materialize``)."""

    req: Request
    num_computed: int = 0  # tokens whose KV is in the cache
    num_output: int = 0  # output tokens sampled so far
    blocks: int = 0  # KV blocks held
    preemptions: int = 0
    first_scheduled_s: float = NAN
    first_token_s: float = NAN
    finish_s: float = NAN
    admitted: int = 0  # admission sequence number (order of the running list)
    key: int = 0  # decode group: num_computed - T at join
    okey: int = 0  # decode group: num_output - T at join
    in_group: bool = False
    cached_tokens: int = 0  # prompt tokens found in the prefix cache on arrival: computed from the start

    @classmethod
    def with_cached_prefix(cls, req: Request, cached_tokens: int) -> SeqState:
        """A sequence whose first ``cached_tokens`` prompt tokens come from the prefix cache (vLLM automatic
        prefix caching): they are not prefilled, but their KV blocks are allocated on admission like any
        other."""
        if not 0 <= cached_tokens < req.prompt_tokens:
            raise ValueError(
                f"request {req.id}: cached tokens {cached_tokens} not in [0, {req.prompt_tokens})"
            )
        return cls(req, num_computed=cached_tokens, cached_tokens=cached_tokens)

    @property
    def num_tokens(self) -> int:
        """All tokens known so far: prompt plus sampled outputs."""
        return self.req.prompt_tokens + self.num_output

    @property
    def remaining_output(self) -> int:
        return self.req.output_tokens - self.num_output


@dataclass(frozen=True, slots=True)
class EngineLimits:
    """The scheduler's knobs (vLLM engine arguments of the same names) and the KV capacity in blocks."""

    num_blocks: int
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int = 8192
    enable_chunked_prefill: bool = True
    long_prefill_token_threshold: int = 0  # 0: no cap on a prefill chunk beyond the budget
    enable_prefix_caching: bool = False  # a replica keeps a prefix cache (models/engine/prefix_cache.py)
    prefix_cache_blocks: int = 0  # its capacity in prefix blocks; 0: the whole KV cache
    waiting_policy: str = (
        "fcfs"  # order of the waiting queue: fcfs | wfq | priority (models/engine/waiting.py)
    )
    tenancy: Tenancy | None = None  # tenants' weights, priorities and caps (models/tenancy/quotas.py)


def check_limits(limits: EngineLimits) -> None:
    if limits.max_model_len > limits.num_blocks * limits.block_size:
        raise ValueError(
            f"max_model_len {limits.max_model_len} exceeds the KV cache "
            f"({limits.num_blocks} blocks x {limits.block_size} tokens)"
        )
    if not limits.enable_chunked_prefill and limits.max_num_batched_tokens < limits.max_model_len:
        # vLLM refuses this too: an unchunked prompt longer than the budget could never be scheduled.
        raise ValueError(
            f"without chunked prefill, max_num_batched_tokens ({limits.max_num_batched_tokens}) must be "
            f">= max_model_len ({limits.max_model_len})"
        )


class StepPlan:
    """One iteration: which sequences compute how many tokens, and the batch aggregates for the perf model.

    ``seqs``/``tokens`` list the sequences handled one by one; ``group`` is True when the decode group also
    runs (one token for each of its members). ``decode_only`` is True when every scheduled sequence decodes
    one token, nothing was preempted and the waiting queue is empty or blocked: the next iterations repeat
    this batch until a completion, arrival or KV shortfall."""

    __slots__ = ("seqs", "tokens", "batch", "preempted", "group", "decode_only")

    def __init__(self, group: bool = False):  # written out: this runs once per engine iteration
        self.seqs: list[SeqState] = []
        self.tokens: list[int] = []
        self.batch = BatchStats()
        self.preempted: list[SeqState] = []
        self.group = group
        self.decode_only = False

    @property
    def empty(self) -> bool:
        return not self.seqs and not self.group


@mypyc_attr(
    allow_interpreted_subclasses=True
)  # the plain reference scheduler extends it (fleettwin/native.py)
class EngineQueue:
    """What every scheduler of a replica shares: the limits, the waiting queue, the KV block pool and vLLM's
    rules for one sequence (rejection, its chunk of the token budget, preempting the latest admitted). The
    scheduling algorithms themselves are kept apart (``Scheduler`` here and the plain ``ReferenceScheduler``)
    so that one can check the other."""

    def __init__(self, limits: EngineLimits):
        check_limits(limits)
        self.limits = limits
        self.waiting: deque[SeqState] | PolicyQueue = waiting_queue(limits.waiting_policy, limits.tenancy)
        self.free_blocks = limits.num_blocks
        self.steps = 0

    @property
    def num_running(self) -> int:
        raise NotImplementedError

    def rejection_reason(self, req: Request) -> str | None:
        """Why a request can never be served here (vLLM rejects it at the API), or None."""
        total = req.prompt_tokens + req.output_tokens
        if total > self.limits.max_model_len:
            return f"prompt+output {total} tokens exceeds max_model_len {self.limits.max_model_len}"
        return None

    def add(self, seq: SeqState) -> bool:
        """Queue ``seq``; True if it is now at the head (the next to admit: an engine asleep in a decode run
        must look at its queue again)."""
        self.waiting.append(seq)
        return self.waiting[0] is seq

    @property
    def num_outstanding(self) -> int:
        return self.num_running + len(self.waiting)

    def has_work(self) -> bool:
        return bool(self.num_running or self.waiting)

    @property
    def used_blocks(self) -> int:
        return self.limits.num_blocks - self.free_blocks

    def _prefill_left(self, seqs) -> int:
        """Tokens still to prefill over ``seqs`` (a decoding sequence's one token does not count)."""
        total = 0
        for s in seqs:
            n = s.num_tokens - s.num_computed
            if n > 1:
                total += n
        return total

    def _preempt(self, seq: SeqState) -> None:
        raise NotImplementedError

    def _chunk(self, seq: SeqState, budget: int) -> int:
        """Tokens this iteration for the running ``seq``: what it has left, within ``budget`` and capped by
        ``long_prefill_token_threshold``."""
        n = min(seq.num_tokens - seq.num_computed, budget)
        threshold = self.limits.long_prefill_token_threshold
        return threshold if threshold and n > threshold else n

    def _schedule_running(self, plan: StepPlan, running: list[SeqState], budget: int) -> int:
        """vLLM's ordered pass over ``running`` (admission order): each sequence its chunk while the budget
        lasts, preempting the latest admitted where the KV cache is short; returns the budget left."""
        i = 0
        while i < len(running) and budget > 0:
            seq = running[i]
            n = self._chunk(seq, budget)
            if not self._make_room(running, seq, n, plan):
                break  # the sequence preempted itself: nothing later in the list remains
            self._add_to_plan(plan, seq, n)
            budget -= n
            i += 1
        return budget

    def _add_to_plan(self, plan: StepPlan, seq: SeqState, n: int) -> None:
        plan.seqs.append(seq)
        plan.tokens.append(n)
        if seq.req.prompt_tokens + seq.num_output - seq.num_computed == 1:  # ``num_tokens`` written out: hot
            plan.batch.add_decode(seq.num_computed)
        else:
            plan.batch.add_prefill(n, seq.num_computed)

    def _make_room(self, running: list[SeqState], seq: SeqState, n: int, plan: StepPlan) -> bool:
        """KV blocks for ``n`` more tokens of the running ``seq``, preempting from the end of ``running``
        (the latest admitted first, as in vLLM V1) until they fit; False if ``seq`` itself had to go, so
        nothing later in the list remains."""
        while not self._allocate(seq, seq.num_computed + n):
            victim = running.pop()
            self._preempt(victim)
            plan.preempted.append(victim)
            if victim is seq:
                return False
        return True

    def _admission_chunk(self, n: int, budget: int) -> int:
        """vLLM's tokens this iteration for a waiting sequence with ``n`` to compute: all of them or, with
        chunked prefill, what ``budget`` leaves (0 without it: the queue waits), capped by
        ``long_prefill_token_threshold``."""
        lim = self.limits
        if n > budget:
            if not lim.enable_chunked_prefill:
                return 0
            n = budget
        if lim.long_prefill_token_threshold and n > lim.long_prefill_token_threshold:
            n = lim.long_prefill_token_threshold
        return n

    def _allocate(self, seq: SeqState, tokens: int) -> bool:
        """Make ``seq`` hold blocks for ``tokens`` tokens; False (and no change) if the cache is short."""
        need = -(-tokens // self.limits.block_size) - seq.blocks
        if need <= 0:
            return True
        if need > self.free_blocks:
            return False
        self.free_blocks -= need
        seq.blocks += need
        return True


if __name__ == "fleettwin.models.engine.queue":  # not in the compiled copy itself (fleettwin/native.py)
    from fleettwin.native import adopt

    adopt(
        globals(),
        "fleettwin_native_queue",
        ("SeqState", "EngineLimits", "check_limits", "StepPlan", "EngineQueue"),
    )
