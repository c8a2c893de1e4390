"""The scenario file: one root config, validated on load and frozen afterwards.

Errors name the file, the field path and what was expected, e.g.
``configs/x.yaml: pools[0].engine.max_num_seqs: Input should be greater than 0 (got -1)``.
Names chosen from registries or catalogs (GPUs, models, routers, performance models, workload types) are
checked here too, so a typo fails before any simulation starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from fleettwin.models.config_base import PolicyRef, StrictModel
from fleettwin.models.config_failures import FailuresField
from fleettwin.models.config_jobs import JobsConfig
from fleettwin.models.config_regions import RegionsField
from fleettwin.models.config_retrieval import RetrievalConfig
from fleettwin.models.config_tenants import TenantsConfig
from fleettwin.models.errors import ConfigError, FleettwinError
from fleettwin.models.workload.workflows import WorkflowsConfig

M = TypeVar("M", bound=BaseModel)


class EngineConfig(StrictModel):
    """vLLM engine arguments of the same names."""

    max_num_seqs: PositiveInt = 256
    max_num_batched_tokens: PositiveInt = 8192
    block_size: PositiveInt = 16
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    enable_chunked_prefill: bool = True
    long_prefill_token_threshold: int = Field(0, ge=0)
    max_model_len: PositiveInt | None = None  # default: the model's context, capped by the KV cache
    num_gpu_blocks: PositiveInt | None = None  # like vLLM's num_gpu_blocks_override: pin the KV capacity
    enable_prefix_caching: bool = False  # vLLM's default is on; off here keeps older scenarios' results
    # Not a vLLM argument: host memory per replica that keeps evicted KV blocks for prefix reuse (a CPU offload
    # tier such as LMCache's max_local_cpu_size); prefix-cache capacity = GPU KV cache + this (sim/prefix_cache.py)
    kv_offload_gb: float = Field(0.0, ge=0, allow_inf_nan=False)
    # Order of the waiting queue (sim/waiting.py): fcfs (vLLM's default), wfq (weighted fair queueing by tenant
    # weight), priority (by tenant priority, lower first, as vLLM's --scheduling-policy priority)
    waiting_policy: Literal["fcfs", "wfq", "priority"] = "fcfs"
    # Storage precision of the weights (vLLM's dtype / --quantization fp8) and of the KV cache (--kv-cache-dtype):
    # FP8 halves weight and KV bytes (more KV blocks, faster decode) where the performance model supports it.
    dtype: Literal["bf16", "fp8"] = "bf16"
    kv_cache_dtype: Literal["bf16", "fp8"] = "bf16"


class PoolConfig(StrictModel):
    name: str
    gpu: str
    model: str
    replicas: PositiveInt
    tp: PositiveInt | None = None  # default: the smallest degree whose shards fit the GPU
    purchase: Literal["on_demand", "spot"] = "on_demand"
    engine: EngineConfig = EngineConfig()
    router: PolicyRef = PolicyRef(name="least_outstanding")
    central_queue: bool = False
    perf_model: PolicyRef = PolicyRef(name="auto")  # calibrated where the GPU has a built-in profile, else roofline

    @field_validator("router")
    @classmethod
    def _known_router(cls, v: PolicyRef) -> PolicyRef:
        from fleettwin.models.routing import REPLICA_ROUTERS

        v.check(REPLICA_ROUTERS)
        return v

    @field_validator("perf_model")
    @classmethod
    def _known_perf_model(cls, v: PolicyRef) -> PolicyRef:
        from fleettwin.models.perf import PERF_MODELS

        v.check(PERF_MODELS)
        return v


class WorkloadConfig(BaseModel):
    """``type`` picks a workload source; the other keys are that source's parameters."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _known_source(self) -> WorkloadConfig:
        from fleettwin.models.workload.sources import WORKLOADS

        PolicyRef(name=self.type, params=self.params).check(WORKLOADS)
        return self


class SloConfig(StrictModel):
    ttft_s: PositiveFloat = 2.0
    tpot_s: PositiveFloat = 0.2


class SimConfig(StrictModel):
    mode: Literal["skip", "per_iteration"] = "skip"  # per_iteration: one event per engine step (oracle)
    sample_interval_s: PositiveFloat = 1.0
    max_time_s: PositiveFloat | None = None  # stop here even if requests remain (they are reported)


class ProvisioningConfig(StrictModel):
    """How long new replicas take: GPU acquisition plus loading one weight shard per GPU."""

    acquire_s: float = Field(120.0, ge=0)
    storage_gbps: PositiveFloat = 2.0  # weight-load bandwidth per GPU, GB/s


class ControllerConfig(StrictModel):
    """A control loop that resizes inference pools by an allocator's decisions (see docs/allocation.md)."""

    allocator: PolicyRef
    interval_s: PositiveFloat = 60.0
    provisioning: ProvisioningConfig = ProvisioningConfig()
    gpu_limits: dict[str, PositiveInt] = Field(default_factory=dict)  # GPUs available per type (default 4096)
    # Seed the arrival-rate history with this many seconds from before t = 0 (rate_series workloads know them),
    # as a live controller has its metrics history; the first decision is then taken at t = 0.
    prior_history_s: float = Field(0.0, ge=0, allow_inf_nan=False)

    @field_validator("allocator")
    @classmethod
    def _known_allocator(cls, v: PolicyRef) -> PolicyRef:
        import fleettwin.models.allocators  # noqa: F401  (registers the allocators)
        from fleettwin.models.allocators.base import ALLOCATORS

        v.check(ALLOCATORS)
        return v


class CatalogOverrides(StrictModel):
    """Change or add catalog entries for this scenario, e.g. a negotiated price."""

    gpus: dict[str, dict[str, Any]] = Field(default_factory=dict)
    llms: dict[str, dict[str, Any]] = Field(default_factory=dict)


class ScenarioConfig(StrictModel):
    name: str
    description: str = ""
    seed: int = 0
    workload: WorkloadConfig
    pools: list[PoolConfig] = Field(min_length=1)
    slo: SloConfig = SloConfig()
    sim: SimConfig = SimConfig()
    catalog: CatalogOverrides = CatalogOverrides()
    controller: ControllerConfig | None = None
    regions: RegionsField = None  # multi-region front door, users and RTTs (models/config_regions.py)
    failures: FailuresField = None  # failure injection and policies; after regions, whose names it checks
    retrieval: RetrievalConfig | None = None  # vector stores and RAG (models/config_retrieval.py)
    jobs: JobsConfig | None = None  # training and operational job pools and streams (models/config_jobs.py)
    tenants: TenantsConfig | None = None  # tenants, quotas, SLO classes, the gateway stage (models/config_tenants.py)
    workflows: WorkflowsConfig | None = None  # agent/RAG workflows beside the workload (models/workload/workflows.py)

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @property
    def base_dir(self) -> Path:
        """Directory that relative paths in the scenario (traces) are resolved against."""
        return self._base_dir

    @model_validator(mode="after")
    def _cross_checks(self) -> ScenarioConfig:
        names = [p.name for p in self.pools]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"pool names must be unique; repeated: {', '.join(dupes)}")
        catalog = self.build_catalog()
        for i, pool in enumerate(self.pools):
            for field, getter in (("gpu", catalog.gpu), ("model", catalog.llm)):
                try:
                    getter(getattr(pool, field))
                except FleettwinError as exc:
                    raise ValueError(f"pools[{i}].{field}: {exc}") from None
        if self.jobs is not None:
            self.jobs.check(names, catalog)
        if self.workflows is not None:
            self._check_workflows()
        return self

    def _check_workflows(self) -> None:
        wf = self.workflows
        rag = wf.needs_retrieval()
        if rag and self.retrieval is None:
            raise ValueError(f"workflows: {', '.join(rag)} query the knowledge fabric, but the scenario has no "
                             "retrieval: section")  # fmt: skip
        if self.retrieval is not None:
            held = {s.domain for s in self.retrieval.stores}
            for t in wf.templates:
                for node in t.nodes:
                    if node.topic is not None and node.topic not in held and "*" not in held:
                        raise ValueError(f"workflows: template {t.name!r}: node {node.id!r}: topic {node.topic!r} is "
                                         f"held by no store (store domains: {', '.join(sorted(held))})")  # fmt: skip
        served = {p.model for p in self.pools}  # requests find their pool by this exact name
        for model in sorted(wf.models() - served):
            raise ValueError(f"workflows: model {model!r} is not served by any pool ({', '.join(sorted(served))})")

    def workload_source(self):
        from fleettwin.models.workload.sources import WORKLOADS

        return WORKLOADS.create(self.workload.type, self.workload.params, base_dir=self.base_dir)

    def build_catalog(self):
        from fleettwin.models.catalog import Catalog

        try:
            return Catalog.default().with_overrides(gpus=self.catalog.gpus, llms=self.catalog.llms)
        except FleettwinError as exc:
            raise ValueError(f"catalog: {exc}") from None


def format_errors(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ""
        for part in err["loc"]:
            loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
        msg = err["msg"].removeprefix("Value error, ")
        got = f" (got {err['input']!r})" if err["type"] not in ("missing", "value_error") else ""
        lines.append(f"{source}: {loc}: {msg}{got}" if loc else f"{source}: {msg}")
    return "\n".join(lines)


def validated(model: type[M], data: Any, *, source: str, what: str) -> M:
    """``data`` (parsed YAML) as ``model``; a ConfigError names ``source``, the field and the reason."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of {what} fields at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(source, exc)) from None


def parse_scenario(data: Any, *, source: str = "<scenario>", base_dir: Path | None = None) -> ScenarioConfig:
    """Validate an already-parsed scenario mapping (``source`` names it in error messages)."""
    cfg = validated(ScenarioConfig, data, source=source, what="scenario")
    cfg._base_dir = base_dir or Path.cwd()
    try:  # build the workload source once so a missing trace file fails now, not after set-up
        cfg.workload_source()
    except FleettwinError as exc:
        raise ConfigError(f"{source}: workload: {exc}") from None
    return cfg


def read_yaml(path: Path, what: str = "scenario") -> Any:
    """The parsed YAML of ``path``; a missing file or bad YAML is a ConfigError naming the file (and line)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None


def load_scenario(path: str | Path, overrides: dict[str, Any] | None = None) -> ScenarioConfig:
    """Read, validate and freeze a scenario YAML file; ``overrides`` maps dotted paths to values
    (``{"pools.0.replicas": 16}``) for what-if runs from the command line."""
    path = Path(path)
    data = read_yaml(path, "scenario")
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value, source=str(path))
    return parse_scenario(data, source=str(path), base_dir=path.resolve().parent)


def _set_dotted(data: Any, dotted: str, value: Any, *, source: str) -> None:
    keys = dotted.split(".")
    node = data
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(node, list):
            try:
                idx = int(key)
                if last:
                    node[idx] = value
                else:
                    node = node[idx]
                continue
            except (ValueError, IndexError):
                raise ConfigError(f"{source}: override {dotted}: no list item {key!r}") from None
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: override {dotted}: {'.'.join(keys[:depth])} is not a mapping")
        if last:
            node[key] = value
        else:
            node = node.setdefault(key, {})


def parse_override(text: str) -> tuple[str, Any]:
    """``pools.0.replicas=16`` -> ("pools.0.replicas", 16); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. pools.0.replicas=16")
    return key.strip(), yaml.safe_load(raw)
