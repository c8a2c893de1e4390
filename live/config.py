"""The live scenario file (``fleettwin live shadow --scenario live.yaml``): which backends form which pool,
and the control loop to run over them.

The pool and controller sections are the simulator's (``models/config/``): a pool names its GPU, model,
tensor parallelism, engine settings, router and performance model as a scenario pool does — with the URLs of
its running servers instead of a replica count — and ``controller`` is the scenario's (allocator, interval,
provisioning, GPU limits), so the same allocator runs with the same parameters in both worlds. Errors name the
file, the field and the reason, like scenario errors::

    configs/live.yaml: pools[0].backends[1]: 'localhost:8000' is not an http(s) URL
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import (
    Field,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    field_validator,
    model_validator,
)

from fleettwin.live.tls import TlsFiles
from fleettwin.models.base import require_unique
from fleettwin.models.config import (
    CatalogOverrides,
    ControllerConfig,
    PoolConfig,
    SloConfig,
    StrictModel,
    read_yaml,
    validated,
)
from fleettwin.models.config.loading import _set_dotted
from fleettwin.models.config.pools import PoolShape
from fleettwin.models.config.scenario import check_pool_in_catalog
from fleettwin.models.errors import ConfigError
from fleettwin.models.registry import Chosen, Registry, by_name

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class LivePool(PoolShape):
    """One pool of running servers: a scenario pool's shape (``PoolShape``: GPU, model, TP, engine, router,
    performance model, with the same rules) and, instead of a replica count, the URLs of its servers. The
    performance model serves the drift report's simulation and the actuator."""

    backends: list[str] = Field(default_factory=list)  # base URLs of vLLM-compatible servers
    tls: TlsFiles | None = None  # CA / client certificate for these backends (overrides scrape.tls)

    @field_validator("backends")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        for i, url in enumerate(v):
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"item {i}, {url!r}, is not an http(s) URL")
        return [u.rstrip("/") for u in v]

    def pool_config(self, replicas: int | None = None) -> PoolConfig:
        """This pool as a simulator pool with ``replicas`` (default: one per backend, at least one)."""
        shape = {k: getattr(self, k) for k in PoolShape.model_fields}
        return PoolConfig(**shape, replicas=replicas or max(1, len(self.backends)))


class ScrapeConfig(StrictModel):
    timeout_s: PositiveFloat = (
        2.0  # per request to /health and /metrics; a hung backend is given up on after it
    )
    token: str | None = None  # bearer token, if the backends want one
    verify: bool | str = True  # TLS: verify, don't, or a CA bundle path
    model_name: str | None = None  # count only this model's series
    tls: TlsFiles | None = (
        None  # {ca, cert, key}: CA to verify backends, client certificate for mTLS backends
    )


_LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"


class PrometheusSource(StrictModel):
    """Read the fleet from a Prometheus server that already scrapes it, instead of scraping each backend:
    ``source: {prometheus: http://prometheus:9090, selector: '{job="vllm"}'}``. Backends are the targets
    ``up{selector}`` finds, each in the pool named by its ``pool_label`` label; rates and
    ``histogram_quantile`` are taken over the control interval (``live/promql_source.py``)."""

    prometheus: str  # base URL of the server
    selector: str = '{job="vllm"}'  # label matchers every backend series carries (Prometheus syntax)
    pool_label: str = "pool"  # the target label whose value is the pool's name
    timeout_s: PositiveFloat = 5.0
    token: str | None = None  # bearer token for the Prometheus API, if it wants one
    verify: bool | str = True
    history: bool = True  # seed the forecasters' arrival-rate history from query_range at start

    @field_validator("prometheus")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r} is not an http(s) URL")
        return v.rstrip("/")

    @field_validator("selector")
    @classmethod
    def _selector(cls, v: str) -> str:
        import re

        v = v.strip()
        if not re.fullmatch(r"\{\s*(" + _LABEL + r'\s*(=|!=|=~|!~)\s*"(?:[^"\\]|\\.)*"\s*,?\s*)*\}', v):
            raise ValueError(f"{v!r} is not a label selector like '{{job=\"vllm\"}}'")
        return v

    @field_validator("pool_label")
    @classmethod
    def _label(cls, v: str) -> str:
        import re

        if not re.fullmatch(_LABEL, v):
            raise ValueError(f"{v!r} is not a Prometheus label name")
        return v


class BackoffConfig(StrictModel):
    """After ``n`` failed scrapes in a row a backend is next tried ``min(max_s, initial_s * factor**(n-1))``
    seconds later, times a uniform jitter in ``[1 - jitter, 1 + jitter]`` (from the scenario's seed)."""

    initial_s: PositiveFloat = 1.0
    max_s: PositiveFloat = 60.0
    factor: float = Field(2.0, ge=1.0)
    jitter: float = Field(0.2, ge=0.0, lt=1.0)


ACTUATORS: Registry[Any] = Registry("actuator")
"""How ``shadow --act`` carries decisions out, by name; each entry is its own parameter model."""


class ActuatorConfig(Chosen):
    """``actuator: {name: local_process, params: {...}}``. Old forms, still loaded with a note: ``{type:
    local_process, ...}`` beside the parameters, or the parameters alone (``local_process`` was the one)."""

    registry = ACTUATORS

    @classmethod
    def from_legacy(cls, raw: Any) -> dict[str, Any] | None:
        if isinstance(raw, dict) and "name" not in raw and "type" not in raw:
            return {"name": "local_process", "params": raw}
        return super().from_legacy(raw)


@ACTUATORS.register("local_process")
class LocalProcessConfig(ActuatorConfig):
    """Start ``fleettwin live emulate`` replicas on loopback with each pool's GPU, model, engine and
    performance model (``live/actuator.py``)."""

    host: str = "127.0.0.1"
    max_replicas_per_pool: PositiveInt = 8  # a safety cap on processes, whatever the policy asks
    startup_timeout_s: PositiveFloat = 30.0
    drain_timeout_s: PositiveFloat = 30.0  # a draining replica is stopped once idle, or after this long

    @field_validator("host")
    @classmethod
    def _loopback(cls, v: str) -> str:
        if v not in LOOPBACK:
            raise ValueError(f"the local-process actuator serves on loopback only ({', '.join(LOOPBACK)})")
        return v


ActuatorChoice = by_name(ActuatorConfig)


class LiveConfig(StrictModel):
    name: str
    description: str = ""
    seed: int = 0
    pools: list[LivePool] = Field(min_length=1)
    controller: ControllerConfig
    slo: SloConfig = SloConfig()
    scrape: ScrapeConfig = ScrapeConfig()
    source: PrometheusSource | None = None  # None: scrape every backend's /metrics directly
    backoff: BackoffConfig = BackoffConfig()
    decision_log: str = "decisions.jsonl"  # relative to the scenario file
    history_buckets: PositiveInt = 2016  # arrival-rate buckets kept for forecasters (as the simulator)
    actuator: ActuatorChoice | None = None
    catalog: CatalogOverrides = CatalogOverrides()

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    @property
    def decision_log_path(self) -> Path:
        return (self._base_dir / self.decision_log).resolve()

    @model_validator(mode="after")
    def _cross_checks(self) -> LiveConfig:
        require_unique((p.name for p in self.pools), "pool names")
        seen: dict[str, str] = {}
        catalog = self.build_catalog()
        for i, pool in enumerate(self.pools):
            check_pool_in_catalog(i, pool, catalog)
            for url in pool.backends:
                if url in seen:
                    raise ValueError(f"backend {url} is listed in pools {seen[url]!r} and {pool.name!r}")
                seen[url] = pool.name
            if self.source is not None and pool.backends:
                raise ValueError(
                    f"pools[{i}].backends: with source.prometheus the backends are the targets "
                    f"Prometheus scrapes (label {self.source.pool_label}={pool.name!r}); list none"
                )
            if not pool.backends and self.actuator is None and self.source is None:
                raise ValueError(
                    f"pools[{i}].backends: pool {pool.name!r} has no backends and no actuator would start any"
                )
        return self

    def build_catalog(self):
        return self.catalog.build()

    def resolved(self) -> list:
        """Each pool resolved as the simulator resolves it (TP, KV blocks, limits, performance model)."""
        from fleettwin.models.engine.resolve import resolve_pool

        catalog = self.build_catalog()
        return [resolve_pool(p.pool_config(), catalog) for p in self.pools]

    def scrape_tls(self) -> tuple[TlsFiles | None, dict[str, TlsFiles]]:
        """The scraper's TLS files (relative paths against the scenario's folder): for every backend, and for
        the backends of pools that have their own."""
        glob = self.scrape.tls.resolved(self._base_dir) if self.scrape.tls else None
        per = {u: p.tls.resolved(self._base_dir) for p in self.pools if p.tls is not None for u in p.backends}
        return glob, per

    def pool(self, name: str) -> LivePool:
        for p in self.pools:
            if p.name == name:
                return p
        raise ConfigError(f"no pool {name!r} in live scenario {self.name!r}")


def parse_live(data: Any, *, source: str = "<live scenario>", base_dir: Path | None = None) -> LiveConfig:
    """Validate an already-parsed live scenario mapping (``source`` names it in error messages)."""
    cfg = validated(LiveConfig, data, source=source, what="live scenario")
    cfg._base_dir = base_dir or Path.cwd()
    return cfg


def load_live(path: str | Path, overrides: dict[str, Any] | None = None) -> LiveConfig:
    """Read and validate a live scenario YAML; ``overrides`` map dotted paths to values, as for scenarios."""
    path = Path(path)
    data = read_yaml(path, "live scenario")
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value, source=str(path))
    return parse_live(data, source=str(path), base_dir=path.resolve().parent)
