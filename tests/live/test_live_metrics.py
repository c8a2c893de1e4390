"""The Prometheus text parser, ``BackendMetrics`` and the scraper: vLLM's spellings old and new, errors that
name the line, unreachable backends reported as unhealthy, and the routers' view over scraped backends."""

from __future__ import annotations

import asyncio
import math
import socket

import pytest

from fleettwin.live.metrics import BackendMetrics, BackendSetView, HistogramSummary, Scraper, backend_metrics
from fleettwin.live.promtext import MetricsFormatError, parse
from fleettwin.models.routing.replica import REPLICA_ROUTERS
from fleettwin.models.workload.request import Request

# What an older vLLM (0.9, before the engine label's removal of gpu_cache_usage_perc) serves, two DP engines.
OLD_VLLM = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B"} 3.0
vllm:num_requests_running{engine="1",model_name="meta-llama/Llama-3.1-8B"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B"} 1.0
vllm:num_requests_waiting{engine="1",model_name="meta-llama/Llama-3.1-8B"} 0.0
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B"} 0.5
vllm:gpu_cache_usage_perc{engine="1",model_name="meta-llama/Llama-3.1-8B"} 0.25
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens counter
vllm:prompt_tokens_total{engine="0",model_name="meta-llama/Llama-3.1-8B"} 1000.0
vllm:prompt_tokens_total{engine="1",model_name="meta-llama/Llama-3.1-8B"} 500.0
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{engine="0",model_name="meta-llama/Llama-3.1-8B"} 40.0
# TYPE vllm:request_success counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="meta-llama/Llama-3.1-8B"} 7.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="meta-llama/Llama-3.1-8B"} 3.0
# TYPE vllm:time_per_output_token_seconds histogram
vllm:time_per_output_token_seconds_bucket{engine="0",le="0.01",model_name="meta-llama/Llama-3.1-8B"} 10.0
vllm:time_per_output_token_seconds_bucket{engine="0",le="0.025",model_name="meta-llama/Llama-3.1-8B"} 30.0
vllm:time_per_output_token_seconds_bucket{engine="0",le="+Inf",model_name="meta-llama/Llama-3.1-8B"} 30.0
vllm:time_per_output_token_seconds_count{engine="0",model_name="meta-llama/Llama-3.1-8B"} 30.0
vllm:time_per_output_token_seconds_sum{engine="0",model_name="meta-llama/Llama-3.1-8B"} 0.45
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",engine="0",gpu_memory_utilization="0.9",num_gpu_blocks="27000"} 1.0
"""


def test_old_vllm_spellings_and_data_parallel_engines_are_summed():
    m = backend_metrics(OLD_VLLM, url="u", scraped_at=5.0)
    assert m.healthy and m.model_names == ("meta-llama/Llama-3.1-8B",)
    assert (m.running, m.waiting, m.outstanding) == (5, 1, 6)
    assert m.kv_usage == pytest.approx(0.375)  # engines hold equal caches: the pod's use is the mean
    assert (m.prompt_tokens, m.generation_tokens) == (1500.0, 40.0)
    assert m.requests_finished == 10.0 and dict(m.finished_by_reason) == {"length": 3.0, "stop": 7.0}
    assert m.itl.count == 30 and m.itl.mean == pytest.approx(0.015)
    assert m.itl.quantile(0.5) == pytest.approx(0.01 + 0.015 * 5 / 20)  # linear inside (0.01, 0.025]
    assert (m.num_gpu_blocks, m.block_size) == (27000, 16)
    assert m.ttft.count == 0 and math.isnan(m.ttft.quantile(0.5))


def test_model_filter_keeps_one_models_series():
    text = OLD_VLLM + 'vllm:num_requests_running{engine="0",model_name="other"} 9.0\n'
    assert backend_metrics(text).running == 14
    assert backend_metrics(text, model_name="other").running == 9


def test_histogram_quantile_edges():
    h = HistogramSummary(count=4, sum=10, buckets=((1.0, 2.0), (2.0, 2.0), (math.inf, 4.0)))
    assert h.quantile(0.25) == pytest.approx(0.5)
    assert h.quantile(0.99) == 2.0  # in the +Inf bucket: the largest finite bound, as Prometheus does
    later = HistogramSummary(count=6, sum=13, buckets=((1.0, 4.0), (2.0, 4.0), (math.inf, 6.0)))
    assert later.minus(h) == HistogramSummary(
        count=2, sum=3, buckets=((1.0, 2.0), (2.0, 2.0), (math.inf, 2.0))
    )


def test_parser_handles_escapes_timestamps_and_special_values():
    fams = parse(
        '# a comment\nx{a="q\\"uote",b="back\\\\slash\\n"} NaN 1700000000000\ny +Inf\nz -1e-3\n# EOF\n'
    )
    assert fams["x"].samples[0].labels == {"a": 'q"uote', "b": "back\\slash\n"}
    assert math.isnan(fams["x"].samples[0].value)
    assert fams["y"].samples[0].value == math.inf and fams["z"].samples[0].value == -0.001


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ('# TYPE a gauge\na 1\na{b="c} 2\n', 3, "unterminated value of label 'b'"),
        ("a 1\nb one\n", 2, "value 'one' is not a number"),
        ("a 1\n\n# TYPE b flavour\n", 3, "unknown metric type 'flavour'"),
        ('a{1b="x"} 3\n', 1, "bad label name"),
        ('# TYPE h histogram\nh_bucket{x="1"} 3\n', 2, "histogram bucket without an 'le' label"),
        ("a 1 2 3\n", 1, "expected 'value [timestamp]'"),
        ('a{b="1",b="2"} 1\n', 1, "label 'b' repeated"),
        ('{x="1"} 1\n', 1, "expected a metric name"),
    ],
)
def test_malformed_text_raises_an_error_naming_the_line(text, line, reason):
    with pytest.raises(MetricsFormatError) as info:
        parse(text)
    assert info.value.line_no == line
    assert str(info.value).startswith(f"metrics line {line}: ") and reason in str(info.value)


def test_text_without_vllm_metrics_is_refused():
    with pytest.raises(MetricsFormatError, match="not a vLLM metrics page"):
        backend_metrics("process_cpu_seconds_total 3.0\n")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nobody listens once the socket is closed


def test_unreachable_backend_is_an_unhealthy_record_not_an_exception():
    url = f"http://127.0.0.1:{_closed_port()}"

    async def go():
        async with Scraper(timeout_s=1.0, clock=lambda: 42.0) as s:
            return await s.scrape_all([url, url])

    records = asyncio.run(go())
    assert [r.healthy for r in records] == [False, False]
    assert records[0].url == url and records[0].scraped_at == 42.0 and "Connect" in records[0].error


def test_view_routes_among_healthy_backends_with_pending_requests():
    def rec(url, running, waiting, kv, healthy=True):
        return BackendMetrics(
            url=url, scraped_at=0.0, healthy=healthy, running=running, waiting=waiting, kv_usage=kv
        )

    scraped = [rec("a", 4, 0, 0.9), BackendMetrics.unhealthy("b", 0.0, "down"), rec("c", 2, 1, 0.1)]
    view = BackendSetView(scraped, pending={"c": 2})
    assert len(view) == 2 and view.outstanding == [4, 5] and view.kv_usage(0.0) == [0.9, 0.1]
    req = Request(id=0, arrival_s=0.0, prompt_tokens=1, output_tokens=1)
    assert view.url(REPLICA_ROUTERS.create("least_outstanding").choose(req, view, 0.0)) == "a"
    assert view.url(REPLICA_ROUTERS.create("least_kv").choose(req, view, 0.0)) == "c"
