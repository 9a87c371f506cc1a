"""Both vector stores behind the one protocol, on real lancedb and qdrant-client local mode."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from pdserve.deployments.config import VectorStoreConfig
from pdserve.deployments.pipelines.chunking import Chunk
from pdserve.deployments.pipelines.stores import StoreUnavailable, VectorStore, open_store

DIM = 16


def unit(seed: int) -> list[float]:
    rng = random.Random(seed)
    v = [rng.gauss(0, 1) for _ in range(DIM)]
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def fill(store: VectorStore, documents: int = 12, chunks: int = 5) -> None:
    for d in range(documents):
        store.replace_document(f"doc{d}", [Chunk(f"doc{d}", i, f"text {d}.{i}")
                                           for i in range(chunks)],
                               [unit(d * 100 + i) for i in range(chunks)])


@pytest.fixture(params=["lancedb", "lancedb-indexed", "qdrant-local", "qdrant-memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> VectorStore:
    configs = {
        "lancedb": VectorStoreConfig(kind="lancedb", uri=str(tmp_path / "lance")),
        # past index_min_rows the table gets an ANN index; results must not change here
        "lancedb-indexed": VectorStoreConfig(kind="lancedb", uri=str(tmp_path / "lance"),
                                             index_min_rows=40),
        "qdrant-local": VectorStoreConfig(kind="qdrant", uri=str(tmp_path / "qdrant")),
        "qdrant-memory": VectorStoreConfig(kind="qdrant", uri=":memory:"),
    }
    return open_store(configs[request.param], "docs")


def test_an_empty_store_searches_as_empty(store: VectorStore) -> None:
    assert store.count() == 0
    assert store.search(unit(1), 3) == []
    assert store.delete_document("nothing") == 0


def test_search_returns_the_nearest_chunks_best_first(store: VectorStore) -> None:
    fill(store)
    hits = store.search(unit(703), 3)  # exactly the vector of doc7, chunk 3
    assert (hits[0].document, hits[0].chunk, hits[0].text) == ("doc7", 3, "text 7.3")
    assert hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert len(hits) == 3
    assert hits[0].score > hits[1].score >= hits[2].score


def test_replacing_a_document_never_duplicates(store: VectorStore) -> None:
    fill(store)
    assert store.count() == 60
    fill(store)  # the same documents again
    assert store.count() == 60
    store.replace_document("doc3", [Chunk("doc3", 0, "new")], [unit(9999)])
    assert store.count() == 56
    (hit,) = store.search(unit(9999), 1)
    assert (hit.document, hit.chunk, hit.text) == ("doc3", 0, "new")
    assert store.delete_document("doc3") == 1
    assert store.count() == 55


def test_an_unreachable_server_raises_store_unavailable_naming_it() -> None:
    store = open_store(VectorStoreConfig(kind="qdrant", uri="http://127.0.0.1:9"), "docs")
    with pytest.raises(StoreUnavailable, match=r"qdrant at 'http://127.0.0.1:9'.*search"):
        store.search(unit(1), 3)


def test_an_unknown_store_kind_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown vector store 'milvus'; known: lancedb, qdrant"):
        open_store(VectorStoreConfig(kind="milvus"), "docs")


def test_lancedb_builds_its_index_once_past_the_threshold(tmp_path: Path) -> None:
    store = open_store(VectorStoreConfig(kind="lancedb", uri=str(tmp_path), index_min_rows=40),
                       "docs")
    fill(store, documents=4)  # 20 chunks: exact search
    assert not store._table.list_indices()  # type: ignore[attr-defined]
    fill(store)  # 60 chunks: indexed
    (index,) = store._table.list_indices()  # type: ignore[attr-defined]
    assert index.columns == ["vector"]
    assert store.search(unit(703), 1)[0].text == "text 7.3"
