"""What a RAG pipeline may say: chunking, vector store, retriever, prompt."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from pdserve.deployments.config.base import StrictModel


class ChunkingConfig(StrictModel):
    """How documents become retrievable chunks: paragraphs, packed or split by sentence."""

    max_words: int = Field(
        200, ge=8, description="Words per chunk at most; longer paragraphs split at sentences."
    )
    overlap_words: int = Field(
        0, ge=0, description="Words a split paragraph's next chunk repeats from the previous."
    )

    @model_validator(mode="after")
    def _overlap_below_size(self) -> ChunkingConfig:
        if self.overlap_words >= self.max_words:
            raise ValueError("overlap_words must be smaller than max_words")
        return self


class VectorStoreConfig(StrictModel):
    """Where a pipeline's chunks and vectors live; `kind` names a registered store."""

    kind: str = Field("lancedb", description="Vector store: `lancedb` (embedded) or `qdrant`.")
    uri: str | None = Field(
        None,
        description="lancedb: a directory or object-store URI (default: "
        "`~/.cache/pdserve/vectors`); qdrant: a server URL (`http://host:6333`), a local "
        "directory, or `:memory:`.",
    )
    collection: str | None = Field(
        None, description="Table (lancedb) or collection (qdrant); default: the pipeline name."
    )
    index_min_rows: int = Field(
        50_000, ge=1,
        description="lancedb: build an ANN index once the table holds this many chunks "
        "(exact search below it).",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra keyword arguments for the store's client (e.g. qdrant `api_key`, "
        "lancedb `storage_options`), passed through.",
    )


DEFAULT_SYSTEM_PROMPT = (
    "Answer the question using only the context below. If the context does not contain the "
    "answer, say so."
)


class RetrieverConfig(StrictModel):
    """A pipeline's retriever deployment (it embeds through the pool and owns the store)."""

    num_replicas: int = Field(1, ge=1, description="Retriever replicas.")
    ray_actor_options: dict[str, Any] = Field(
        default_factory=lambda: {"num_cpus": 0}, description="Ray actor options per replica."
    )
    max_ongoing_requests: int = Field(64, ge=1, description="In-flight requests per replica.")


def qdrant_local_dir(store: VectorStoreConfig) -> str | None:
    """The directory of a qdrant-client local-mode store (one process may open it), if any."""
    uri = store.uri or ":memory:"
    if store.kind != "qdrant" or uri == ":memory:" or uri.startswith(("http://", "https://")):
        return None
    return uri


class PipelineConfig(StrictModel):
    """A RAG pipeline served as a model: embed the question, search, generate with an LLM."""

    name: str = Field(
        ..., pattern=r"^[A-Za-z0-9._-]+$",
        description="Model id clients use for the pipeline; also its URL path segment and "
        "default table/collection name (letters, digits, `.`, `_`, `-`).",
    )
    embedding_model: str = Field(..., description="`model_id` of a model with mode `embed`.")
    llm: str = Field(..., description="`model_id` of the generating model (PD or colocated).")
    store: VectorStoreConfig = Field(default_factory=VectorStoreConfig)
    top_k: int = Field(5, ge=1, le=100, description="Chunks retrieved per question.")
    ordering: Literal["canonical", "score"] = Field(
        "canonical",
        description="`canonical`: chunks in (document, position) order, so questions that "
        "retrieve overlapping chunks share a prompt prefix (prefix cache, prefix routing); "
        "`score`: best match first.",
    )
    chunking: ChunkingConfig = Field(default_factory=ChunkingConfig)
    system_prompt: str = Field(DEFAULT_SYSTEM_PROMPT, description="Opens the system message.")
    chunk_template: str = Field(
        "[{document} #{chunk}]\n{text}",
        description="How each chunk is written into the system message "
        "(fields: document, chunk, text, score).",
    )
    retriever: RetrieverConfig = Field(default_factory=RetrieverConfig)

    @model_validator(mode="after")
    def _qdrant_local_mode_has_one_process(self) -> PipelineConfig:
        if qdrant_local_dir(self.store) and self.retriever.num_replicas > 1:
            raise ValueError(f"pipeline {self.name!r}.retriever.num_replicas: qdrant's local "
                             "mode (a directory) allows one process; use 1 or a qdrant server")
        return self

    @model_validator(mode="after")
    def _template_fields_known(self) -> PipelineConfig:
        try:
            self.chunk_template.format(document="d", chunk=0, text="t", score=1.0)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"pipeline {self.name!r}.chunk_template: {exc!r}; fields are "
                             "document, chunk, text, score") from exc
        return self
