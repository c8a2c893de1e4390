"""fleettwin and Vidur side by side on the same requests: latency percentiles, their differences, and wall
time.

Setup (Vidur's defaults for its ``vllm`` replica scheduler, which fleettwin is configured to match):
- Llama-2-7B on one A100 80 GB, TP1; Vidur's measured MLP/network tables and the peer kit's synthetic
  attention table (``/work/shared/peers/vidur/make_profile_cache.py``). fleettwin's ``profiled`` model reads
  the *same* attention.csv.xz that Vidur trains on, no decode batching overhead (Vidur applies its 0.1 to GQA
  models only; Llama-2-7B is not one), no CPU overhead and no LM head (Vidur models neither), so that
  differences come from scheduling, not from inputs.
- KV cache: 7,424 blocks of 16 (what Vidur's MemoryPlanner computes: 80 GiB x 0.9 less weights, rounded down
  to whole 4,096-token request slots); batch cap 128 sequences; 4,096 tokens per iteration; no chunked
  prefill.
- One request list, fed identically to both: lengths from the Azure 2023 conversation trace (rows in order,
  prompt+output clipped to 4,096 tokens the way Vidur's trace generators do), Poisson arrivals at each QPS.
  Vidur reads it through its ``trace_replay`` generator.

Run (several minutes: each Vidur run is about a minute per 10k requests; the first one also trains its
random-forest predictors for ~20 s):

    VIDUR_VENV=/work/vidur-venv .venv/bin/python benchmarks/vs_vidur.py --requests 4000 --qps 1,2,3,4,6

The venv comes from ``/work/shared/peers/vidur/setup.sh /work/vidur-venv``. ``--work`` (default
``/tmp/fleettwin-vs-vidur``) holds Vidur's cache, the request files and its outputs.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from fleettwin.models.catalog import Catalog
from fleettwin.models.engine.queue import EngineLimits
from fleettwin.models.engine.reference_scheduler import ReferenceScheduler
from fleettwin.models.engine.resolve import PoolSpec
from fleettwin.models.perf.base import BatchStats
from fleettwin.models.perf.profiled import ProfiledModel
from fleettwin.models.workload.request import Request
from fleettwin.models.workload.traces import read_azure_csv
from fleettwin.sim.runner import simulate

REPO = Path(__file__).resolve().parents[1]
PEER_KIT = Path(os.environ.get("VIDUR_KIT", "/work/shared/peers/vidur"))
TRACE = REPO / "traces" / "azure2023_conv" / "AzureLLMInferenceTrace_conv.csv"
MAX_TOKENS = 4096  # Vidur's request max_tokens (prompt + output) and the model's max_model_len
VIDUR_NUM_BLOCKS = 7424  # vidur.utils.memory_planner for Llama-2-7B on a100: 122,752 tokens -> 29 slots x 256
VIDUR_BATCH_CAP = 128  # VllmSchedulerConfig.batch_size_cap
VIDUR_MAX_TOKENS_IN_BATCH = 4096  # VllmSchedulerConfig.max_tokens_in_batch
ATTENTION_XZ = (
    "profiling_data/compute/datasets--project-vajra--dev-staging-meta-llama-llama-2-7b-hf-a100/"
    "snapshots/" + "0" * 40 + "/attention.csv.xz"
)


def vidur_python() -> Path:
    return Path(os.environ.get("VIDUR_VENV", "/work/vidur-venv")) / "bin" / "python"


def vidur_available() -> bool:
    py = vidur_python()
    return (
        py.exists()
        and (PEER_KIT / "make_profile_cache.py").exists()
        and subprocess.run([str(py), "-c", "import vidur"], capture_output=True).returncode == 0
    )


# ------------------------------------------------------------------------------------------------ inputs


def trace_lengths(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` (prompt, output) pairs of the Azure conversation trace, clipped to ``MAX_TOKENS`` in
    total by taking the excess from both in proportion (Vidur's TraceRequestLengthGenerator rule)."""
    t = read_azure_csv(TRACE)
    if n > len(t.prompt_tokens):
        raise ValueError(f"the trace has {len(t.prompt_tokens)} rows, asked for {n}")
    p = t.prompt_tokens[:n].astype(np.int64)
    o = t.output_tokens[:n].astype(np.int64)
    excess = np.clip(p + o - MAX_TOKENS, 0, None)
    total = p + o
    p = np.clip(p - np.ceil(excess * p / total).astype(np.int64), 1, None)
    o = np.clip(o - np.ceil(excess * o / total).astype(np.int64), 1, None)
    return p, o


def make_requests(n: int, qps: float, seed: int) -> list[Request]:
    prompts, outputs = trace_lengths(n)
    arrivals = np.cumsum(np.random.default_rng([seed, int(qps * 1000)]).exponential(1.0 / qps, n))
    arrivals = np.round(arrivals, 6)  # what the CSV for Vidur holds, so both see the same instants
    return [
        Request(
            id=i, arrival_s=float(arrivals[i]), prompt_tokens=int(prompts[i]), output_tokens=int(outputs[i])
        )
        for i in range(n)
    ]


def write_vidur_trace(requests: list[Request], path: Path) -> None:
    pd.DataFrame(
        {
            "Date": "2023-11-16",
            "Time": [f"{r.arrival_s:.6f}" for r in requests],
            "PromptTokenCount": [r.prompt_tokens for r in requests],
            "CompletionTokenCount": [r.output_tokens for r in requests],
        }
    ).to_csv(path, index=False)


# ------------------------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class RunResult:
    ttft: np.ndarray  # seconds, in request order
    e2e: np.ndarray
    wall_s: float
    restarts: int  # preemptions (fleettwin) / restarts (Vidur)


def ensure_vidur_cache(work: Path) -> Path:
    cache = work / ".vidur_cache"
    if not (cache / "profiling_data").exists():
        subprocess.run(
            [str(vidur_python()), str(PEER_KIT / "make_profile_cache.py"), str(cache)],
            check=True,
            capture_output=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    return cache / ATTENTION_XZ


# Vidur 0.0.26's Request.restart() (recompute preemption in its vllm scheduler) resets the request's processed
# tokens but not its per-stage counterpart, so the first restarted request that re-prefills trips ``assert
# self._num_stage_processed_tokens <= self.total_tokens`` and the run dies. The fix resets the two stage
# fields restart() forgets; nothing else in Vidur changes. docs/validation.md has the details.
_VIDUR_RESTART_FIX = """
import runpy, sys
from vidur.entities.request import Request
_restart = Request.restart
def restart(self):
    _restart(self)
    self._num_stage_processed_tokens = 0
    self._is_prefill_stage_complete = False
Request.restart = restart
sys.argv[0] = "vidur.main"
runpy.run_module("vidur.main", run_name="__main__")
"""
_VIDUR_PLAIN = (
    'import runpy, sys; sys.argv[0] = "vidur.main"; runpy.run_module("vidur.main", run_name="__main__")'
)


def run_vidur(requests: list[Request], work: Path, tag: str, fix_restart: bool = True) -> RunResult:
    ensure_vidur_cache(work)
    trace = work / f"requests_{tag}.csv"
    write_vidur_trace(requests, trace)
    out = work / f"out_{tag}"
    p = "random_forrest_execution_time_predictor_config"
    args = [
        str(vidur_python()),
        "-c",
        _VIDUR_RESTART_FIX if fix_restart else _VIDUR_PLAIN,
        "--seed",
        "42",
        "--replica_config_device",
        "a100",
        "--replica_config_network_device",
        "a100_dgx",
        "--replica_config_model_name",
        "meta-llama/Llama-2-7b-hf",
        "--replica_config_tensor_parallel_size",
        "1",
        "--replica_config_num_pipeline_stages",
        "1",
        "--cluster_config_num_replicas",
        "1",
        "--global_scheduler_config_type",
        "round_robin",
        "--execution_time_predictor_config_type",
        "random_forrest",
        f"--{p}_model_profiling_dataset",
        "project-vajra/dev-staging-meta-llama-llama-2-7b-hf-a100",
        f"--{p}_network_profiling_dataset",
        "project-vajra/dev-staging-a100-dgx",
        f"--{p}_prediction_max_tokens_per_request",
        "8192",
        f"--{p}_num_estimators",
        "100",
        f"--{p}_max_depth",
        "16",
        f"--{p}_min_samples_split",
        "2",
        "--request_generator_config_type",
        "trace_replay",
        "--trace_request_generator_config_trace_file",
        str(trace),
        "--trace_request_generator_config_date",
        "2023-11-16",
        "--trace_request_generator_config_prefill_scale_factor",
        "1",
        "--trace_request_generator_config_decode_scale_factor",
        "1",
        "--trace_request_generator_config_time_scale_factor",
        "1",
        "--trace_request_generator_config_max_tokens",
        str(MAX_TOKENS),
        "--cache_config_num_blocks",
        str(VIDUR_NUM_BLOCKS),
        "--replica_scheduler_config_type",
        "vllm",
        "--vllm_scheduler_config_batch_size_cap",
        str(VIDUR_BATCH_CAP),
        "--vllm_scheduler_config_max_tokens_in_batch",
        str(VIDUR_MAX_TOKENS_IN_BATCH),
        "--metrics_config_output_dir",
        str(out),
        "--no-metrics_config_store_plots",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"vidur failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    metrics = sorted(out.glob("*/request_metrics.csv"))[-1]
    df = pd.read_csv(metrics).sort_values("Request Id")
    if len(df) != len(requests):
        raise RuntimeError(f"vidur reported {len(df)} of {len(requests)} requests")
    return RunResult(
        ttft=df["prefill_e2e_time"].to_numpy(),
        e2e=df["request_e2e_time"].to_numpy(),
        wall_s=wall,
        restarts=int(df["request_num_restarts"].sum()),
    )


def fleettwin_model(attention_table: Path | None) -> ProfiledModel:
    """The profiled model fed exactly what Vidur is fed, and modelling what Vidur models."""
    cat = Catalog.default()
    params = ProfiledModel.Params(
        overhead_s=0.0,
        lm_head=False,
        decode_batching_overhead=0.0,
        attention_table=str(attention_table) if attention_table else None,
    )
    return ProfiledModel(params, gpu=cat.gpu("a100-80g"), llm=cat.llm("llama-2-7b"), tp=1)


def vidur_limits() -> EngineLimits:
    return EngineLimits(
        num_blocks=VIDUR_NUM_BLOCKS,
        block_size=16,
        max_num_seqs=VIDUR_BATCH_CAP,
        max_num_batched_tokens=VIDUR_MAX_TOKENS_IN_BATCH,
        max_model_len=MAX_TOKENS,
        enable_chunked_prefill=False,
    )


class VidurV0Scheduler(ReferenceScheduler):
    """Experiment only: Vidur's ``vllm`` replica scheduler (vLLM V0 without chunked prefill) on top of
    fleettwin's bookkeeping. An iteration is prefill-only when the waiting head fits (token budget, batch cap,
    KV blocks above a 1 % watermark), else decode-only; fleettwin's own scheduler (vLLM V1) mixes both. Built
    on the plain reference scheduler, so it runs in ``per_iteration`` mode."""

    WATERMARK = 0.01  # vidur CacheConfig.watermark_blocks_fraction

    def schedule(self):
        lim, running, waiting = self.limits, self.running, self.waiting
        head = waiting[0] if waiting else None
        fits = (
            head is not None
            and len(running) < lim.max_num_seqs
            and (
                head.num_tokens <= lim.max_num_batched_tokens
                and -(-head.num_tokens // lim.block_size)
                <= self.free_blocks - int(self.WATERMARK * lim.num_blocks)
            )
        )
        if fits:  # admit waiting requests only: hide the running ones and their share of the batch cap
            self.running, self.limits = [], replace(lim, max_num_seqs=lim.max_num_seqs - len(running))
            try:
                plan = super().schedule()
            finally:
                self.running, self.limits = running + self.running, lim
            plan.decode_only = False
            return plan
        self.waiting = deque()  # decode-only: nobody is admitted alongside
        try:
            plan = super().schedule()
        finally:
            self.waiting.extend(waiting)  # recompute-preempted requests (if any) go first, as in both
        return plan


def run_fleettwin(
    requests: list[Request], perf: ProfiledModel, mode: str = "skip", v0: bool = False
) -> RunResult:
    from fleettwin.sim import runner

    original = runner.ReferenceScheduler
    runner.ReferenceScheduler = VidurV0Scheduler if v0 else original
    t0 = time.perf_counter()
    try:
        raw = simulate(
            requests, [PoolSpec("a100", vidur_limits(), perf)], mode="per_iteration" if v0 else mode
        )
    finally:
        runner.ReferenceScheduler = original
    wall = time.perf_counter() - t0
    df = raw.requests.sort_values("id")
    ttft = (df["first_token_s"] - df["arrival_s"]).to_numpy()
    e2e = (df["finish_s"] - df["arrival_s"]).to_numpy()
    restarts = int(df["preemptions"].sum()) if "preemptions" in df else -1
    return RunResult(ttft=ttft, e2e=e2e, wall_s=wall, restarts=restarts)


# --------------------------------------------------------------------------- step times on identical batches

_VIDUR_STEPS = """
import json, sys
from vidur.config import ReplicaConfig, CacheConfig, RandomForrestExecutionTimePredictorConfig
from vidur.execution_time_predictor.random_forrest_execution_time_predictor import (
    RandomForrestExecutionTimePredictor)
from vidur.entities import Batch
cfg = RandomForrestExecutionTimePredictorConfig(
    model_profiling_dataset="project-vajra/dev-staging-meta-llama-llama-2-7b-hf-a100",
    network_profiling_dataset="project-vajra/dev-staging-a100-dgx",
    prediction_max_tokens_per_request=8192, num_estimators=[100], max_depth=[16], min_samples_split=[2])
replica = ReplicaConfig(model_name="meta-llama/Llama-2-7b-hf", device="a100", network_device="a100_dgx",
                        tensor_parallel_size=1, num_pipeline_stages=1)
pred = RandomForrestExecutionTimePredictor(cfg, replica, CacheConfig(num_blocks=NUM_BLOCKS))
print(json.dumps([pred.get_execution_time(Batch(0, [None] * len(q), q, kv), 0).total_time
                  for q, kv in json.load(sys.stdin)]))
""".replace("NUM_BLOCKS", str(VIDUR_NUM_BLOCKS))


def step_time_check(work: Path) -> str:
    """Both predictors on the same batches (Vidur's own predictor object, loaded from its cache): the
    per-iteration difference that comes from lookup conventions, not scheduling."""
    import json

    model = fleettwin_model(ensure_vidur_cache(work))
    cases = [([n], [n]) for n in (17, 100, 500, 1000, 2000, 4000)] + [([300, 700], [300, 700])]
    cases += [([1] * s, [ctx + 1] * s) for s in (1, 8, 32, 128) for ctx in (200, 1000, 3000)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [str(vidur_python()), "-c", _VIDUR_STEPS],
        input=json.dumps(cases),
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    lines = ["| batch | fleettwin (ms) | Vidur (ms) | diff |", "|---|---|---|---|"]
    for (q, kv), t_vidur in zip(cases, theirs, strict=True):
        batch = BatchStats()
        for nq, nkv in zip(q, kv, strict=True):  # Vidur's num_kv_tokens counts the tokens being computed
            batch.add_decode(nkv - 1) if nq == 1 else batch.add_prefill(nq, nkv - nq)
        t_ft = model.step_time(batch)
        what = (
            f"{len(q)} decodes at context {kv[0] - 1}"
            if q[0] == 1
            else f"prefill of {' + '.join(map(str, q))}"
        )
        lines.append(f"| {what} | {t_ft * 1e3:.2f} | {t_vidur * 1e3:.2f} | {t_ft / t_vidur - 1:+.1%} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- report


def compare(n: int, qps: float, seed: int, work: Path, fix_restart: bool = True) -> dict:
    requests = make_requests(n, qps, seed)
    attention = ensure_vidur_cache(work)
    ours = run_fleettwin(requests, fleettwin_model(attention))
    theirs = run_vidur(requests, work, tag=f"n{n}_qps{qps:g}_s{seed}", fix_restart=fix_restart)
    row = {"qps": qps, "requests": n}
    for metric in ("ttft", "e2e"):
        for q in (50, 95):
            a = float(np.percentile(getattr(ours, metric), q))
            b = float(np.percentile(getattr(theirs, metric), q))
            row[f"{metric}_p{q}_ft"], row[f"{metric}_p{q}_vidur"] = a, b
            row[f"{metric}_p{q}_diff"] = a / b - 1 if b > 0 else math.nan
    row.update(
        ft_wall_s=ours.wall_s,
        vidur_wall_s=theirs.wall_s,
        ft_preempt=ours.restarts,
        vidur_restarts=theirs.restarts,
        speed_ratio=theirs.wall_s / ours.wall_s,
        ft_req_per_s=n / ours.wall_s,
        vidur_req_per_s=n / theirs.wall_s,
    )
    return row


def markdown(rows: list[dict]) -> str:
    head = (
        "| QPS | TTFT p50 ft / vidur (s) | diff | TTFT p95 ft / vidur (s) | diff | E2E p50 ft / vidur (s) | "
        "diff | E2E p95 ft / vidur (s) | diff | preempt ft / vidur | wall ft / vidur (s) | req/s ft / vidur "
        "| speed |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        cells = [f"{r['qps']:g}"]
        for m in ("ttft_p50", "ttft_p95", "e2e_p50", "e2e_p95"):
            cells += [f"{r[m + '_ft']:.3f} / {r[m + '_vidur']:.3f}", f"{r[m + '_diff']:+.1%}"]
        cells += [
            f"{r['ft_preempt']} / {r['vidur_restarts']}",
            f"{r['ft_wall_s']:.2f} / {r['vidur_wall_s']:.1f}",
            f"{r['ft_req_per_s']:,.0f} / {r['vidur_req_per_s']:,.0f}",
            f"{r['speed_ratio']:.0f}x",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--qps", default="1,2,3,4,6", help="comma-separated loads, light to saturated")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/fleettwin-vs-vidur"))
    ap.add_argument("--csv", type=Path, help="also write the rows here")
    ap.add_argument(
        "--unpatched-vidur",
        action="store_true",
        help="run Vidur without the restart() fix (it crashes once a request is preempted)",
    )
    args = ap.parse_args(argv)
    if not vidur_available():
        print(
            f"Vidur not found at {vidur_python()} (set VIDUR_VENV; see {PEER_KIT}/README.md)", file=sys.stderr
        )
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    # Vidur trains its predictors on first use and caches them; a warm-up keeps that out of the timings, and a
    # second tiny run measures its fixed start-up cost (imports, loading the cached predictions).
    warm = make_requests(50, 1.0, args.seed)
    run_vidur(warm, args.work, tag="warmup")
    startup = run_vidur(warm, args.work, tag="startup").wall_s
    print(f"vidur start-up (50 requests): {startup:.1f} s wall", file=sys.stderr, flush=True)
    print("Step times of identical batches:\n")
    print(step_time_check(args.work) + "\n", flush=True)
    rows = []
    for qps in [float(x) for x in re.split(r"[ ,]+", args.qps.strip()) if x]:
        rows.append(compare(args.requests, qps, args.seed, args.work, fix_restart=not args.unpatched_vidur))
        print(f"qps {qps:g} done: speed {rows[-1]['speed_ratio']:.0f}x", file=sys.stderr, flush=True)
    print(markdown(rows))
    print(f"\nVidur start-up, measured on a 50-request run and included in its wall times: {startup:.1f} s")
    if args.csv:
        pd.DataFrame(rows).to_csv(args.csv, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
