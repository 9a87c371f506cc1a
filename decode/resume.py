"""Continuing a request whose generating replica was lost, from what its client already has.

A resumed request is a new engine request whose prompt is the original prompt followed by the
tokens already delivered, asking for the tokens still owed; its outputs are mapped back onto
the original request (its prompt, id, and for cumulative outputs the tokens delivered before),
so vLLM's OpenAI layer sees one uninterrupted request: no gap, no repeated token.

Greedy requests continue exactly as they would have. Sampled requests continue from what was
delivered, but the draw differs from the undisturbed run (the seeded generator restarts), and
so do frequency/presence penalties (the delivered tokens become prompt, which those penalties
ignore). A stop string that would have straddled the resume point is not detected; text vLLM
held back because it might start a stop string is recovered by decoding. Requests
with several sequences (`n > 1`) or structured output that already delivered tokens cannot be
continued; they fail with a retryable error instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from vllm.inputs import EngineInput
from vllm.outputs import RequestOutput
from vllm.sampling_params import RequestOutputKind, SamplingParams

from pdserve.kv_transfer.params import KVTransferParams

#: Text of `ids` as a continuation of `context` (vLLM's detokenization settings).
Detokenize = Callable[[Sequence[int], Sequence[int]], str]


@dataclasses.dataclass(frozen=True)
class KVHandoff:
    """A draining replica's parting gift: the KV of the request's prompt and delivered tokens,
    held on its engine for one puller. `tokens`: how many tokens that KV covers (the next
    attempt's prompt must be exactly as long); `recomputed`: how many of them the draining
    engine had to compute to hand them off (the rest came from its cache)."""

    kv_transfer_params: KVTransferParams
    tokens: int
    recomputed: int


class ReplicaLost(RuntimeError):
    """The generating replica (its actor, its engine or the stream to it) went away mid-request;
    `reason` names how (`replica_died`, `engine_dead`, `stream_broken`, `stalled`,
    `draining`); `replica` is its id when known (a replica that gives a request up says so
    itself), so a resume can avoid it; `handoff`: the request's KV, when the replica left it
    ready to be pulled (a drain)."""

    def __init__(self, reason: str, detail: str = "", replica: str | None = None,
                 handoff: KVHandoff | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.replica = replica
        self.handoff = handoff

    def __reduce__(self) -> tuple[type, tuple[str, str, str | None, KVHandoff | None]]:
        return type(self), (self.reason, self.detail, self.replica, self.handoff)  # via Ray


class NotResumable(RuntimeError):
    """This request cannot be continued elsewhere (why is the message)."""


@dataclasses.dataclass
class Delivered:
    """What the client has received of one single-sequence request so far."""

    token_ids: list[int] = dataclasses.field(default_factory=list)
    text: str = ""
    logprobs: list[Any] | None = None
    cumulative_logprob: float | None = None
    finished: bool = False


class Progress:
    """Follows a request's outputs as they go to the client, and builds its continuation."""

    def __init__(self, engine_input: EngineInput, params: SamplingParams, request_id: str,
                 prompt: str, detokenize: Detokenize | None = None) -> None:
        self.engine_input = engine_input
        self.params = params
        self.request_id = request_id
        self.prompt = prompt
        self.detokenize = detokenize
        self.delivered = Delivered()
        #: Streamed text chunks, kept only when vLLM may hold text back (stop strings).
        self._text_parts: list[str] | None = (
            [] if params.stop and params.output_kind == RequestOutputKind.DELTA else None)
        self._held_back = ""  # text of delivered tokens the lost attempt never sent
        self.prompt_token_ids: list[int] | None = None
        #: Delivered tokens when the current attempt started (cumulative outputs add them).
        self._base = Delivered()

    @property
    def finished(self) -> bool:
        return self.delivered.finished

    def forward(self, output: RequestOutput, attempt: int) -> RequestOutput:
        """Record an output of attempt `attempt` and return it as the original request's."""
        if not self._base.token_ids and self.prompt_token_ids is None and output.prompt_token_ids:
            self.prompt_token_ids = list(output.prompt_token_ids)  # the client's own prompt
        output.request_id = self.request_id  # engines saw a suffixed id (orchestrator.py)
        if attempt > 0 and self._base.token_ids:  # a continuation: its prompt holds them
            output.prompt = self.prompt or None
            output.prompt_token_ids = self.prompt_token_ids
            output.prompt_logprobs = None
            if self.params.output_kind == RequestOutputKind.CUMULATIVE:
                self._prepend_base(output)
            elif self._held_back and len(output.outputs) == 1:
                output.outputs[0].text = self._held_back + output.outputs[0].text
                self._held_back = ""
        self._record(output)
        return output

    def _record(self, output: RequestOutput) -> None:
        if len(output.outputs) != 1:
            self.delivered.finished = output.finished
            return
        seq = output.outputs[0]
        kind = self.params.output_kind
        if kind == RequestOutputKind.DELTA:  # the client holds the text; ids are what resumes
            self.delivered.token_ids.extend(seq.token_ids)
            if self._text_parts is not None:
                self._text_parts.append(seq.text)
        else:  # cumulative or final: the output holds everything so far
            self.delivered.token_ids = list(seq.token_ids)
            self.delivered.text = seq.text
            self.delivered.logprobs = list(seq.logprobs) if seq.logprobs is not None else None
        self.delivered.cumulative_logprob = seq.cumulative_logprob
        self.delivered.finished = output.finished

    def _prepend_base(self, output: RequestOutput) -> None:
        base = self._base
        for seq in output.outputs:
            seq.token_ids = [*base.token_ids, *seq.token_ids]
            seq.text = base.text + seq.text
            if seq.logprobs is not None and base.logprobs is not None:
                seq.logprobs = [*base.logprobs, *seq.logprobs]
            if seq.cumulative_logprob is not None and base.cumulative_logprob is not None:
                seq.cumulative_logprob += base.cumulative_logprob

    def continuation(self) -> tuple[EngineInput, SamplingParams, int]:
        """The next attempt's engine input and params, and how many delivered tokens it puts
        back into the prompt (they are recomputed or pulled, not generated again)."""
        sent = list(self.delivered.token_ids)
        self._base = dataclasses.replace(self.delivered, token_ids=sent)
        if not sent:
            return self.engine_input, self.params, 0  # nothing delivered: run it again
        if self.params.n != 1:
            raise NotResumable("requests with several sequences (n > 1) are not resumed")
        if self.params.structured_outputs is not None:
            raise NotResumable("structured output is not resumed once tokens were delivered")
        if not isinstance(self.engine_input, dict) or self.engine_input.get("type") != "token":
            raise NotResumable("only token prompts are resumed")
        prompt_ids = self.prompt_token_ids or list(self.engine_input["prompt_token_ids"])
        self._recover_held_back_text(prompt_ids, sent)
        engine_input: dict[str, Any] = {
            key: value for key, value in self.engine_input.items() if key != "prompt"
        }
        engine_input["prompt_token_ids"] = [*prompt_ids, *sent]
        return engine_input, continued_params(self.params, len(sent)), len(sent)  # type: ignore[return-value]


    def _recover_held_back_text(self, prompt_ids: list[int], sent: list[int]) -> None:
        """With stop strings vLLM streams token ids at once but holds back the last characters
        of text (they might start a stop string): those of a lost attempt were never sent, and
        the continuation starts after their tokens. Decode what the delivered tokens read as
        and send the missing tail first, when it extends what was sent (else leave it)."""
        if self._text_parts is None or self.detokenize is None:
            return
        sent_text = "".join(self._text_parts)
        full = self.detokenize(prompt_ids, sent)
        if len(full) > len(sent_text) and full.startswith(sent_text):
            self._held_back = full[len(sent_text):]
            self._text_parts.append(self._held_back)


def continued_params(params: SamplingParams, delivered: int) -> SamplingParams:
    """The original params, asking only for the tokens still owed."""
    params = params.clone()
    if params.max_tokens is not None:
        params.max_tokens = max(1, params.max_tokens - delivered)
    params.min_tokens = max(0, params.min_tokens - delivered)
    params.prompt_logprobs = None  # the prompt's logprobs went out with the first message
    return params


def extended_prompt_ids(engine_input: EngineInput) -> Sequence[int]:
    """The token ids an attempt's engine input asks the engine to start from."""
    if isinstance(engine_input, dict):
        return engine_input.get("prompt_token_ids") or ()  # type: ignore[return-value]
    return ()
