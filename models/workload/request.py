"""The request record every workload source produces and every consumer (simulator, emulator, load
generator) reads."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """One LLM request as it arrives at the fleet.

    ``arrival_s`` is seconds from the start of the run. ``model`` is a catalog id; ``None`` means "whatever
    the pool serves" (single-model scenarios). ``prefix_blocks`` carries prefix-cache block ids where the
    trace has them (Mooncake ``hash_ids``, 512 tokens per block there), for prefix-cache and content-aware
    routing models. ``rag`` requests first query the knowledge fabric (about ``topic``), then prefill with the
    retrieved context.
    """

    id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    model: str | None = None
    tenant: str = "default"
    region: str | None = None
    prefix_key: str | None = None
    prefix_blocks: tuple[int, ...] = ()
    topic: str | None = None  # content domain, for routing retrieval queries in the knowledge fabric
    rag: bool = False  # retrieves context before prefill (the prompt grows by the retrieved passages)

    def __post_init__(self) -> None:
        if self.prompt_tokens < 1:
            raise ValueError(f"request {self.id}: prompt_tokens must be >= 1, got {self.prompt_tokens}")
        if self.output_tokens < 1:
            raise ValueError(f"request {self.id}: output_tokens must be >= 1, got {self.output_tokens}")
        if not self.arrival_s >= 0.0:  # also rejects NaN
            raise ValueError(f"request {self.id}: arrival_s must be >= 0, got {self.arrival_s}")
