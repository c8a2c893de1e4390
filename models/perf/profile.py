"""Calibration profiles: everything the calibrated performance model knows about one GPU type running one
engine (vLLM), as a documented YAML file.

A profile has three parts:

- ``kernels``: the kernel laws (``models/perf/kernels.py``) fitted on measured kernel timings of that GPU;
- ``engine_costs``: what a real engine pays per iteration besides the GPU kernels (CPU scheduling, input
  preparation, sampling, output processing, worker synchronisation) and the gaps between kernels;
- ``frontend``: the API server's cost per request (HTTP, tokenisation, detokenisation and streaming), so that
  simulated TTFT and E2E are what a client measures.

``engine_costs`` and ``frontend`` are fitted on end-to-end measured runs with the simulator in the loop
(``fleettwin data calibrate fit``); ``fit`` records how, on which runs, and how well (leave-one-run-out
errors). Built-in profiles live in ``models/data/profiles/`` (``fleettwin data calibrate show NAME`` prints
one); a scenario names one as ``perf_model: {name: calibrated, params: {profile: h100-vllm-v1}}`` or gives a
path.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from fleettwin.models.base import StrictFiniteModel
from fleettwin.models.errors import ConfigError
from fleettwin.models.perf.kernels import KernelLaws

PROFILE_DIR = "data/profiles"


class EngineCosts(StrictFiniteModel):
    """Per-iteration costs outside the measured kernels. Every coefficient is per GPU type (and engine major
    version), never per (model, TP): one fit carries over to models and TP degrees it was not fitted on."""

    step_fixed_s: float = Field(
        ge=0, description="CPU time of every iteration: schedule, prepare inputs, launch, update outputs"
    )
    step_per_seq_s: float = Field(
        ge=0,
        description="CPU time per sequence in the batch (input preparation, sampling, output processing)",
    )
    step_per_prefill_s: float = Field(
        0.0, ge=0, description="extra CPU time per prefill chunk (block-table and metadata set-up)"
    )
    tp_worker_s: float = Field(
        0.0,
        ge=0,
        description="per additional tensor-parallel worker: broadcasting the "
        "scheduler output and gathering results",
    )
    layer_fixed_s: float = Field(
        ge=0,
        description="per layer: the small kernels outside the laws (norms, "
        "rotary embedding, activation, residual adds) at their latency floor",
    )
    allreduce_scale: float = Field(
        1.0,
        gt=0,
        description="multiplier on the all-reduce curves, which time the collective alone: in a model vLLM "
        "fuses it with the residual add and RMSNorm that follow, and launches it inside the layer's CUDA "
        "graph",
    )
    gpu_time_scale: float = Field(
        1.0,
        gt=0,
        description="multiplier on the sum of kernel times: gaps between "
        "kernels, and kernels measured in isolation running slower in a model",
    )
    eager_layer_s: float = Field(
        0.0,
        ge=0,
        description="extra launch cost per layer when the engine runs without CUDA graphs (enforce_eager)",
    )
    kv_reserve_gb: float = Field(
        0.0,
        ge=0,
        description="GPU memory per GPU the engine keeps beyond the modelled "
        "activation reserve (CUDA-graph pool, communication buffers, allocator "
        "fragmentation): it comes out of the KV cache, which matters where a large "
        "model leaves little room",
    )
    fp8_gemm_scale: float = Field(
        1.0,
        gt=0,
        description="multiplier on the FP8 GEMM and MoE laws in a served "
        "model: the kernel tables quantise activations dynamically, FP8 checkpoints "
        "mostly carry static scales",
    )


class FrontEndCosts(StrictFiniteModel):
    """The OpenAI-compatible API server between the client and the engine, per request."""

    request_s: float = Field(
        0.0,
        ge=0,
        description="HTTP handling and hand-off to the engine, and streaming "
        "the first token back: added to TTFT (and so to E2E)",
    )
    per_prompt_token_s: float = Field(0.0, ge=0, description="tokenisation per prompt token, added to TTFT")


class CalibrationProfile(StrictFiniteModel):
    name: str
    gpu: str = Field(description="catalog GPU id this profile describes")
    engine: str = "vllm"
    engine_versions: str = Field("", description="engine versions of the data behind the fit")
    description: str = ""
    kernels: KernelLaws
    engine_costs: EngineCosts
    frontend: FrontEndCosts = FrontEndCosts()
    sources: list[str] = Field(default_factory=list, description="where the fitted data came from")
    fit: dict[str, Any] = Field(
        default_factory=dict,
        description="how the coefficients were fitted: method, "
        "runs, per-coefficient values and uncertainty, leave-one-run-out errors",
    )

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, width=110)


def builtin_profiles() -> list[str]:
    """Names of the profiles shipped with fleettwin."""
    folder = resources.files("fleettwin.models").joinpath(PROFILE_DIR)
    if not folder.is_dir():
        return []
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def default_profile_for(gpu_id: str) -> str | None:
    """The built-in profile a GPU uses by default (the one named ``<gpu family>-vllm-v1``), if any."""
    family = gpu_id.split("-")[0]  # h100-80g -> h100, h200 -> h200, a100-80g -> a100
    name = f"{family}-vllm-v1"
    if name in builtin_profiles() and gpu_id in _profile_gpus(name):
        return name
    return None


def _profile_gpus(name: str) -> tuple[str, ...]:
    prof = load_profile(name)
    return (prof.gpu, *prof.fit.get("also_for_gpus", []))


def parse_profile(data: Any, *, source: str) -> CalibrationProfile:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of calibration profile fields at the top level")
    try:
        return CalibrationProfile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{source}: {loc}: {err['msg']}") from None


@functools.cache
def load_profile(name_or_path: str) -> CalibrationProfile:
    """A built-in profile by name, or a profile YAML file by path (anything with a '/' or ending in .yaml)."""
    if name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path:
        path = Path(name_or_path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read calibration profile: {exc.strerror}") from None
        return parse_profile(yaml.safe_load(text), source=str(path))
    if name_or_path not in builtin_profiles():
        known = ", ".join(builtin_profiles()) or "none"
        raise ConfigError(f"unknown calibration profile {name_or_path!r}; built-in: {known} (or give a path)")
    text = resources.files("fleettwin.models").joinpath(f"{PROFILE_DIR}/{name_or_path}.yaml").read_text()
    return parse_profile(yaml.safe_load(text), source=f"built-in profile {name_or_path}")
