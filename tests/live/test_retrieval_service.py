"""The retrieval service (``live/retrieval_service.py``, ``fleettwin live retrieval``): collections saved and
loaded with their embedder and passages, text and vector queries against a real FAISS index, the search knob,
every bad request a 400/404 naming what is wrong, the bearer token, and the per-collection Prometheus metrics.
Hashing embedder and tiny indexes, so the whole file runs in a few seconds."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from fleettwin.cli import main
from fleettwin.live.embed import make_embedder
from fleettwin.live.faiss_store import IndexSpec, VectorStore
from fleettwin.live.promtext import parse
from fleettwin.live.retrieval_service import (
    build_collection,
    create_retrieval_app,
    load_collection,
    save_collection,
)
from fleettwin.live.server import serve_in_thread
from fleettwin.models.errors import ConfigError

TOPICS = [
    "gpu",
    "fleet",
    "kv",
    "cache",
    "prefill",
    "decode",
    "router",
    "tenant",
    "quota",
    "faiss",
    "index",
    "probe",
    "shadow",
    "controller",
    "gateway",
    "certificate",
    "replica",
    "spot",
    "region",
    "latency",
]
EMB = {"dim": 64}


def corpus(n: int) -> list[dict]:
    """n passages of distinct word triples (so each one's own text finds it first)."""
    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        words = rng.choice(TOPICS, size=3, replace=False)
        out.append(
            {"text": f"passage {i} about " + " ".join(words) + f" number{i}", "source": f"doc{i % 4}.md"}
        )
    return out


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("stores")
    passages = corpus(64)
    build_collection(d / "flat.faiss", passages, embedder_params=EMB)
    build_collection(d / "ivf.faiss", passages, embedder_params=EMB, index_type="ivf_flat")
    vecs = np.random.default_rng(1).standard_normal((20, 8)).astype(np.float32)
    save_collection(
        d / "raw.faiss", VectorStore.build(IndexSpec(index_type="flat", dim=8, metric="l2"), vecs)
    )
    return d, passages, vecs


@pytest.fixture(scope="module")
def service(stores):
    d, _, _ = stores
    cols = {n: load_collection(n, d / f"{n}.faiss") for n in ("flat", "ivf", "raw")}
    with serve_in_thread(create_retrieval_app(cols, token="s3cret-token")) as srv:
        yield srv, cols


def ask(srv, body: dict, token: str | None = "s3cret-token") -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{srv.url}/v1/retrieve", json=body, headers=headers, timeout=10)


def test_a_passages_own_text_finds_it_first_with_its_passage(service, stores):
    srv, _ = service
    _, passages, _ = stores
    for i in (0, 17, 63):
        r = ask(srv, {"collection": "flat", "query": passages[i]["text"], "k": 3})
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["ids"][0] == i and len(got["ids"]) == 3 and got["index_type"] == "flat"
        assert got["scores"][0] == pytest.approx(1.0, abs=1e-5)  # unit vectors, inner product with itself
        assert got["scores"] == sorted(got["scores"], reverse=True)
        assert got["passages"][0] == passages[i]


def test_vector_queries_match_the_store_and_l2_scores_ascend(service, stores):
    srv, cols = service
    _, _, vecs = stores
    q = vecs[5] + 0.01
    got = ask(srv, {"collection": "raw", "vector": q.tolist(), "k": 4}).json()
    want = cols["raw"].store.search(q, 4)
    assert got["ids"] == want.ids[0].tolist() and got["ids"][0] == 5
    assert got["scores"] == pytest.approx(want.distances[0].tolist(), rel=1e-6)
    assert got["scores"] == sorted(got["scores"]) and "passages" not in got  # no passages were stored


def test_ivf_with_every_list_probed_is_the_exact_answer(service, stores):
    srv, cols = service
    _, passages, _ = stores
    nlist = cols["ivf"].store.spec.nlist
    emb = make_embedder("hashing", EMB)
    for i in (3, 40):
        q = {"query": passages[i]["text"] + " decode latency", "k": 5}
        exact = ask(srv, {"collection": "flat", **q}).json()
        probed = ask(srv, {"collection": "ivf", **q, "nprobe": nlist}).json()
        assert probed["scores"] == pytest.approx(exact["scores"], abs=1e-6)  # ids may differ only within ties
        assert probed["ids"][0] == exact["ids"][0] == i
        one = ask(srv, {"collection": "ivf", **q, "nprobe": 1}).json()  # one list: a subset of the vectors
        assert set(one["ids"]) <= set(range(64)) and len(one["ids"]) <= 5
    assert emb.dim == cols["ivf"].store.dim


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"collection": "nope", "query": "x"}, 404, "no collection 'nope'; served: flat, ivf, raw"),
        ({"collection": "flat"}, 400, "exactly one of 'query' (text) and 'vector'"),
        ({"collection": "flat", "query": "x", "vector": [0.0] * 64}, 400, "exactly one of"),
        ({"collection": "flat", "query": "x", "k": 0}, 400, "k: Input should be greater than or equal to 1"),
        ({"collection": "flat", "query": "x", "nprobe": 2}, 400, "nprobe applies to index types"),
        ({"collection": "ivf", "query": "x", "nprobe": 10_000}, 400, "exceeds nlist"),
        ({"collection": "flat", "vector": [0.1, 0.2]}, 400, "dimension 2, the index has dimension 64"),
        (
            {"collection": "raw", "query": "x"},
            400,
            "has no embedder record, so it takes 'vector' queries only",
        ),
        ({"collection": "flat", "query": "x", "filter": 1}, 400, "filter: Extra inputs are not permitted"),
        ({"query": "x"}, 400, "collection: Field required"),
    ],
)
def test_bad_requests_are_refused_naming_the_problem(service, body, status, words):
    srv, _ = service
    r = ask(srv, body)
    assert r.status_code == status and words in r.json()["error"]["message"]


def test_token_guards_v1_only_and_metrics_count_per_collection(service):
    srv, _ = service
    before = parse(httpx.get(f"{srv.url}/metrics").text)

    def count(fams, name, **labels) -> float:
        fam = fams.get(name) or fams.get(f"{name}_total")
        return sum(
            s.value
            for s in (fam.samples if fam else ())
            if s.name.endswith(("_total", "_count")) and all(s.labels.get(k) == v for k, v in labels.items())
        )

    for token in (None, "wrong", "s3cret-token-2"):
        r = ask(srv, {"collection": "flat", "query": "gpu"}, token=token)
        assert r.status_code == 401 and r.json()["error"]["type"] == "AuthenticationError"
    assert httpx.get(f"{srv.url}/health").status_code == 200  # open, as on vLLM
    r = httpx.get(f"{srv.url}/v1/collections", headers={"Authorization": "Bearer s3cret-token"})
    assert {c["name"]: c["vectors"] for c in r.json()["data"]} == {"flat": 64, "ivf": 64, "raw": 20}
    assert ask(srv, {"collection": "flat", "query": "gpu"}).status_code == 200
    assert ask(srv, {"collection": "flat", "query": "gpu", "k": -1}).status_code == 400
    assert ask(srv, {"collection": "elsewhere", "query": "gpu"}).status_code == 404
    after = parse(httpx.get(f"{srv.url}/metrics").text)
    for labels, delta in (
        ({"collection": "flat", "status": "200"}, 1),
        ({"collection": "flat", "status": "400"}, 1),
        ({"collection": "(unknown)", "status": "404"}, 1),
    ):
        name = "fleettwin_retrieval_requests"
        assert count(after, name, **labels) - count(before, name, **labels) == delta
    hist = "fleettwin_retrieval_request_duration_seconds"
    assert count(after, hist, collection="flat") - count(before, hist, collection="flat") == 1
    vectors = {
        s.labels["collection"]: s.value for s in after["fleettwin_retrieval_collection_vectors"].samples
    }
    assert vectors == {"flat": 64, "ivf": 64, "raw": 20}


def test_broken_collections_fail_before_serving(tmp_path, stores):
    d, passages, _ = stores
    with pytest.raises(ConfigError, match=r"collection 'x': .*no such index file"):
        load_collection("x", tmp_path / "missing.faiss")
    store = VectorStore.build(
        IndexSpec(index_type="flat", dim=64), make_embedder("hashing", EMB).encode(["a b"])
    )
    with pytest.raises(ConfigError, match="1 passages for 1 vectors|2 passages for 1 vectors"):
        save_collection(tmp_path / "two.faiss", store, passages=[{"text": "a"}, {"text": "b"}])
    save_collection(tmp_path / "dim.faiss", store, embedder="hashing", embedder_params={"dim": 32})
    with pytest.raises(ConfigError, match="makes 32-dimensional vectors, the index has dimension 64"):
        load_collection("dim", tmp_path / "dim.faiss")
    (tmp_path / "dim.faiss.embedder.json").write_text(json.dumps({"name": "nope"}))
    with pytest.raises(ConfigError, match="unknown embedder 'nope'"):
        load_collection("dim", tmp_path / "dim.faiss")
    with pytest.raises(ConfigError, match="serve at least one collection"):
        create_retrieval_app({})


def test_command_builds_a_corpus_and_refuses_bad_arguments(tmp_path, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text(
        "\n\n".join(f"paragraph {i} " + "words that make it long enough " * 3 for i in range(5))
    )
    code = main(
        [
            "serve-retrieval",
            "--build",
            f"kb={docs}",
            "--store-dir",
            str(tmp_path / "s"),
            "--build-only",
            "--embedder-param",
            "dim=32",
        ]
    )
    assert code == 0 and "built kb: 5 passages" in capsys.readouterr().out
    col = load_collection("kb", tmp_path / "s" / "kb.faiss")
    assert col.store.ntotal == 5 and col.embedder_ref == {"name": "hashing", "params": {"dim": 32}}
    assert col.passages[2]["source"].endswith("a.md") and col.passages[2]["text"].startswith("paragraph 2")
    for argv, words in (
        (["--collection", "kb"], "expected NAME=PATH"),
        ([], "give at least one --collection"),
        (["--collection", "a=x", "--collection", "a=y"], "collection names must be distinct"),
        (["--collection", "a=x", "--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
        (["--collection", "a=x", "--tls-cert", "c.pem", "--tls-key", "k.pem"], "no such file c.pem"),
        (["--collection", "a=x", "--token-env", "FLEETTWIN_NO_SUCH_VAR"], "is not set"),
        (["--collection", f"a={tmp_path / 'none.faiss'}"], "no such index file"),
    ):
        assert main(["serve-retrieval", *argv]) == 2
        assert words in capsys.readouterr().err
