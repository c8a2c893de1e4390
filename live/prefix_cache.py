"""The emulator's automatic prefix caching (``fleettwin live emulate --enable-prefix-caching``), and vLLM's
counters for it.

A prompt's tokens (the ids it was given, or the synthetic ids of its text: ``live/synthetic.py``) are cut into
KV blocks of ``block_size`` tokens, each named by a hash of its content chained to the previous block's, as in
vLLM's prefix-caching hash chain; the simulator's ``PrefixCache`` (LRU over the engine's ``num_blocks``) says
how many leading blocks are cached. Those tokens count as computed when the request is queued (the engine then
prefills only the rest) and the prompt's full blocks are inserted when the request finishes (the simulator's
rule: a request sent while an identical prefix is still being computed does not hit).

``vllm:prefix_cache_queries_total`` counts prompt tokens looked up, ``vllm:prefix_cache_hits_total`` the
tokens found (vLLM v1's names and meaning: hit rate = rate(hits) / rate(queries)). With caching off both
stay 0, as on a vLLM started with ``--no-enable-prefix-caching``.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client.core import CounterMetricFamily

from fleettwin.live.protocol import PromptInput
from fleettwin.live.synthetic import Tokenizer
from fleettwin.models.engine.prefix_cache import PrefixCache


def block_hashes(ids: Sequence[int], block_size: int) -> list[int]:
    """One chained hash per full block of ``ids``."""
    out, h = [], 0
    for i in range(0, len(ids) - block_size + 1, block_size):
        h = hash((h, tuple(ids[i : i + block_size])))
        out.append(h)
    return out


class EmulatorPrefixCache:
    """Lookups and inserts by prompt, and the two counters (a prometheus_client collector)."""

    def __init__(
        self, num_blocks: int, block_size: int, tokenizer: Tokenizer, labels: list[str], enabled: bool = True
    ):
        self.cache = PrefixCache(max(1, num_blocks), block_size) if enabled else None
        self.block_size, self.tokenizer, self.labels = block_size, tokenizer, labels

    def blocks(self, prompt: PromptInput) -> list[int]:
        if self.cache is None:
            return []
        ids = prompt.ids if prompt.ids is not None else self.tokenizer.encode(prompt.text or "")
        return block_hashes(ids, self.block_size)

    def lookup(self, blocks: list[int], prompt_tokens: int) -> int:
        """Prompt tokens served from the cache (counted as a query)."""
        return 0 if self.cache is None else self.cache.lookup(blocks, prompt_tokens)

    def insert(self, blocks: list[int], prompt_tokens: int) -> None:
        if self.cache is not None:
            self.cache.insert(blocks, prompt_tokens)

    # -- EngineObserver: a finished request's prompt blocks go into the cache ----------------------------

    def on_step(self, plan, start_s: float, end_s: float) -> None:
        pass

    def on_token(self, gen, t: float) -> None:
        pass

    def on_finish(self, gen, t: float) -> None:
        blocks = getattr(gen, "prefix_blocks", None)
        if blocks:
            self.insert(blocks, gen.prompt_tokens)

    def collect(self):
        c = self.cache
        names = ("model_name", "engine")
        for name, doc, value in (
            (
                "vllm:prefix_cache_queries",
                "Prefix cache queries, in terms of number of queried tokens.",
                c.query_tokens if c is not None else 0,
            ),
            (
                "vllm:prefix_cache_hits",
                "Prefix cache hits, in terms of number of cached tokens.",
                c.hit_tokens if c is not None else 0,
            ),
        ):
            fam = CounterMetricFamily(name, doc, labels=list(names))
            fam.add_metric(self.labels, float(value))
            yield fam
