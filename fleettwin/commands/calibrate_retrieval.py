"""``fleettwin data calibrate-retrieval``: latency and recall of FAISS index types, measured on this machine.

For each size, vectors come from a seeded clustered generator (or from embedding ``--corpus`` lines); an exact
flat index gives the true top-10 of every query; each index type is built once and searched at each search
parameter and batch size: ``warmup`` untimed calls, then at least ``MIN_CALLS`` timed calls covering every
query, giving latency p50/p95 per call and recall@10 against the flat index.

The CSV is a contract with the simulator's retrieval model (``models/retrieval/model.py``): its ``COLUMNS``
and ``TableRow`` are the one definition of the columns, their order and meaning, and this command writes
those.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fleettwin.models.errors import ConfigError
from fleettwin.models.retrieval.model import COLUMNS, TableRow

K = 10
MIN_CALLS = 20  # timed calls per row at least, so a p95 rests on more than a handful of samples
DEFAULT_OUT = "results/retrieval_calibration.csv"
EPILOG = """examples:
  fleettwin data calibrate-retrieval --sizes 10k,100k   # all CPU index types, synthetic clustered vectors
  fleettwin data calibrate-retrieval --sizes 20k --index-types ivf_flat,hnsw --nprobe 1,8,32 \\
      --ef-search 16,64 --batch 1,32 --out results/ivf_hnsw.csv
  fleettwin data calibrate-retrieval --corpus docs.txt --embedder minilm   # one document per line

search_param in the CSV is nprobe for IVF types, efSearch for hnsw, itopk_size for cagra and 0 for flat;
latency is per search call of `batch` queries; recall_at_10 is against the exact (flat) top 10."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "calibrate-retrieval",
        help="measure FAISS latency and recall per index type on this machine",
        description=textwrap.fill(
            "Measure single-query (or batched) search latency p50/p95 and recall@10 against an exact flat "
            "index, for each FAISS index type, vector count and search parameter. Data: seeded synthetic "
            "clustered vectors, or embeddings of --corpus. Prints the table and writes it as CSV (columns: "
            + ",".join(COLUMNS)
            + ").",
            width=100,
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--sizes",
        default=None,
        help="vector counts, comma-separated, k/M suffixes allowed "
        "(default 10k,100k; with --corpus: the whole corpus)",
    )
    p.add_argument("--dim", type=int, default=384, help="vector dimension (default %(default)s, MiniLM's)")
    p.add_argument(
        "--index-types",
        default=None,
        help="comma-separated (default: flat,ivf_flat,ivf_pq,hnsw, plus gpu_ivf_flat,cagra with a GPU)",
    )
    p.add_argument("--nprobe", default="1,4,16,64", help="IVF nprobe values (default %(default)s)")
    p.add_argument("--ef-search", default="16,32,64,128", help="HNSW efSearch values (default %(default)s)")
    p.add_argument("--itopk", default="32,64,128", help="CAGRA itopk_size values (default %(default)s)")
    p.add_argument("--batch", default="1", help="queries per search call, comma-separated (default 1)")
    p.add_argument("--queries", type=int, default=200, help="distinct queries (default %(default)s)")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls before timing (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and of k-means (default 0)")
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: elapsed time per call (default); cpu: CPU time of the calling thread, which on a "
        "shared machine leaves out the time spent waiting for a core (needs --threads 1)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="FAISS OpenMP threads (default 1: a single query runs on one thread anyway, and a team "
        "of threads waiting on a shared, busy core made one flat search 25x slower)",
    )
    p.add_argument("--corpus", type=Path, default=None, help="text file, one document per line, to embed")
    p.add_argument(
        "--embedder", default="hashing", help="embedder for --corpus: hashing or minilm (default hashing)"
    )
    p.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help="CSV to write (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


# --- inputs -------------------------------------------------------------------------------------------------
def parse_ints(flag: str, text: str, *, minimum: int = 1) -> list[int]:
    """'10k,100k' -> [10000, 100000]; a clear error naming the flag otherwise."""
    out = []
    for item in filter(None, (s.strip() for s in str(text).split(","))):
        m = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmM]?)", item)
        value = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[m.group(2).lower()] if m else math.nan
        if not m or value != int(value) or value < minimum:
            raise ConfigError(f"{flag}: {item!r} is not an integer >= {minimum}")
        out.append(int(value))
    if not out:
        raise ConfigError(f"{flag}: no values given")
    return out


@dataclass(frozen=True)
class TopicModel:
    """Parameters of the synthetic embedding generator (see ``synthetic_data``).

    Chosen so that at 10k vectors the recall of IVF, IVF-PQ and HNSW at each search parameter lies within
    about 0.1 of what MiniLM embeddings of 10,000 docstring paragraphs give (docs/live.md, "Retrieval
    (FAISS)", has both tables and their commands). Isotropic Gaussian clusters, tried first, made IVF too easy
    and PQ far too hard (recall 0.33 at any nprobe against 0.6-0.7 on text).
    """

    spectrum_alpha: float = (
        0.8  # variance of the i-th latent direction ~ i^-alpha (embeddings are anisotropic)
    )
    subtopics: int = 30  # per topic; topics = sqrt(N), so a larger corpus has more topics
    topic_scale: float = 0.5  # topics overlap: with 0.8, IVF at nprobe 1-16 was 0.15-0.2 above text
    subtopic_scale: float = 0.8
    doc_scale: float = 1.1
    zipf: float = 1.0  # subtopic popularity ~ 1/rank^zipf: a few dense regions, a long sparse tail


def synthetic_data(
    n: int, dim: int, n_queries: int, seed: int, model: TopicModel = TopicModel()
) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors from a topic -> subtopic -> document hierarchy in a randomly rotated space with a
    power-law spectrum; queries are fresh documents from the same subtopics. Same (n, dim, seed) -> same
    arrays."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, n, dim]))
    std = (np.arange(1, dim + 1, dtype=np.float32) ** (-model.spectrum_alpha / 2)).astype(np.float32)
    rotation = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
    topics = max(2, round(math.sqrt(n)))

    def gaussian(rows: int, scale: float) -> np.ndarray:
        return rng.standard_normal((rows, dim), dtype=np.float32) * (std * scale)

    topic = gaussian(topics, model.topic_scale)
    subtopic = np.repeat(topic, model.subtopics, axis=0) + gaussian(
        topics * model.subtopics, model.subtopic_scale
    )
    weight = 1.0 / np.arange(1, len(subtopic) + 1) ** model.zipf
    weight = weight[rng.permutation(len(subtopic))] / weight.sum()

    def documents(rows: int) -> np.ndarray:
        x = (
            subtopic[rng.choice(len(subtopic), size=rows, p=weight)] + gaussian(rows, model.doc_scale)
        ) @ rotation
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return documents(n), documents(n_queries)


def corpus_data(path: Path, embedder: Any, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Embed one document per non-empty line; a seeded sample of ``n_queries`` lines are the queries."""
    if not path.is_file():
        raise ConfigError(f"--corpus {path}: no such file")
    lines = [s.strip() for s in path.read_text(encoding="utf-8", errors="replace").splitlines() if s.strip()]
    if len(lines) <= n_queries:
        raise ConfigError(
            f"--corpus {path}: {len(lines)} non-empty lines, need more than --queries={n_queries}"
        )
    vectors = embedder.encode(lines)
    is_query = np.zeros(len(lines), dtype=bool)
    is_query[np.random.default_rng(seed).choice(len(lines), n_queries, replace=False)] = True
    return vectors[~is_query], vectors[is_query]


def hardware_label(index_type: str) -> str:
    from fleettwin.live.faiss_store import GPU_INDEX_TYPES

    if index_type not in GPU_INDEX_TYPES:
        return f"cpu-{os.cpu_count()}core"
    try:
        name = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        name = "unknown"
    return "gpu-" + (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown")


# --- measurement --------------------------------------------------------------------------------------------
def time_searches(
    store: Any,
    queries: np.ndarray,
    truth: np.ndarray,
    *,
    param: int,
    batch: int,
    warmup: int,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[float, float, float]:
    """(latency p50 ms, p95 ms, recall@10) of ``store`` at one search parameter and batch size."""
    from fleettwin.live.faiss_store import SEARCH_PARAM, recall_at_k

    name = SEARCH_PARAM[store.spec.index_type]
    knob = {name: param} if name else {}
    calls = len(queries) // batch
    if calls < 1:
        raise ConfigError(f"--batch {batch} is larger than --queries {len(queries)}")
    for i in range(warmup):
        store.search(queries[(i % calls) * batch : (i % calls + 1) * batch], K, **knob)
    elapsed, found = [], []
    for i in range(max(calls, MIN_CALLS)):
        q = queries[(i % calls) * batch : (i % calls + 1) * batch]
        t0 = clock()
        result = store.search(q, K, **knob)
        elapsed.append(clock() - t0)
        if i < calls:
            found.append(result.ids)
    ms = np.asarray(elapsed) * 1e3
    recall = recall_at_k(np.concatenate(found), truth[: calls * batch], K)
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), recall


@dataclass(frozen=True)
class Plan:
    index_types: list[str]
    sizes: list[int]
    params: dict[str, list[int]]  # index type -> search parameter values (flat: [0])
    batches: list[int]
    dim: int
    n_queries: int
    warmup: int
    seed: int
    source: str
    clock: str = (
        "wall"  # wall: time.perf_counter; cpu: time.thread_time (FAISS runs in this thread at 1 thread)
    )


def calibrate(
    plan: Plan,
    data: Callable[[int], tuple[np.ndarray, np.ndarray]],
    progress: Callable[[str, int], None] = lambda what, done: None,
) -> Iterator[tuple[TableRow, float]]:
    """Yield (row, build seconds) per index type, size, search parameter and batch, in that nesting."""
    from fleettwin.live.faiss_store import IndexSpec, VectorStore

    clock = time.thread_time if plan.clock == "cpu" else time.perf_counter
    done = 0
    for n in plan.sizes:
        base, queries = data(n)
        progress(f"exact top-{K}, {n:,} vectors", done)
        t0 = time.perf_counter()
        exact = VectorStore.build(IndexSpec(index_type="flat", dim=plan.dim), base)
        exact_build_s = time.perf_counter() - t0
        truth = exact.search(queries, K).ids
        for index_type in plan.index_types:
            progress(f"building {index_type}, {n:,} vectors", done)
            t0 = time.perf_counter()
            spec = IndexSpec(index_type=index_type, dim=plan.dim)
            store = exact if index_type == "flat" else VectorStore.build(spec, base, seed=plan.seed)
            build_s = exact_build_s if index_type == "flat" else time.perf_counter() - t0
            for param in plan.params[index_type]:
                if store.spec.nlist is not None and param > store.spec.nlist:
                    done += len(plan.batches)  # nprobe beyond nlist would only repeat nprobe = nlist
                    continue
                for batch in plan.batches:
                    progress(f"{index_type} {n:,} param {param} batch {batch}", done)
                    p50, p95, recall = time_searches(
                        store, queries, truth, param=param, batch=batch, warmup=plan.warmup, clock=clock
                    )
                    done += 1
                    progress(f"{index_type} {n:,} param {param} batch {batch}", done)
                    yield (
                        TableRow(
                            index_type=index_type,
                            hardware=hardware_label(index_type),
                            n_vectors=len(base),
                            dim=plan.dim,
                            search_param=param,
                            latency_ms_p50=round(p50, 4),
                            latency_ms_p95=round(p95, 4),
                            recall_at_10=round(recall, 4),
                            batch=batch,
                            source=plan.source,
                        ),
                        build_s,
                    )
            del store


def faiss_threads(n: int) -> None:
    import faiss

    faiss.omp_set_num_threads(n)


# --- command ------------------------------------------------------------------------------------------------
def command_line(args: argparse.Namespace, sizes: list[int], index_types: list[str]) -> str:
    """The command that reproduces these rows (everything that changes a number; not --out)."""
    parts = [
        "fleettwin",
        "data",
        "calibrate-retrieval",
        "--sizes",
        ",".join(map(str, sizes)),
        "--dim",
        str(args.dim),
        "--index-types",
        ",".join(index_types),
        "--nprobe",
        args.nprobe,
        "--ef-search",
        args.ef_search,
        "--batch",
        args.batch,
        "--queries",
        str(args.queries),
        "--warmup",
        str(args.warmup),
        "--seed",
        str(args.seed),
        "--threads",
        str(args.threads),
        "--clock",
        args.clock,
    ]
    if "cagra" in index_types:
        parts += ["--itopk", args.itopk]
    if args.corpus:
        parts += ["--corpus", str(args.corpus), "--embedder", args.embedder]
    return shlex.join(parts)


def make_plan(args: argparse.Namespace, corpus_size: int | None) -> Plan:
    from fleettwin.live.faiss_store import (
        CPU_INDEX_TYPES,
        GPU_INDEX_TYPES,
        INDEX_TYPES,
        SEARCH_PARAM,
        num_gpus,
        require_gpu,
    )

    default_types = list(CPU_INDEX_TYPES) + (list(GPU_INDEX_TYPES) if num_gpus() else [])
    index_types = (
        [s.strip() for s in args.index_types.split(",") if s.strip()] if args.index_types else default_types
    )
    for t in index_types:
        if t not in INDEX_TYPES:
            raise ConfigError(
                f"--index-types: unknown index type {t!r}; expected one of: {', '.join(INDEX_TYPES)}"
            )
        if t in GPU_INDEX_TYPES:
            require_gpu(t)
    if corpus_size is not None:
        sizes = parse_ints("--sizes", args.sizes) if args.sizes else [corpus_size]
        if max(sizes) > corpus_size:
            raise ConfigError(
                f"--sizes: {max(sizes)} exceeds the {corpus_size} corpus lines left after --queries"
            )
    else:
        sizes = parse_ints("--sizes", args.sizes or "10k,100k")
    if args.dim < 1 or args.queries < 1 or args.warmup < 0 or args.threads < 1:
        raise ConfigError("--dim, --queries and --threads must be >= 1 and --warmup >= 0")
    if args.clock == "cpu" and args.threads != 1:
        raise ConfigError("--clock cpu times the calling thread only, so it needs --threads 1")
    knobs = {
        "nprobe": parse_ints("--nprobe", args.nprobe),
        "ef_search": parse_ints("--ef-search", args.ef_search),
        "itopk_size": parse_ints("--itopk", args.itopk),
    }
    params = {t: knobs[SEARCH_PARAM[t]] if SEARCH_PARAM[t] else [0] for t in index_types}
    batches = parse_ints("--batch", args.batch)
    if max(batches) > args.queries:
        raise ConfigError(f"--batch {max(batches)} is larger than --queries {args.queries}")
    return Plan(
        index_types=index_types,
        sizes=sizes,
        params=params,
        batches=batches,
        dim=args.dim,
        n_queries=args.queries,
        warmup=args.warmup,
        seed=args.seed,
        clock=args.clock,
        source=command_line(args, sizes, index_types),
    )


def run(args: argparse.Namespace) -> int:
    import pandas as pd
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from fleettwin.io import write_csv
    from fleettwin.live.embed import make_embedder

    console = Console()
    plan = make_plan(args, sys.maxsize if args.corpus else None)  # bad flags fail before any embedding work
    faiss_threads(args.threads)
    if args.corpus:
        embedder = make_embedder(args.embedder, {"dim": args.dim} if args.embedder == "hashing" else None)
        if embedder.dim != args.dim:
            raise ConfigError(
                f"--dim {args.dim} does not match embedder {args.embedder!r} ({embedder.dim} dimensions)"
            )
        base_all, queries = corpus_data(args.corpus, embedder, args.queries, args.seed)
        plan = make_plan(args, len(base_all))
        data = lambda n: (base_all[:n], queries)  # noqa: E731
    else:
        data = lambda n: synthetic_data(n, plan.dim, plan.n_queries, plan.seed)  # noqa: E731
    total = len(plan.sizes) * len(plan.batches) * sum(len(plan.params[t]) for t in plan.index_types)
    rows, builds = [], {}
    with Progress(
        TextColumn("[bold]calibrating[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=args.quiet,
        transient=True,
    ) as bar:
        task = bar.add_task("", total=total)
        for row, build_s in calibrate(
            plan, data, lambda what, done: bar.update(task, description=what, completed=done)
        ):
            rows.append(row)
            builds[(row.index_type, row.n_vectors)] = build_s
    frame = pd.DataFrame([[getattr(r, c) for c in COLUMNS] for r in rows], columns=list(COLUMNS))
    console.print(results_table(frame, builds, Table))
    write_csv(args.out, frame)
    console.print(f"wrote {args.out} ({len(frame)} rows)\nsource: {plan.source}")
    return 0


def results_table(frame: Any, builds: dict[tuple[str, int], float], table_cls: Any) -> Any:
    hardware = ", ".join(dict.fromkeys(frame["hardware"])) or "?"
    table = table_cls(title=f"FAISS search on {hardware}, recall@{K} vs flat")
    for name in ("index", "vectors", "param", "batch", "p50 ms", "p95 ms", "recall@10", "build s"):
        table.add_column(name, justify="left" if name == "index" else "right")
    for r in frame.itertuples():
        table.add_row(
            r.index_type,
            f"{r.n_vectors:,}",
            str(r.search_param),
            str(r.batch),
            f"{r.latency_ms_p50:.3f}",
            f"{r.latency_ms_p95:.3f}",
            f"{r.recall_at_10:.3f}",
            f"{builds[(r.index_type, r.n_vectors)]:.1f}",
        )
    return table
