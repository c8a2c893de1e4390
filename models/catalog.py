"""GPU and LLM catalogs: the specs scenarios and policies name, read from ``models/data/{gpus,llms}.csv``
(sources and caveats in ``models/data/SOURCES.md``). The sizing rules built on them are in ``sizing.py``.

Units: ``memory_gb`` is read as GiB (see :attr:`GpuSpec.memory_bytes`); every other "GB" is decimal.
"""

from __future__ import annotations

import csv
import functools
import io
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, Field, ValidationError, model_validator

from fleettwin.models.base import StrictFiniteModel
from fleettwin.models.errors import ConfigError, UnknownNameError

GIB = 2**30
TENSOR_PARALLEL_SIZES = (1, 2, 4, 8, 16)
GPUS_PER_NODE = 8  # TP 16 is two 8-GPU nodes joined by the inter-node network
SPOT_FRACTION_OF_ON_DEMAND = 0.5  # rule of thumb where no spot price was found (SOURCES.md)


# ---------------------------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuSpec:
    """One accelerator: peak rates, memory, interconnect and price per GPU-hour."""

    id: str
    memory_gb: float
    hbm_tbps: float
    bf16_tflops: float  # dense (no 2:4 sparsity)
    fp8_tflops: float | None  # None: no FP8 tensor cores (Ampere)
    interconnect_gbps: float  # per-GPU bidirectional GB/s: NVLink/Infinity Fabric, else PCIe
    has_nvlink: bool
    tdp_w: float
    price_on_demand_usd_h: float
    price_spot_usd_h: float
    spot_price_estimated: bool = False  # True: no spot price was found, 0.5 x on-demand is assumed
    source: str = ""

    @property
    def memory_bytes(self) -> float:
        """Device memory in bytes, reading ``memory_gb`` as GiB.

        HBM parts are sold in binary units: an "80 GB" H100 shows 79.6 GiB to nvidia-smi and an "80 GB" A100
        exactly 80 GiB, so decimal GB would understate what vLLM budgets by about 7 %. (GDDR6 cards, the L40S
        and L4, are the exception: they show about 45 and 22.5 GiB, so they are overstated by about 7 %.)
        """
        return self.memory_gb * GIB

    @property
    def peak_flops(self) -> float:
        """Dense BF16 tensor-core peak, FLOP/s."""
        return self.bf16_tflops * 1e12

    @property
    def hbm_bytes_per_s(self) -> float:
        return self.hbm_tbps * 1e12

    @property
    def link_bytes_per_s(self) -> float:
        """GPU-to-GPU bandwidth in one direction (the catalog figure is bidirectional)."""
        return self.interconnect_gbps * 1e9 / 2

    @property
    def ridge_flops_per_byte(self) -> float:
        """Arithmetic intensity above which a kernel is compute-bound rather than bandwidth-bound."""
        return self.peak_flops / self.hbm_bytes_per_s


@dataclass(frozen=True, slots=True, kw_only=True)
class LlmSpec:
    """One model's shapes (HF ``config.json`` names) and the quantities derived from them.

    MoE fields: ``intermediate_size`` is the dense FFN width; ``moe_intermediate_size`` the per-expert width
    where it differs (DeepSeek-V3); ``num_dense_layers`` leading layers have a dense FFN instead of experts.
    MLA models (``kv_lora_rank`` > 0) cache one compressed latent of ``kv_lora_rank + qk_rope_head_dim`` per
    token and layer.
    """

    id: str
    params_b: float
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    max_context: int
    num_experts: int = 1
    experts_per_token: int = 1
    moe_intermediate_size: int | None = None
    num_dense_layers: int = 0
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    source: str = ""

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 1

    @property
    def uses_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def params(self) -> float:
        return self.params_b * 1e9

    @property
    def expert_ffn_size(self) -> int:
        return self.moe_intermediate_size or self.intermediate_size

    @property
    def moe_layers(self) -> int:
        return self.num_layers - self.num_dense_layers if self.is_moe else 0

    @property
    def params_per_expert_layer(self) -> float:
        """Weights of one routed expert in one layer (gated SwiGLU: three hidden x ffn matrices)."""
        return 3 * self.hidden_size * self.expert_ffn_size

    @property
    def routed_expert_params(self) -> float:
        """All routed-expert weights (0 for a dense model); shared experts count as dense weights."""
        return self.moe_layers * self.num_experts * self.params_per_expert_layer

    @property
    def active_params(self) -> float:
        """Parameters used per token: the total less the experts a token is not routed to."""
        inactive = (
            self.moe_layers * (self.num_experts - self.experts_per_token) * self.params_per_expert_layer
        )
        return self.params - inactive

    @property
    def embedding_params(self) -> float:
        """Input embedding table; the LM head is a separate matrix of the same size (untied, as in
        llms.csv)."""
        return self.vocab_size * self.hidden_size

    @property
    def nonembedding_active_params(self) -> float:
        """Active parameters less the input embedding (a lookup) and the LM head (run once per sequence)."""
        return self.active_params - 2 * self.embedding_params

    @property
    def attention_flops_per_pair(self) -> float:
        """FLOPs of one query-key pair across layers: QK^T and PV, 2 FLOPs per multiply-add each."""
        return 4 * self.num_layers * self.num_attention_heads * self.head_dim

    @property
    def lm_head_flops(self) -> float:
        """FLOPs of the LM head for one sequence that samples a token."""
        return 2 * self.vocab_size * self.hidden_size

    def weight_bytes(self, dtype_bytes: float = 2) -> float:
        return self.params * dtype_bytes

    def kv_bytes_per_token(self, dtype_bytes: float = 2) -> float:
        """KV cache per token for the whole model (all layers, K and V)."""
        if self.uses_mla:
            return (self.kv_lora_rank + self.qk_rope_head_dim) * self.num_layers * dtype_bytes
        return 2 * self.num_layers * self.num_key_value_heads * self.head_dim * dtype_bytes

    def kv_bytes_per_token_per_gpu(self, tp: int, dtype_bytes: float = 2) -> float:
        """KV cache per token held by each GPU of a ``tp``-way replica.

        KV heads are split across GPUs; when ``tp`` exceeds the KV heads, vLLM replicates them so each GPU
        still holds one. MLA's latent is not split by head, so every GPU holds all of it.
        """
        if self.uses_mla:
            return self.kv_bytes_per_token(dtype_bytes)
        heads_per_gpu = math.ceil(self.num_key_value_heads / tp)
        return 2 * self.num_layers * heads_per_gpu * self.head_dim * dtype_bytes

    def splits_evenly(self, tp: int) -> bool:
        """Whether ``tp`` GPUs can share the attention heads: heads divide, KV heads divide or are
        replicated."""
        kv = self.num_key_value_heads
        return self.num_attention_heads % tp == 0 and (kv % tp == 0 or tp % kv == 0)


# ------------------------------------------------------------------------------------ input validation


class _GpuFields(StrictFiniteModel):
    memory_gb: float = Field(gt=0)
    hbm_tbps: float = Field(gt=0)
    bf16_tflops: float = Field(gt=0)
    fp8_tflops: float | None = Field(default=None, gt=0)
    interconnect_gbps: float = Field(gt=0)
    has_nvlink: bool
    tdp_w: float = Field(gt=0)
    price_on_demand_usd_h: float = Field(ge=0)
    price_spot_usd_h: float | None = Field(default=None, ge=0)
    source: str = ""


class _LlmFields(StrictFiniteModel):
    params_b: float = Field(gt=0)
    num_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_key_value_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    max_context: int = Field(gt=0)
    num_experts: int = Field(default=1, gt=0)
    experts_per_token: int = Field(default=1, gt=0)
    moe_intermediate_size: int | None = Field(default=None, gt=0)
    num_dense_layers: int = Field(default=0, ge=0)
    kv_lora_rank: int = Field(default=0, ge=0)
    qk_rope_head_dim: int = Field(default=0, ge=0)
    source: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> _LlmFields:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.experts_per_token > self.num_experts:
            raise ValueError("experts_per_token must not exceed num_experts")
        if self.num_dense_layers >= self.num_layers:
            raise ValueError("num_dense_layers must be smaller than num_layers")
        return self


def _validated(kind: str, id_: str, model: type[BaseModel], values: Mapping[str, Any]) -> BaseModel:
    """Validate one catalog entry, turning pydantic's report into a ConfigError naming the id and field."""
    unknown = sorted(set(values) - set(model.model_fields))
    if unknown:
        raise ConfigError(
            f"{kind} {id_!r}: unknown field(s) {', '.join(map(repr, unknown))}; "
            f"valid fields: {', '.join(model.model_fields)}"
        )
    try:
        return model.model_validate(dict(values))
    except ValidationError as exc:
        problems = "; ".join(
            f"field {'.'.join(str(p) for p in err['loc'])!r}: {err['msg']}" if err["loc"] else err["msg"]
            for err in exc.errors()
        )
        hint = " (a new id needs every field)" if any(e["type"] == "missing" for e in exc.errors()) else ""
        raise ConfigError(f"{kind} {id_!r}: {problems}{hint}") from None


def _check_id(kind: str, id_: Any) -> str:
    if not isinstance(id_, str) or not id_ or id_ != id_.strip().lower():
        raise ConfigError(f"{kind} id {id_!r} must be a non-empty lower-case string")
    return id_


def _make_gpu(id_: str, values: Mapping[str, Any]) -> GpuSpec:
    fields = _validated("gpu", id_, _GpuFields, values).model_dump()
    estimated = fields["price_spot_usd_h"] is None
    if estimated:
        fields["price_spot_usd_h"] = SPOT_FRACTION_OF_ON_DEMAND * fields["price_on_demand_usd_h"]
    return GpuSpec(id=id_, spot_price_estimated=estimated, **fields)


def _make_llm(id_: str, values: Mapping[str, Any]) -> LlmSpec:
    spec = LlmSpec(id=id_, **_validated("llm", id_, _LlmFields, values).model_dump())
    if spec.nonembedding_active_params <= 0:
        raise ConfigError(
            f"llm {id_!r}: field 'params_b': {spec.params_b} B is smaller than the embedding, LM head and "
            "inactive expert weights implied by the shapes"
        )
    return spec


def _gpu_fields(spec: GpuSpec) -> dict[str, Any]:
    """The inputs a GpuSpec was made from, so an override can change some and re-derive the rest."""
    out = asdict(spec)
    del out["id"]
    if out.pop("spot_price_estimated"):
        out["price_spot_usd_h"] = None  # re-derived from the (possibly overridden) on-demand price
    return out


def _llm_fields(spec: LlmSpec) -> dict[str, Any]:
    out = asdict(spec)
    del out["id"]
    return out


# ------------------------------------------------------------------------------------------- loading


def _read_csv(name: str) -> list[dict[str, str | None]]:
    text = resources.files("fleettwin.models").joinpath("data", name).read_text(encoding="utf-8")
    return [{k: (v.strip() or None) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))]


def _gpu_from_row(row: Mapping[str, str | None]) -> GpuSpec:
    id_ = str(row["id"])
    nvlink = float(row["nvlink_gbps"] or 0)
    link = nvlink if nvlink > 0 else row.get("pcie_gbps")
    if link is None:
        raise ConfigError(f"gpus.csv: {id_!r} has nvlink_gbps 0 and no pcie_gbps")
    values = {k: row[k] for k in _GpuFields.model_fields if k in row}
    values.update(interconnect_gbps=link, has_nvlink=nvlink > 0, source=row.get("price_source") or "")
    return _make_gpu(id_, values)


def _llm_from_row(row: Mapping[str, str | None]) -> LlmSpec:
    values = {k: v for k, v in row.items() if k in _LlmFields.model_fields and v is not None}
    values["max_context"] = row["max_position_embeddings"]
    return _make_llm(str(row["id"]), values)


@functools.cache
def _default_catalog() -> Catalog:
    gpus = [_gpu_from_row(r) for r in _read_csv("gpus.csv")]
    llms = [_llm_from_row(r) for r in _read_csv("llms.csv")]
    return Catalog(gpus={g.id: g for g in gpus}, llms={m.id: m for m in llms})


@dataclass(frozen=True, slots=True)
class Catalog:
    """The GPUs and LLMs a scenario may name, keyed by their stable lower-case ids."""

    gpus: Mapping[str, GpuSpec]
    llms: Mapping[str, LlmSpec]

    def __post_init__(self) -> None:
        # Read-only views so a shared catalog (``default()`` is cached) cannot be changed behind a caller's
        # back.
        object.__setattr__(self, "gpus", MappingProxyType(dict(self.gpus)))
        object.__setattr__(self, "llms", MappingProxyType(dict(self.llms)))

    @staticmethod
    def default() -> Catalog:
        """The catalog shipped as package data, loaded once."""
        return _default_catalog()

    def gpu(self, id: str) -> GpuSpec:
        try:
            return self.gpus[id]
        except KeyError:
            raise UnknownNameError(f"unknown gpu {id!r}; expected one of: {', '.join(self.gpus)}") from None

    def llm(self, id: str) -> LlmSpec:
        try:
            return self.llms[id]
        except KeyError:
            raise UnknownNameError(f"unknown llm {id!r}; expected one of: {', '.join(self.llms)}") from None

    def with_overrides(
        self,
        gpus: Mapping[str, Mapping[str, Any]] | None = None,
        llms: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Catalog:
        """A new catalog with fields of existing ids changed and new ids added (a new id needs every field).

        Field names are those of :class:`GpuSpec` / :class:`LlmSpec`. A GPU whose spot price was estimated
        keeps it estimated (0.5 x on-demand) unless the override gives one.
        """
        new_gpus = dict(self.gpus)
        for id_, values in (gpus or {}).items():
            base = _gpu_fields(self.gpus[id_]) if id_ in self.gpus else {}
            new_gpus[id_] = _make_gpu(_check_id("gpu", id_), {**base, **_as_mapping("gpu", id_, values)})
        new_llms = dict(self.llms)
        for id_, values in (llms or {}).items():
            base = _llm_fields(self.llms[id_]) if id_ in self.llms else {}
            new_llms[id_] = _make_llm(_check_id("llm", id_), {**base, **_as_mapping("llm", id_, values)})
        return Catalog(gpus=new_gpus, llms=new_llms)


def _as_mapping(kind: str, id_: str, values: Any) -> Mapping[str, Any]:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{kind} {id_!r}: expected a mapping of field names to values, got {values!r}")
    return values
