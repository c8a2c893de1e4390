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
    # tier such as LMCache's max_local_cpu_size); prefix-cache capacity = GPU KV cache + this (models/engine/prefix_cache.py)
    kv_offload_gb: float = Field(0.0, ge=0, allow_inf_nan=False)
    # Order of the waiting queue (models/engine/waiting.py): fcfs (vLLM's default), wfq (weighted fair queueing by tenant
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
    """``type`` picks a workload source; the other keys are that source's parameters, except the two that
    reshape any source without compressing time (models/workload/reshape.py)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str
    rate_scale: float = Field(1.0, gt=0, allow_inf_nan=False)  # x the request rate: shifted copies / thinning
    loop_to_s: float | None = Field(None, gt=0, allow_inf_nan=False)  # repeat the window to this many seconds

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _known_source(self) -> WorkloadConfig:
        from fleettwin.models.workload.sources import WORKLOADS

        PolicyRef(name=self.type, params=self.params).check(WORKLOADS)
        return self


class SloConfig(BaseModel):
    """Two forms side by side: ``ttft_s``/``tpot_s`` bound each request (attainment: the share that meets
    both); ``<metric>_p<q>_s`` keys are percentile targets over all requests, e.g. ``ttft_p95_s: 2``,
    ``tpot_p95_s: 0.05``, ``e2e_p99_s: 30`` (metrics ttft, tpot, e2e, queue; p999 is the 99.9th)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    ttft_s: PositiveFloat = 2.0
    tpot_s: PositiveFloat = 0.2

    @model_validator(mode="after")
    def _targets_named_well(self) -> SloConfig:
        from fleettwin.models.slo import parse_target_key

        for key, value in (self.model_extra or {}).items():
            parse_target_key(key, value, known=list(type(self).model_fields))
        return self

    @property
    def targets(self) -> dict[str, float]:
        """The percentile targets, key -> seconds (``{"ttft_p95_s": 2.0}``), in the file's order."""
        return {k: float(v) for k, v in (self.model_extra or {}).items()}


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
    # Or take that history from a counts CSV (timestamp_s,requests) of the traffic before t = 0, e.g. the live
    # service's last week: its last prior_history_s seconds (all of it when 0), req/s x prior_history_scale.
    prior_history_path: str | None = None
    prior_history_scale: PositiveFloat = 1.0

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
    _source: str = PrivateAttr(default="<scenario>")  # the file, for errors found after loading

    @property
    def source(self) -> str:
        """The scenario's file (or what ``parse_scenario`` was told), for messages that name it."""
        return self._source

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
        from fleettwin.models.workload.reshape import ReshapedSource
        from fleettwin.models.workload.sources import WORKLOADS

        w = self.workload
        source = WORKLOADS.create(w.type, w.params, base_dir=self.base_dir)
        if w.rate_scale != 1.0 or w.loop_to_s is not None:
            source = ReshapedSource(source, rate_scale=w.rate_scale, loop_to_s=w.loop_to_s)
        return source

    def build_catalog(self):
        from fleettwin.models.catalog import Catalog

        try:
            return Catalog.default().with_overrides(gpus=self.catalog.gpus, llms=self.catalog.llms)
        except FleettwinError as exc:
            raise ValueError(f"catalog: {exc}") from None


def format_errors(source: str, exc: ValidationError, model: type[BaseModel] | None = None) -> str:
    """One line per error: ``source: field.path: reason``; a misspelt key of ``model`` gets a hint."""
    from fleettwin.models.config_hints import did_you_mean, keys_at

    lines = []
    for err in exc.errors():
        loc = ""
        for part in err["loc"]:
            loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
        msg = err["msg"].removeprefix("Value error, ")
        got = f" (got {err['input']!r})" if err["type"] not in ("missing", "value_error") else ""
        if err["type"] == "extra_forbidden" and model is not None:
            known = keys_at(model, err["loc"][:-1])
            if known:
                hint = did_you_mean(str(err["loc"][-1]), known)
                msg += hint or f"; expected one of: {', '.join(known)}"
            got = ""
        lines.append(f"{source}: {loc}: {msg}{got}" if loc else f"{source}: {msg}")
    return "\n".join(lines)


def validated(model: type[M], data: Any, *, source: str, what: str) -> M:
    """``data`` (parsed YAML) as ``model``; a ConfigError names ``source``, the field and the reason."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of {what} fields at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(source, exc, model)) from None


def parse_scenario(data: Any, *, source: str = "<scenario>", base_dir: Path | None = None) -> ScenarioConfig:
    """Validate an already-parsed scenario mapping (``source`` names it in error messages)."""
    cfg = validated(ScenarioConfig, data, source=source, what="scenario")
    cfg._base_dir = base_dir or Path.cwd()
    cfg._source = source
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
    return parse_scenario(scenario_mapping(path, overrides), source=str(path), base_dir=path.resolve().parent)


def scenario_mapping(path: str | Path, overrides: dict[str, Any] | None = None) -> Any:
    """The parsed YAML of a scenario file with ``overrides`` applied, before validation (what a derived
    scenario file, such as the planner's recommended.yaml, is written from)."""
    data = read_yaml(Path(path), "scenario")
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value, source=str(path))
    return data


def _set_dotted(data: Any, dotted: str, value: Any, *, source: str) -> None:
    """Set ``value`` at ``dotted``: mapping keys, list items by index or by their ``name`` (``pools.chat``),
    and a named item of a section's list without the list's key (``regions.eu-west-1`` for the item of
    ``regions.regions`` named eu-west-1)."""
    keys = dotted.split(".")
    node = data
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        where = ".".join(keys[:depth]) or "the scenario"
        if isinstance(node, list):
            idx = _list_index(node, key)
            if idx is None:
                names = [str(item["name"]) for item in node if isinstance(item, dict) and "name" in item]
                from fleettwin.models.config_hints import did_you_mean

                known = f"; names: {', '.join(names)}" if names else ""
                raise ConfigError(f"{source}: override {dotted}: {where} has no list item {key!r} (an index 0.."
                                  f"{len(node) - 1} or a name){did_you_mean(key, names)}{known}")  # fmt: skip
            if last:
                node[idx] = value
            else:
                node = node[idx]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: override {dotted}: {where} is not a mapping")
        if last:
            node[key] = value
        elif key not in node and (item := _named_child(node, key)) is not None:
            node = item
        else:
            node = node.setdefault(key, {})


def _list_index(items: list, key: str) -> int | None:
    """A list item by index (``0``, ``-1``) or by its ``name``."""
    try:
        idx = int(key)
    except ValueError:
        named = [i for i, item in enumerate(items) if isinstance(item, dict) and str(item.get("name")) == key]
        return named[0] if named else None
    return idx if -len(items) <= idx < len(items) else None


def _named_child(node: dict, name: str) -> dict | None:
    """The item named ``name`` of the one list of named mappings under ``node`` (a section such as
    ``regions:`` whose entries live in ``regions.regions``)."""
    lists = [v for v in node.values() if isinstance(v, list) and v and all(isinstance(i, dict) and "name" in i
                                                                           for i in v)]  # fmt: skip
    found = [i for lst in lists for i in lst if str(i["name"]) == name]
    return found[0] if len(found) == 1 else None


def parse_override(text: str) -> tuple[str, Any]:
    """``pools.chat.replicas=16`` -> ("pools.chat.replicas", 16); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. pools.chat.replicas=16 or "
                          "pools.0.replicas=16")
    return key.strip(), yaml.safe_load(raw)
