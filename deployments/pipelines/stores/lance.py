"""LanceDB: embedded, on a local directory or an object-store URI; the default store.

Exact (flat) search until the table reaches `index_min_rows`, then an ANN index is built
once; rows added later are still searched (LanceDB scans what the index does not cover).
Reads see other processes' writes at once (`read_consistency_interval=0`), so rows written
by another retriever replica or process are found by the next query.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import lancedb
import pyarrow as pa
from lancedb.index import IvfHnswSq

from pdserve.deployments.config.pipeline import VectorStoreConfig
from pdserve.deployments.pipelines.chunking import Chunk
from pdserve.deployments.pipelines.context import Hit
from pdserve.deployments.pipelines.stores.base import StoreUnavailable

logger = logging.getLogger(__name__)

DEFAULT_URI = Path.home() / ".cache" / "pdserve" / "vectors"


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class LanceDBStore:
    def __init__(self, config: VectorStoreConfig, collection: str) -> None:
        self.uri = os.path.expanduser(config.uri) if config.uri else str(DEFAULT_URI)
        self.name = collection
        self.index_min_rows = config.index_min_rows
        self.options = config.options
        self._db: Any = None
        self._table: Any = None

    def _guard(self, action: str, call: Any) -> Any:
        try:
            return call()
        except Exception as exc:  # any backend failure: one clear, retryable error
            raise StoreUnavailable(
                f"vector store lancedb at {self.uri!r} (table {self.name!r}) failed to "
                f"{action}: {type(exc).__name__}: {exc}"
            ) from exc

    def _connect(self) -> Any:
        if self._db is None:
            self._db = lancedb.connect(self.uri, read_consistency_interval=timedelta(0),
                                       **self.options)
        return self._db

    def _open(self, dim: int | None = None) -> Any:
        """The table, or None while it does not exist and `dim` is not known yet."""
        if self._table is not None:
            return self._table
        db = self._connect()
        if self.name in db.list_tables().tables:
            self._table = db.open_table(self.name)
        elif dim is not None:
            schema = pa.schema([
                ("id", pa.string()), ("document", pa.string()), ("chunk", pa.int32()),
                ("text", pa.string()), ("vector", pa.list_(pa.float32(), dim)),
            ])
            self._table = db.create_table(self.name, schema=schema, exist_ok=True)
        return self._table

    def replace_document(
        self, document: str, chunks: list[Chunk], vectors: list[list[float]]
    ) -> None:
        """One commit (merge on chunk id, delete the document's other rows), so readers never
        see the document missing and concurrent writers cannot leave duplicates."""
        def write() -> Any:
            table = self._open(dim=len(vectors[0]) if vectors else None)
            if table is None:
                return None
            if not chunks:
                table.delete(f"document = {_quote(document)}")
                return table
            rows = [{"id": f"{c.document}#{c.index}", "document": c.document, "chunk": c.index,
                     "text": c.text, "vector": v} for c, v in zip(chunks, vectors, strict=True)]
            (table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
             .when_not_matched_by_source_delete(f"document = {_quote(document)}").execute(rows))
            return table

        table = self._guard("write", write)
        if table is not None:
            self._maybe_index(table)

    def _maybe_index(self, table: Any) -> None:
        """Build the ANN index once the table is big enough; a failure leaves exact search
        (and the write that triggered it) in place and is retried on a later write."""
        try:
            if table.count_rows() >= self.index_min_rows and not table.list_indices():
                table.create_index("vector", config=IvfHnswSq(distance_type="cosine"))
        except Exception:  # the data is stored; only the speed-up is missing
            logger.exception("lancedb %s: building the vector index failed", self.name)

    def delete_document(self, document: str) -> int:
        def delete() -> int:
            table = self._open()
            if table is None:
                return 0
            before = table.count_rows(f"document = {_quote(document)}")
            table.delete(f"document = {_quote(document)}")
            return int(before)

        return self._guard("delete", delete)

    def search(self, vector: list[float], k: int) -> list[Hit]:
        def search() -> list[Hit]:
            table = self._open()
            if table is None:
                return []
            rows = table.search(vector).distance_type("cosine").limit(k).to_list()
            return [Hit(document=r["document"], chunk=int(r["chunk"]), text=r["text"],
                        score=1.0 - float(r["_distance"])) for r in rows]

        return self._guard("search", search)

    def count(self) -> int:
        def count() -> int:
            table = self._open()
            return 0 if table is None else int(table.count_rows())

        return self._guard("count", count)
