"""The prompt crosses a replica's stream once and the caller sees it on every output again."""

from __future__ import annotations

import pickle

from vllm.outputs import CompletionOutput, RequestOutput

from pdserve.deployments.engine.wire import PromptRestorer, trim

PROMPT_IDS = list(range(100, 612))


def output(tokens: list[int], finished: bool = False) -> RequestOutput:
    completion = CompletionOutput(index=0, text=f"<{tokens}>", token_ids=tokens,
                                  cumulative_logprob=None, logprobs=None)
    out = RequestOutput("r", "a long prompt " * 40, list(PROMPT_IDS), None, [completion],
                        finished=finished, num_cached_tokens=32)
    out.metrics = {"stats": "of the request"}  # what vLLM's OpenAI layer reads at the end
    return out


def test_later_messages_are_smaller_and_restored_to_what_the_engine_made() -> None:
    made = [output([1]), output([2]), output([3], finished=True)]
    expected = [(list(o.prompt_token_ids), o.prompt, o.outputs[0].token_ids) for o in made]
    sent = [pickle.dumps(trim(o, first=i == 0)) for i, o in enumerate(made)]
    assert len(sent[1]) < len(sent[0]) / 3  # no prompt text, no prompt ids, no stats
    restore = PromptRestorer()
    received = [restore(pickle.loads(m)) for m in sent]
    assert [(o.prompt_token_ids, o.prompt, o.outputs[0].token_ids) for o in received] == expected
    assert all(o.num_cached_tokens == 32 for o in received)
    # Stats travel only on the finished message: the only one vLLM's OpenAI layer reads.
    assert [o.metrics for o in received] == [None, None, {"stats": "of the request"}]


def test_a_single_final_message_is_sent_whole() -> None:
    final = trim(output([7, 8], finished=True), first=True)
    assert final.prompt_token_ids == PROMPT_IDS and final.metrics is not None
