"""Tokens a request used (prompt + completion), counted where the engine's outputs pass, for
whoever admitted the request (per-key token limits): the HTTP edge opens a count per request
in a context variable, which the tasks serving that request inherit."""

from __future__ import annotations

from contextvars import ContextVar

#: the current request's running count (a one-item list, shared by the tasks serving it)
_TOKENS: ContextVar[list[int] | None] = ContextVar("pdserve_request_tokens", default=None)


def open_count() -> tuple[list[int], object]:
    """Start counting for the current request: (the count, a token to `close_count` with)."""
    count = [0]
    return count, _TOKENS.set(count)


def close_count(token: object) -> None:
    _TOKENS.reset(token)  # type: ignore[arg-type]


def add_tokens(n: int) -> None:
    """Add `n` to the current request's count (nothing outside a counted request)."""
    count = _TOKENS.get()
    if count is not None:
        count[0] += n
