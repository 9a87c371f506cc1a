"""The pipeline's prompt: retrieved chunks in a configured order, then the conversation.

`canonical` order (by document, then position) makes two questions that retrieve the same or
overlapping chunks produce the same leading tokens, so the engines' prefix cache and pdserve's
prefix-aware router reuse the context's KV; `score` order (best first) does not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Ordering = Literal["canonical", "score"]


@dataclass(frozen=True)
class Hit:
    """A retrieved chunk and its similarity to the question (cosine; higher is closer)."""

    document: str
    chunk: int
    text: str
    score: float

    def source(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Retrieval:
    """What the retriever returns for a question: hits best first, and what each stage took."""

    hits: list[Hit]
    embed_ms: float
    search_ms: float

    def timings(self) -> dict[str, float]:
        return {"embed_ms": self.embed_ms, "search_ms": self.search_ms}


def order_hits(hits: list[Hit], ordering: Ordering) -> list[Hit]:
    if ordering == "canonical":
        return sorted(hits, key=lambda h: (h.document, h.chunk))
    return sorted(hits, key=lambda h: -h.score)


def message_text(content: Any) -> str:
    """The text of an OpenAI message's content (a string or a list of typed parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content
                         if isinstance(p, dict) and p.get("type") == "text")
    return ""


def last_user_text(messages: list[Any]) -> str | None:
    """What the pipeline retrieves for: the last user message's text (None: there is none)."""
    for message in reversed(messages):
        if message.get("role") == "user":
            text = message_text(message.get("content")).strip()
            return text or None
    return None


def system_message(system_prompt: str, chunk_template: str, hits: list[Hit]) -> dict[str, str]:
    """The system prompt, then every chunk written with `chunk_template`, in the given order."""
    parts = [system_prompt] + [
        chunk_template.format(document=h.document, chunk=h.chunk, text=h.text, score=h.score)
        for h in hits
    ]
    return {"role": "system", "content": "\n\n".join(parts)}


def build_messages(
    system_prompt: str, chunk_template: str, hits: list[Hit], conversation: list[Any]
) -> list[Any]:
    """System prompt and chunks first, then the client's conversation unchanged."""
    return [system_message(system_prompt, chunk_template, hits), *conversation]
