"""A measured serving run, whatever tool measured it: the server's settings, the load it was given, and what
the client measured (per request where the tool kept it, else aggregates).

Every reader (``sim/calibration/readers``) turns a tool's output plus a small settings YAML into a
``MeasuredRun``; the replay (``sim/calibration/replay.py``) simulates it; the fit and the validation report
compare the two with ``metrics()``.

Settings YAML (one per run or per folder of runs), vLLM's argument names::

    model: llama-3-70b          # catalog id
    gpu: h100-80g               # catalog id
    tp: 2
    replicas: 1                 # servers behind one endpoint (requests spread round-robin)
    dtype: bf16                 # bf16 | fp8 (weights)
    kv_cache_dtype: bf16        # bf16 | fp8
    engine_version: "0.8.5"     # vLLM version, where known
    engine:                     # vLLM engine arguments (EngineConfig); omitted ones take vLLM's defaults
      max_num_seqs: 128
      max_num_batched_tokens: 2048
      enable_prefix_caching: false
      enforce_eager: false
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, PositiveInt

from fleettwin.models.base import StrictModel
from fleettwin.models.config import EngineConfig

# Metric names, as reported: "<quantity>_<statistic>" with quantity ttft/tpot/e2e/itl (seconds) and statistic
# mean/p50/p90/p99.
QUANTITIES = ("ttft", "tpot", "e2e")
STATISTICS = ("mean", "p50", "p90", "p99")
METRICS = tuple(f"{q}_{s}" for q in QUANTITIES for s in STATISTICS)


class RunEngine(EngineConfig):
    """EngineConfig plus the engine arguments that change timing but not scheduling. Batch limits left out
    take the defaults of the run's vLLM version on its GPU (``vllm_batch_defaults``); prefix caching is on, as
    in V1."""

    enforce_eager: bool = False
    max_num_seqs: PositiveInt | None = None  # type: ignore[assignment]
    max_num_batched_tokens: PositiveInt | None = None  # type: ignore[assignment]
    enable_prefix_caching: bool = True


def vllm_batch_defaults(gpu: str, version: str) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) an OpenAI-compatible vLLM V1 server picks when not told:
    2048/256 up to 0.8; from 0.9 on, 8192/1024 on GPUs of >= 70 GiB other than the A100, else 2048/256
    (vllm/engine/arg_utils.py, get_batch_defaults). An unknown version is taken as recent."""
    parts = version.split(".")
    try:
        major, minor = int(parts[0]), int(parts[1])
    except (ValueError, IndexError):
        major, minor = 1, 0
    old = (major, minor) < (0, 9)
    if old or gpu.startswith("a100") or gpu in ("l4", "l40s", "a100-40g"):
        return 2048, 256
    return 8192, 1024


class ServerSettings(StrictModel):
    model: str
    gpu: str
    tp: PositiveInt = 1
    replicas: PositiveInt = 1
    dtype: Literal["bf16", "fp8"] = "bf16"
    kv_cache_dtype: Literal["bf16", "fp8"] = "bf16"
    engine_version: str = ""
    engine: RunEngine = RunEngine()

    def engine_args(self) -> dict:
        """EngineConfig arguments with the version's defaults filled in (``enforce_eager`` left out: it is a
        performance-model parameter)."""
        tokens, seqs = vllm_batch_defaults(self.gpu, self.engine_version)
        args = self.engine.model_dump(exclude={"enforce_eager"})
        args["max_num_batched_tokens"] = args["max_num_batched_tokens"] or tokens
        args["max_num_seqs"] = args["max_num_seqs"] or seqs
        args.update(dtype=self.dtype, kv_cache_dtype=self.kv_cache_dtype)
        return args


class Load(StrictModel):
    """How requests were sent.

    - ``open``: at the recorded arrival times (``requests.arrival_s``), or, without them, a Poisson stream at
      ``rate`` (``constant`` spacing when ``arrival: constant``) over the recorded request lengths;
    - ``closed``: ``concurrency`` clients, each sending its next request when the previous one ends;
    - ``batch``: everything at t = 0 (an offline or rate=inf run).
    """

    kind: Literal["open", "closed", "batch"]
    rate: float | None = Field(None, gt=0)
    arrival: Literal["recorded", "poisson", "constant"] = "recorded"
    concurrency: PositiveInt | None = None
    requests: PositiveInt | None = None  # closed loop without per-request data: how many to simulate
    warmup_requests: int = Field(0, ge=0)  # closed loop: the first ones are not measured (the start-up wave)
    api_server: bool = True  # False: offline (vLLM's LLM class, no HTTP front end in the measured latency)


@dataclass(frozen=True, slots=True)
class MeasuredRun:
    """``requests`` columns: prompt_tokens, output_tokens (always); arrival_s (open loop with recorded times);
    ttft_s, e2e_s (where measured per request). ``reported`` holds aggregates the tool printed, by METRICS
    name, for runs without per-request data (they are used as is, never recomputed)."""

    name: str
    source: str
    settings: ServerSettings
    load: Load
    requests: pd.DataFrame
    reported: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    unfitted: tuple[
        str, ...
    ] = ()  # metrics shown in validation but not fitted on (a protocol we cannot replay)

    def metrics(self) -> dict[str, float]:
        """The measured metrics: computed from the per-request columns where they exist, else as reported."""
        out = dict(self.reported)
        if {"ttft_s", "e2e_s"} <= set(self.requests.columns):
            out.update(request_metrics(self.requests))
        return {k: v for k, v in out.items() if v is not None and math.isfinite(v)}

    @property
    def key(self) -> str:
        """Unique within a corpus: two deployments may name their runs alike."""
        return f"{self.group}/{self.name}"

    @property
    def group(self) -> str:
        """The deployment: runs of one (GPU, model, TP, dtype, replicas) from one source.
        Leave-one-deployment-out keeps them together, and a fit weighs each deployment equally."""
        s = self.settings
        origin = self.source.split()[0].split(":")[
            0
        ]  # "llm-d/llm-d-benchmark @ ..." -> "llm-d/llm-d-benchmark"
        return f"{origin}:{s.gpu}:{s.model}:tp{s.tp}:{s.dtype}:x{s.replicas}"


def request_metrics(df: pd.DataFrame) -> dict[str, float]:
    """METRICS from per-request ttft_s / e2e_s / output_tokens (TPOT over requests with more than one
    token)."""
    out: dict[str, float] = {}
    multi = df["output_tokens"] > 1
    tpot = (df.loc[multi, "e2e_s"] - df.loc[multi, "ttft_s"]) / (df.loc[multi, "output_tokens"] - 1)
    for name, values in (("ttft", df["ttft_s"]), ("tpot", tpot), ("e2e", df["e2e_s"])):
        v = values.to_numpy(float)
        v = v[np.isfinite(v)]
        if len(v) == 0:
            continue
        out[f"{name}_mean"] = float(v.mean())
        for q in (50, 90, 99):
            out[f"{name}_p{q}"] = float(np.percentile(v, q))
    return out
