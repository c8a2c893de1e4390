"""Hybrid lexical + dense retrieval over a local corpus: what a workflow's retrieval node runs live.

- **Lexical**: BM25 (Okapi, ``k1`` 1.2, ``b`` 0.75, Lucene's idf ``log(1 + (N - df + 0.5) / (df + 0.5))``)
  over a sparse term-document matrix.
- **Dense**: latent semantic embeddings — log-tf x idf rows, L2-normalised, projected on their top ``dim``
  singular vectors (a document's embedding is its row times ``V``, a query's the same fold-in) — searched by
  inner product in a FAISS ``IndexFlatIP``. No model weights are needed, so nothing is downloaded; any
  embedder with vectors of one dimension could replace the projection.
- **Fusion**: reciprocal rank fusion, ``score = sum over the two lists of 1 / (rrf_k + rank)`` (``rrf_k`` 60),
  over the top ``candidates`` of each list.

The corpus is a folder of text/Markdown files split into paragraphs (``load_corpus``; the default corpus of
``fleettwin live loadgen --workflows`` is this repository's ``docs/``). Queries come from the corpus itself
(``sample_query``: a window of words of a random paragraph), so every query has a known source paragraph.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import svds

from fleettwin.live.tracing import NOOP, Tracing
from fleettwin.models.errors import ConfigError

_WORD = re.compile(r"[a-z0-9]+")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)


@dataclass(frozen=True, slots=True)
class Passage:
    source: str  # file it came from
    text: str


@dataclass(frozen=True, slots=True)
class Hit:
    passage: int
    score: float  # fused (reciprocal rank) score
    lexical_rank: int | None  # 1-based rank in each list (None: outside its candidates)
    dense_rank: int | None


def tokenize(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def load_corpus(path: str | Path, *, min_words: int = 12) -> list[Passage]:
    """The paragraphs (blank-line separated, code blocks left out) of every ``.md``/``.txt`` file under
    ``path`` with at least ``min_words`` words, in file-name order."""
    root = Path(path)
    files = (
        sorted(p for p in root.rglob("*") if p.suffix in (".md", ".txt") and p.is_file())
        if root.is_dir()
        else []
    )
    out = []
    for f in files:
        text = _FENCE.sub("", f.read_text(errors="replace"))
        for para in re.split(r"\n\s*\n", text):
            para = " ".join(para.split())
            if len(tokenize(para)) >= min_words:
                out.append(Passage(str(f.relative_to(root)), para))
    if len(out) < 2:
        raise ConfigError(
            f"corpus {root}: {'not a directory' if not root.is_dir() else 'fewer than 2 paragraphs'} "
            f"(a folder of .md/.txt files with paragraphs of >= {min_words} words)"
        )
    return out


class HybridRetriever:
    def __init__(
        self,
        passages: Sequence[Passage],
        *,
        dim: int = 128,
        k1: float = 1.2,
        b: float = 0.75,
        rrf_k: int = 60,
        candidates: int = 50,
    ):
        import faiss  # the live extra's faiss-cpu; imported here so the module loads without it

        self.passages, self.rrf_k, self.candidates = list(passages), rrf_k, candidates
        docs = [tokenize(p.text) for p in self.passages]
        self.vocab = {w: i for i, w in enumerate(sorted({w for d in docs for w in d}))}
        rows, cols = [], []
        for r, d in enumerate(docs):
            rows += [r] * len(d)
            cols += [self.vocab[w] for w in d]
        tf = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(docs), len(self.vocab)))
        tf.sum_duplicates()
        n = tf.shape[0]
        df = np.bincount(tf.indices, minlength=tf.shape[1])
        self.idf = np.log1p((n - df + 0.5) / (df + 0.5))
        length = np.asarray(tf.sum(axis=1)).ravel()
        norm = k1 * (1 - b + b * length / length.mean())
        bm = tf.copy()
        bm.data = bm.data * (k1 + 1) / (bm.data + np.repeat(norm, np.diff(bm.indptr)))
        self.bm25 = (bm @ sparse.diags(self.idf)).tocsc()  # docs x terms; a query sums its terms' columns
        x = tf.copy()
        x.data = 1.0 + np.log(x.data)
        x = _normalise_rows(x @ sparse.diags(self.idf))
        self.dim = max(1, min(dim, min(x.shape) - 1))
        _, _, vt = svds(x, k=self.dim, v0=np.ones(min(x.shape)))  # fixed start vector: same basis every run
        self.v = np.ascontiguousarray(vt.T, dtype=np.float32)  # terms x dim
        emb = _unit(np.asarray(x @ self.v, dtype=np.float32))
        self.index = faiss.IndexFlatIP(self.dim)
        self.index.add(emb)

    def _query_vector(self, terms: list[int]) -> sparse.csr_matrix:
        q = sparse.csr_matrix((np.ones(len(terms)), ([0] * len(terms), terms)), shape=(1, len(self.vocab)))
        q.sum_duplicates()
        return q

    def search(self, query: str, k: int = 10, *, tracing: Tracing = NOOP, parent=None) -> list[Hit]:
        """The top ``k`` passages of the fused lists (a query of unknown words only: the dense list is
        empty)."""
        terms = [self.vocab[w] for w in tokenize(query) if w in self.vocab]
        if not terms:
            return []
        q = self._query_vector(terms)
        c = min(self.candidates, len(self.passages))
        with tracing.child(parent, "retrieval.lexical", **{"fleettwin.terms": len(terms)}):
            scores = np.asarray(self.bm25[:, q.indices] @ q.data).ravel()
            top = np.argpartition(-scores, c - 1)[:c]
            lexical = top[np.lexsort((top, -scores[top]))]
        with tracing.child(parent, "retrieval.dense", **{"fleettwin.dim": self.dim}):
            x = q.copy()
            x.data = (1.0 + np.log(x.data)) * self.idf[x.indices]
            qv = _unit(np.asarray(x @ self.v, dtype=np.float32))
            _, ids = self.index.search(qv, c)
            dense = ids[0][ids[0] >= 0]
        with tracing.child(parent, "retrieval.fuse"):
            fused: dict[int, list] = {}
            for name, ranked in (("lexical", lexical), ("dense", dense)):
                for rank, i in enumerate(ranked.tolist(), start=1):
                    entry = fused.setdefault(i, [0.0, None, None])
                    entry[0] += 1.0 / (self.rrf_k + rank)
                    entry[1 if name == "lexical" else 2] = rank
            best = sorted(fused.items(), key=lambda kv: (-kv[1][0], kv[0]))[:k]
        return [Hit(i, s, lr, dr) for i, (s, lr, dr) in best]

    def sample_query(self, rng: np.random.Generator, words: int = 8) -> tuple[int, str]:
        """(source paragraph, a window of ``words`` words from it)."""
        i = int(rng.integers(len(self.passages)))
        toks = self.passages[i].text.split()
        start = int(rng.integers(max(1, len(toks) - words + 1)))
        return i, " ".join(toks[start : start + words])

    def timed_search(
        self, query: str, k: int, *, tracing: Tracing = NOOP, parent=None
    ) -> tuple[list[Hit], float]:
        t0 = time.perf_counter()
        hits = self.search(query, k, tracing=tracing, parent=parent)
        return hits, time.perf_counter() - t0


def _normalise_rows(x: sparse.csr_matrix) -> sparse.csr_matrix:
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    return sparse.diags(1.0 / np.maximum(norms, 1e-12)) @ x


def _unit(m: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(m, axis=1, keepdims=True)
    return np.ascontiguousarray(m / np.maximum(n, 1e-12), dtype=np.float32)


def recall_of_source(
    retriever: HybridRetriever, queries: int = 200, k: int = 10, seed: int = 0
) -> dict[str, float]:
    """Share of sampled queries whose source paragraph is in the top ``k``: fused, lexical alone, dense alone
    (a sanity check of the three rankings on this corpus)."""
    rng = np.random.default_rng(seed)
    found = {"hybrid": 0, "lexical": 0, "dense": 0}
    for _ in range(queries):
        src, q = retriever.sample_query(rng)
        hits = retriever.search(q, k=2 * retriever.candidates)  # every candidate of both lists
        found["hybrid"] += any(h.passage == src for h in hits[:k])
        found["lexical"] += any(
            h.passage == src and h.lexical_rank is not None and h.lexical_rank <= k for h in hits
        )
        found["dense"] += any(
            h.passage == src and h.dense_rank is not None and h.dense_rank <= k for h in hits
        )
    return {name: v / queries for name, v in found.items()} | {
        "k": k,
        "queries": queries,
        "dim": retriever.dim,
        "passages": len(retriever.passages),
    }
