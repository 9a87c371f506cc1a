"""Documents → chunks: one per paragraph; paragraphs over the word budget split at sentences.

Pure and deterministic, so re-ingesting a file yields the same chunk ids (document, position),
which is what makes an upsert replace a document's chunks instead of adding duplicates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_HEADING = re.compile(r"^#{1,6}\s+")


@dataclass(frozen=True)
class Document:
    """A document to (re)index: its chunks replace any the same `id` had before."""

    id: str
    text: str


@dataclass(frozen=True)
class Chunk:
    """One retrievable piece of a document; `index` is its position in the document."""

    document: str
    index: int
    text: str


def paragraphs(text: str) -> list[str]:
    """Blank-line separated blocks, each on one line; a Markdown heading joins the block after
    it (a heading alone says little, and it names the topic of what follows)."""
    blocks = [" ".join(b.split()) for b in re.split(r"\n\s*\n", text)]
    out: list[str] = []
    heading = ""
    for block in filter(None, blocks):
        if _HEADING.match(block):
            heading = f"{heading} {_HEADING.sub('', block)}".strip() + "."
            continue
        out.append(f"{heading} {block}".strip())
        heading = ""
    if heading:
        out.append(heading)
    return out


def _split_long(paragraph: str, max_words: int, overlap_words: int) -> list[str]:
    """Sentences packed into pieces of at most `max_words` (a longer sentence is cut by words)."""
    words_of = [s.split() for s in _SENTENCE_END.split(paragraph)]
    sentences: list[list[str]] = []
    for words in words_of:
        sentences += [words[i:i + max_words] for i in range(0, len(words), max_words)]
    pieces: list[list[str]] = []
    current: list[str] = []
    for sentence in sentences:
        if current and len(current) + len(sentence) > max_words:
            pieces.append(current)
            current = current[-overlap_words:] if overlap_words else []
            if len(current) + len(sentence) > max_words:
                current = []
        current = current + sentence
    if current:
        pieces.append(current)
    return [" ".join(p) for p in pieces]


def chunk_document(
    document: str, text: str, max_words: int = 200, overlap_words: int = 0
) -> list[Chunk]:
    """Chunks of one document: each paragraph on its own (split if longer than `max_words`)."""
    pieces: list[str] = []
    for paragraph in paragraphs(text):
        if len(paragraph.split()) <= max_words:
            pieces.append(paragraph)
        else:
            pieces.extend(_split_long(paragraph, max_words, overlap_words))
    return [Chunk(document, i, piece) for i, piece in enumerate(pieces)]
