"""Fitting: kernel laws recover known coefficients from synthetic tables; the engine fit recovers known engine
costs from runs the simulator itself generated (with noise); a coefficient the runs cannot pin is reported,
never silently returned; leave-one-run-out; bad run files and contradicting settings are one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fleettwin.cli import main
from fleettwin.models.errors import ConfigError
from fleettwin.models.perf.kernel_fit import fit_decode_attention, fit_gemm
from fleettwin.models.perf.kernels import DecodeAttentionLaw, GemmLaw
from fleettwin.models.perf.profile import load_profile
from fleettwin.sim.calibration.fit import fit_profile
from fleettwin.sim.calibration.readers import native, read_runs
from fleettwin.sim.calibration.replay import replay
from fleettwin.sim.calibration.runs import Load, MeasuredRun, ServerSettings

RNG = np.random.default_rng(7)


def test_gemm_law_recovers_its_coefficients_from_a_noisy_table():
    truth = GemmLaw(fixed_s=4e-6, flops_per_s=7e14, bytes_per_s=2.5e12, p=2.5)
    grid = [
        (m, n, k)
        for m in (1, 8, 64, 256, 1024, 4096, 16384)
        for n in (1024, 4096, 16384)
        for k in (1024, 8192, 28672)
    ]
    m, n, k = (np.array(c, dtype=float) for c in zip(*grid, strict=True))
    table = pd.DataFrame(
        {"m": m, "n": n, "k": k, "latency": truth.time(m, n, k) * 1e3 * RNG.lognormal(0, 0.02, len(m))}
    )
    law = fit_gemm(table, 2.0).law
    assert law.fixed_s == pytest.approx(truth.fixed_s, rel=0.15)
    assert law.flops_per_s == pytest.approx(truth.flops_per_s, rel=0.05)
    assert law.bytes_per_s == pytest.approx(truth.bytes_per_s, rel=0.05)


def test_decode_attention_law_recovers_its_coefficients():
    truth = DecodeAttentionLaw(fixed_s=10e-6, per_seq_head_s=3e-9, bytes_per_s=2.8e12)
    rows = [
        (b, s, h, kv) for b in (1, 8, 64, 512) for s in (15, 255, 4095, 32767) for h, kv in ((32, 8), (64, 8))
    ]
    t = pd.DataFrame(rows, columns=["batch_size", "step", "num_heads", "num_key_value_heads"])
    t["head_dim"], t["kv_cache_dtype"], t["isl"] = 128, "bfloat16", 1
    kv = t.batch_size * (t.step + 1) * 2 * t.num_key_value_heads * 128 * 2.0
    t["latency"] = truth.time(t.batch_size, t.num_heads, kv) * 1e3 * RNG.lognormal(0, 0.02, len(t))
    law = fit_decode_attention(t, "bfloat16").law
    assert law.bytes_per_s == pytest.approx(truth.bytes_per_s, rel=0.05)
    assert law.per_seq_head_s == pytest.approx(truth.per_seq_head_s, rel=0.25)


# -- the engine fit, on runs the simulator generated with known costs ----------------------------------------

TRUTH = {"step_fixed_s": 2.5e-3, "gpu_time_scale": 1.15, "request_s": 0.03}
START = {"step_fixed_s": 1.0e-3, "gpu_time_scale": 1.0, "request_s": 0.005}


FIXED = {
    "step_per_seq_s": 1e-5,
    "step_per_prefill_s": 5e-5,
    "tp_worker_s": 1e-4,
    "layer_fixed_s": 8e-6,
    "fp8_gemm_scale": 1.0,
}  # the same in truth and start: independent of the shipped profile's values


def _profile(tmp_path: Path, values: dict[str, float], name: str) -> Path:
    base = load_profile("h100-vllm-v1")
    engine = base.engine_costs.model_copy(
        update={**FIXED, **{k: v for k, v in values.items() if k != "request_s"}}
    )
    front = base.frontend.model_copy(update={"request_s": values["request_s"], "per_prompt_token_s": 1e-6})
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        base.model_copy(update={"name": name, "engine_costs": engine, "frontend": front}).to_yaml()
    )
    return path


def synthetic_runs(truth_path: Path, noise: float = 0.02) -> list[MeasuredRun]:
    """Open-loop and closed-loop runs of two deployments, measured by replaying them under ``truth_path``."""
    runs = []
    for model, tp in (("llama-3-8b", 1), ("llama-3-70b", 4)):
        settings = ServerSettings(
            model=model, gpu="h100-80g", tp=tp, engine={"max_num_seqs": 128, "max_num_batched_tokens": 2048}
        )
        for kind, level in (("open", 3.0), ("closed", 4), ("closed", 48), ("batch", 0)):
            n = 60 if kind != "batch" else 16
            req = pd.DataFrame(
                {"prompt_tokens": RNG.integers(100, 1500, n), "output_tokens": RNG.integers(20, 300, n)}
            )
            if kind == "batch":  # long prompts together: TTFT is GPU prefill time, which pins gpu_time_scale
                req = pd.DataFrame({"prompt_tokens": [4000] * n, "output_tokens": [4] * n})
                load = Load(kind="batch")
            elif kind == "open":
                req["arrival_s"] = np.cumsum(RNG.exponential(1 / level, n))
                load = Load(kind="open")
            else:
                load = Load(kind="closed", concurrency=int(level))
            run = MeasuredRun(
                name=f"{model}-tp{tp}-{kind}-{level}",
                source="synthetic",
                settings=settings,
                load=load,
                requests=req,
            )
            sim = replay(run, "calibrated", {"profile": str(truth_path)})
            sim = sim.sort_values("id")
            req = req.assign(
                ttft_s=sim["ttft_s"].to_numpy() * RNG.lognormal(0, noise, n),
                e2e_s=sim["e2e_s"].to_numpy() * RNG.lognormal(0, noise, n),
            )
            if kind != "open":  # replayed from their lengths: the measured latencies are aggregates
                reported = {"ttft_mean": float(req.ttft_s.mean()), "e2e_mean": float(req.e2e_s.mean())}
                req = req[["prompt_tokens", "output_tokens"]]
                runs.append(MeasuredRun(run.name, "synthetic", settings, load, req, reported=reported))
            else:
                runs.append(MeasuredRun(run.name, "synthetic", settings, load, req))
    return runs


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fit")
    runs = synthetic_runs(_profile(tmp, TRUTH, "truth"))
    start = load_profile(str(_profile(tmp, START, "start")))
    return runs, fit_profile(runs, start, coefficients=list(TRUTH), workers=1, max_iterations=15)


def test_engine_fit_recovers_known_costs(fitted):
    _, res = fitted
    assert res.held == {}
    assert res.fitted["gpu_time_scale"] == pytest.approx(TRUTH["gpu_time_scale"], rel=0.05)
    assert res.fitted["step_fixed_s"] == pytest.approx(TRUTH["step_fixed_s"], rel=0.25)
    assert res.fitted["request_s"] == pytest.approx(TRUTH["request_s"], rel=0.25)
    assert res.profile.engine_costs.gpu_time_scale == res.fitted["gpu_time_scale"]


def test_leave_one_run_out_predicts_each_run_without_it(fitted):
    runs, res = fitted
    assert len(res.loro) == len(runs) and len(res.logo) == len(runs)
    for run, pred in zip(runs, res.loro, strict=True):
        measured = run.metrics()["e2e_mean"]
        assert pred["e2e_mean"] == pytest.approx(measured, rel=0.08), run.name


def test_a_coefficient_the_runs_cannot_pin_is_held_and_named(fitted):
    """Only TP1 runs: the per-TP-worker cost moves nothing, so it is reported with the data that would pin
    it."""
    runs = [r for r in fitted[0] if r.settings.tp == 1][:2]
    res = fit_profile(
        runs,
        load_profile("h100-vllm-v1"),
        coefficients=["gpu_time_scale", "tp_worker_s"],
        workers=1,
        max_iterations=6,
        loro=False,
    )
    assert "tp_worker_s" in res.held and "two or more TP degrees" in res.held["tp_worker_s"]
    assert "tp_worker_s" not in res.fitted
    assert res.profile.engine_costs.tp_worker_s == load_profile("h100-vllm-v1").engine_costs.tp_worker_s


# -- the CLI and bad input -----------------------------------------------------------------------------------


def test_calibrate_fit_cli_writes_a_profile_a_scenario_can_name(fitted, tmp_path, capsys):
    runs = fitted[0][:3]
    native.write(tmp_path / "runs.yaml", runs, source="synthetic")
    out = tmp_path / "mine.yaml"
    assert (
        main(
            [
                "calibrate",
                "fit",
                str(tmp_path / "runs.yaml"),
                "--out",
                str(out),
                "--workers",
                "1",
                "--coefficients",
                "gpu_time_scale",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "gpu_time_scale" in text and "leave-one-run-out error per run" in text
    prof = load_profile(str(out))
    assert prof.name == "mine" and prof.fit["engine"]["runs"] == 3
    assert main(["calibrate", "show", str(out)]) == 0


def test_prompts_longer_than_max_model_len_are_refused_naming_the_field(tmp_path):
    req = pd.DataFrame({"prompt_tokens": [3000], "output_tokens": [100]})
    run = MeasuredRun(
        "long",
        "t",
        ServerSettings(model="llama-3-8b", gpu="h100-80g", engine={"max_model_len": 2048}),
        Load(kind="batch"),
        req,
    )
    native.write(tmp_path / "runs.yaml", [run], source="t")
    with pytest.raises(
        ConfigError, match=r"runs.yaml: run long: settings.engine.max_model_len: 2048 is shorter"
    ):
        read_runs(tmp_path / "runs.yaml")


@pytest.mark.parametrize(
    "text, message",
    [
        ("source: x\nruns: []\n", "runs: List should have at least 1 item"),
        (
            "source: x\nruns:\n- name: a\n  settings: {model: llama-3-8b, gpu: h100-80g}\n  load: {kind: "
            "open}\n",
            "needs requests_file or lengths",
        ),
        (
            "source: x\nruns:\n- name: a\n  settings: {model: llama-9, gpu: h100-80g}\n  load: {kind: "
            "batch}\n  lengths: {prompt_tokens: 10, output_tokens: 10, count: 2}\n",
            "settings.model: unknown llm 'llama-9'",
        ),
    ],
)
def test_bad_run_files_are_one_line(tmp_path, text, message):
    path = tmp_path / "runs.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        read_runs(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_unknown_format_is_one_line(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"\x00\x01")
    with pytest.raises(ConfigError, match="unknown run format"):
        read_runs(path)
