"""The command line as a user runs it: results on disk, clear one-line errors, --help that explains."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from fleettwin.cli import main

SCENARIO = """
name: tiny
seed: 3
workload: {type: poisson, rate: 20, duration_s: 20, lengths: {type: uniform, prompt_min: 50, prompt_max: 900,
           output_min: 5, output_max: 200}}
pools:
  - {name: chat, gpu: h100-80g, model: llama-3-8b, replicas: 2}
slo: {ttft_s: 1.0, tpot_s: 0.05}
"""


@pytest.fixture
def scenario(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(SCENARIO)
    return path


def test_simulate_writes_results_and_prints_a_summary(scenario, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["simulate", str(scenario), "--out", str(out), "--plot", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "TTFT p50/p95/p99" in printed and "chat" in printed
    for name in ("requests.parquet", "timeseries.parquet", "summary.json", "latency_cdf.png", "pool_timeseries.png"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    requests = pd.read_parquet(out / "requests.parquet")
    assert summary["requests"]["total"] == len(requests) > 300
    assert summary["requests"]["completed"] == (requests["status"] == "completed").sum()
    assert summary["latency_s"]["ttft"]["p50"] == pytest.approx(requests["ttft_s"].median())
    pool = summary["pools"][0]
    assert pool["gpus"] == 2 and pool["tp"] == 1
    assert pool["cost_usd"] == pytest.approx(pool["gpu_hours"] * pool["usd_per_gpu_hour"])
    assert not list(out.glob(".*.tmp")), "no temporary files left behind"


def test_same_seed_same_results_and_seed_override_changes_them(scenario, tmp_path):
    paths = []
    for name, extra in (("a", []), ("b", []), ("c", ["--seed", "4"])):
        main(["simulate", str(scenario), "--out", str(tmp_path / name), "--quiet", *extra])
        paths.append(pd.read_parquet(tmp_path / name / "requests.parquet"))
    assert paths[0].equals(paths[1])
    assert not paths[0]["arrival_s"].equals(paths[2]["arrival_s"])


def test_bad_scenario_is_one_clear_line_and_exit_code_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SCENARIO.replace("replicas: 2", "replicas: zero"))
    assert main(["simulate", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "fleettwin simulate: error:" in err and "bad.yaml: pools[0].replicas" in err
    assert "Traceback" not in err


def test_help_lists_commands_and_examples(capsys):
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "--set" in text
