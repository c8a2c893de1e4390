"""Per-step fitting: runs whose every token was timed by the engine itself (the plain reference scheduler and
the calibrated model under known costs), streamed with noise and with tokens now and then coalesced into one
chunk, give back those costs; the fit's records, the reader's per-token column and the command's use of it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fleettwin.cli import main
from fleettwin.models.catalog import Catalog
from fleettwin.models.engine.queue import EngineLimits, SeqState
from fleettwin.models.engine.reference_scheduler import ReferenceScheduler
from fleettwin.models.engine.resolve import resolve_pool
from fleettwin.models.errors import ConfigError
from fleettwin.models.perf.profile import load_profile
from fleettwin.models.workload.request import Request
from fleettwin.sim.calibration.readers import read_runs
from fleettwin.sim.calibration.replay import pool_config
from fleettwin.sim.calibration.runs import Load, MeasuredRun, ServerSettings
from fleettwin.sim.calibration.steps import fit_steps, has_token_times, step_table

TRUTH = {"step_fixed_s": 2.0e-3, "tp_worker_s": 3e-4, "step_per_seq_s": 3e-5, "gpu_time_scale": 1.12}
START = {"step_fixed_s": 6.0e-4, "tp_worker_s": 1e-4, "step_per_seq_s": 1e-5, "gpu_time_scale": 1.0}


def _profile(tmp_path: Path, values: dict[str, float], name: str) -> Path:
    base = load_profile("h100-vllm-v1")
    path = tmp_path / f"{name}.yaml"
    engine = base.engine_costs.model_copy(update=values)
    path.write_text(base.model_copy(update={"name": name, "engine_costs": engine}).to_yaml())
    return path


def engine_timed_run(
    profile: Path, *, model: str, tp: int, rate: float, n: int, seed: int, noise: float = 0.04
) -> MeasuredRun:
    """An open-loop run served by the reference scheduler on the calibrated model's clock: every token's time
    is the end of the iteration that sampled it; the client sees each gap with lognormal noise, and about one
    gap in 50 coalesced with the next (two tokens in one streamed chunk)."""
    rng = np.random.default_rng(seed)
    settings = ServerSettings(
        model=model, gpu="h100-80g", tp=tp, engine={"max_num_seqs": 128, "max_num_batched_tokens": 2048}
    )
    arrivals = np.cumsum(rng.exponential(1 / rate, n))
    prompts, outputs = rng.integers(100, 1200, n), rng.integers(30, 250, n)
    reqs = [
        Request(
            id=i, arrival_s=float(arrivals[i]), prompt_tokens=int(prompts[i]), output_tokens=int(outputs[i])
        )
        for i in range(n)
    ]
    stub = MeasuredRun("stub", "synthetic", settings, Load(kind="open"), pd.DataFrame())
    perf = resolve_pool(pool_config(stub, "calibrated", {"profile": str(profile)}), Catalog.default()).perf
    sched = ReferenceScheduler(
        EngineLimits(num_blocks=200_000, max_num_seqs=128, max_num_batched_tokens=2048, max_model_len=4096)
    )
    tokens: dict[int, list[float]] = {r.id: [] for r in reqs}
    now, nxt = 0.0, 0
    while nxt < n or sched.has_work():
        if not sched.has_work():
            now = max(now, reqs[nxt].arrival_s)
        while nxt < n and reqs[nxt].arrival_s <= now:
            sched.add(SeqState(reqs[nxt]))
            nxt += 1
        plan = sched.schedule()
        before = [s.num_output for s in plan.seqs]
        end = now + perf.step_time(plan.batch)
        sched.finish_step(plan, now, end)
        for seq, had in zip(plan.seqs, before, strict=True):
            if seq.num_output > had:
                tokens[seq.req.id].append(end)
        now = end
    rows = []
    for r in reqs:
        times = np.array(tokens[r.id])
        gaps = np.diff(times) * rng.lognormal(0, noise, len(times) - 1)
        for k in np.flatnonzero(rng.random(len(gaps) - 1) < 0.02):
            gaps[k + 1] += gaps[k]
            gaps[k] = 0.0
        rows.append(
            {
                "prompt_tokens": r.prompt_tokens,
                "output_tokens": r.output_tokens,
                "arrival_s": r.arrival_s,
                "ttft_s": times[0] - r.arrival_s,
                "e2e_s": times[0] - r.arrival_s + gaps.sum(),
                "itl_s": gaps.tolist(),
            }
        )
    return MeasuredRun(f"{model}-tp{tp}-{rate}", "synthetic", settings, Load(kind="open"), pd.DataFrame(rows))


@pytest.fixture(scope="module")
def timed_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("steps")
    truth = _profile(tmp, TRUTH, "truth")
    runs = [
        engine_timed_run(truth, model=m, tp=tp, rate=rate, n=150, seed=i)
        for i, (m, tp, rate) in enumerate(
            [
                ("llama-3-8b", 1, 4.0),
                ("llama-3-8b", 1, 12.0),
                ("llama-3-70b", 4, 2.0),
                ("llama-3-70b", 2, 3.0),
            ]
        )
    ]
    return tmp, runs


def test_step_table_rebuilds_the_engine_batches(timed_runs):
    _, runs = timed_runs
    table = step_table(runs[1])
    assert table.total_gaps > 3000
    assert table.batch.min() >= 1 and table.batch.max() > 10  # the busy run batches many sequences
    assert np.all(np.diff(table.gap_s[np.argsort(table.batch)]) > -0.5 * table.gap_s.max())


def test_per_step_fit_recovers_the_decode_costs(timed_runs):
    tmp, runs = timed_runs
    start = load_profile(str(_profile(tmp, START, "start")))
    fit = fit_steps(runs, start)
    assert set(fit.fitted) == set(TRUTH), fit.held
    for name, value in TRUTH.items():
        assert fit.fitted[name] == pytest.approx(value, rel=0.2), (name, fit.fitted, fit.rse)
    assert max(fit.in_sample.values()) < 0.05
    assert max(fit.loro.values()) < 0.08
    record = fit.record()
    assert record["runs"] == 4 and record["token_gaps"] > 10_000
    assert fit.profile.engine_costs.step_fixed_s == fit.fitted["step_fixed_s"]


def test_step_table_takes_one_token_requests_and_leaves_out_prefill_steps():
    """Two requests decode together; a third, with one output token, prefills in the step that ends at 0.15 s:
    that step is left out of both decoders' gaps, and the third's lack of gaps is no error."""
    df = pd.DataFrame(
        {
            "prompt_tokens": [100, 200, 50],
            "output_tokens": [21, 21, 1],
            "arrival_s": [0.0, 0.0, 0.1],
            "ttft_s": [0.05, 0.05, 0.05],
            "itl_s": [[0.01] * 20, [0.01] * 20, []],
        }
    )
    settings = ServerSettings(model="llama-3-8b", gpu="h100-80g")
    table = step_table(MeasuredRun("tiny", "synthetic", settings, Load(kind="open"), df))
    assert table.batch.tolist() == [2]
    assert table.total_gaps == 2 * 20 - 2
    assert table.gap_s[0] == pytest.approx(0.01)


def test_a_single_tp_degree_cannot_pin_the_worker_cost(timed_runs):
    tmp, runs = timed_runs
    fit = fit_steps(runs[:2], load_profile(str(_profile(tmp, START, "start"))))
    assert "tp_worker_s" not in fit.fitted
    assert "two TP degrees" in fit.held["tp_worker_s"] and "Pinned by" in fit.held["tp_worker_s"]
    assert fit.fitted["step_per_seq_s"] == pytest.approx(TRUTH["step_per_seq_s"], rel=0.25)


def test_runs_without_token_times_are_refused_with_what_would_do():
    run = MeasuredRun(
        "agg",
        "synthetic",
        ServerSettings(model="llama-3-8b", gpu="h100-80g"),
        Load(kind="open"),
        pd.DataFrame({"prompt_tokens": [10], "output_tokens": [5], "arrival_s": [0.0], "ttft_s": [0.1]}),
    )
    assert not has_token_times(run)
    with pytest.raises(ConfigError, match="itls"):
        fit_steps([run], load_profile("h100-vllm-v1"))


def _bench_json(run: MeasuredRun, path: Path) -> Path:
    df = run.requests
    doc = {
        "backend": "vllm",
        "completed": len(df),
        "request_rate": 4.0,
        "input_lens": df.prompt_tokens.tolist(),
        "output_lens": df.output_tokens.tolist(),
        "ttfts": df.ttft_s.tolist(),
        "itls": df.itl_s.tolist(),
        "start_times": df.arrival_s.tolist(),
    }
    path.write_text(json.dumps(doc))
    return path


def test_vllm_bench_reader_keeps_token_times_and_fit_uses_them(timed_runs, capsys):
    tmp, runs = timed_runs
    settings = tmp / "settings.yaml"
    settings.write_text(
        "model: llama-3-8b\ngpu: h100-80g\ntp: 1\nengine: {max_num_seqs: 128, max_num_batched_tokens: 2048}\n"
    )
    files = [_bench_json(r, tmp / f"bench-{i}.json") for i, r in enumerate(runs[:2])]
    read = [run for f in files for run in read_runs(f, settings=settings, fmt="vllm-bench")]
    assert all(has_token_times(r) for r in read)
    assert read[0].requests.itl_s.map(len).sum() == runs[0].requests.itl_s.map(len).sum()
    out = tmp / "fitted.yaml"
    start = _profile(tmp, START, "start")
    code = main(
        [
            "data",
            "calibrate",
            "fit",
            *map(str, files),
            "--settings",
            str(settings),
            "--base",
            str(start),
            "--out",
            str(out),
            "--no-loro",
            "--workers",
            "1",
        ]
    )
    assert code == 0
    text = capsys.readouterr()
    assert "per step" in text.out
    profile = load_profile(str(out))
    assert "per_step" in profile.fit["engine"]
    assert profile.engine_costs.step_per_seq_s == pytest.approx(TRUTH["step_per_seq_s"], rel=0.25)
