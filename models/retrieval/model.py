"""Vector-store query latency and recall from tables of measured (or estimated) FAISS figures.

A table row says: an index of ``index_type`` on ``hardware`` holding ``n_vectors`` vectors of ``dim``
dimensions, searched with ``search_param`` (nprobe for IVF, efSearch for HNSW, itopk_size for CAGRA, 0 for
flat) ``batch`` queries per call, answers in ``latency_ms_p50`` / ``latency_ms_p95`` with ``recall_at_10``
(mean |approx top-10 ∩ exact top-10| / 10). The live twin's ``fleettwin data calibrate-retrieval`` writes
measured tables in this format (``data/retrieval/*measured*.csv``); ``data/retrieval/estimates.csv`` holds
documented estimates. For one (index_type, hardware) the rows of the first table that has any are used:
measured before estimates.

How a lookup between rows works (``RetrievalModel.lookup``):

* **search_param**: per (dim, n_vectors) slice, latency and recall are linear between rows. Above the last
  row latency continues with the last segment's slope and recall stays at the last row (no extra recall is
  claimed); below the first row both are clamped. Each slice is made monotone first (running maximum along
  search_param), so noisy measured rows cannot make a larger nprobe faster or less accurate.
* **n_vectors**: log latency is linear in log n between slices (a power law per segment); outside the rows it
  continues as a power of n: the outer segment's exponent (largest over the table's search_params going up,
  smallest going down, clamped to [0, 1]), or a per-type default exponent when only one n was measured. Recall
  is linear in log n and clamped outside. Across n, latency takes a running maximum and recall a running
  minimum, so a bigger index is never modelled faster or more accurate.
* **dim**: between two table dims, log latency and recall are linear in log dim; outside, latency scales in
  proportion to dim (distance computations dominate; for PQ codes this is pessimistic) and recall is kept.

Exact on every row of a monotone table. Service times are lognormal fitted to the two quantiles:
mu = ln p50, sigma = (ln p95 − ln p50) / z95 (z95 = 1.6449).
"""

from __future__ import annotations

import csv
import functools
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from statistics import NormalDist

import numpy as np

from fleettwin.models.errors import ConfigError

COLUMNS = (
    "index_type",
    "hardware",
    "n_vectors",
    "dim",
    "search_param",
    "latency_ms_p50",
    "latency_ms_p95",
    "recall_at_10",
    "batch",
    "source",
)
INDEX_TYPES = ("flat", "ivf_flat", "ivf_pq", "hnsw", "gpu_ivf_flat", "cagra")
Z95 = 1.6448536269514722  # standard normal 95th percentile

# Exponent of latency in n when a table has a single n: a flat scan is linear; IVF with nlist ~ sqrt(n) scans
# ~sqrt(n) centroids and list entries per probe; graph searches grow roughly with log n (a small power here).
DEFAULT_N_EXPONENT = {
    "flat": 1.0,
    "ivf_flat": 0.5,
    "ivf_pq": 0.5,
    "gpu_ivf_flat": 0.5,
    "hnsw": 0.2,
    "cagra": 0.2,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class TableRow:
    index_type: str
    hardware: str
    n_vectors: int
    dim: int
    search_param: int
    latency_ms_p50: float
    latency_ms_p95: float
    recall_at_10: float
    batch: int
    source: str
    origin: str = ""  # "file:line" the row was read from


def _parse_row(raw: dict[str, str], where: str) -> TableRow:
    def num(col: str, kind: type, lo: float, hi: float = math.inf, lo_open: bool = False):
        text = (raw.get(col) or "").strip()
        try:
            value = kind(float(text)) if kind is float else int(text)
        except ValueError:
            raise ConfigError(
                f"{where}: {col}: expected {'a number' if kind is float else 'an integer'}, got {text!r}"
            ) from None
        if (
            not (lo < value if lo_open else lo <= value)
            or value > hi
            or (kind is float and not math.isfinite(value))
        ):
            bound = f"> {lo}" if lo_open else f">= {lo}"
            raise ConfigError(
                f"{where}: {col}: must be {bound}"
                + (f" and <= {hi}" if hi < math.inf else "")
                + f", got {text!r}"
            )
        return value

    index_type = (raw.get("index_type") or "").strip()
    if index_type not in INDEX_TYPES:
        raise ConfigError(f"{where}: index_type: {index_type!r} is not one of {', '.join(INDEX_TYPES)}")
    hardware = (raw.get("hardware") or "").strip()
    if not hardware:
        raise ConfigError(f"{where}: hardware: must not be empty")
    source = (raw.get("source") or "").strip()
    if not source:
        raise ConfigError(f"{where}: source: must say where the figure comes from")
    p50 = num("latency_ms_p50", float, 0.0, lo_open=True)
    p95 = num("latency_ms_p95", float, 0.0, lo_open=True)
    if p95 < p50:
        raise ConfigError(f"{where}: latency_ms_p95 ({p95}) is below latency_ms_p50 ({p50})")
    return TableRow(
        index_type=index_type,
        hardware=hardware,
        n_vectors=num("n_vectors", int, 1),
        dim=num("dim", int, 1),
        search_param=num("search_param", int, 0),
        latency_ms_p50=p50,
        latency_ms_p95=p95,
        recall_at_10=num("recall_at_10", float, 0.0, 1.0),
        batch=num("batch", int, 1),
        source=source,
        origin=where,
    )


def parse_table(text: str, name: str) -> list[TableRow]:
    """Rows of one CSV text; errors name ``name``, the line and the column."""
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames
    if not header:
        raise ConfigError(f"{name}: empty file; expected the header {','.join(COLUMNS)}")
    cols = [c.strip() for c in header]
    missing = [c for c in COLUMNS if c not in cols]
    extra = [c for c in cols if c not in COLUMNS]
    if missing or extra or len(cols) != len(set(cols)):
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unexpected {', '.join(extra)}"] if extra else []
        ) or ["repeated column"]
        raise ConfigError(f"{name}:1: header: {'; '.join(parts)} (expected exactly {','.join(COLUMNS)})")
    rows = []
    for raw in reader:
        where = f"{name}:{reader.line_num}"
        if None in raw or any(v is None for v in raw.values()):
            raise ConfigError(f"{where}: expected {len(COLUMNS)} fields, got a different number")
        rows.append(_parse_row({k.strip(): v for k, v in raw.items()}, where))
    if not rows:
        raise ConfigError(f"{name}: no data rows")
    return rows


def hardware_class(label: str) -> str:
    """``cpu`` for any CPU label (``cpu``, ``cpu-16core``: the calibration command names the core count), else
    the label itself (GPU rows name the catalog id, e.g. ``h100-80g``)."""
    return "cpu" if label == "cpu" or label.startswith("cpu-") else label


class RetrievalTable:
    """Rows from one or more CSV tables; for each (index_type, hardware class) only the first table that has
    it counts, so a measured table listed first replaces the estimates for what it measured and nothing
    else."""

    def __init__(self, tables: Sequence[tuple[str, list[TableRow]]]):
        self.rows: list[TableRow] = []
        self.origin: dict[tuple[str, str], str] = {}  # (index_type, hardware class) -> table that supplies it
        for name, rows in tables:
            keys = {(r.index_type, hardware_class(r.hardware)) for r in rows}
            fresh = keys - self.origin.keys()
            self.origin.update({k: name for k in fresh})
            self.rows.extend(r for r in rows if (r.index_type, hardware_class(r.hardware)) in fresh)

    @classmethod
    def from_files(cls, paths: Iterable[str | Path]) -> RetrievalTable:
        tables = []
        for p in paths:
            try:
                text = Path(p).read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"{p}: cannot read retrieval table: {exc.strerror}") from None
            tables.append((str(p), parse_table(text, str(p))))
        return cls(tables)

    @classmethod
    @functools.cache
    def default(cls) -> RetrievalTable:
        """The package tables: every ``*measured*.csv`` (sorted by name), then ``estimates.csv``."""
        folder = resources.files("fleettwin.models").joinpath("data", "retrieval")
        names = sorted(f.name for f in folder.iterdir() if f.name.endswith(".csv") and "measured" in f.name)
        names.append("estimates.csv")
        return cls(
            [
                (
                    f"models/data/retrieval/{n}",
                    parse_table(folder.joinpath(n).read_text(encoding="utf-8"), f"models/data/retrieval/{n}"),
                )
                for n in names
            ]
        )

    def keys(self) -> list[tuple[str, str]]:
        return sorted(self.origin)

    def source(self, index_type: str, hardware: str) -> str:
        return self.origin[(index_type, hardware_class(hardware))]

    def select(self, index_type: str, hardware: str, batch: int = 1) -> list[TableRow]:
        """Rows for one index type on ``hardware``: an exact label, or a class (``cpu``) whose table holds a
        single label."""
        same = [
            r
            for r in self.rows
            if r.index_type == index_type
            and r.batch == batch
            and hardware_class(r.hardware) == hardware_class(hardware)
        ]
        exact = [r for r in same if r.hardware == hardware]
        labels = sorted({r.hardware for r in same})
        if not exact and len(labels) > 1:
            raise ConfigError(
                f"hardware {hardware!r} is ambiguous for {index_type}: the table has "
                f"{', '.join(labels)}; name one of them"
            )
        rows = exact or same
        if not rows:
            have = ", ".join(f"{i}/{h}" for i, h in self.keys()) or "none"
            raise ConfigError(
                f"no retrieval table rows for index_type {index_type!r} on hardware {hardware!r} "
                f"at batch {batch}; the tables have: {have}"
            )
        return rows


@dataclass(frozen=True, slots=True)
class Lognormal:
    """A positive random time fitted to its median and 95th percentile (seconds)."""

    mu: float
    sigma: float

    @classmethod
    def from_quantiles(cls, p50: float, p95: float) -> Lognormal:
        if not 0 < p50 <= p95:
            raise ValueError(f"need 0 < p50 <= p95, got {p50}, {p95}")
        return cls(math.log(p50), math.log(p95 / p50) / Z95)

    @property
    def mean(self) -> float:
        return math.exp(self.mu + self.sigma**2 / 2)

    def quantile(self, q: float) -> float:
        return math.exp(self.mu + self.sigma * NormalDist().inv_cdf(q))

    def sample(self, rng: np.random.Generator) -> float:
        return math.exp(self.mu) if self.sigma == 0.0 else float(rng.lognormal(self.mu, self.sigma))


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreProfile:
    """What one vector store's queries cost and return: a lognormal service time and a recall@10."""

    index_type: str
    hardware: str
    n_vectors: int
    dim: int
    search_param: int
    p50_ms: float
    p95_ms: float
    recall: float
    source: str  # the table the figures come from
    extrapolated: tuple[str, ...] = ()  # axes on which the lookup left the table's range

    @property
    def latency_s(self) -> Lognormal:
        """Service time of one query, in seconds."""
        return Lognormal.from_quantiles(self.p50_ms / 1000.0, self.p95_ms / 1000.0)


@dataclass(frozen=True)
class _Slice:
    """One (dim, n) slice along search_param, made monotone."""

    params: np.ndarray
    p50: np.ndarray
    p95: np.ndarray
    recall: np.ndarray

    @classmethod
    def build(cls, rows: list[TableRow]) -> _Slice:
        by_param: dict[int, list[TableRow]] = {}
        for r in rows:
            by_param.setdefault(r.search_param, []).append(r)
        ks = sorted(by_param)

        def avg(attr: str) -> np.ndarray:
            return np.array([np.mean([getattr(r, attr) for r in by_param[k]]) for k in ks])

        p50 = np.maximum.accumulate(avg("latency_ms_p50"))
        return cls(
            np.array(ks, dtype=float),
            p50,
            np.maximum(np.maximum.accumulate(avg("latency_ms_p95")), p50),
            np.maximum.accumulate(avg("recall_at_10")),
        )

    def at(self, s: float) -> tuple[float, float, float, bool]:
        x = self.params
        if len(x) == 1:
            return float(self.p50[0]), float(self.p95[0]), float(self.recall[0]), s != x[0]
        if s > x[-1]:
            d = s - x[-1]
            slope50 = (self.p50[-1] - self.p50[-2]) / (x[-1] - x[-2])
            slope95 = (self.p95[-1] - self.p95[-2]) / (x[-1] - x[-2])
            return (
                float(self.p50[-1] + slope50 * d),
                float(self.p95[-1] + slope95 * d),
                float(self.recall[-1]),
                True,
            )
        return (
            float(np.interp(s, x, self.p50)),
            float(np.interp(s, x, self.p95)),
            float(np.interp(s, x, self.recall)),
            s < x[0],
        )


@dataclass
class _DimGroup:
    """All slices of one dim, by n."""

    ns: np.ndarray
    slices: list[_Slice]
    index_type: str

    def at(self, n: float, s: float) -> tuple[float, float, float, list[str]]:
        flags: list[str] = []
        vals = []
        for sl in self.slices:
            p50, p95, rec, ext = sl.at(s)
            vals.append((p50, p95, rec))
            if ext:
                flags = ["search_param"]
        p50 = np.maximum.accumulate([v[0] for v in vals])  # a bigger index is never faster...
        p95 = np.maximum(np.maximum.accumulate([v[1] for v in vals]), p50)
        rec = np.minimum.accumulate([v[2] for v in vals])  # ...nor more accurate
        ln, lns = math.log(n), np.log(self.ns)
        if len(lns) == 1:
            e50 = e95 = DEFAULT_N_EXPONENT[self.index_type]
            if n != self.ns[0]:
                flags.append("n_vectors")
            return (p50[0] * (n / self.ns[0]) ** e50, p95[0] * (n / self.ns[0]) ** e95, float(rec[0]), flags)
        lp50, lp95 = np.log(p50), np.log(p95)
        if lns[0] <= ln <= lns[-1]:
            return (
                math.exp(np.interp(ln, lns, lp50)),
                math.exp(np.interp(ln, lns, lp95)),
                float(np.interp(ln, lns, rec)),
                flags,
            )
        below = ln < lns[0]
        end = 0 if below else len(lns) - 1
        e = self.exponent(below)
        out50 = math.exp(lp50[end] + e * (ln - lns[end]))
        out95 = max(math.exp(lp95[end] + e * (ln - lns[end])), out50)
        return out50, out95, float(rec[end]), [*flags, "n_vectors"]

    def exponent(self, below: bool) -> float:
        """One power of n for extrapolating past the first (``below``) or last slice, the same at every
        search_param so the result stays monotone in it: the outer segment's log-log slope at each table
        search_param, the largest going up and the smallest going down (never an optimistic guess), in [0,
        1]."""
        knots = np.unique(np.concatenate([sl.params for sl in self.slices]))
        j = 0 if below else len(self.ns) - 2
        slopes = []
        for s in knots:
            lo, hi = (self.slices[j].at(s)[0], self.slices[j + 1].at(s)[0])
            slopes.append((math.log(max(hi, lo)) - math.log(lo)) / math.log(self.ns[j + 1] / self.ns[j]))
        e = min(slopes) if below else max(slopes)
        return min(max(e, 0.0), 1.0)


@dataclass
class RetrievalModel:
    """Looks up a store's latency distribution and recall; pure numpy over a :class:`RetrievalTable`."""

    table: RetrievalTable = field(default_factory=RetrievalTable.default)
    _groups: dict = field(default_factory=dict, init=False, repr=False)

    def _dim_groups(self, index_type: str, hardware: str, batch: int) -> dict[int, _DimGroup]:
        key = (index_type, hardware, batch)
        if key not in self._groups:
            rows = self.table.select(index_type, hardware, batch)
            groups = {}
            for dim in sorted({r.dim for r in rows}):
                by_n: dict[int, list[TableRow]] = {}
                for r in rows:
                    if r.dim == dim:
                        by_n.setdefault(r.n_vectors, []).append(r)
                ns = sorted(by_n)
                groups[dim] = _DimGroup(
                    np.array(ns, dtype=float), [_Slice.build(by_n[n]) for n in ns], index_type
                )
            self._groups[key] = groups
        return self._groups[key]

    def lookup(
        self, index_type: str, hardware: str, n_vectors: int, dim: int, search_param: int, *, batch: int = 1
    ) -> StoreProfile:
        if n_vectors < 1 or dim < 1 or search_param < 0:
            raise ConfigError(
                f"retrieval lookup needs n_vectors >= 1, dim >= 1, search_param >= 0; got "
                f"{n_vectors}, {dim}, {search_param}"
            )
        groups = self._dim_groups(index_type, hardware, batch)
        dims = sorted(groups)
        if dim in groups:
            p50, p95, rec, flags = groups[dim].at(n_vectors, search_param)
        elif dims[0] < dim < dims[-1]:
            hi = next(d for d in dims if d > dim)
            lo = max(d for d in dims if d < dim)
            a, b = groups[lo].at(n_vectors, search_param), groups[hi].at(n_vectors, search_param)
            w = math.log(dim / lo) / math.log(hi / lo)
            p50 = math.exp((1 - w) * math.log(a[0]) + w * math.log(b[0]))
            p95 = math.exp((1 - w) * math.log(a[1]) + w * math.log(b[1]))
            rec, flags = (1 - w) * a[2] + w * b[2], sorted(set(a[3]) | set(b[3]))
        else:
            near = dims[0] if dim < dims[0] else dims[-1]
            p50, p95, rec, flags = groups[near].at(n_vectors, search_param)
            p50, p95, flags = p50 * dim / near, p95 * dim / near, [*flags, "dim"]
        return StoreProfile(
            index_type=index_type,
            hardware=hardware,
            n_vectors=n_vectors,
            dim=dim,
            search_param=search_param,
            p50_ms=p50,
            p95_ms=max(p95, p50),
            recall=min(max(rec, 0.0), 1.0),
            source=self.table.source(index_type, hardware),
            extrapolated=tuple(flags),
        )


@functools.cache
def default_model() -> RetrievalModel:
    """One shared model over the package tables (lookups are cached per (index, hardware, batch))."""
    return RetrievalModel(RetrievalTable.default())
