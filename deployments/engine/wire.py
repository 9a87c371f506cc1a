"""What a generating replica sends per stream message, and how its caller restores it.

vLLM attaches the prompt (its text and every prompt token id) and the request's stats to each
output; across a Ray stream that is the prompt again with every message. The replica sends the
prompt once, on the first message, and the stats only on the last (the only ones vLLM's OpenAI
layer reads); the caller re-attaches the first message's prompt to the later ones, so the
OpenAI layer in the ingress sees exactly what a local engine would have handed it.
"""

from __future__ import annotations

from vllm.outputs import RequestOutput


def trim(output: RequestOutput, first: bool) -> RequestOutput:
    """The message to send (the same object, trimmed unless it is the first)."""
    if not first:
        output.prompt = None
        output.prompt_token_ids = None
    if not output.finished:
        output.metrics = None
    return output


class PromptRestorer:
    """The caller's side: gives each later message the first message's prompt back."""

    def __init__(self) -> None:
        self.first: RequestOutput | None = None

    def __call__(self, output: RequestOutput) -> RequestOutput:
        if self.first is None:
            self.first = output
            return output
        if output.prompt_token_ids is None:
            output.prompt_token_ids = self.first.prompt_token_ids
        if output.prompt is None:
            output.prompt = self.first.prompt
        return output
