"""vLLM V1 scheduling semantics, checked step by step on the pure scheduler."""

from __future__ import annotations

import pytest

from fleettwin.models.engine.queue import EngineLimits, SeqState
from fleettwin.models.engine.reference_scheduler import ReferenceScheduler

# Every semantic test runs against the fast scheduler and the plain reference it is checked against.
from fleettwin.models.engine.scheduler import Scheduler
from fleettwin.models.workload.request import Request

pytestmark = pytest.mark.parametrize("Scheduler", [Scheduler, ReferenceScheduler], ids=["fast", "reference"])


def seq(i: int, prompt: int, output: int) -> SeqState:
    return SeqState(Request(id=i, arrival_s=0.0, prompt_tokens=prompt, output_tokens=output))


def step(s, t: float = 0.0):
    plan = s.schedule()
    finished = s.finish_step(plan, t, t + 1.0)
    s.seqs()  # bring per-sequence fields of the fast scheduler's decode group up to date
    return plan, finished


def running(s) -> list[SeqState]:
    return list(getattr(s, "order", None) or s.running)


def test_chunked_prefill_splits_a_long_prompt_and_emits_first_token_at_the_end(Scheduler):
    s = Scheduler(EngineLimits(num_blocks=100, max_num_batched_tokens=64, max_model_len=1000))
    a = seq(0, prompt=150, output=3)
    s.add(a)
    chunks = []
    for t in range(3):
        plan, _ = step(s, t)
        chunks.append(plan.tokens[0])
        assert a.num_output == (1 if t == 2 else 0)
    assert chunks == [64, 64, 22]
    assert a.first_token_s == 3.0  # end of the iteration that completed the prefill
    assert a.blocks == -(-150 // 16)


def test_decodes_are_scheduled_before_new_prefills_and_share_the_budget(Scheduler):
    s = Scheduler(EngineLimits(num_blocks=100, max_num_batched_tokens=20, max_model_len=1000))
    a, b = seq(0, 10, 5), seq(1, 30, 5)
    s.add(a)
    step(s)  # a prefills 10 tokens and samples its first token
    s.add(b)
    plan, _ = step(s)
    assert plan.tokens[-1] == 19 and plan.seqs[-1] is b  # a decodes 1, b gets the remaining 19 as a chunk
    assert plan.batch.decode_seqs == 1 and plan.batch.prefill_tokens == 19 and a.num_output == 2


def test_max_num_seqs_caps_the_running_batch(Scheduler):
    s = Scheduler(EngineLimits(num_blocks=100, max_num_seqs=2, max_model_len=1000))
    for i in range(3):
        s.add(seq(i, 5, 10))
    plan, _ = step(s)
    assert len(plan.seqs) == 2 and len(s.waiting) == 1 and s.num_running == 2


def test_preemption_evicts_the_latest_admitted_and_recomputes_it(Scheduler):
    # 4 blocks of 16 tokens. a and b each prefill 16 tokens (1 block); decoding needs new blocks.
    s = Scheduler(EngineLimits(num_blocks=4, max_num_batched_tokens=64, max_model_len=64))
    a, b = seq(0, 16, 40), seq(1, 16, 40)
    s.add(a)
    s.add(b)
    step(s)
    for _ in range(40):
        plan, _ = step(s)
        if plan.preempted:
            break
    assert plan.preempted == [b]  # b was admitted after a
    assert b.num_computed == 0 and b.blocks == 0 and b.preemptions == 1
    assert s.waiting[0] is b
    # When b returns it recomputes its prompt plus the tokens it had already produced.
    produced = b.num_output
    assert produced > 0
    for _ in range(100):
        plan, _ = step(s)
        if b in plan.seqs:
            break
    assert b in running(s)
    assert plan.tokens[plan.seqs.index(b)] == 16 + produced  # one recompute prefill of everything known
    assert b.num_output == produced + 1  # ... which samples the next token


def test_waiting_queue_is_fcfs_with_head_of_line_blocking(Scheduler):
    s = Scheduler(
        EngineLimits(num_blocks=3, max_num_batched_tokens=100, max_model_len=48, enable_chunked_prefill=False)
    )
    big, small = seq(0, 40, 2), seq(1, 5, 2)
    filler = seq(2, 20, 30)
    s.add(filler)
    step(s)  # filler holds 2 blocks, 1 free
    s.add(big)
    s.add(small)
    plan, _ = step(s)
    assert big not in plan.seqs and small not in plan.seqs  # small fits, but waits behind big (FCFS)


def test_requests_longer_than_max_model_len_are_rejected_with_a_reason(Scheduler):
    s = Scheduler(EngineLimits(num_blocks=10, max_model_len=100))
    assert s.rejection_reason(Request(id=0, arrival_s=0, prompt_tokens=90, output_tokens=20)) is not None
    assert s.rejection_reason(Request(id=1, arrival_s=0, prompt_tokens=80, output_tokens=20)) is None


def test_max_model_len_must_fit_the_cache(Scheduler):
    with pytest.raises(ValueError, match="exceeds the KV cache"):
        Scheduler(EngineLimits(num_blocks=2, block_size=16, max_model_len=100))


def test_unchunked_budget_must_hold_a_max_length_prompt(Scheduler):
    with pytest.raises(ValueError, match="must be >= max_model_len"):
        Scheduler(
            EngineLimits(
                num_blocks=100, max_num_batched_tokens=64, max_model_len=128, enable_chunked_prefill=False
            )
        )


def test_decode_run_length_stops_at_the_first_completion_and_at_kv_exhaustion(Scheduler):
    s = Scheduler(EngineLimits(num_blocks=100, max_model_len=1000))
    a, b = seq(0, 16, 50), seq(1, 16, 9)
    s.add(a)
    s.add(b)
    step(s)  # both prefilled, one token each
    plan = s.schedule()
    assert plan.decode_only
    assert s.decode_run_length(10_000) == 8  # b has 8 tokens left
    finished = s.finish_decode_run(8, 0.0, 0.5, 4.0)
    assert finished == [b] and b.finish_s == 4.0 and b.num_output == 9 and s.free_blocks == 100 - 2

    tight = Scheduler(EngineLimits(num_blocks=3, max_model_len=48))
    c = seq(2, 16, 40)
    tight.add(c)
    step(tight)
    plan = tight.schedule()  # computes token 17: a second block
    # 3 blocks = 48 tokens: iterations computing tokens 17..48 fit (32 of them), the 33rd would not.
    assert plan.decode_only and tight.decode_run_length(10_000) == 32
    assert tight.blocks_after(1) == 2 and tight.blocks_after(17) == 3
