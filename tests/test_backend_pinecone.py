"""Pinecone adapter against a local REST stand-in of Pinecone (``pinecone_stub``), not the cloud."""

from __future__ import annotations

import json
import logging
import socket
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from backend_contract import check_contract
from pinecone_stub import PineconeStub

from dagster_brain.similarity.backends import pinecone_backend as pb
from dagster_brain.similarity.backends.base import BackendUnavailable
from dagster_brain.similarity.backends.pinecone_backend import PineconeBackend, index_name_for
from dagster_brain.similarity.backends.registry import backend_class


@pytest.fixture(scope="module")
def stub():
    with PineconeStub() as server:
        yield server


@pytest.fixture
def make(stub, tmp_path):
    """(collection, dim, metric, **params) -> a backend on the stub."""
    opened: list[PineconeBackend] = []

    def _make(collection: str, dim: int, metric: str, **params) -> PineconeBackend:
        params = {"api_key": stub.api_key, "host": stub.url, **params}
        backend = PineconeBackend(collection, dim, metric, tmp_path, **params)
        opened.append(backend)
        return backend

    yield _make
    for backend in opened:
        backend.close()


def _calls(stub: PineconeStub, path: str) -> int:
    return sum(1 for _, p, _ in stub.calls if p == path)


def test_registry_names_the_adapter():
    assert backend_class("pinecone") is PineconeBackend


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "dotproduct"])
def test_contract(make, stub, metric):
    check_contract(make, metric=metric, min_recall=1.0)
    assert stub.indexes == {}  # drop() deleted the index


@pytest.mark.parametrize(
    ("setting", "value"), [("FILTER_BATCH", 7), ("FILTER_MAX_IDS", 10), ("MAX_K", 4)]
)
def test_contract_through_filter_batches_and_exact_scans(make, monkeypatch, setting, value):
    """Views split over several ``$in`` filters, or too big for filters, or k over the cap."""
    monkeypatch.setattr(pb, setting, value)
    check_contract(make, metric="euclidean", n=120, min_recall=1.0)


def test_scores_follow_pinecone_conventions(stub):
    """The stub scores euclidean as a squared distance, cosine/dotproduct as similarities."""
    from pinecone import Pinecone

    pc = Pinecone(api_key=stub.api_key, host=stub.url)
    got = {}
    for metric in ("cosine", "euclidean", "dotproduct"):
        desc = pc.indexes.create(name=f"conv-{metric}", dimension=2, metric=metric)
        assert desc.host.startswith("http://127.0.0.1:") and desc.status.ready
        index = pc.index(host=desc.host)
        index.upsert(vectors=[("a", [3.0, 4.0])])
        got[metric] = index.query(vector=[1.0, 0.0], top_k=1).matches[0].score
        index.close()
        pc.indexes.delete(f"conv-{metric}")
    pc.close()
    assert got["cosine"] == pytest.approx(0.6)
    assert got["dotproduct"] == pytest.approx(3.0)
    assert got["euclidean"] == pytest.approx(20.0)  # ||(2, 4)||^2, not its square root


def test_wire_calls_use_the_sdk_api_version_and_batches(make, stub):
    stub.calls.clear()
    backend = make("wire", 8, "cosine")
    rng = np.random.default_rng(1)
    backend.upsert([f"s{i}" for i in range(250)], rng.normal(size=(250, 8)))
    assert _calls(stub, "/vectors/upsert") == 3  # at most 100 vectors per request
    backend.query(rng.normal(size=(4, 8)), 3)
    assert _calls(stub, "/query") == 4  # one request per query vector
    assert {v for _, _, v in stub.calls} == {"2026-07"}
    backend.drop()


def test_wide_vectors_stay_under_the_request_size_cap(make, stub):
    stub.calls.clear()
    backend = make("wide", 5000, "dotproduct")
    X = np.random.default_rng(2).normal(size=(40, 5000)).astype(np.float32)
    backend.upsert([f"w{i}" for i in range(40)], X)  # the stub refuses bodies over 2 MB
    assert _calls(stub, "/vectors/upsert") >= 3
    assert backend.count() == 40
    backend.drop()


def test_wrong_api_key_is_a_clear_error(stub, tmp_path):
    with pytest.raises(BackendUnavailable, match="API key was rejected") as err:
        PineconeBackend("c", 4, "cosine", tmp_path, api_key="not-the-key", host=stub.url)
    assert stub.url in str(err.value)
    assert "not-the-key" not in str(err.value)


def test_unreachable_host_fails_fast_naming_the_url(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    with pytest.raises(BackendUnavailable, match=f"similarity backend 'pinecone' at {url}"):
        PineconeBackend("c", 4, "cosine", tmp_path, api_key="k", host=url)
    assert time.perf_counter() - start < 5.0


def test_reopening_reuses_the_index(make, stub):
    stub.calls.clear()
    first = make("Reopen_Me", 4, "euclidean")
    assert first.index_name == "reopen-me"
    first.upsert(["a", "b"], np.eye(2, 4))
    first.close()
    again = make("Reopen_Me", 4, "euclidean")
    assert again.count() == 2
    assert _calls(stub, "/indexes") == 1  # one POST /indexes: the second open only described it
    with pytest.raises(ValueError, match="exists with dimension 4 and metric 'euclidean'"):
        make("Reopen_Me", 8, "euclidean")
    again.drop()


def test_ids_longer_than_pinecone_allows_are_refused(make):
    backend = make("long-ids", 4, "cosine")
    long_id = "x" * 600
    with pytest.raises(
        ValueError, match=r"id 'x{40}\.\.\.x{20}' \(600 characters, 600 as a Pinecone id\).*1-512"
    ):
        backend.upsert(["ok", long_id], np.ones((2, 4)))
    backend.upsert(["y" * 512], np.ones((1, 4)))  # the limit itself is fine
    assert backend.count() == 1
    backend.drop()


def test_namespaces_share_an_index(make, stub):
    a = make("ns-a", 4, "cosine", index_name="shared", namespace="a")
    b = make("ns-b", 4, "cosine", index_name="shared", namespace="b")
    a.upsert(["a1", "a2"], np.eye(2, 4) + 0.1)
    b.upsert(["b1"], np.ones((1, 4)))
    assert (a.count(), b.count()) == (2, 1)
    assert a.fetch(None)[0] == ["a1", "a2"]
    assert sorted(a.query(np.ones((1, 4)), 5)[0][0]) == ["a1", "a2"]  # b's vector not seen
    a.drop()  # only its namespace: b still has vectors
    assert "shared" in stub.indexes and b.count() == 1
    b.drop()
    assert "shared" not in stub.indexes


def test_index_names_follow_pinecone_rules():
    assert index_name_for("brain_My Dataset_sim_1a2b3c4d") == "brain-my-dataset-sim-1a2b3c4d"
    long_a, long_b = "brain_" + "d" * 60 + "_a", "brain_" + "d" * 60 + "_b"
    name_a, name_b = index_name_for(long_a), index_name_for(long_b)
    assert len(name_a) <= 45 and name_a != name_b
    assert index_name_for("___").startswith("brain-")


def test_describe_names_the_index_but_no_secret(make, stub):
    backend = make("described", 4, "cosine")
    info = backend.describe()
    assert info["backend"] == "pinecone" and info["index_name"] == "described"
    assert info["index_host"].startswith("http://127.0.0.1:")
    assert stub.api_key not in repr(info) and "api_key" not in backend.params
    backend.drop()


def test_missing_api_key_is_a_clear_error(monkeypatch, stub, tmp_path):
    monkeypatch.delenv("PINECONE_API_KEY", raising=False)
    with pytest.raises(ValueError, match="similarity backend 'pinecone': No API key"):
        PineconeBackend("c", 4, "cosine", tmp_path, host=stub.url)


def test_the_api_key_never_reaches_the_logs(make, stub, caplog):
    with caplog.at_level(logging.DEBUG):
        backend = make("quiet", 4, "cosine")
        backend.upsert(["a"], np.ones((1, 4)))
        backend.query(np.ones((1, 4)), 1, allowed=["a"])
        backend.drop()
    assert caplog.records and stub.api_key not in caplog.text


def test_stub_answers_bad_requests_like_pinecone(stub):
    from pinecone import Pinecone
    from pinecone.errors.exceptions import ApiError, NotFoundError

    pc = Pinecone(api_key=stub.api_key, host=stub.url)
    with pytest.raises(NotFoundError, match="Resource nope not found"):
        pc.indexes.describe("nope")
    # the SDK checks names itself, so send this one by hand
    request = urllib.request.Request(
        f"{stub.url}/indexes",
        data=json.dumps({"name": "Bad_Name", "dimension": 2}).encode(),
        headers={"Api-Key": stub.api_key, "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(request, timeout=5)
    body = json.loads(bad.value.read())
    assert bad.value.code == 400 and body["error"]["code"] == "INVALID_ARGUMENT"
    assert "Invalid index name 'Bad_Name'" in body["error"]["message"]
    index = pc.index(host=pc.indexes.create(name="bad-requests", dimension=2).host)
    with pytest.raises(ApiError, match="Vector dimension 3 does not match .* index 2") as err:
        index.upsert(vectors=[("a", [1.0, 2.0, 3.0])])
    assert err.value.status_code == 400
    index.upsert(vectors=[("a", [1.0, 0.0], {"tag": "x", "n": 3}), ("b", [0.0, 1.0], {"n": 5})])
    either = {"$or": [{"tag": "x"}, {"n": {"$gt": 4}}]}
    hits = index.query(vector=[1.0, 1.0], top_k=5, filter=either)
    assert sorted(m.id for m in hits.matches) == ["a", "b"]
    hits = index.query(vector=[1.0, 1.0], top_k=5, filter={"n": {"$lte": 4}, "tag": {"$in": ["x"]}})
    assert [m.id for m in hits.matches] == ["a"]
    with pytest.raises(ApiError, match="unsupported operator"):
        index.query(vector=[1.0, 1.0], top_k=1, filter={"n": {"$near": 1}})
    index.close()
    pc.indexes.delete("bad-requests")
    pc.close()
