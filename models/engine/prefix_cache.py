"""A replica's prefix cache, with vLLM's automatic-prefix-caching semantics at the granularity of the trace's
prefix blocks.

Requests name their prompt's prefix blocks (``Request.prefix_blocks``: the Mooncake trace's ``hash_ids``,
``PREFIX_BLOCK_TOKENS`` = 512 tokens each). Block ids are chained (an id stands for its whole prefix), so a
request's cached prefix is the longest run of its leading blocks present in the cache, as in vLLM's hash
chain. What the simulator does with it:

- **On arrival at a replica** the cached prefix is looked up; its tokens count as already computed, so the
  scheduler starts the sequence with ``num_computed = cached_tokens`` and prefills only the rest. At least one
  prompt token is always computed (vLLM recomputes the last token of a fully cached prompt to get logits).
  The sequence still allocates KV blocks for its whole context: blocks shared with other sequences are not
  de-duplicated, so KV use is over-counted where vLLM would share (conservative on memory).
- **When a request finishes** the full blocks of its prompt are inserted (most recently used). vLLM caches a
  block as soon as it is computed; inserting at completion misses hits between requests that run at the same
  time, which in a conversation trace are rare (a follow-up turn is sent after the answer). Output tokens are
  not inserted: the trace names a turn's answer blocks only in the next turn's prompt.
- **A preempted sequence** restarts from its cached prefix (its blocks are assumed still cached).
- **Capacity**: LRU over ``capacity_blocks`` prefix blocks, by default the whole KV cache in prefix blocks
  (vLLM keeps freed blocks cached until their memory is reused). Under load the running sequences' blocks
  leave less room than that; the summaries report KV use so a reader can see when the bound is loose.
  ``engine.kv_offload_gb`` adds a host-memory tier (LMCache / Mooncake store style) to the capacity; a hit
  there is treated like a GPU hit: the host-to-GPU copy (about 1.7 GB for 13k tokens of llama-3-8b, some
  30 ms over PCIe 5) is not charged, which flatters offloaded hits by a few percent of the prefill saved.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from fleettwin.models.catalog import LlmSpec
from fleettwin.models.workload.traces import MOONCAKE_BLOCK_TOKENS

PREFIX_BLOCK_TOKENS = MOONCAKE_BLOCK_TOKENS


class PrefixCache:
    """LRU set of prefix-block ids with hit accounting (tokens, like vLLM's prefix_cache_queries/hits)."""

    __slots__ = ("capacity", "block_tokens", "_lru", "queries", "query_tokens", "hit_tokens", "hit_requests")

    def __init__(self, capacity_blocks: int, block_tokens: int = PREFIX_BLOCK_TOKENS):
        if capacity_blocks < 1:
            raise ValueError(f"prefix cache capacity must be >= 1 block, got {capacity_blocks}")
        self.capacity = capacity_blocks
        self.block_tokens = block_tokens
        self._lru: OrderedDict[int, None] = OrderedDict()
        self.queries = self.query_tokens = self.hit_tokens = self.hit_requests = 0

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, block: int) -> bool:
        return block in self._lru

    def match(self, blocks: Sequence[int]) -> int:
        """How many leading ``blocks`` are cached (no side effect: routers call this to compare replicas)."""
        lru = self._lru
        n = 0
        for b in blocks:
            if b not in lru:
                break
            n += 1
        return n

    def lookup(self, blocks: Sequence[int], prompt_tokens: int) -> int:
        """Prompt tokens of an arriving request served from the cache; refreshes the hit blocks and counts
        the query."""
        hits = self.match(blocks)
        lru = self._lru
        for b in blocks[:hits]:
            lru.move_to_end(b)
        cached = min(hits * self.block_tokens, prompt_tokens - 1)
        self.queries += 1
        self.query_tokens += prompt_tokens
        self.hit_tokens += cached
        self.hit_requests += cached > 0
        return cached

    def insert(self, blocks: Sequence[int], prompt_tokens: int) -> None:
        """Cache the prompt's full blocks (most recently used), evicting the least recently used beyond
        capacity."""
        lru = self._lru
        for b in blocks[: prompt_tokens // self.block_tokens]:
            lru[b] = None
            lru.move_to_end(b)
        while len(lru) > self.capacity:
            lru.popitem(last=False)


def prefix_cache_blocks(gpu_kv_tokens: int, offload_gb: float, llm: LlmSpec, tp: int) -> int:
    """Capacity in prefix blocks of a replica's prefix cache with ``offload_gb`` of host memory behind its GPU
    KV cache; 0 (meaning "the GPU KV cache") without offload. The model's KV bytes per token convert GB to
    tokens; the whole replica's KV (all ``tp`` shards) is offloaded."""
    if offload_gb <= 0:
        return 0
    per_token = llm.kv_bytes_per_token_per_gpu(tp) * tp
    return int((gpu_kv_tokens + offload_gb * 1e9 / per_token) // PREFIX_BLOCK_TOKENS)


def cache_stats(caches: Sequence[PrefixCache]) -> dict:
    """Summed hit statistics of some replicas' caches (empty when none has prefix caching)."""
    if not caches:
        return {}
    q = sum(c.query_tokens for c in caches)
    n = sum(c.queries for c in caches)
    return {
        "prefix_cache_queries": n,
        "prefix_cache_hit_requests": sum(c.hit_requests for c in caches),
        "prefix_cache_query_tokens": q,
        "prefix_cache_hit_tokens": sum(c.hit_tokens for c in caches),
        "prefix_cache_hit_rate": sum(c.hit_tokens for c in caches) / q if q else 0.0,
    }
