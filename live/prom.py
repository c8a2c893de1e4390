"""vLLM's Prometheus metrics for the emulator: the same names, types, labels, units and buckets as vLLM v1's
``PrometheusStatLogger`` (see ``/work/shared/reference/live_interfaces.md`` §1), fed by the engine's events.

Every series carries ``model_name`` (the served name) and ``engine`` ("0": one engine, no data parallelism).
Names follow vLLM >= 0.11 (``vllm:kv_cache_usage_perc``, ``vllm:inter_token_latency_seconds``);
``legacy_names=True`` also exposes the pre-0.11 spellings (``vllm:gpu_cache_usage_perc``,
``vllm:time_per_output_token_seconds``), so a scraper can be tested against both generations.

Semantics as in vLLM v1: prompt tokens are counted when a request's prefill completes (its first token),
generation tokens as they are sampled; ``request_success`` counts requests that finished (aborted ones are not
counted); queue time is arrival to first scheduled, prefill time first scheduled to first token, decode time
first token to finish, inference time first scheduled to finish.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from fleettwin.live.emulator import Engine, Generation
from fleettwin.models.engine.queue import StepPlan

# vLLM's bucket bounds in seconds, written in rows (a value a line would make them 60 lines long)
TTFT_BUCKETS = (
    *(0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75),
    *(1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0),
)
ITL_BUCKETS = (
    *(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5),
    *(0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0),
)
REQUEST_LATENCY_BUCKETS = (
    *(0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0),
    *(30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0),
)
ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
LABELS = ("model_name", "engine")
FINISH_REASONS = ("stop", "length", "abort")  # vLLM V1's FinishReason values
CONTENT_TYPE = CONTENT_TYPE_LATEST


def buckets_1_2_5(max_value: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to ``max_value`` (vLLM's ``build_1_2_5_buckets``)."""
    out, exp = [], 0
    while True:
        for m in (1, 2, 5):
            v = m * 10**exp
            if v > max_value:
                return out
            out.append(v)
        exp += 1


class _Gauges:
    """Gauges read from the engine at scrape time, so they are never stale."""

    def __init__(
        self, engine: Engine, labels: list[str], *, legacy_names: bool, gpu_memory_utilization: float
    ):
        self.engine, self.labels, self.legacy = engine, labels, legacy_names
        self.gpu_memory_utilization = gpu_memory_utilization

    def collect(self):
        e = self.engine
        for name, doc, value in (
            ("vllm:num_requests_running", "Number of requests in model execution batches.", e.num_running),
            ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", e.num_waiting),
            ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", e.kv_usage),
            *(
                (("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.", e.kv_usage),)
                if self.legacy
                else ()
            ),
        ):
            g = GaugeMetricFamily(name, doc, labels=list(LABELS))
            g.add_metric(self.labels, float(value))
            yield g
        lim = e.limits
        info = {
            "block_size": str(lim.block_size),
            "num_gpu_blocks": str(lim.num_blocks),
            "gpu_memory_utilization": str(self.gpu_memory_utilization),
            "enable_prefix_caching": str(lim.enable_prefix_caching),
            "max_model_len": str(lim.max_model_len),
        }
        g = GaugeMetricFamily(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            labels=["engine", *sorted(info)],
        )
        g.add_metric([self.labels[1], *(info[k] for k in sorted(info))], 1.0)
        yield g


class EngineMetrics:
    """An ``EngineObserver`` that keeps vLLM's metrics in its own registry (several emulators may share a
    process). ``exposition()`` is the body of ``GET /metrics``."""

    def __init__(
        self,
        engine: Engine,
        model_name: str,
        *,
        engine_index: str = "0",
        legacy_names: bool = False,
        gpu_memory_utilization: float = 0.9,
    ):
        self.registry = reg = CollectorRegistry(auto_describe=True)
        lv = [model_name, engine_index]
        reg.register(
            _Gauges(engine, lv, legacy_names=legacy_names, gpu_memory_utilization=gpu_memory_utilization)
        )

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()):
            c = Counter(name, doc, [*LABELS, *extra], registry=reg)
            return c if extra else c.labels(*lv)

        def histogram(name: str, doc: str, buckets):
            return Histogram(name, doc, list(LABELS), buckets=list(buckets), registry=reg).labels(*lv)

        self._lv = lv
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        self.preemptions = counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.")
        self._success = counter(
            "vllm:request_success", "Count of successfully processed requests.", ("finished_reason",)
        )
        # One series per finish reason from the start, at 0, as vLLM creates them: a series that first appears
        # mid-window has no earlier sample, and Prometheus' increase() over that window misses its first
        # count.
        for reason in FINISH_REASONS:
            self._success.labels(*lv, reason)
        self.ttft = histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS
        )
        itl_doc = "Histogram of inter-token latency in seconds."
        self.itl = [histogram("vllm:inter_token_latency_seconds", itl_doc, ITL_BUCKETS)]
        if legacy_names:
            self.itl.append(histogram("vllm:time_per_output_token_seconds", itl_doc, ITL_BUCKETS))
        self.tpot = histogram(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            ITL_BUCKETS,
        )
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.queue = histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.prefill = histogram(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.decode = histogram(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.inference = histogram(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        max_len = engine.limits.max_model_len
        self.req_prompt = histogram(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", buckets_1_2_5(max_len)
        )
        self.req_generation = histogram(
            "vllm:request_generation_tokens", "Number of generation tokens processed.", buckets_1_2_5(max_len)
        )
        self.req_max_tokens = histogram(
            "vllm:request_params_max_tokens",
            "Histogram of the max_tokens request parameter.",
            buckets_1_2_5(max_len),
        )
        self.iteration_tokens = histogram(
            "vllm:iteration_tokens_total",
            "Histogram of number of tokens per engine_step.",
            ITERATION_TOKEN_BUCKETS,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # -- EngineObserver ---------------------------------------------------------------------------------

    def on_step(self, plan: StepPlan, start_s: float, end_s: float) -> None:
        self.iteration_tokens.observe(sum(plan.tokens))
        if plan.preempted:
            self.preemptions.inc(len(plan.preempted))

    def on_token(self, gen: Generation, t: float) -> None:
        self.generation_tokens.inc()
        times = gen.token_times
        if len(times) == 1:
            self.prompt_tokens.inc(gen.prompt_tokens)
            self.ttft.observe(t - gen.arrival_s)
        else:
            gap = t - times[-2]
            for h in self.itl:
                h.observe(gap)

    def on_finish(self, gen: Generation, t: float) -> None:
        self._success.labels(*self._lv, gen.finish_reason or "length").inc()
        seq, times = gen.seq, gen.token_times
        self.e2e.observe(t - gen.arrival_s)
        self.queue.observe(seq.first_scheduled_s - gen.arrival_s)
        self.prefill.observe(times[0] - seq.first_scheduled_s)
        self.decode.observe(t - times[0])
        self.inference.observe(t - seq.first_scheduled_s)
        if len(times) > 1:
            self.tpot.observe((t - times[0]) / (len(times) - 1))
        self.req_prompt.observe(gen.prompt_tokens)
        self.req_generation.observe(len(times))
        self.req_max_tokens.observe(gen.max_tokens)
