"""The Prometheus reader of measured runs: deltas of vLLM's histograms between the first and last scrape,
histogram_quantile as Prometheus computes it (checked against a real server where one is installed), and its
one-line errors. The other readers: test_calibration_readers.py."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from fleettwin.models.errors import ConfigError
from fleettwin.sim.calibration.readers.prometheus import histogram_quantile
from tests.sim.test_calibration_readers import DATA, FIXTURES, assert_one_line, one, runs

# --- prometheus ---------------------------------------------------------------------------------------------

# Deltas between the first and last scrape (worked by hand, Prometheus' histogram_quantile rules):
# TTFT buckets le 0.04/0.1/0.25/0.5/+Inf: 0/4/8/10/10 (summed over engines 0 and 1), sum 2.0:
#   mean 0.2; p50 rank 5 in (0.1, 0.25]: 0.1 + 0.15 * 1/4 = 0.1375; p90 rank 9: 0.25 + 0.25 * 1/2 = 0.375;
#   p99 rank 9.9: 0.25 + 0.25 * 1.9/2 = 0.4875
# E2E le 1/2/5/+Inf: 2/6/10/10, sum 25: mean 2.5, p50 1 + 3/4 = 1.75, p90 2 + 3 * 3/4 = 4.25, p99 2 + 3 *
# 3.9/4 TPOT le 0.01/0.025/0.05/+Inf: 3/9/10/10, sum 0.17: mean 0.017, p50 0.01 + 0.015 * 2/6, p90 0.025, p99
# 0.0475 prompt 5120 / 10 = 512, output 1280 / 10 = 128; success 8 stop + 2 length = 10 in 20 s: 0.5 req/s
PROM_EXPECTED = {
    "ttft_mean": 0.2,
    "ttft_p50": 0.1375,
    "ttft_p90": 0.375,
    "ttft_p99": 0.4875,
    "e2e_mean": 2.5,
    "e2e_p50": 1.75,
    "e2e_p90": 4.25,
    "e2e_p99": 4.925,
    "tpot_mean": 0.017,
    "tpot_p50": 0.015,
    "tpot_p90": 0.025,
    "tpot_p99": 0.0475,
}


@pytest.mark.parametrize("name", FIXTURES["prometheus"])
def test_prometheus_deltas_between_first_and_last_scrape(name):
    pytest.importorskip("prometheus_client")
    run = one(DATA / name)
    assert (run.load.kind, run.load.arrival) == ("open", "poisson") and run.load.rate == pytest.approx(0.5)
    assert len(run.requests) == 10
    assert set(run.requests["prompt_tokens"]) == {512} and set(run.requests["output_tokens"]) == {128}
    assert run.metrics() == pytest.approx(PROM_EXPECTED)
    assert any("synthesised" in n for n in run.notes)


def test_prometheus_old_per_token_tpot_keeps_only_the_mean(tmp_path):
    pytest.importorskip("prometheus_client")
    path = tmp_path / "old.prom"
    text = (DATA / "prometheus_scrapes.prom").read_text()
    path.write_text(
        text.replace("vllm:request_time_per_output_token_seconds", "vllm:time_per_output_token_seconds")
    )
    run = one(path)
    assert run.reported["tpot_mean"] == pytest.approx(0.017) and "tpot_p50" not in run.reported
    assert any("token-weighted" in n for n in run.notes)


def test_histogram_quantile_edges():
    buckets = [(0.1, 2.0), (0.2, 4.0), (math.inf, 10.0)]
    assert histogram_quantile(0.1, buckets) == pytest.approx(0.05)  # within the first bucket, from 0
    assert histogram_quantile(0.99, buckets) == 0.2  # in the +Inf bucket: the highest finite bound
    assert math.isnan(histogram_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=1, max_size=8), st.integers(0, 5))
def test_histogram_quantile_is_monotone_and_bounded(increments, overflow):
    counts = np.cumsum(increments).tolist()
    buckets = [(0.1 * (i + 1), float(c)) for i, c in enumerate(counts)] + [
        (math.inf, float(counts[-1] + overflow))
    ]
    values = [histogram_quantile(q, buckets) for q in (0.01, 0.25, 0.5, 0.9, 0.99)]
    if buckets[-1][1] == 0:
        assert all(math.isnan(v) for v in values)
        return
    assert values == sorted(values)
    assert all(0.0 <= v <= buckets[-2][0] for v in values)


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed"
)
def test_histogram_quantile_matches_prometheus(tmp_path):
    """Prometheus itself (promtool's rule unit tests) evaluates histogram_quantile on the same buckets and
    must find exactly our values."""
    rng = np.random.default_rng(7)
    cases = [
        [(0.04, 0), (0.1, 4), (0.25, 8), (0.5, 10), (math.inf, 10)],
        [(1.0, 2), (2.0, 6), (5.0, 10), (math.inf, 10)],
        [(0.1, 0), (0.2, 0), (math.inf, 5)],
    ]
    for _ in range(5):
        bounds = np.sort(rng.choice(np.arange(1, 60), size=5, replace=False)) / 20
        counts = np.cumsum(rng.integers(0, 9, size=6))
        cases.append([*zip(bounds.tolist(), counts[:5].tolist(), strict=True), (math.inf, int(counts[5]))])
    series, exprs = [], []
    for k, case in enumerate(cases):
        for bound, count in case:
            le = "+Inf" if math.isinf(bound) else repr(bound)
            series.append({"series": f'h{k}_bucket{{le="{le}"}}', "values": str(count)})
        for q in (0.5, 0.9, 0.99):
            want = histogram_quantile(q, [(b, float(c)) for b, c in case])
            exprs.append(
                {
                    "expr": f"histogram_quantile({q}, h{k}_bucket)",
                    "eval_time": "0m",
                    "exp_samples": [{"labels": "{}", "value": float(want)}],
                }
            )
    spec = tmp_path / "quantiles.yml"
    spec.write_text(
        yaml.safe_dump({"tests": [{"interval": "1m", "input_series": series, "promql_expr_test": exprs}]})
    )
    done = subprocess.run(
        ["promtool", "test", "rules", str(spec)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_prometheus_counter_reset_and_two_models_are_errors(tmp_path):
    pytest.importorskip("prometheus_client")
    text = (DATA / "prometheus_scrapes.prom").read_text()
    first, *rest = text.split("# scrape at ")[1:]
    reset = tmp_path / "reset.prom"
    stop = 'finished_reason="stop",model_name="meta-llama/Llama-3.1-8B-Instruct"}'
    reset.write_text(
        "# scrape at " + first + "# scrape at " + rest[-1].replace(f"{stop} 12.0", f"{stop} 1.0")
    )
    with pytest.raises(
        ConfigError, match=r'reset\.prom:\d+: vllm:request_success_total\{.*finished_reason="stop".*restart'
    ):
        runs(reset)
    two = tmp_path / "two.prom"
    two.write_text(text + 'vllm:num_requests_running{engine="0",model_name="other"} 0.0\n')
    with pytest.raises(ConfigError, match=r"two\.prom:\d+: model_name: .*2 models"):
        runs(two)


def test_prometheus_without_prometheus_client_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client.parser", None)
    with pytest.raises(ConfigError, match=r"prometheus_scrapes\.prom: .*fleettwin\[live\]"):
        runs(DATA / "prometheus_scrapes.prom")


def test_prometheus_bad_text_names_the_line(tmp_path):
    pytest.importorskip("prometheus_client")
    good = (DATA / "prometheus_scrapes.prom").read_text().splitlines()
    lines = list(good)
    bad = next(i for i, line in enumerate(lines) if line.startswith("vllm:e2e_request_latency_seconds_sum"))
    lines[bad] = lines[bad].rsplit(" ", 1)[0] + " lots"
    path = tmp_path / "bad.prom"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as exc:
        runs(path, "prometheus")
    assert_one_line(exc, path, f"{path}:{bad + 1}:", "not Prometheus text")
    no_e2e = tmp_path / "no_e2e.prom"
    no_e2e.write_text("\n".join(line for line in good if "e2e_request_latency" not in line) + "\n")
    with pytest.raises(ConfigError) as exc:
        runs(no_e2e, "prometheus")
    assert_one_line(exc, no_e2e, "vllm:e2e_request_latency_seconds: not in the scrapes")
    one_scrape = tmp_path / "one.prom"
    one_scrape.write_text("\n".join(good[: good.index("# scrape at 1717000010.0")]) + "\n")
    with pytest.raises(ConfigError) as exc:
        runs(one_scrape, "prometheus")
    assert_one_line(exc, one_scrape, "1 scrape(s)")
