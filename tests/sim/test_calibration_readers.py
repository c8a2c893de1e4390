"""The readers of other tools' run files (vllm-bench, inference-perf, guidellm; prometheus in its own file):
each fixture maps to the load, requests and metrics worked out by hand in the comments; each reader claims
only its own files; bad input is a one-line ConfigError naming the file and the field or line.

Fixtures and their origins: tests/data/runs/SOURCE.md."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from fleettwin.models.errors import ConfigError
from fleettwin.sim.calibration.readers import detect_format, read_runs, reader
from fleettwin.sim.calibration.runs import ServerSettings

DATA = Path(__file__).parents[1] / "data" / "runs"
SETTINGS = ServerSettings(model="llama-3-8b", gpu="h100-80g")
FIXTURES = {
    "vllm-bench": [
        "vllm_bench_lambda_1xh100_llama3_8b.json",
        "vllm_bench_detailed_open.json",
        "vllm_bench_closed_summary.json",
    ],
    "inference-perf": [
        "inference_perf_kubecon",
        "inference_perf_per_request",
        "inference_perf_kubecon/stage_0_lifecycle_metrics.json",
    ],
    "guidellm": ["guidellm_v0.3_sweep.json", "guidellm_v0.6_sampled.json"],
    "prometheus": ["prometheus_scrapes.prom", "prometheus_scrape_folder", "prometheus_query_range.json"],
}
MINE = tuple(FIXTURES)


def runs(path: Path, fmt: str | None = None):
    return read_runs(path, settings=SETTINGS, fmt=fmt)


def one(path: Path, fmt: str | None = None):
    (run,) = runs(path, fmt)
    return run


def copy(name: str, tmp_path: Path) -> Path:
    src = DATA / name
    dst = tmp_path / src.name
    (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    return dst


def rewrite_json(path: Path, edit) -> Path:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    return path


# --- detection ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt,name", [(f, n) for f, names in FIXTURES.items() for n in names])
def test_each_reader_claims_its_own_files_only(fmt, name):
    path = DATA / name
    assert reader(fmt).sniff(path)
    assert [f for f in MINE if f != fmt and reader(f).sniff(path)] == []
    assert detect_format(path) == fmt


@pytest.mark.parametrize("fmt", MINE)
def test_sniff_is_false_and_quiet_on_unrelated_files(fmt, tmp_path):
    (tmp_path / "empty.json").write_text("")
    (tmp_path / "binary.prom").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "list.json").write_text("[1, 2, 3]")
    (tmp_path / "scenario.yaml").write_text("pools:\n  - name: a\n")
    (tmp_path / "empty_dir").mkdir()
    for p in [*tmp_path.iterdir(), tmp_path / "missing.json", Path(__file__)]:
        assert not reader(fmt).sniff(p), p


# --- vllm-bench ---------------------------------------------------------------------------------------------


def test_vllm_bench_real_lambda_file_is_a_batch_of_ten():
    path = DATA / "vllm_bench_lambda_1xh100_llama3_8b.json"
    run = one(path)
    raw = json.loads(path.read_text())
    assert run.load.kind == "batch" and run.notes == ()
    assert run.requests["prompt_tokens"].tolist() == [13, 25, 27, 10, 329, 29, 399, 328, 4, 205]
    assert run.requests["output_tokens"].tolist() == raw["output_lens"]
    # E2E per request is TTFT plus the streamed gaps (the old script saved no latencies)
    assert run.requests["e2e_s"].tolist() == pytest.approx(
        [t + sum(g) for t, g in zip(raw["ttfts"], raw["itls"], strict=True)]
    )
    m = run.metrics()
    assert m["ttft_mean"] == pytest.approx(raw["mean_ttft_ms"] / 1000, rel=1e-12)
    assert run.reported["e2e_mean"] == pytest.approx(raw["mean_latency_ms"] / 1000)  # old name of e2el
    assert run.reported["tpot_p99"] == pytest.approx(raw["p99_tpot_ms"] / 1000)
    # the client's measured latency and TTFT + sum(ITL) agree to within a few ms on this real file
    assert abs(m["e2e_mean"] - run.reported["e2e_mean"]) < 0.005


def test_vllm_bench_detailed_open_loop_at_recorded_times():
    run = one(DATA / "vllm_bench_detailed_open.json")
    assert (run.load.kind, run.load.rate, run.load.arrival) == ("open", 2.0, "recorded")
    df = run.requests
    # request 2 failed (an errors entry): dropped; send times 5000.0/.4/1.5/2.0 from zero
    assert df["arrival_s"].tolist() == pytest.approx([0.0, 0.4, 1.5, 2.0])
    assert df["prompt_tokens"].tolist() == [100, 200, 400, 500]
    assert df["output_tokens"].tolist() == [10, 20, 30, 40]
    assert df["e2e_s"].tolist() == pytest.approx([0.56, 1.16, 1.76, 2.36])  # latencies, not ttft + sum(itls)
    assert any("1 failed" in n for n in run.notes)
    m = run.metrics()
    assert m["ttft_mean"] == pytest.approx(0.25) and m["ttft_p90"] == pytest.approx(0.37)
    assert m["e2e_mean"] == pytest.approx(1.46)
    assert run.reported["ttft_p90"] == pytest.approx(0.37)  # p90_ttft_ms / 1000
    assert run.reported["tpot_mean"] == pytest.approx(m["tpot_mean"])


def test_vllm_bench_summary_only_is_a_closed_loop_at_mean_lengths():
    run = one(DATA / "vllm_bench_closed_summary.json")
    assert (run.load.kind, run.load.concurrency, run.load.requests) == ("closed", 8, 100)
    assert len(run.requests) == 100
    assert set(run.requests["prompt_tokens"]) == {512} and set(run.requests["output_tokens"]) == {128}
    assert run.metrics() == pytest.approx(
        {
            "ttft_mean": 0.08,
            "ttft_p50": 0.075,
            "ttft_p90": 0.11,
            "ttft_p99": 0.15,
            "tpot_mean": 0.019,
            "tpot_p50": 0.0185,
            "tpot_p90": 0.021,
            "tpot_p99": 0.024,
            "e2e_mean": 2.493,
            "e2e_p50": 2.43,
            "e2e_p90": 2.7,
            "e2e_p99": 3.1,
        }
    )
    assert any("512/128" in n for n in run.notes)


def test_vllm_bench_append_result_lines_and_percentile_pairs(tmp_path):
    doc = json.loads((DATA / "vllm_bench_closed_summary.json").read_text())
    del doc["p99_ttft_ms"], doc["p90_ttft_ms"]
    doc["percentiles_ttft_ms"] = [[50.0, 75.0], [90.0, 110.0], [99.0, 150.0]]
    path = tmp_path / "appended.json"
    path.write_text(json.dumps(doc) + "\n" + json.dumps({**doc, "max_concurrency": 16}))
    first, second = runs(path)
    assert (first.name, second.name) == ("appended#1", "appended#2")
    assert (first.load.concurrency, second.load.concurrency) == (8, 16)
    assert first.reported["ttft_p99"] == pytest.approx(0.15) and first.reported["ttft_p90"] == pytest.approx(
        0.11
    )


@pytest.mark.parametrize("waits,kind", [([0.0] * 5, "open"), ([0.0, 0.0, 0.0, 0.5, 0.8], "closed")])
def test_vllm_bench_rate_with_a_cap_follows_whether_the_cap_bound(tmp_path, waits, kind):
    def edit(doc):
        doc["max_concurrency"], doc["queue_times"] = 2, waits

    run = one(rewrite_json(copy("vllm_bench_detailed_open.json", tmp_path), edit))
    assert run.load.kind == kind
    if kind == "closed":  # 2 of 5 requests waited for the cap: it bound
        assert run.load.concurrency == 2 and "arrival_s" not in run.requests
    else:
        assert run.load.arrival == "recorded" and any("never held" in n for n in run.notes)


def test_vllm_bench_spacing_without_send_times(tmp_path):
    def edit(doc):
        del doc["start_times"]
        doc["burstiness"] = float("inf")

    run = one(rewrite_json(copy("vllm_bench_detailed_open.json", tmp_path), edit))
    assert (run.load.kind, run.load.rate, run.load.arrival) == ("open", 2.0, "constant")
    assert "arrival_s" not in run.requests


# --- inference-perf -----------------------------------------------------------------------------------------


def test_inference_perf_real_stages_without_per_request_rows():
    s0, s1 = runs(DATA / "inference_perf_kubecon")
    assert (s0.name, s1.name) == ("inference_perf_kubecon:stage_0", "inference_perf_kubecon:stage_1")
    assert (s0.load.kind, s0.load.rate, s0.load.arrival) == ("open", 1.0, "constant")
    assert s1.load.rate == 31.4
    # stage 0: 60 successes, mean prompt_len 204.1 and output_len 63.15 tokens
    assert len(s0.requests) == 60 and set(s0.requests["prompt_tokens"]) == {204}
    assert set(s0.requests["output_tokens"]) == {63}
    assert len(s1.requests) == 1884
    assert s0.metrics() == pytest.approx(
        {
            "ttft_mean": 0.03112733216257766,
            "ttft_p50": 0.031026913959067315,
            "ttft_p90": 0.03540639606071636,
            "ttft_p99": 0.039696927970508104,
            "tpot_mean": 0.0034734172405264745,
            "tpot_p50": 0.003468046240533825,
            "tpot_p90": 0.0034946888832324873,
            "tpot_p99": 0.003521602816623455,
            "e2e_mean": 0.48048226445680486,
            "e2e_p50": 0.4796094944467768,
            "e2e_p90": 0.48580294536659496,
            "e2e_p99": 0.489441333723953,
        }
    )
    assert any("mean lengths" in n for n in s0.notes)


def test_inference_perf_per_request_rows_are_cut_by_stage():
    s0, s1 = runs(DATA / "inference_perf_per_request")
    assert (s0.load.kind, s0.load.rate, s0.load.arrival) == ("open", 2.0, "recorded")
    assert s0.requests["arrival_s"].tolist() == pytest.approx([0.0, 0.5, 1.0, 1.5])
    assert s0.requests["ttft_s"].tolist() == pytest.approx([0.1, 0.2, 0.1, 0.2])
    assert s0.requests["e2e_s"].tolist() == pytest.approx([1.0, 1.2, 0.8, 1.0])
    assert s0.requests["output_tokens"].tolist() == [10, 12, 8, 10]  # the server's completion_tokens
    assert s0.notes == ()
    # stage 1: the 503 is dropped; the others were sent at 1004.0, 1004.25 and 1004.75
    assert s1.load.rate == 4.0 and s1.requests["arrival_s"].tolist() == pytest.approx([0.0, 0.25, 0.75])
    assert s1.metrics()["ttft_mean"] == pytest.approx(0.6) and s1.metrics()["e2e_mean"] == pytest.approx(2.5)
    assert any("1 failed" in n for n in s1.notes)


def test_inference_perf_one_stage_file_uses_its_folder():
    run = one(DATA / "inference_perf_per_request" / "stage_1_lifecycle_metrics.json")
    assert run.name.endswith("stage_1") and len(run.requests) == 3


def test_inference_perf_old_per_request_layout(tmp_path):
    folder = copy("inference_perf_per_request", tmp_path)
    entries = json.loads((folder / "per_request_lifecycle_metrics.json").read_text())
    for e in entries:  # the 2025 layout: info = {input_tokens, output_tokens, output_token_times}
        r = e["info"]["response_metrics"]
        e["info"] = {
            "input_tokens": e["info"]["input_tokens"],
            "output_tokens": r["output_tokens"],
            "output_token_times": r["output_token_times"],
        }
    (folder / "per_request_lifecycle_metrics.json").write_text(json.dumps(entries))
    s0, s1 = runs(folder)
    assert s0.requests["output_tokens"].tolist() == [10, 12, 8, 10] and len(s1.requests) == 3


def test_inference_perf_rows_that_do_not_match_a_stage_fall_back_to_aggregates(tmp_path):
    folder = copy("inference_perf_per_request", tmp_path)
    rewrite_json(
        folder / "stage_0_lifecycle_metrics.json",
        lambda d: d["successes"]["latency"]["request_latency"].update(mean=1.5),
    )
    s0, _ = runs(folder)
    assert s0.load.arrival == "poisson" and "ttft_s" not in s0.requests and len(s0.requests) == 4
    assert any("aggregates used" in n for n in s0.notes)


def test_inference_perf_concurrent_stage_and_missing_config(tmp_path):
    folder = copy("inference_perf_kubecon", tmp_path)
    stages = [{"num_requests": 60, "concurrency_level": 4}, {"num_requests": 1884, "concurrency_level": 32}]
    (folder / "config.yaml").write_text(yaml.safe_dump({"load": {"type": "concurrent", "stages": stages}}))
    s0, s1 = runs(folder)
    assert (s0.load.kind, s0.load.concurrency, s0.load.requests) == ("closed", 4, 60)
    assert (s1.load.concurrency, s1.load.requests) == (32, 1884)
    (folder / "config.yaml").unlink()
    s0, _ = runs(folder)
    assert s0.load.arrival == "constant" and any("no config.yaml" in n for n in s0.notes)


# --- guidellm -----------------------------------------------------------------------------------------------


def test_guidellm_v03_sweep_one_run_per_benchmark():
    sync, conc, const = runs(DATA / "guidellm_v0.3_sweep.json")
    assert (sync.load.kind, sync.load.concurrency, len(sync.requests)) == ("closed", 1, 2)
    assert (conc.load.kind, conc.load.concurrency, len(conc.requests)) == ("closed", 2, 3)
    assert any("1 errored" in n for n in conc.notes)
    assert (const.load.kind, const.load.rate, const.load.arrival) == ("open", 2.0, "recorded")
    assert const.requests["arrival_s"].tolist() == pytest.approx([0.0, 0.5, 1.0])
    # synchronous: TTFT 50 and 70 ms, latency 1.05 and 1.07 s, 101 tokens: TPOT (1.0 s / 100) = 10 ms
    assert sync.requests["ttft_s"].tolist() == pytest.approx([0.05, 0.07])
    assert sync.reported["tpot_mean"] == pytest.approx(
        0.01
    )  # inter_token_latency_ms, not time_per_output_token
    assert sync.metrics()["e2e_mean"] == pytest.approx(1.06)


def test_guidellm_v06_sampled_rows_and_stats_only_benchmark():
    thr, poi = runs(DATA / "guidellm_v0.6_sampled.json")
    assert thr.load.kind == "batch" and len(thr.requests) == 12
    assert set(thr.requests["prompt_tokens"]) == {512} and set(thr.requests["output_tokens"]) == {64}
    assert thr.reported["ttft_mean"] == pytest.approx(0.5)
    # 3 rows kept of 4: lengths repeated to 4 requests, Poisson at the rate, the full run's aggregates
    # measured
    assert (poi.load.kind, poi.load.rate, poi.load.arrival) == ("open", 1.5, "poisson")
    assert poi.requests["prompt_tokens"].tolist() == [500, 520, 540, 500]
    assert "ttft_s" not in poi.requests
    assert poi.metrics()["ttft_mean"] == pytest.approx(0.125) and poi.metrics()["e2e_mean"] == pytest.approx(
        1.075
    )


def test_guidellm_yaml_report_reads_like_json(tmp_path):
    path = tmp_path / "benchmarks.yaml"
    doc = json.loads((DATA / "guidellm_v0.3_sweep.json").read_text())
    path.write_text(yaml.dump(doc, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper)))
    assert detect_format(path) == "guidellm"
    assert [r.load for r in runs(path)] == [r.load for r in runs(DATA / "guidellm_v0.3_sweep.json")]


# --- bad input ----------------------------------------------------------------------------------------------


def assert_one_line(exc: pytest.ExceptionInfo, path: Path, *fields: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg, msg
    for f in fields:
        assert f in msg, msg


def assert_edits_fail(src: Path, tmp_path: Path, fmt: str, cases) -> None:
    """Each ``(edit, field)`` of ``cases`` applied to a fresh copy of the JSON ``src`` makes reading it as
    ``fmt`` a one-line ConfigError that names the file and ``field``."""
    for edit, field in cases:
        path = tmp_path / "bad.json"
        shutil.copy(src, path)
        rewrite_json(path, edit)
        with pytest.raises(ConfigError) as exc:
            runs(path, fmt)
        assert_one_line(exc, path, field)


def test_unknown_format_is_named(tmp_path):
    with pytest.raises(ConfigError, match="unknown run format 'nope'"):
        read_runs(DATA / "vllm_bench_detailed_open.json", settings=SETTINGS, fmt="nope")
    odd = tmp_path / "notes.txt"
    odd.write_text("nothing a reader knows\n")
    with pytest.raises(ConfigError) as exc:
        runs(odd)
    assert_one_line(exc, odd, "unknown run format")


@pytest.mark.parametrize("fmt", MINE)
def test_empty_file(fmt, tmp_path):
    path = tmp_path / ("empty.prom" if fmt == "prometheus" else "empty.json")
    path.write_text("")
    with pytest.raises(ConfigError) as exc:
        runs(path, fmt)
    assert_one_line(exc, path, "empty file")


@pytest.mark.parametrize(
    "fmt,name",
    [
        ("vllm-bench", "vllm_bench_detailed_open.json"),
        ("inference-perf", "inference_perf_kubecon/stage_0_lifecycle_metrics.json"),
        ("guidellm", "guidellm_v0.3_sweep.json"),
        ("prometheus", "prometheus_query_range.json"),
    ],
)
def test_truncated_json_names_the_line(fmt, name, tmp_path):
    text = (DATA / name).read_text()
    path = tmp_path / Path(name).name
    path.write_text(text[: len(text) // 2])
    with pytest.raises(ConfigError) as exc:
        runs(path, fmt)
    assert_one_line(exc, path, "invalid JSON")
    assert str(exc.value).split(":")[1].isdigit()  # PATH:LINE:COL


def test_vllm_bench_bad_values(tmp_path):
    src = copy("vllm_bench_detailed_open.json", tmp_path)
    cases = [
        (lambda d: d["ttfts"].__setitem__(1, -0.2), "ttfts[1]"),
        (lambda d: d["itls"][0].__setitem__(3, "fast"), "itls[0][3]"),
        (lambda d: d.pop("ttfts"), "ttfts: missing"),
        (lambda d: d["latencies"].pop(), "latencies: expected a list of 5"),
        (lambda d: d.update(mean_tpot_ms="n/a"), "mean_tpot_ms"),
        (lambda d: d.update(request_rate="fast"), "request_rate"),
    ]
    assert_edits_fail(src, tmp_path, "vllm-bench", cases)


def test_vllm_bench_summary_without_counts(tmp_path):
    path = rewrite_json(
        copy("vllm_bench_closed_summary.json", tmp_path), lambda d: d.pop("total_input_tokens")
    )
    with pytest.raises(ConfigError) as exc:
        runs(path)
    assert_one_line(exc, path, "total_input_tokens")


def test_inference_perf_bad_values(tmp_path):
    folder = copy("inference_perf_per_request", tmp_path)
    stage = folder / "stage_0_lifecycle_metrics.json"
    good = stage.read_text()
    rewrite_json(stage, lambda d: d.pop("successes"))
    with pytest.raises(ConfigError) as exc:
        runs(folder)
    assert_one_line(exc, stage, "successes: missing")
    stage.write_text(good)
    per_request = folder / "per_request_lifecycle_metrics.json"
    rewrite_json(per_request, lambda entries: entries[0].update(end_time=entries[0]["start_time"] - 1))
    with pytest.raises(ConfigError) as exc:
        runs(folder)
    assert_one_line(exc, per_request, "[0].end_time", "before start_time")
    kubecon = copy("inference_perf_kubecon", tmp_path / "k")
    rewrite_json(
        kubecon / "stage_1_lifecycle_metrics.json",
        lambda d: d["successes"]["latency"]["time_to_first_token"].update(p90="slow"),
    )
    with pytest.raises(ConfigError) as exc:
        runs(kubecon)
    assert_one_line(exc, kubecon / "stage_1_lifecycle_metrics.json", "time_to_first_token.p90")


def test_guidellm_bad_values(tmp_path):
    src = copy("guidellm_v0.3_sweep.json", tmp_path)
    cases = [
        (lambda d: d["benchmarks"][1]["args"].pop("strategy"), "benchmarks[1]: config.strategy"),
        (
            lambda d: d["benchmarks"][0]["requests"]["successful"][1].update(request_latency=-1.0),
            "benchmarks[0].requests.successful[1].request_latency",
        ),
        (
            lambda d: d["benchmarks"][2]["requests"]["successful"][0].update(prompt_tokens="many"),
            "successful[0].prompt_tokens",
        ),
        (
            lambda d: d["benchmarks"][2]["args"]["strategy"].update(type_="warp"),
            "strategy.type_: unknown strategy 'warp'",
        ),
        (lambda d: d.pop("benchmarks"), "benchmarks: missing"),
    ]
    assert_edits_fail(src, tmp_path, "guidellm", cases)
