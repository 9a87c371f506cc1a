"""A pipeline's retriever deployment: embeds through the embedding pool, searches the store.

It is the only writer of its pipeline's store (online upserts and `pdserve ingest` both come
through it), so every chunk is embedded by the same served model that embeds the questions,
and qdrant's local mode (one process per directory) works as is. Store calls block, so they
run on one worker thread per replica (clients such as qdrant's local mode are not
thread-safe); the replica keeps answering meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from pdserve import tracing
from pdserve.deployments.config.pipeline import PipelineConfig
from pdserve.deployments.pipelines.chunking import Document, chunk_document
from pdserve.deployments.pipelines.context import Hit, Retrieval
from pdserve.deployments.pipelines.stores import open_store

#: Chunks per call to the embedding pool while ingesting.
EMBED_BATCH = 64


@serve.deployment
class PipelineRetriever:
    def __init__(self, pipeline: PipelineConfig, embedder: DeploymentHandle) -> None:
        self.config = pipeline
        self.embedder = embedder
        self.store = open_store(self.config.store, self.config.name)  # connects lazily
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")

    async def _in_store(self, call: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, call, *args)

    async def _embed(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), EMBED_BATCH):
            outputs = await self.embedder.embed.remote(texts[start:start + EMBED_BATCH],
                                                        truncate_prompt_tokens=-1)
            vectors += [o.outputs.data.tolist() for o in outputs]
        return vectors

    async def retrieve(self, query: str, top_k: int | None = None) -> Retrieval:
        """The top-k chunks for `query`, best first, with the time each stage took."""
        started = time.perf_counter()
        with tracing.active("pdserve.embed"):
            (vector,) = await self._embed([query])
        embedded = time.perf_counter()
        with tracing.active("pdserve.search") as span:
            hits: list[Hit] = await self._in_store(self.store.search, vector,
                                                   top_k or self.config.top_k)
            span.set_attribute("pdserve.search.hits", len(hits))
        return Retrieval(hits, embed_ms=(embedded - started) * 1e3,
                         search_ms=(time.perf_counter() - embedded) * 1e3)

    async def upsert(self, documents: list[Document]) -> dict[str, int]:
        """Chunk, embed and store documents; a document already stored is replaced whole."""
        chunking = self.config.chunking
        chunked = [chunk_document(d.id, d.text, chunking.max_words, chunking.overlap_words)
                   for d in documents]
        vectors = await self._embed([c.text for chunks in chunked for c in chunks])
        offset = 0
        for document, chunks in zip(documents, chunked, strict=True):
            mine = vectors[offset:offset + len(chunks)]
            offset += len(chunks)
            await self._in_store(self.store.replace_document, document.id, chunks, mine)
        return {"documents": len(documents), "chunks": offset}

    async def delete(self, document: str) -> int:
        return await self._in_store(self.store.delete_document, document)

    async def count(self) -> int:
        return await self._in_store(self.store.count)
