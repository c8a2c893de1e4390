"""The same client, scraper and load generator against a real vLLM server. Runs only when ``VLLM_URL`` is set
(e.g. ``VLLM_URL=http://127.0.0.1:8000``; ``VLLM_API_KEY`` if it needs a token); skipped otherwise."""

from __future__ import annotations

import asyncio
import os

import pytest

from fleettwin.live.client import VllmClient, prompt_ids
from fleettwin.live.loadgen import replay
from fleettwin.live.metrics import Scraper
from fleettwin.models.workload.request import Request

URL = os.environ.get("VLLM_URL")
TOKEN = os.environ.get("VLLM_API_KEY")
pytestmark = pytest.mark.skipif(not URL, reason="set VLLM_URL to test against a real vLLM server")


def test_real_vllm_exact_lengths_and_metrics_move_with_our_requests():
    async def go():
        async with Scraper(token=TOKEN, timeout_s=10) as scraper, VllmClient(URL, token=TOKEN) as client:
            model = (await client.models())[0]
            before = await scraper.scrape(URL)
            res = await client.completion(prompt_ids(64, salt=12345), 16, model=model)
            chat = await client.chat([{"role": "user", "content": "Say hello."}], 8, model=model)
            df = await replay(
                [Request(id=i, arrival_s=0.05 * i, prompt_tokens=32 + i, output_tokens=4) for i in range(8)],
                [URL],
                token=TOKEN,
                drain_timeout_s=60,
            )
            after = await scraper.scrape(URL)
            return before, res, chat, df, after

    before, res, chat, df, after = asyncio.run(go())
    assert before.healthy and after.healthy, (before.error, after.error)
    assert res.ok and res.prompt_tokens == 64 and res.output_tokens == 16 and res.finish_reason == "length"
    assert res.ttft_s > 0 and res.e2e_s >= res.ttft_s
    assert chat.ok and chat.output_tokens == 8
    assert (df["status"] == "completed").all() and (df["completion_tokens"] == 4).all()
    # Other clients may share the server: our requests are a lower bound on what the counters moved.
    assert after.requests_finished - before.requests_finished >= 10
    assert after.generation_tokens - before.generation_tokens >= 16 + 8 + 8 * 4
    assert after.ttft.count - before.ttft.count >= 10
