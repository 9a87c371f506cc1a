"""Requests under each test LoRA adapter (and none), shared by the LoRA test and the bare-engine
reference: recall prompts, on which the base model copies, `no-recall` walks the successor
map and `shifted` walks another (`pdserve.tiny_lora`): three different greedy answers."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from shapes import ADAPTERS

from pdserve.models import resolve_adapter
from pdserve.tiny_lora import BASE
from pdserve.tiny_model import recall_prompt_text

#: (kind, words in the span, words repeated as the cue): PD prefills both remotely
PROMPTS = [("completion", 60, 12), ("chat", 40, 10)]


@dataclass(frozen=True)
class LoraCase:
    kind: str  # "completion" | "chat"
    text: str
    adapter: str | None  # one of `shapes.ADAPTERS`, None for the base model

    def reference_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = (
            {"kind": "completion", "prompt": self.text} if self.kind == "completion"
            else {"kind": "chat", "messages": [{"role": "user", "content": self.text}]})
        if self.adapter is not None:  # the bare engine's own id; the path pdserve resolves
            spec["lora"] = [self.adapter, 1 + ADAPTERS.index(self.adapter),
                            resolve_adapter(f"pdserve://{BASE}/{self.adapter}")]
        return spec


def lora_cases(seed: int = 77) -> list[LoraCase]:
    rng = random.Random(seed)
    texts = [(kind, recall_prompt_text(rng, words, cue)) for kind, words, cue in PROMPTS]
    return [LoraCase(kind, text, adapter)
            for kind, text in texts for adapter in (None, *ADAPTERS)]
