"""Traces for the routing benchmark, and the oracle bound on their prefix-cache hit rate.

Three shapes (each reproducible from a seed):
- `groups`: K long system prompts, each request = one of them + its own short question;
- `multiturn`: chat sessions whose every turn is the previous prompt + the previous answer +
  a new user message (the driver fills in answers as they arrive);
- `unique`: long prompts sharing nothing (the control).

The oracle is the best hit rate any router could reach on the trace with unbounded caches:
each request reuses the longest block-aligned prefix it shares with anything sent (or
generated) before it, capped as vLLM caps it (the last prompt token is always computed).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pdserve.tiny_model import WORDS

# ~2.3 tokens per word with the tiny-model tokenizer.
TOKENS_PER_WORD = 2.3


def text_of(rng: random.Random, n_tokens: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(max(1, int(n_tokens / TOKENS_PER_WORD))))


@dataclass
class Session:
    """Requests that must run in order (one per turn); a single request is a 1-turn session."""

    turns: list[str]  # text appended for each turn (the first is the whole first prompt)
    session_id: str | None = None
    group: str = ""


@dataclass(frozen=True)
class TraceSettings:
    groups: int = 8
    system_tokens: int = 1024
    question_tokens: int = 48
    requests_per_group: int = 8
    sessions: int = 8
    turns: int = 5
    first_turn_tokens: int = 512
    turn_tokens: int = 96
    unique_requests: int = 32
    unique_tokens: int = 1024
    seed: int = 0


def groups_trace(s: TraceSettings) -> list[Session]:
    """Requests of K groups, interleaved (group order shuffled), one request per session."""
    rng = random.Random(s.seed)
    systems = [text_of(rng, s.system_tokens) for _ in range(s.groups)]
    order = [g for g in range(s.groups) for _ in range(s.requests_per_group)]
    rng.shuffle(order)
    return [Session([f"{systems[g]}\nQ: {text_of(rng, s.question_tokens)}\nA:"], group=f"g{g}")
            for g in order]


def multiturn_trace(s: TraceSettings) -> list[Session]:
    rng = random.Random(s.seed + 1)

    def turn() -> str:
        return f"\nUser: {text_of(rng, s.turn_tokens)}\nAssistant:"

    return [
        Session([text_of(rng, s.first_turn_tokens) + turn()]
                + [turn() for _ in range(s.turns - 1)], session_id=f"chat-{i}", group=f"chat-{i}")
        for i in range(s.sessions)
    ]


def unique_trace(s: TraceSettings) -> list[Session]:
    rng = random.Random(s.seed + 2)
    return [Session([text_of(rng, s.unique_tokens)], group=f"u{i}")
            for i in range(s.unique_requests)]


TRACES: dict[str, Callable[[TraceSettings], list[Session]]] = {
    "groups": groups_trace,
    "multiturn": multiturn_trace,
    "unique": unique_trace,
}


@dataclass
class Observed:
    """One finished request as the engine saw it (token ids from the response)."""

    start: float
    prompt_ids: list[int]
    output_ids: list[int] = field(default_factory=list)
    cached_tokens: int = 0


def oracle_hit_tokens(
    requests: Sequence[Observed], block_size: int, hasher: Callable[[Sequence[int]], tuple]
) -> list[int]:
    """Best achievable cached tokens per request, in start order (unbounded cache, any replica).

    `hasher` is the router's block hasher: with chained block hashes, a request's block k is
    reusable iff some earlier sequence had the same block k hash.
    """
    seen: set[int] = set()
    best: list[tuple[float, int]] = []
    for req in sorted(requests, key=lambda r: r.start):
        hashes = hasher(req.prompt_ids)
        reusable = min(len(hashes), (len(req.prompt_ids) - 1) // block_size)
        run = 0
        while run < reusable and hashes[run] in seen:
            run += 1
        best.append((req.start, run * block_size))
        seen.update(hasher(req.prompt_ids + req.output_ids))
    return [tokens for _, tokens in best]
