"""A vLLM V1-style continuous-batching scheduler, as pure bookkeeping (no SimPy, no clock).

Like vLLM's ``Scheduler``, deciding is split from executing: ``schedule()`` returns a ``StepPlan`` for one
engine iteration and ``finish_step()`` closes the loop once the iteration's time has passed. The replica
process (``sim/replica.py``) owns the clock; the live emulator can drive the same object on the wall clock.

Semantics copied from vLLM V1 (v0.8+):
- one token budget per iteration (``max_num_batched_tokens``) and a sequence cap (``max_num_seqs``);
- running sequences are served first, in admission order, each with the tokens it still needs (1 for a decode,
  a chunk for a prefill — chunked prefill mixes prefill chunks with decodes);
- KV blocks are allocated per iteration for the tokens computed; when they run out the latest-admitted running
  sequence is preempted by recompute (its blocks freed, its computed tokens reset, back to the head of the
  waiting queue);
- waiting sequences are admitted FCFS only if nothing was preempted this iteration; the first one that cannot
  be admitted blocks the queue (head-of-line), as in vLLM. (``waiting_policy`` ``wfq``/``priority`` orders the
  waiting queue by tenant instead, ``models/engine/waiting.py``; the admission rule is the same.)
A sequence samples a token whenever all its known tokens (prompt + outputs so far) have been computed, so the
iteration that finishes a prefill emits the first output token.

Speed: a serving replica spends nearly all its iterations decoding, and a plain implementation touches every
running sequence each iteration. Here decoding sequences form an aggregate: a decode clock ``T`` counts the
iterations the group has run, each member stores its token counts relative to ``T``, a heap orders members by
the clock value at which they finish, and per-residue counters (token count mod block size) give the KV blocks
the next iterations need. An ordinary iteration then costs O(prefilling sequences), not O(batch). Whenever the
cheap path cannot decide exactly as vLLM would (a preemption, a budget smaller than the batch, prefills that
are not the newest admissions), the group is expanded into explicit per-sequence state and the step is taken
the plain way. ``models/engine/reference_scheduler.py`` keeps the plain algorithm alone as the tests' oracle.
"""

from __future__ import annotations

import heapq

from mypy_extensions import mypyc_attr

from fleettwin.models.engine.queue import EngineLimits, EngineQueue, SeqState, StepPlan


@mypyc_attr(allow_interpreted_subclasses=True)  # the tests' checking scheduler extends it
class Scheduler(EngineQueue):
    """Waiting queue, running sequences and KV block accounting of one replica."""

    def __init__(self, limits: EngineLimits):
        super().__init__(limits)
        self.order: dict[SeqState, None] = {}  # running sequences in admission order (an ordered set)
        self.prefilling: list[SeqState] = []  # running sequences outside the decode group, in admission order
        self._admissions = 0
        # The decode group.
        self.T = 0
        self._gsize = 0
        self._gkey_sum = 0
        self._residue = [0] * limits.block_size  # members by key mod block size
        self._heap: list[tuple[int, int, SeqState]] = []  # (clock at which it finishes, admitted, seq)

    @property
    def num_running(self) -> int:
        return len(self.order)

    def has_work(self) -> bool:  # the engine loop asks before every iteration: no property call
        return bool(self.order or self.waiting)

    def seqs(self) -> list[SeqState]:
        """Running then waiting sequences, with their per-sequence fields brought up to date."""
        self.materialize()
        return [*self.order, *self.waiting]

    def pending_prefill_tokens(self) -> int:
        """Prompt tokens not yet computed, waiting or prefilling (what a latency-aware router waits behind);
        decode-group members are decoding, so only the explicit sequences are read."""
        return self._prefill_left(self.prefilling) + self._prefill_left(self.waiting)

    # -- the decode group --------------------------------------------------------------------------------

    def _join(self, seq: SeqState) -> None:
        T = self.T
        seq.in_group = True
        seq.key = seq.num_computed - T
        seq.okey = seq.num_output - T
        self._gsize += 1
        self._gkey_sum += seq.key
        self._residue[seq.key % self.limits.block_size] += 1
        heapq.heappush(self._heap, (T + seq.req.output_tokens - seq.num_output, seq.admitted, seq))

    def _group_blocks(self, t_from: int, k: int) -> int:
        """New blocks the group needs for the ``k`` iterations starting at clock ``t_from``: a member needs
        one whenever its computed tokens are a multiple of the block size."""
        if k <= 0:
            return 0
        bs = self.limits.block_size
        cycles, rest = divmod(k, bs)
        total = cycles * self._gsize
        res = self._residue
        for t in range(t_from, t_from + rest):
            total += res[-t % bs]
        return total

    def materialize(self) -> None:
        """Write the true token and block counts into every group member's fields (the group stays)."""
        T, bs = self.T, self.limits.block_size
        for seq, _ in self.order.items():
            if seq.in_group:
                seq.num_computed = seq.key + T
                seq.num_output = seq.okey + T
                seq.blocks = -(-seq.num_computed // bs)

    def _dissolve(self) -> None:
        """Turn every group member back into an explicit sequence (before a step taken the plain way)."""
        self.materialize()
        for seq in self.order:
            seq.in_group = False
        self.prefilling = list(self.order)
        self._gsize = self._gkey_sum = 0
        self._residue = [0] * self.limits.block_size
        self._heap = []

    def _retire_group_finished(self, end_s: float) -> list[SeqState]:
        heap, T, bs = self._heap, self.T, self.limits.block_size
        finished = []
        while heap and heap[0][0] <= T:
            seq = heapq.heappop(heap)[2]
            seq.num_computed = seq.key + T
            seq.num_output = seq.okey + T
            self.free_blocks += -(-seq.num_computed // bs)
            seq.blocks = 0
            seq.in_group = False
            self._gsize -= 1
            self._gkey_sum -= seq.key
            self._residue[seq.key % bs] -= 1
            seq.finish_s = end_s
            del self.order[seq]
            finished.append(seq)
        return finished

    # -- one iteration -----------------------------------------------------------------------------------

    def schedule(self) -> StepPlan:
        plan = self._schedule_fast()
        if plan is None:
            self._dissolve()
            plan = self._schedule_plain()
        return plan

    def _schedule_fast(self) -> StepPlan | None:
        """The iteration when vLLM's ordered pass would give every group member its token and every prefilling
        sequence its chunk without preempting: None when that is not certain."""
        n = self._gsize
        budget = self.limits.max_num_batched_tokens - n
        if budget < 0:
            return None
        pre = self.prefilling
        if pre and n:
            # The group must come before every prefilling sequence in admission order, so that the budget
            # the prefills use could not have starved a decode.
            tail = reversed(self.order)
            if any(next(tail) is not p for p in reversed(pre)):
                return None
        bs = self.limits.block_size
        need = self._residue[-self.T % bs] if n else 0  # members whose blocks are full
        if need > self.free_blocks:
            return None
        plan = StepPlan(group=n > 0)
        batch = plan.batch
        if n:
            batch.decode_seqs = n
            batch.decode_ctx_tokens = self._gkey_sum + n * self.T
        if not pre:  # the common iteration: the group plus, perhaps, admissions
            self.free_blocks -= need
            plan.decode_only = (not self.waiting or self._admit_waiting(plan, budget)) and n > 0
            return plan
        free = self.free_blocks - need
        for seq in pre:
            if budget <= 0:
                return None  # a prefilling sequence would get nothing: leave the ordering to the plain pass
            c = self._chunk(seq, budget)
            extra = -(-(seq.num_computed + c) // bs) - seq.blocks
            if extra > free:
                return None
            free -= extra
            budget -= c
        # Every check passed: commit exactly what the ordered pass would have done.
        self.free_blocks -= need
        budget = self.limits.max_num_batched_tokens - n
        for seq in pre:
            c = self._chunk(seq, budget)
            self._allocate(seq, seq.num_computed + c)
            self._add_to_plan(plan, seq, c)
            budget -= c
        blocked = self._admit_waiting(plan, budget)
        # Explicit sequences are prefilling (or sampling their first token), so only a pure group step
        # repeats.
        plan.decode_only = n > 0 and not pre and blocked
        return plan

    def _schedule_plain(self) -> StepPlan:
        """vLLM's ordered pass over explicit sequences (the decode group has been dissolved)."""
        plan = StepPlan()
        # ``prefilling`` holds all running sequences here, in admission order
        budget = self._schedule_running(plan, self.prefilling, self.limits.max_num_batched_tokens)
        if not plan.preempted:
            self._admit_waiting(plan, budget)
        return plan

    def _admit_waiting(self, plan: StepPlan, budget: int) -> bool:
        """Admit FCFS while budget, sequence cap and KV allow; True if nothing was admitted (the queue is
        empty or its head blocked), so the batch stays as it is."""
        lim = self.limits
        waiting = self.waiting
        admitted = False
        while waiting and budget > 0 and len(self.order) < lim.max_num_seqs:
            seq = waiting[0]
            n = self._admission_chunk(seq.req.prompt_tokens + seq.num_output - seq.num_computed, budget)
            if not n or not self._allocate(seq, seq.num_computed + n):
                break
            waiting.popleft()
            self._admissions += 1
            seq.admitted = self._admissions
            self.order[seq] = None
            self.prefilling.append(seq)
            self._add_to_plan(plan, seq, n)
            budget -= n
            admitted = True
        return not admitted

    def _preempt(self, seq: SeqState) -> None:
        self.free_blocks += seq.blocks
        seq.blocks = 0
        seq.num_computed = seq.cached_tokens  # recompute all but the cached prefix
        seq.preemptions += 1
        del self.order[seq]
        self.waiting.appendleft(seq)

    def finish_step(self, plan: StepPlan, start_s: float, end_s: float) -> list[SeqState]:
        """Apply an executed iteration; returns the sequences that finished at ``end_s``."""
        self.steps += 1
        finished: list[SeqState] = []
        if plan.group:
            self.T += 1
            if self._heap and self._heap[0][0] <= self.T:
                finished = self._retire_group_finished(end_s)
        moved = 0
        for seq, n in zip(plan.seqs, plan.tokens, strict=True):
            if seq.first_scheduled_s != seq.first_scheduled_s:  # NaN: first time on the GPU
                seq.first_scheduled_s = start_s
            seq.num_computed += n
            if (
                seq.num_computed == seq.req.prompt_tokens + seq.num_output
            ):  # all known tokens computed: sample
                seq.num_output += 1
                if seq.first_token_s != seq.first_token_s:
                    seq.first_token_s = end_s
                if seq.num_output >= seq.req.output_tokens:
                    self.free_blocks += seq.blocks
                    seq.blocks = 0
                    seq.finish_s = end_s
                    del self.order[seq]
                    finished.append(seq)
                    moved += 1
                else:  # one token (the one just sampled) left to compute: decoding from now on
                    self._join(seq)
                    moved += 1
        if moved:
            pre = self.prefilling
            self.prefilling = (
                [] if moved == len(pre) else [s for s in pre if not s.in_group and s in self.order]
            )
        return finished

    # -- event skipping ----------------------------------------------------------------------------------

    def plan_decode_run(self, limit: int) -> tuple[int, int, int] | None:
        """The common case of ``schedule()`` + ``decode_run_length`` without building a plan: when only the
        decode group runs (nothing prefilling, nothing waiting) and vLLM's pass would give every member its
        token, allocate the first iteration and return (iterations, group size, summed context); else None
        (call ``schedule()``)."""
        n = self._gsize
        if not n or self.prefilling or self.waiting or n > self.limits.max_num_batched_tokens:
            return None
        need = self._residue[-self.T % self.limits.block_size]
        if need > self.free_blocks:
            return None  # a preemption: the plain pass decides
        self.free_blocks -= need
        return self._run_length(limit, self.free_blocks), n, self._gkey_sum + n * self.T

    def decode_run_length(self, limit: int) -> int:
        """How many consecutive decode-only iterations, counting the one just planned, can run before the
        batch must change: a sequence finishes, or the KV cache cannot grow every sequence any more.

        Call right after a ``schedule()`` whose plan is ``decode_only`` (its blocks are allocated)."""
        return self._run_length(limit, self.free_blocks)

    def _run_length(self, limit: int, free: int) -> int:
        k_max = min(limit, self._heap[0][0] - self.T)
        if k_max <= 1:
            return 1
        t1 = self.T + 1
        if self._group_blocks(t1, k_max - 1) <= free:
            return k_max
        lo, hi = 1, k_max  # lo fits, hi does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._group_blocks(t1, mid - 1) <= free:
                lo = mid
            else:
                hi = mid
        return lo

    def blocks_after(self, k: int) -> int:
        """Blocks in use once ``k`` iterations of the current decode run have been scheduled."""
        return self.used_blocks + self._group_blocks(self.T + 1, k - 1)

    def finish_decode_run(self, k: int, start_s: float, first_end_s: float, end_s: float) -> list[SeqState]:
        """Apply ``k`` decode-only iterations at once (the first one planned by ``schedule()``), which ran
        from ``start_s`` to ``end_s``; the first of them ended at ``first_end_s``."""
        self.steps += k
        extra = self._group_blocks(self.T + 1, k - 1) if k > 1 else 0
        if extra > self.free_blocks:
            raise AssertionError("decode run over-allocated the KV cache")
        self.free_blocks -= extra
        self.T += k
        # A run shortened by an arrival ends before its first completion: no call, no list.
        return self._retire_group_finished(end_s) if self._heap[0][0] <= self.T else []


if __name__ == "fleettwin.models.engine.scheduler":  # not in the compiled copy itself (fleettwin/native.py)
    from fleettwin.native import adopt

    # The compiled Scheduler is built against the compiled queue classes: adopt it only together with them.
    adopt(
        globals(), "fleettwin_native_scheduler", ("Scheduler",), requires=("fleettwin.models.engine.queue",)
    )
