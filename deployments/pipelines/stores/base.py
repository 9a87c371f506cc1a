"""The small protocol every vector store implements, and the one error callers handle."""

from __future__ import annotations

from typing import Protocol

from pdserve.deployments.pipelines.chunking import Chunk
from pdserve.deployments.pipelines.context import Hit


class StoreUnavailable(RuntimeError):
    """The store could not be reached or failed; the request gets a 503, the server lives."""


class VectorStore(Protocol):
    """Chunks with unit-length vectors, searchable by cosine similarity.

    Every method may raise `StoreUnavailable`. A store creates its table or collection on the
    first write (it learns the vector size then), so an empty or missing one searches as empty.
    """

    def replace_document(
        self, document: str, chunks: list[Chunk], vectors: list[list[float]]
    ) -> None:
        """Make `chunks` the document's only chunks (re-ingesting never duplicates)."""

    def delete_document(self, document: str) -> int:
        """Remove a document's chunks; return how many there were."""

    def search(self, vector: list[float], k: int) -> list[Hit]:
        """The `k` chunks closest to `vector`, best first."""

    def count(self) -> int:
        """Chunks stored."""
