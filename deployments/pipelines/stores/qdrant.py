"""Qdrant: a server or cluster by URL (scale beyond one machine), or qdrant-client's local
mode (a directory or `:memory:`), which speaks the same API and is what CI tests.

Point ids are UUIDv5 of (document, position), so re-ingesting overwrites in place; a
document's old chunks beyond its new length are deleted afterwards by a payload filter.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from qdrant_client import QdrantClient, models

from pdserve.deployments.config.pipeline import VectorStoreConfig
from pdserve.deployments.pipelines.chunking import Chunk
from pdserve.deployments.pipelines.context import Hit
from pdserve.deployments.pipelines.stores.base import StoreUnavailable

_NAMESPACE = uuid.UUID("6f1c2e0a-5b1d-4a59-9c55-2f0d8c7e5a10")


def _client(location: str, options: dict[str, Any]) -> QdrantClient:
    if location.startswith(("http://", "https://")):
        return QdrantClient(url=location, check_compatibility=False, **options)
    if location == ":memory:":
        return QdrantClient(location=":memory:", **options)
    return QdrantClient(path=os.path.expanduser(location), **options)


def _by_document(document: str) -> models.Filter:
    return models.Filter(must=[models.FieldCondition(
        key="document", match=models.MatchValue(value=document))])


class QdrantStore:
    def __init__(self, config: VectorStoreConfig, collection: str) -> None:
        self.location = config.uri or ":memory:"
        self.name = collection
        self.options = config.options
        self._client: QdrantClient | None = None
        self._exists = False

    def _guard(self, action: str, call: Any) -> Any:
        try:
            return call()
        except Exception as exc:  # connection refused, timeouts, server errors
            raise StoreUnavailable(
                f"vector store qdrant at {self.location!r} (collection {self.name!r}) failed "
                f"to {action}: {type(exc).__name__}: {exc}"
            ) from exc

    def _ready(self, dim: int | None = None) -> bool:
        """Connect, and create the collection once `dim` is known; False: nothing stored yet."""
        if self._client is None:
            self._client = _client(self.location, self.options)
        if not self._exists:
            self._exists = self._client.collection_exists(self.name)
        if not self._exists and dim is not None:
            self._client.create_collection(self.name, vectors_config=models.VectorParams(
                size=dim, distance=models.Distance.COSINE))
            self._exists = True
        return self._exists

    def replace_document(
        self, document: str, chunks: list[Chunk], vectors: list[list[float]]
    ) -> None:
        def write() -> None:
            if not self._ready(dim=len(vectors[0]) if vectors else None):
                return
            assert self._client is not None
            if chunks:  # overwrite in place first: the document never goes missing
                self._client.upsert(self.name, wait=True, points=[
                    models.PointStruct(
                        id=str(uuid.uuid5(_NAMESPACE, f"{c.document}#{c.index}")), vector=v,
                        payload={"document": c.document, "chunk": c.index, "text": c.text})
                    for c, v in zip(chunks, vectors, strict=True)])
            stale = _by_document(document)  # then drop chunks past the new length
            stale.must.append(models.FieldCondition(  # type: ignore[union-attr]
                key="chunk", range=models.Range(gte=len(chunks))))
            self._client.delete(self.name, points_selector=stale, wait=True)

        self._guard("write", write)

    def delete_document(self, document: str) -> int:
        def delete() -> int:
            if not self._ready():
                return 0
            assert self._client is not None
            before = self._client.count(self.name, count_filter=_by_document(document),
                                        exact=True).count
            self._client.delete(self.name, points_selector=_by_document(document), wait=True)
            return int(before)

        return self._guard("delete", delete)

    def search(self, vector: list[float], k: int) -> list[Hit]:
        def search() -> list[Hit]:
            if not self._ready():
                return []
            assert self._client is not None
            points = self._client.query_points(self.name, query=vector, limit=k,
                                               with_payload=True).points
            return [Hit(document=p.payload["document"], chunk=int(p.payload["chunk"]),
                        text=p.payload["text"], score=float(p.score)) for p in points]

        return self._guard("search", search)

    def count(self) -> int:
        def count() -> int:
            if not self._ready():
                return 0
            assert self._client is not None
            return int(self._client.count(self.name, exact=True).count)

        return self._guard("count", count)
