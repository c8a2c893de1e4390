"""A FAISS vector store with one API on CPU and GPU: build, add, search, save, load.

Index types (``INDEX_TYPES``): ``flat`` (exact), ``ivf_flat``, ``ivf_pq``, ``hnsw`` on the CPU;
``gpu_ivf_flat`` (GpuIndexIVFFlat) and ``cagra`` (GpuIndexCagra, needs faiss built with cuVS) on a GPU,
available only when ``faiss.get_num_gpus() > 0``. The search knob is set per call, never stored on the index,
so one store can serve queries at several operating points: ``nprobe`` for IVF, ``ef_search`` for HNSW,
``itopk_size`` for CAGRA.

Saved as two files: the index (``faiss.write_index``; GPU indexes are copied to the CPU first, as FAISS has no
direct GPU I/O) and ``<path>.meta.json`` beside it (type, dim, metric, count, resolved parameters), each
written atomically; the metadata is written last, so its presence means the pair is complete.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleettwin.io import atomic_write, write_json
from fleettwin.models.errors import ConfigError, FleettwinError

CPU_INDEX_TYPES = ("flat", "ivf_flat", "ivf_pq", "hnsw")
GPU_INDEX_TYPES = ("gpu_ivf_flat", "cagra")
INDEX_TYPES = CPU_INDEX_TYPES + GPU_INDEX_TYPES
IVF_TYPES = ("ivf_flat", "ivf_pq", "gpu_ivf_flat")
# The per-call search knob of each index type (None: exact search has none).
SEARCH_PARAM = {
    "flat": None,
    "ivf_flat": "nprobe",
    "ivf_pq": "nprobe",
    "gpu_ivf_flat": "nprobe",
    "hnsw": "ef_search",
    "cagra": "itopk_size",
}
GPU_MAX_K = 2048  # GPU_MAX_SELECTION_K in faiss/gpu/utils/DeviceDefs.cuh: bounds k and nprobe on the GPU
META_SUFFIX = ".meta.json"
FORMAT_VERSION = 1

IndexType = Literal["flat", "ivf_flat", "ivf_pq", "hnsw", "gpu_ivf_flat", "cagra"]


class VectorStoreError(FleettwinError):
    """A vector store used wrongly or a store file that cannot be read."""


class DimensionMismatchError(VectorStoreError):
    pass


class UntrainedIndexError(VectorStoreError):
    pass


class StoreNotFoundError(VectorStoreError, FileNotFoundError):
    pass


class GpuUnavailableError(VectorStoreError):
    pass


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise VectorStoreError(
            "the vector store needs faiss: pip install 'fleettwin[live]' (faiss-cpu)"
        ) from None
    return faiss


def num_gpus() -> int:
    """GPUs FAISS can use: 0 with the faiss-cpu wheel (which has no Gpu* classes at all)."""
    faiss = _faiss()
    return int(faiss.get_num_gpus()) if hasattr(faiss, "StandardGpuResources") else 0


def require_gpu(index_type: str) -> None:
    faiss = _faiss()
    if num_gpus() < 1:
        build = (
            "a CUDA build of faiss" if not hasattr(faiss, "StandardGpuResources") else "a visible CUDA GPU"
        )
        raise GpuUnavailableError(
            f"index type {index_type!r} runs on a GPU, but faiss {faiss.__version__} reports "
            f"{num_gpus()} GPUs; it needs {build} (faiss-gpu). CPU types: {', '.join(CPU_INDEX_TYPES)}"
        )
    if index_type == "cagra" and not hasattr(faiss, "GpuIndexCagra"):
        raise GpuUnavailableError(
            f"index type 'cagra' needs faiss built with cuVS (GpuIndexCagra); faiss "
            f"{faiss.__version__} has GPU support but not CAGRA"
        )


def default_nlist(n: int) -> int:
    """nlist ~ 4 sqrt(N), the usual IVF rule of thumb, never more than the training set."""
    return max(1, min(n, round(4 * math.sqrt(max(n, 1)))))


def default_pq_m(dim: int) -> int:
    """Largest divisor of dim with at least 8 dimensions per sub-quantizer (384 -> 48 bytes per code)."""
    return max(m for m in range(1, max(1, dim // 8) + 1) if dim % m == 0)


class IndexSpec(BaseModel):
    """What to build. Fields left None are resolved from the data at build time (see ``resolved``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    index_type: IndexType
    dim: int = Field(ge=1)
    metric: Literal["ip", "l2"] = "ip"  # embeddings are unit-norm, so inner product is cosine
    nlist: int | None = Field(None, ge=1, description="IVF inverted lists (default ~4 sqrt(N))")
    pq_m: int | None = Field(None, ge=1, description="PQ sub-quantizers; must divide dim (default dim/8)")
    pq_nbits: int = Field(8, ge=1, le=12)
    hnsw_m: int = Field(32, ge=2, le=256)
    ef_construction: int = Field(40, ge=1)
    pq_train_per_centroid: int = Field(64, ge=39, description="PQ k-means sample: this many points per code")
    graph_degree: int = Field(64, ge=8, description="CAGRA graph degree")
    gpu_device: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _pq_divides_dim(self) -> IndexSpec:
        if self.pq_m is not None and self.dim % self.pq_m:
            raise ValueError(f"pq_m={self.pq_m} must divide dim={self.dim}")
        return self

    def resolved(self, n_train: int) -> IndexSpec:
        update: dict[str, Any] = {}
        if self.index_type in IVF_TYPES and self.nlist is None:
            update["nlist"] = default_nlist(n_train)
        if self.index_type == "ivf_pq" and self.pq_m is None:
            update["pq_m"] = default_pq_m(self.dim)
        return self.model_copy(update=update)


@dataclass(frozen=True)
class SearchResult:
    """Top-k per query, best first; ids are row numbers in insertion order, -1 where fewer than k exist."""

    distances: np.ndarray  # [n, k] float32: inner product (higher is closer) or squared L2 (lower is closer)
    ids: np.ndarray  # [n, k] int64


def as_matrix(x: Any, dim: int, what: str) -> np.ndarray:
    """A C-contiguous float32 [n, dim] array, or a clear error about the shape, dimension or values."""
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise DimensionMismatchError(f"{what} must be a 2-D array [n, {dim}], got shape {arr.shape}")
    if arr.shape[1] != dim:
        raise DimensionMismatchError(f"{what} have dimension {arr.shape[1]}, the index has dimension {dim}")
    if not np.isfinite(arr).all():
        raise VectorStoreError(f"{what} contain NaN or infinite values")
    return np.ascontiguousarray(arr)


def _factory_string(spec: IndexSpec) -> str:
    # "np": no polysemous training. The factory turns it on for IVF-PQ, it only serves Hamming-filtered search
    # (which we do not use), and it made a 10k-vector build take minutes instead of seconds.
    return {
        "flat": "Flat",
        "ivf_flat": f"IVF{spec.nlist},Flat",
        "ivf_pq": f"IVF{spec.nlist},PQ{spec.pq_m}x{spec.pq_nbits}np",
        "hnsw": f"HNSW{spec.hnsw_m},Flat",
    }[spec.index_type]


class VectorStore:
    """One FAISS index plus the spec it was built from. Create with ``build`` (train + add) or ``load``."""

    def __init__(self, spec: IndexSpec, index: Any, gpu_resources: Any = None):
        self.spec, self.index, self._res = spec, index, gpu_resources

    # --- construction ---------------------------------------------------------------------------------------
    @classmethod
    def create(cls, spec: IndexSpec) -> VectorStore:
        """An empty index; IVF types need ``spec.nlist`` here (``build`` resolves it from the data)."""
        faiss = _faiss()
        if spec.index_type in IVF_TYPES and spec.nlist is None:
            raise ConfigError(f"index type {spec.index_type!r} needs nlist to be created empty; use build()")
        if spec.index_type == "ivf_pq" and spec.pq_m is None:
            spec = spec.model_copy(update={"pq_m": default_pq_m(spec.dim)})
        metric = faiss.METRIC_INNER_PRODUCT if spec.metric == "ip" else faiss.METRIC_L2
        if spec.index_type in GPU_INDEX_TYPES:
            return cls._create_gpu(spec, metric)
        index = faiss.index_factory(spec.dim, _factory_string(spec), metric)
        if spec.index_type == "hnsw":
            index.hnsw.efConstruction = spec.ef_construction
        return cls(spec, index)

    @classmethod
    def _create_gpu(cls, spec: IndexSpec, metric: int) -> VectorStore:
        require_gpu(spec.index_type)
        faiss = _faiss()
        res = faiss.StandardGpuResources()
        if spec.index_type == "gpu_ivf_flat":
            cfg = faiss.GpuIndexIVFFlatConfig()
            cfg.device = spec.gpu_device
            index = faiss.GpuIndexIVFFlat(res, spec.dim, spec.nlist, metric, cfg)
        else:
            cfg = faiss.GpuIndexCagraConfig()
            cfg.device = spec.gpu_device
            cfg.graph_degree = spec.graph_degree
            cfg.intermediate_graph_degree = 2 * spec.graph_degree
            index = faiss.GpuIndexCagra(res, spec.dim, metric, cfg)
        return cls(spec, index, res)

    @classmethod
    def build(cls, spec: IndexSpec, vectors: Any, *, seed: int = 0) -> VectorStore:
        """Train on ``vectors`` (IVF, PQ) and add them; ids are row numbers."""
        x = as_matrix(vectors, spec.dim, "vectors")
        store = cls.create(spec.resolved(len(x)))
        store.train(x, seed=seed)
        store.add(x)
        return store

    def train(self, vectors: Any, *, seed: int = 0) -> None:
        x = as_matrix(vectors, self.dim, "training vectors")
        spec = self.spec
        need = {
            "ivf_flat": spec.nlist,
            "gpu_ivf_flat": spec.nlist,
            "ivf_pq": max(spec.nlist or 1, 2**spec.pq_nbits),
        }.get(spec.index_type, 0)
        if len(x) < need:
            raise VectorStoreError(
                f"index type {spec.index_type!r} needs at least {need} training vectors (nlist={spec.nlist}"
                + (f", 2^pq_nbits={2**spec.pq_nbits}" if spec.index_type == "ivf_pq" else "")
                + f"), got {len(x)}; pass a smaller nlist or more data"
            )
        if spec.index_type == "cagra" or self.index.is_trained:
            return  # CAGRA builds its graph when the vectors are added; flat and HNSW need no training
        if spec.index_type in ("ivf_flat", "ivf_pq"):  # k-means seeds, so a rebuild gives the same lists
            faiss = _faiss()
            ivf = faiss.downcast_index(faiss.extract_index_ivf(self.index))
            ivf.cp.seed = seed
            if spec.index_type == "ivf_pq":
                ivf.pq.cp.seed = seed
                # PQ k-means on 8-dimensional slices is slow in FAISS (~0.5 s per sub-quantizer for 10k points
                # on one core); 64 points per centroid (16k for 8 bits) is above FAISS's own 39-point minimum.
                ivf.pq.cp.max_points_per_centroid = spec.pq_train_per_centroid
        self.index.train(x)

    def add(self, vectors: Any) -> None:
        x = as_matrix(vectors, self.dim, "vectors")
        if self.spec.index_type == "cagra":
            if self.ntotal:  # GpuIndexCagra builds a graph once from all vectors; it cannot be extended
                raise VectorStoreError("a 'cagra' index is built once from all its vectors; build a new one")
            self.index.train(x)  # GpuIndexCagra.add is train: both build the graph
            return
        if not self.index.is_trained:
            raise UntrainedIndexError(
                f"index {self.spec.index_type!r} is not trained: call train() with at "
                f"least nlist={self.spec.nlist} vectors before add(), or use build()"
            )
        self.index.add(x)

    # --- queries --------------------------------------------------------------------------------------------
    def search(
        self,
        queries: Any,
        k: int = 10,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
        itopk_size: int | None = None,
    ) -> SearchResult:
        """Top-k neighbours of each query row. The knob applies to this call only."""
        if k < 1:
            raise VectorStoreError(f"k must be >= 1, got {k}")
        if self.on_gpu and k > GPU_MAX_K:
            raise VectorStoreError(f"k={k} exceeds the GPU limit of {GPU_MAX_K}")
        if self.spec.index_type != "cagra" and not self.index.is_trained:
            raise UntrainedIndexError(f"index {self.spec.index_type!r} is not trained; nothing to search")
        q = as_matrix(queries, self.dim, "queries")
        params = self._search_params(nprobe=nprobe, ef_search=ef_search, itopk_size=itopk_size)
        distances, ids = self.index.search(q, k, params=params)
        return SearchResult(distances=distances, ids=ids)

    def _search_params(self, **given: int | None) -> Any:
        faiss = _faiss()
        name = SEARCH_PARAM[self.spec.index_type]
        for other, value in given.items():
            if value is not None and other != name:
                applies = [t for t, p in SEARCH_PARAM.items() if p == other]
                raise VectorStoreError(
                    f"{other} applies to index types {', '.join(applies)}, not {self.spec.index_type!r}"
                )
        value = given.get(name) if name else None
        if value is None:
            return None
        if value < 1:
            raise VectorStoreError(f"{name} must be >= 1, got {value}")
        if name == "nprobe":
            if value > self.spec.nlist:
                raise VectorStoreError(f"nprobe={value} exceeds nlist={self.spec.nlist} of this index")
            if self.on_gpu and value > GPU_MAX_K:
                raise VectorStoreError(f"nprobe={value} exceeds the GPU limit of {GPU_MAX_K}")
            return faiss.SearchParametersIVF(nprobe=value)
        if name == "ef_search":
            return faiss.SearchParametersHNSW(efSearch=value)
        params = faiss.SearchParametersCagra()
        params.itopk_size = value
        return params

    # --- persistence ----------------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        faiss = _faiss()
        return {
            "format_version": FORMAT_VERSION,
            "index_type": self.spec.index_type,
            "dim": self.dim,
            "count": self.ntotal,
            "metric": self.spec.metric,
            "faiss_class": type(self.index).__name__,
            "faiss_version": faiss.__version__,
            "params": self.spec.model_dump(),
        }

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write the index and its metadata beside it (``<path>.meta.json``); returns both paths."""
        faiss = _faiss()
        path = Path(path)
        cpu_index = faiss.index_gpu_to_cpu(self.index) if self.on_gpu else self.index
        atomic_write(path, lambda p: faiss.write_index(cpu_index, str(p)))
        meta_path = write_json(meta_path_for(path), self.meta())
        return path, meta_path

    @classmethod
    def load(cls, path: str | Path) -> VectorStore:
        faiss = _faiss()
        path, meta_path = Path(path), meta_path_for(path)
        if not path.is_file():
            raise StoreNotFoundError(f"{path}: no such index file")
        if not meta_path.is_file():
            raise StoreNotFoundError(
                f"{meta_path}: metadata file missing (VectorStore.save writes it beside "
                f"the index; without it the index type and parameters are unknown)"
            )
        try:
            meta = json.loads(meta_path.read_text())
            spec = IndexSpec.model_validate(meta["params"])
        except (ValueError, KeyError, TypeError) as exc:
            raise VectorStoreError(f"{meta_path}: unreadable store metadata: {exc}") from None
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise VectorStoreError(
                f"{path}: not a readable faiss index: {str(exc).splitlines()[0]}"
            ) from None
        if index.d != meta.get("dim") or index.ntotal != meta.get("count"):
            raise VectorStoreError(
                f"{path}: index (dim {index.d}, {index.ntotal} vectors) does not match "
                f"{meta_path.name} (dim {meta.get('dim')}, {meta.get('count')} vectors)"
            )
        if spec.index_type not in GPU_INDEX_TYPES:
            return cls(spec, index)
        require_gpu(spec.index_type)
        res = faiss.StandardGpuResources()
        return cls(spec, faiss.index_cpu_to_gpu(res, spec.gpu_device, index), res)

    # --- facts ----------------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def on_gpu(self) -> bool:
        return self.spec.index_type in GPU_INDEX_TYPES

    def __repr__(self) -> str:
        return f"VectorStore({self.spec.index_type}, dim={self.dim}, count={self.ntotal})"


def meta_path_for(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + META_SUFFIX)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of |found top-k ∩ true top-k| / k (ids -1 never count)."""
    found, truth = np.asarray(found)[:, :k], np.asarray(truth)[:, :k]
    if found.shape[0] != truth.shape[0]:
        raise ValueError(f"{found.shape[0]} result rows against {truth.shape[0]} ground-truth rows")
    hits = sum(len(np.intersect1d(f[f >= 0], t[t >= 0])) for f, t in zip(found, truth, strict=True))
    return hits / (k * max(1, found.shape[0]))
