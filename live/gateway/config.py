"""The gateway's policy file (YAML), validated in one place and frozen.

    tenants:
      team-a:
        api_keys: ["sha256:9f86d0..."]     # sha256 of the key; the key itself is never stored
        models: [llama-3-8b]              # gateway model names, or "*"
        tools: [search]                   # function-tool names a request may declare
        collections: [handbook]           # retrieval collections its documents may come from
        max_tokens: 1024
        quotas: {requests_per_s: 5, tokens_per_s: 4000, concurrent: 8}
        priority: 0
        slo_class: interactive
    backends:
      llama-3-8b: {urls: ["https://127.0.0.1:8000"], served_model: llama-3-8b}
    detectors: {prompt_injection: block, email: redact}
    jwt: {secret_env: FLEETTWIN_JWT_SECRET}
    backend_tls: {ca: certs/ca.pem, cert: certs/gateway-client.pem, key: certs/gateway-client.key}
    retrieval: {url: "https://127.0.0.1:9100", token_env: FLEETTWIN_RETRIEVAL_TOKEN}   # POST /v1/retrieve
    audit_log: gateway-audit.jsonl
    limits: {max_body_bytes: 8388608, header_timeout_s: 10, body_timeout_s: 30}

A tenant authenticates only the ways its ``auth`` allows (default: ``api_key`` when it has keys, else
``jwt``). A backend's ``tls_name`` (and ``retrieval.tls_name``) is the identity its server certificate must
carry (a SAN), checked instead of the URL's host: with certificates from ``fleettwin data certs`` that is the
component name (``emulator``), so an mTLS link cannot be answered by another component's server.

Relative paths are resolved against the file's folder. A bad file is one ``ConfigError`` per problem naming
the file and the field: ``gateway.yaml: tenants.team-a.models[0]: unknown model 'gpt-9'; backends serve:
...``.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from fleettwin.live.gateway.sanitize import ACTIONS, DEFAULT_ACTIONS, DETECTORS, Action
from fleettwin.live.http_guard import HttpLimits
from fleettwin.live.tls import TlsFiles
from fleettwin.models.base import StrictModel
from fleettwin.models.config import read_yaml, validated
from fleettwin.models.errors import ConfigError
from fleettwin.models.routing.replica import REPLICA_ROUTERS
from fleettwin.models.tenancy.quotas import RateLimits  # the simulator's buckets, one declaration

_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")
KEY_PREFIX = "ft-"
ANY = "*"
AuthMethod = Literal["api_key", "jwt"]


def hash_key(key: str) -> str:
    """How an API key is stored in the policy file."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh random API key (256 bits) and its stored form."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hash_key(key)


class GatewayQuotas(RateLimits):
    """A tenant's limits at the gateway: the simulator's token buckets (``RateLimits``, declared once) and
    ``concurrent``, requests in flight at once; one more is refused (429), where the simulator's
    ``max_concurrent`` holds it at the pool instead: a different limit, so a different field."""

    concurrent: int | None = Field(None, ge=1)


class Tenant(StrictModel):
    api_keys: tuple[str, ...] = ()
    auth: tuple[AuthMethod, ...] | None = (
        None  # how it may authenticate; None: api_key if it has keys, else jwt
    )
    models: tuple[str, ...] = Field(min_length=1)
    tools: tuple[str, ...] = ()
    collections: tuple[str, ...] = ()
    max_tokens: int | None = Field(None, ge=1)
    allow_token_ids: bool = False  # token-id prompts cannot be inspected by the detectors
    priority: int = 0
    slo_class: str = "standard"
    quotas: GatewayQuotas = GatewayQuotas()
    detectors: dict[str, Action] = {}  # overrides of the file's detector actions for this tenant

    @field_validator("api_keys")
    @classmethod
    def _hashed(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        for k in keys:
            if not _HASH.match(k):
                shown = k if k.startswith("sha256:") else k[:3] + "..."  # do not echo a plain key
                raise ValueError(
                    f"an API key must be stored as 'sha256:<64 hex digits>' (fleettwin live gateway "
                    f"--new-key makes one), got {shown!r}"
                )
        return keys

    def allows(self, kind: str, name: str) -> bool:
        names = getattr(self, kind)
        return ANY in names or name in names

    @property
    def auth_methods(self) -> tuple[str, ...]:
        if self.auth is not None:
            return self.auth
        return ("api_key",) if self.api_keys else ("jwt",)


class Backend(StrictModel):
    urls: tuple[str, ...] = Field(min_length=1)
    served_model: str | None = None  # the name the backend serves (default: the gateway's model name)
    token_env: str | None = None  # environment variable holding the backend's bearer token
    router: str = "least_outstanding"
    priority_scheduling: bool = False  # forward the tenant's priority (vLLM --scheduling-policy priority)
    tls_name: str | None = None  # the identity (SAN) the backends' server certificates must carry

    @field_validator("urls")
    @classmethod
    def _urls(cls, urls: tuple[str, ...]) -> tuple[str, ...]:
        for u in urls:
            if not re.match(r"^https?://[^/\s]+/?$", u):
                raise ValueError(f"backend URL must be http(s)://host:port, got {u!r}")
        return tuple(u.rstrip("/") for u in urls)

    @field_validator("router")
    @classmethod
    def _router(cls, name: str) -> str:
        REPLICA_ROUTERS.get(name)  # UnknownNameError lists the choices
        return name

    def token(self) -> str | None:
        return env_secret(self.token_env, "backend token")


def env_secret(var: str | None, what: str) -> str | None:
    """The value of environment variable ``var`` (None when no variable is named); unset is a ConfigError."""
    if var is None:
        return None
    value = os.environ.get(var)
    if not value:
        raise ConfigError(f"{what}: environment variable {var} is not set")
    return value


class RetrievalService(StrictModel):
    """Where the gateway forwards ``POST /v1/retrieve`` (``live/retrieval_service.py``); ``tls`` defaults to
    ``backend_tls`` (the CA to verify the service, the client certificate the gateway presents)."""

    url: str
    token_env: str | None = None  # environment variable holding the service's bearer token
    tls: TlsFiles | None = None
    tls_name: str | None = None  # the identity (SAN) the service's server certificate must carry

    @field_validator("url")
    @classmethod
    def _url(cls, u: str) -> str:
        return Backend._urls((u,))[0]

    def token(self) -> str | None:
        return env_secret(self.token_env, "retrieval token")


class Jwt(StrictModel):
    """HS256 bearer tokens; the tenant is named by ``tenant_claim``. The secret comes from the environment or
    a file, never from the policy file itself."""

    secret_env: str | None = None
    secret_file: Path | None = None
    tenant_claim: str = "tenant"
    issuer: str | None = None
    audience: str | None = None
    require_exp: bool = True
    leeway_s: float = Field(30.0, ge=0)

    @model_validator(mode="after")
    def _one_secret(self) -> Jwt:
        if (self.secret_env is None) == (self.secret_file is None):
            raise ValueError("give exactly one of secret_env or secret_file")
        return self

    def secret(self) -> bytes:
        if self.secret_env is not None:
            where = f"environment variable {self.secret_env}"
            data = os.environ.get(self.secret_env, "").encode()
            if not data:
                raise ConfigError(f"jwt: {where} is not set")
        else:
            where = f"secret_file {self.secret_file}"
            try:
                data = Path(self.secret_file).read_bytes().strip()
            except OSError as exc:
                raise ConfigError(f"jwt: cannot read {where}: {exc.strerror}") from None
        if (
            len(data) < 32
        ):  # RFC 7518 section 3.2: an HS256 key must be at least as long as the hash (256 bits)
            raise ConfigError(f"jwt: the secret in {where} is shorter than 32 bytes")
        return data


class GatewayConfig(StrictModel):
    tenants: dict[str, Tenant] = Field(min_length=1)
    backends: dict[str, Backend] = Field(min_length=1)
    detectors: dict[str, Action] = dict(DEFAULT_ACTIONS)
    jwt: Jwt | None = None
    backend_tls: TlsFiles | None = None
    retrieval: RetrievalService | None = None
    audit_log: Path = Path("gateway-audit.jsonl")
    timeout_s: float = Field(300.0, gt=0)
    limits: HttpLimits = HttpLimits()
    check_workers: int = Field(2, ge=1, le=64)  # processes that check bodies over inline_check_bytes
    inline_check_bytes: int = Field(32 * 1024, ge=0)  # smaller bodies are checked on the event loop

    @field_validator("detectors")
    @classmethod
    def _detectors(cls, actions: dict[str, str]) -> dict[str, str]:
        _known_detectors(actions)
        return actions

    @model_validator(mode="after")
    def _cross(self) -> GatewayConfig:
        owners: dict[str, str] = {}
        for name, t in self.tenants.items():
            for i, m in enumerate(t.models):
                if m != ANY and m not in self.backends:
                    raise ValueError(
                        f"tenants.{name}.models[{i}]: unknown model {m!r}; backends serve: "
                        f"{', '.join(self.backends)}"
                    )
            try:
                _known_detectors(t.detectors)
            except ValueError as exc:
                raise ValueError(f"tenants.{name}.detectors: {exc}") from None
            for k in t.api_keys:
                if k in owners:
                    raise ValueError(f"tenants.{name}.api_keys: the same key is also given to {owners[k]!r}")
                owners[k] = name
            if not t.api_keys and self.jwt is None:
                raise ValueError(f"tenants.{name}: no api_keys and no jwt section, so nobody can use it")
            if "api_key" in t.auth_methods and not t.api_keys:
                raise ValueError(f"tenants.{name}.auth: api_key is allowed but the tenant has no api_keys")
            if "jwt" in t.auth_methods and self.jwt is None:
                raise ValueError(f"tenants.{name}.auth: jwt is allowed but the file has no jwt section")
        return self

    def actions_for(self, tenant: str) -> dict[str, str]:
        return {**self.detectors, **self.tenants[tenant].detectors}


def _known_detectors(actions: dict[str, str]) -> None:
    for name, action in actions.items():
        if name not in DETECTORS:
            raise ValueError(f"unknown detector {name!r}; expected one of: {', '.join(DETECTORS.names())}")
        if action not in ACTIONS:
            raise ValueError(f"{name}: action must be one of {', '.join(ACTIONS)}")


def parse_gateway(data: Any, *, source: str = "<gateway>", base_dir: Path | None = None) -> GatewayConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with tenants and backends at the top level")
    cfg = validated(GatewayConfig, data, source=source, what="gateway")
    return _resolve_paths(cfg, base_dir or Path.cwd())


def load_gateway(path: str | Path) -> GatewayConfig:
    path = Path(path)
    return parse_gateway(read_yaml(path, "gateway policy"), source=str(path), base_dir=path.resolve().parent)


def _resolve_paths(cfg: GatewayConfig, base: Path) -> GatewayConfig:
    def at(p: Path | None) -> Path | None:
        return None if p is None else Path(os.path.normpath(base / p))

    update: dict[str, Any] = {"audit_log": at(cfg.audit_log)}
    if cfg.backend_tls is not None:
        update["backend_tls"] = cfg.backend_tls.resolved(base)
    if cfg.retrieval is not None and cfg.retrieval.tls is not None:
        update["retrieval"] = cfg.retrieval.model_copy(update={"tls": cfg.retrieval.tls.resolved(base)})
    if cfg.jwt is not None and cfg.jwt.secret_file is not None:
        update["jwt"] = cfg.jwt.model_copy(update={"secret_file": at(cfg.jwt.secret_file)})
    return cfg.model_copy(update=update)
