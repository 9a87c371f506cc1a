"""Deterministic prompt cases sized from the engine's block size and batch budget.

Prompts are recall prompts (a random span, then its start again) that the tiny model
continues confidently; see `pdserve.tiny_model.recall_prompt_text`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from pdserve.tiny_model import recall_prompt_text

#: (label, words in the span, words repeated as the recall cue)
SIZES = [("under-one-block", 6, 2), ("few-blocks", 70, 10), ("chunked-prefill", 130, 20)]


@dataclass(frozen=True)
class Case:
    label: str
    kind: str  # "completion" | "chat"
    stream: bool
    prompt: str | list[int] | None = None
    messages: list[dict[str, str]] = field(default_factory=list)

    def body(self, model: str, max_tokens: int, stream: bool | None = None) -> dict[str, Any]:
        stream = self.stream if stream is None else stream
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "stream": stream,
            "return_token_ids": True,
        }
        if self.kind == "completion":
            body["prompt"] = self.prompt
        else:
            body["messages"] = self.messages
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def path(self) -> str:
        return "/v1/completions" if self.kind == "completion" else "/v1/chat/completions"

    def reference_spec(self) -> dict[str, Any]:
        if self.kind == "completion":
            return {"kind": "completion", "prompt": self.prompt}
        return {"kind": "chat", "messages": self.messages}


def build_cases(one_token_id: int, seed: int = 1234) -> list[Case]:
    """24 cases: 1-token prompt, every size, completions and chat, streamed and not."""
    rng = random.Random(seed)
    cases = [
        Case("one-token", "completion", stream, prompt=[one_token_id]) for stream in (False, True)
    ]
    for label, n_words, n_repeat in SIZES:
        for kind in ("completion", "chat"):
            for stream in (False, True):
                for variant in range(2 if label != "chunked-prefill" else 1):
                    text = recall_prompt_text(rng, n_words, n_repeat)
                    name = f"{label}-{kind}-{'stream' if stream else 'full'}-{variant}"
                    if kind == "completion":
                        cases.append(Case(name, kind, stream, prompt=text))
                    else:
                        cases.append(
                            Case(name, kind, stream, messages=[{"role": "user", "content": text}])
                        )
    return cases
