"""The reference scheduler: vLLM V1 semantics written as plainly as possible, one pass over every sequence per
iteration. It is the oracle the fast scheduler (``models/engine/scheduler.py``) is tested against, and what
``mode: per_iteration`` runs. See ``models/engine/scheduler.py`` for the semantics.
"""

from __future__ import annotations

from fleettwin.models.engine.queue import EngineLimits, EngineQueue, SeqState, StepPlan


class ReferenceScheduler(EngineQueue):
    """Waiting queue, running list and KV block accounting of one replica, explicitly per sequence."""

    def __init__(self, limits: EngineLimits):
        super().__init__(limits)
        self.running: list[SeqState] = []

    @property
    def num_running(self) -> int:
        return len(self.running)

    def seqs(self) -> list[SeqState]:
        return [*self.running, *self.waiting]

    def pending_prefill_tokens(self) -> int:
        """Prompt tokens not yet computed, waiting or prefilling."""
        return self._prefill_left(self.running) + self._prefill_left(self.waiting)

    # -- KV blocks ---------------------------------------------------------------------------------------

    def _release(self, seq: SeqState) -> None:
        self.free_blocks += seq.blocks
        seq.blocks = 0

    # -- one iteration -----------------------------------------------------------------------------------

    def schedule(self) -> StepPlan:
        plan = StepPlan()
        running = self.running
        budget = self._schedule_running(plan, running, self.limits.max_num_batched_tokens)
        all_decode = plan.batch.prefill_seqs == 0  # every running sequence got its one decode token

        head_blocked = True
        if not plan.preempted:
            head_blocked = self._admit_waiting(plan, budget)
        plan.decode_only = (
            all_decode and not plan.preempted and head_blocked and len(plan.seqs) == len(running) > 0
        )
        return plan

    def _admit_waiting(self, plan: StepPlan, budget: int) -> bool:
        """Admit FCFS while budget, sequence cap and KV allow; True if the queue ends empty or blocked
        without admitting anything (so the batch stays as it is)."""
        lim = self.limits
        waiting, running = self.waiting, self.running
        admitted = False
        while waiting and budget > 0 and len(running) < lim.max_num_seqs:
            seq = waiting[0]
            n = self._admission_chunk(seq.num_tokens - seq.num_computed, budget)
            if not n or not self._allocate(seq, seq.num_computed + n):
                break
            waiting.popleft()
            running.append(seq)
            self._add_to_plan(plan, seq, n)
            budget -= n
            admitted = True
        return not admitted

    def _preempt(self, seq: SeqState) -> None:
        self._release(seq)
        seq.num_computed = seq.cached_tokens  # recompute all but the cached prefix
        seq.preemptions += 1
        self.waiting.appendleft(seq)

    def finish_step(self, plan: StepPlan, start_s: float, end_s: float) -> list[SeqState]:
        """Apply an executed iteration; returns the sequences that finished at ``end_s``."""
        self.steps += 1
        finished: list[SeqState] = []
        for seq, n in zip(plan.seqs, plan.tokens, strict=True):
            if seq.first_scheduled_s != seq.first_scheduled_s:  # NaN: first time on the GPU
                seq.first_scheduled_s = start_s
            seq.num_computed += n
            if seq.num_computed == seq.num_tokens:
                seq.num_output += 1
                if seq.first_token_s != seq.first_token_s:
                    seq.first_token_s = end_s
                if seq.num_output >= seq.req.output_tokens:
                    finished.append(seq)
        if finished:
            self._retire(finished, end_s)
        return finished

    def _retire(self, finished: list[SeqState], end_s: float) -> None:
        done = set(map(id, finished))
        self.running = [s for s in self.running if id(s) not in done]
        for seq in finished:
            seq.finish_s = end_s
            self._release(seq)

    # -- event skipping ----------------------------------------------------------------------------------

    def decode_run_length(self, limit: int) -> int:
        """How many consecutive decode-only iterations, counting the one just planned, can run before the
        batch must change: a sequence finishes, or the KV cache cannot grow every sequence any more.

        Call right after a ``schedule()`` whose plan is ``decode_only`` (its blocks are allocated)."""
        running = self.running
        k_max = min(limit, min(s.remaining_output for s in running))
        if k_max <= 1:
            return 1
        bs = self.limits.block_size
        # After the planned iteration each sequence has room for ``slack`` more tokens in its blocks.
        slacks = [s.blocks * bs - s.num_computed - 1 for s in running]
        free = self.free_blocks

        def extra_blocks(k: int) -> int:  # blocks needed for k-1 further iterations
            steps = k - 1
            return sum(-(-(steps - sl) // bs) for sl in slacks if steps > sl)

        if extra_blocks(k_max) <= free:
            return k_max
        lo, hi = 1, k_max  # extra_blocks(lo) == 0 <= free, extra_blocks(hi) > free
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if extra_blocks(mid) <= free:
                lo = mid
            else:
                hi = mid
        return lo

    def blocks_after(self, k: int) -> int:
        """Blocks in use once ``k`` iterations of the current decode run have been scheduled."""
        bs = self.limits.block_size
        extra = 0
        for s in self.running:
            need = -(-(s.num_computed + k) // bs) - s.blocks
            if need > 0:
                extra += need
        return self.used_blocks + extra

    def finish_decode_run(self, k: int, start_s: float, first_end_s: float, end_s: float) -> list[SeqState]:
        """Apply ``k`` decode-only iterations at once (the first one planned by ``schedule()``), which ran
        from ``start_s`` to ``end_s``; the first of them ended at ``first_end_s``."""
        self.steps += k
        finished: list[SeqState] = []
        bs = self.limits.block_size
        free = self.free_blocks
        for seq in self.running:
            if seq.first_token_s != seq.first_token_s:
                # A prefill whose last chunk is one token looks like a decode; its first token comes now.
                seq.first_token_s = first_end_s
            seq.num_computed += k
            seq.num_output += k
            need = -(-seq.num_computed // bs) - seq.blocks
            if need > 0:
                seq.blocks += need
                free -= need
            if seq.num_output >= seq.req.output_tokens:
                finished.append(seq)
        if free < 0:
            raise AssertionError("decode run over-allocated the KV cache")
        self.free_blocks = free
        if finished:
            self._retire(finished, end_s)
        return finished
