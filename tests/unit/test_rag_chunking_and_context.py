"""Chunking and prompt assembly of RAG pipelines (pure)."""

from __future__ import annotations

from pdserve.deployments.pipelines.chunking import chunk_document, paragraphs
from pdserve.deployments.pipelines.context import (
    Hit,
    build_messages,
    last_user_text,
    order_hits,
)

DOC = """# Ferries

## Night crossings

The night boat leaves at eleven. Bicycles travel free.

The day boat leaves at nine.
It charges for bicycles.

"""


def test_paragraphs_join_lines_and_carry_their_heading() -> None:
    assert paragraphs(DOC) == [
        "Ferries. Night crossings. The night boat leaves at eleven. Bicycles travel free.",
        "The day boat leaves at nine. It charges for bicycles.",
    ]


def test_chunks_are_numbered_by_position_and_deterministic() -> None:
    chunks = chunk_document("ferries.md", DOC)
    assert [(c.document, c.index) for c in chunks] == [("ferries.md", 0), ("ferries.md", 1)]
    assert chunk_document("ferries.md", DOC) == chunks


def test_long_paragraphs_split_at_sentences_within_the_budget() -> None:
    sentences = [f"Sentence {i} has exactly six words." for i in range(10)]
    (paragraph,) = paragraphs(" ".join(sentences))
    chunks = chunk_document("d", paragraph, max_words=14)
    assert all(len(c.text.split()) <= 14 for c in chunks)
    assert [c.text for c in chunks][:2] == [" ".join(sentences[0:2]), " ".join(sentences[2:4])]
    assert " ".join(c.text for c in chunks) == paragraph  # nothing lost or repeated


def test_overlap_repeats_the_tail_of_the_previous_chunk() -> None:
    text = " ".join(f"Word{i} a b c." for i in range(6))
    chunks = chunk_document("d", text, max_words=8, overlap_words=4)
    assert chunks[1].text.startswith(chunks[0].text.split()[-4])
    assert all(len(c.text.split()) <= 8 for c in chunks)


def test_a_sentence_longer_than_the_budget_is_cut_by_words() -> None:
    chunks = chunk_document("d", " ".join(["word"] * 25), max_words=10)
    assert [len(c.text.split()) for c in chunks] == [10, 10, 5]


HITS = [Hit("b.md", 3, "B3", 0.9), Hit("a.md", 7, "A7", 0.5), Hit("a.md", 2, "A2", 0.7)]


def test_canonical_order_is_by_document_then_position() -> None:
    assert [h.text for h in order_hits(HITS, "canonical")] == ["A2", "A7", "B3"]
    # The same set retrieved in any score order gives the same context (a shared prefix).
    assert order_hits(list(reversed(HITS)), "canonical") == order_hits(HITS, "canonical")


def test_score_order_is_best_first() -> None:
    assert [h.text for h in order_hits(HITS, "score")] == ["B3", "A2", "A7"]


def test_messages_are_system_prompt_then_chunks_then_the_conversation() -> None:
    conversation = [{"role": "system", "content": "be brief"},
                    {"role": "user", "content": "first"},
                    {"role": "assistant", "content": "ok"},
                    {"role": "user", "content": [{"type": "text", "text": "second?"}]}]
    messages = build_messages("Use the context.", "[{document} #{chunk}] {text}",
                              order_hits(HITS, "canonical"), conversation)
    assert messages[0] == {"role": "system", "content":
                           "Use the context.\n\n[a.md #2] A2\n\n[a.md #7] A7\n\n[b.md #3] B3"}
    assert messages[1:] == conversation
    assert last_user_text(conversation) == "second?"
    assert last_user_text([{"role": "assistant", "content": "hi"}]) is None
