"""PD orchestration logic with fake pools: which calls happen, the fallback rules, and resuming
a request whose generating replica is lost mid-stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from vllm.exceptions import RetryableRequestError
from vllm.lora.request import LoRARequest
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import RequestOutputKind, SamplingParams

from pdserve.decode.orchestrator import Orchestrator, PoolCalls, Resume, local_prefill_reason
from pdserve.decode.request import DecodeRequest
from pdserve.decode.resume import KVHandoff, ReplicaLost
from pdserve.prefill.request import PrefillRequest, PrefillResult

KV = {"do_remote_prefill": True, "remote_engine_id": "p0", "remote_block_ids": [1]}
PROMPT = [1, 2, 3]
#: What an undisturbed greedy engine generates after any prompt ending in token t: t + 10.
STEPS = 6


def output(request: DecodeRequest, token_ids: list[int], kind: RequestOutputKind,
           finished: bool) -> RequestOutput:
    seq = CompletionOutput(index=0, text="".join(f"<{t}>" for t in token_ids),
                           token_ids=token_ids, cumulative_logprob=-float(len(token_ids)),
                           logprobs=None, finish_reason="length" if finished else None)
    prompt_ids = list(request.engine_input["prompt_token_ids"])
    return RequestOutput(request.request_id, None, prompt_ids, None, [seq], finished)


class FakePools:
    """A prefill pool and a generating pool whose engine continues any prompt deterministically
    (next token = last token + 10), like a greedy model; `lose_after[i]`: the i-th generate
    call loses its replica after that many outputs."""

    def __init__(self, prefill_error: Exception | None = None, prefill_delay: float = 0,
                 lose_after: list[int] | None = None) -> None:
        self.prefill_error = prefill_error
        self.prefill_delay = prefill_delay
        self.lose_after = list(lose_after or [])
        #: drain instead of dying: hand the KV off, covering this many tokens too many
        self.handoff_miscount: int | None = None
        #: the first this-many generate calls find their replica being drained (turned away)
        self.refusals = 0
        #: losses are drains that hand no KV off (a colocated pool: the stream recomputes)
        self.drains_recompute = False
        self.prefills: list[PrefillRequest] = []
        self.decodes: list[DecodeRequest] = []
        self.released: list[str] = []

    async def prefill(self, request: PrefillRequest) -> PrefillResult:
        self.prefills.append(request)
        await asyncio.sleep(self.prefill_delay)
        if self.prefill_error:
            raise self.prefill_error
        return PrefillResult(request.request_id, KV, prompt_tokens=3)

    async def generate(self, request: DecodeRequest) -> AsyncIterator[RequestOutput]:
        lose_after = self.lose_after[len(self.decodes)] if len(self.decodes) < len(
            self.lose_after) else None
        self.decodes.append(request)
        if len(self.decodes) <= self.refusals:
            raise ReplicaLost("draining", replica=f"d{len(self.decodes) - 1}")
        params = request.sampling_params
        last = request.engine_input["prompt_token_ids"][-1]
        made: list[int] = []
        for step in range(params.max_tokens):
            if lose_after is not None and step == lose_after:
                replica = f"d{len(self.decodes) - 1}"
                if self.handoff_miscount is not None and lose_after > 0:
                    tokens = len(request.engine_input["prompt_token_ids"]) + len(made)
                    raise ReplicaLost("draining", replica=replica, handoff=KVHandoff(
                        {**KV, "remote_engine_id": replica}, tokens + self.handoff_miscount, 1))
                raise ReplicaLost("draining" if self.drains_recompute else "replica_died",
                                  replica=replica)
            last += 10
            made.append(last)
            finished = step == params.max_tokens - 1
            if params.output_kind == RequestOutputKind.DELTA:
                yield output(request, [last], params.output_kind, finished)
            elif params.output_kind == RequestOutputKind.CUMULATIVE or finished:
                yield output(request, list(made), params.output_kind, finished)
        if lose_after is not None and lose_after >= params.max_tokens:
            raise ReplicaLost("stream_broken")

    async def release_kv(self, request_id: str, kv_params: dict) -> None:
        self.released.append(request_id)

    def drains(self) -> FakePools:
        """Replicas are drained (KV handed off) rather than lost."""
        self.handoff_miscount = 0
        return self

    def calls(self) -> PoolCalls:
        return PoolCalls(generate=self.generate, prefill=self.prefill,  # type: ignore[arg-type]
                         release_kv=self.release_kv)  # type: ignore[arg-type]


def outputs(orchestrator: Orchestrator, params: SamplingParams,
            request_id: str = "r1") -> list[RequestOutput]:
    async def collect() -> list[RequestOutput]:
        prompt = {"type": "token", "prompt_token_ids": list(PROMPT)}
        return [o async for o in orchestrator.generate(prompt, params, request_id)]

    return asyncio.run(collect())


def run(orchestrator: Orchestrator, params: SamplingParams) -> list[int]:
    """Every token id the client received, in order."""
    got = outputs(orchestrator, params)
    if params.output_kind == RequestOutputKind.DELTA:
        return [t for o in got for t in o.outputs[0].token_ids]
    return list(got[-1].outputs[0].token_ids)


UNDISTURBED = [13, 23]


def token_ids(ids: list[int], salt: str | None = None, adapter: object = None) -> tuple:
    """A hasher whose "hashes" are the token ids themselves."""
    return tuple(ids)


def orchestrator(pools: FakePools, fallbacks: list[str], timeout: float = 5,
                 **kwargs: object) -> Orchestrator:
    return Orchestrator(
        pools.calls(), disaggregated=True, prefill_timeout_s=timeout, on_fallback=fallbacks.append,
        **kwargs,  # type: ignore[arg-type]
    )


def test_pd_prefills_once_then_decodes_with_the_transfer_params() -> None:
    pools, fallbacks = FakePools(), []
    assert run(orchestrator(pools, fallbacks), SamplingParams(max_tokens=2)) == UNDISTURBED
    assert len(pools.prefills) == 1
    # engine ids carry a random suffix: equal client ids never share an engine request id
    assert pools.prefills[0].request_id.startswith("r1-")
    assert pools.prefills[0].request_id.endswith("-prefill")
    assert pools.decodes[0].kv_transfer_params == KV
    assert fallbacks == []


def test_failed_prefill_falls_back_to_local_prefill_and_is_counted() -> None:
    pools, fallbacks = FakePools(prefill_error=RuntimeError("replica died")), []
    assert run(orchestrator(pools, fallbacks), SamplingParams(max_tokens=2)) == UNDISTURBED
    assert pools.decodes[0].kv_transfer_params is None
    assert fallbacks == ["error"]


def test_slow_prefill_times_out_and_falls_back() -> None:
    pools, fallbacks = FakePools(prefill_delay=1.0), []
    assert run(orchestrator(pools, fallbacks, timeout=0.05),
               SamplingParams(max_tokens=2)) == UNDISTURBED
    assert pools.decodes[0].kv_transfer_params is None
    assert fallbacks == ["timeout"]


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        (SamplingParams(n=2), "n>1"),
        (SamplingParams(prompt_logprobs=1), "prompt_logprobs"),
        (SamplingParams(max_tokens=7, temperature=0.5, logprobs=2), None),
    ],
)
def test_local_prefill_reasons(params: SamplingParams, reason: str | None) -> None:
    assert local_prefill_reason(params) == reason


def test_parallel_samples_skip_remote_prefill_without_counting_a_fallback() -> None:
    pools, fallbacks = FakePools(), []
    run(orchestrator(pools, fallbacks), SamplingParams(n=2, max_tokens=2))
    assert pools.prefills == [] and fallbacks == []


def test_colocated_mode_never_prefills_remotely() -> None:
    pools = FakePools()
    colocated = Orchestrator(
        PoolCalls(generate=pools.generate), disaggregated=False, prefill_timeout_s=1  # type: ignore[arg-type]
    )
    assert run(colocated, SamplingParams(max_tokens=2)) == UNDISTURBED
    assert pools.prefills == [] and pools.decodes[0].kv_transfer_params is None


def test_pd_mode_without_a_prefill_pool_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="prefill"):
        Orchestrator(PoolCalls(generate=FakePools().generate), disaggregated=True,  # type: ignore[arg-type]
                     prefill_timeout_s=1)


def test_engine_request_ids_differ_for_equal_client_ids() -> None:
    pools = FakePools()
    colocated = Orchestrator(pools.calls(), disaggregated=False, prefill_timeout_s=1)
    first, second = (outputs(colocated, SamplingParams(max_tokens=1)) for _ in range(2))
    a, b = (d.request_id for d in pools.decodes)
    assert a != b and a.startswith("r1-") and b.startswith("r1-")
    assert first[0].request_id == second[0].request_id == "r1"  # the client's id comes back


def streamed(max_tokens: int = STEPS, **kwargs: object) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, output_kind=RequestOutputKind.DELTA,
                          **kwargs)  # type: ignore[arg-type]


def greedy_tokens(n: int = STEPS) -> list[int]:
    return [PROMPT[-1] + 10 * (i + 1) for i in range(n)]


@pytest.mark.parametrize("kind", [RequestOutputKind.DELTA, RequestOutputKind.CUMULATIVE,
                                  RequestOutputKind.FINAL_ONLY])
def test_a_lost_replica_is_resumed_without_gap_or_repeat(kind: RequestOutputKind) -> None:
    pools, resumes, waits = FakePools(lose_after=[2, 3]), [], []
    pd = orchestrator(pools, [], max_resumes=3, hasher=token_ids,
                      on_resume=resumes.append, on_resumed=waits.append)
    got = outputs(pd, SamplingParams(max_tokens=STEPS, output_kind=kind))
    tokens = ([t for o in got for t in o.outputs[0].token_ids] if kind == RequestOutputKind.DELTA
              else list(got[-1].outputs[0].token_ids))
    assert tokens == greedy_tokens()
    assert got[-1].finished and all(o.request_id == "r1" for o in got)
    assert all(o.prompt_token_ids == PROMPT for o in got)  # not the continuation's prompt
    if kind == RequestOutputKind.FINAL_ONLY:  # nothing was delivered: each attempt starts over
        assert [len(d.engine_input["prompt_token_ids"]) for d in pools.decodes] == [3, 3, 3]
        assert [r.recomputed_tokens for r in resumes] == [0, 0]
    else:
        # attempt 2 starts from prompt + 2 delivered; attempt 3 from prompt + 2 + 3
        assert [d.engine_input["prompt_token_ids"] for d in pools.decodes] == [
            PROMPT, PROMPT + greedy_tokens(2), PROMPT + greedy_tokens(5)]
        assert [d.sampling_params.max_tokens for d in pools.decodes] == [6, 4, 1]
        assert [r.recomputed_tokens for r in resumes] == [2, 5]
        assert got[-1].outputs[0].text == "".join(f"<{t}>" for t in greedy_tokens()) or (
            kind == RequestOutputKind.DELTA)
    assert [r.reason for r in resumes] == ["replica_died", "replica_died"]
    # one wait per gap a streaming client saw (none without intermediate outputs)
    assert len(waits) == (0 if kind == RequestOutputKind.FINAL_ONLY else 2)
    assert len({d.request_id for d in pools.decodes}) == 3  # each attempt its own engine id


def test_resume_is_planned_afresh_with_the_continuations_routing_data() -> None:
    pools, plans, resumes = FakePools(lose_after=[2]), [], []

    def planner(info, forced):  # noqa: ANN001, ANN202
        plans.append(info)
        from pdserve.routing.plan import Plan
        return Plan("remote", "test")

    pd = orchestrator(pools, [], max_resumes=1, hasher=token_ids,
                      planner=planner, on_resume=resumes.append)
    assert run(pd, streamed()) == greedy_tokens()
    assert [p.prompt_tokens for p in plans] == [0, 5]
    assert plans[1].block_hashes == tuple(PROMPT + greedy_tokens(2))
    assert len(pools.prefills) == 2  # the continuation prefilled remotely, then was pulled
    assert resumes == [Resume("replica_died", "remote", 2)]


def test_every_call_of_a_request_and_of_its_resume_runs_with_its_lora_adapter() -> None:
    pools, plans, hashed = FakePools(lose_after=[2]), [], []

    def planner(info, forced):  # noqa: ANN001, ANN202
        plans.append(info)
        from pdserve.routing.plan import Plan
        return Plan("remote", "test")

    def hasher(ids, salt=None, adapter=None):  # noqa: ANN001, ANN202
        hashed.append(adapter)
        return tuple(ids)

    adapter = LoRARequest("sql", 1, "/adapters/sql")
    pd = orchestrator(pools, [], max_resumes=1, hasher=hasher, planner=planner)

    async def collect() -> list[RequestOutput]:
        prompt = {"type": "token", "prompt_token_ids": list(PROMPT)}
        return [o async for o in pd.generate(prompt, streamed(), "r1", adapter=adapter)]

    asyncio.run(collect())
    assert len(pools.prefills) == len(pools.decodes) == 2  # the resume prefilled again
    assert [r.lora_request for r in [*pools.prefills, *pools.decodes]] == [adapter] * 4
    assert hashed == [adapter]  # the continuation's blocks are the adapter's blocks


def test_a_lost_decode_that_never_pulled_releases_the_prefill_kv() -> None:
    pools = FakePools(lose_after=[0])

    async def go() -> list[int]:
        pd = orchestrator(pools, [], max_resumes=1)
        prompt = {"type": "token", "prompt_token_ids": list(PROMPT)}
        got = [t async for o in pd.generate(prompt, streamed(), "r1")
               for t in o.outputs[0].token_ids]
        await asyncio.gather(*pd._releases)  # the release runs in the background
        return got

    assert asyncio.run(go()) == greedy_tokens()
    assert len(pools.released) == 1 and pools.released[0].endswith("-release")


def test_a_non_streamed_request_does_not_release_kv_its_decode_may_have_pulled() -> None:
    pools = FakePools(lose_after=[2])
    assert run(orchestrator(pools, [], max_resumes=1), SamplingParams(max_tokens=STEPS)) == (
        greedy_tokens())
    assert pools.released == []


def test_the_next_attempt_avoids_the_replica_that_was_lost() -> None:
    pools = FakePools(lose_after=[1, 1])
    assert run(orchestrator(pools, [], max_resumes=2), streamed()) == greedy_tokens()
    assert [d.routing.avoid for d in pools.decodes] == [(), ("d0",), ("d0", "d1")]


def test_losses_beyond_max_resumes_fail_with_a_retryable_error() -> None:
    pools = FakePools(lose_after=[1, 1])
    with pytest.raises(RetryableRequestError, match="retry"):
        run(orchestrator(pools, [], max_resumes=1), streamed())
    assert len(pools.decodes) == 2


def test_a_lost_replica_after_the_last_token_is_not_resumed() -> None:
    pools = FakePools(lose_after=[STEPS])  # loses the stream after its final output
    assert run(orchestrator(pools, [], max_resumes=0), streamed()) == greedy_tokens()
    assert len(pools.decodes) == 1


@pytest.mark.parametrize("params", [streamed(n=2), streamed(structured_outputs=None, n=1)])
def test_what_cannot_be_continued_fails_cleanly(params: SamplingParams) -> None:
    from vllm.sampling_params import StructuredOutputsParams

    if params.n == 1:
        params.structured_outputs = StructuredOutputsParams(json={"type": "object"})
    pools = FakePools(lose_after=[2])
    pd = Orchestrator(pools.calls(), disaggregated=False, prefill_timeout_s=1, max_resumes=2)
    with pytest.raises(RetryableRequestError, match="not resumed"):
        outputs(pd, params)


def test_continued_params_ask_only_for_what_is_still_owed() -> None:
    from pdserve.decode.resume import continued_params

    params = SamplingParams(max_tokens=10, min_tokens=4, prompt_logprobs=2, temperature=0)
    later = continued_params(params, 3)
    assert (later.max_tokens, later.min_tokens, later.prompt_logprobs) == (7, 1, None)
    assert (params.max_tokens, params.min_tokens) == (10, 4)  # the original is untouched


def test_prompt_ids_survive_a_first_attempt_lost_before_any_output() -> None:
    pools = FakePools(lose_after=[0, 2])  # attempt 0: nothing; attempt 1: 2 tokens; then lost
    got = outputs(orchestrator(pools, [], max_resumes=2), streamed())
    assert [t for o in got for t in o.outputs[0].token_ids] == greedy_tokens()
    assert all(o.prompt_token_ids == PROMPT for o in got)


def test_text_vllm_held_back_for_a_stop_string_is_sent_after_a_resume() -> None:
    """With `stop` strings vLLM sends token ids at once but holds back the tail of the text;
    the fake engine holds back each output's text by one token, like a one-token stop buffer."""
    pools = FakePools(lose_after=[3])
    real_generate = pools.generate

    async def holding_back(request: DecodeRequest) -> AsyncIterator[RequestOutput]:
        held = ""
        async for out in real_generate(request):
            seq = out.outputs[0]
            seq.text, held = held, seq.text
            if out.finished:
                seq.text += held
            yield out

    pools.generate = holding_back  # type: ignore[method-assign]
    pd = orchestrator(pools, [], max_resumes=1,
                      detokenize=lambda context, ids: "".join(f"<{t}>" for t in ids))
    got = outputs(pd, streamed(stop=["never"]))
    assert [t for o in got for t in o.outputs[0].token_ids] == greedy_tokens()
    assert "".join(o.outputs[0].text for o in got) == "".join(f"<{t}>" for t in greedy_tokens())


def test_a_drained_replicas_stream_continues_by_pulling_the_kv_it_handed_off() -> None:
    pools, resumes = FakePools(lose_after=[2, 3]).drains(), []
    pd = orchestrator(pools, [], max_resumes=0, hasher=token_ids,
                      on_resume=resumes.append)  # migrations are not losses
    assert run(pd, streamed()) == greedy_tokens()
    assert len(pools.prefills) == 1  # the continuations pull from the drained engines instead
    assert [d.kv_transfer_params["remote_engine_id"] for d in pools.decodes] == ["p0", "d0",
                                                                                 "d1"]
    assert [d.routing.avoid for d in pools.decodes] == [(), ("d0",), ("d0", "d1")]
    assert resumes == [Resume("draining", "handoff", 1), Resume("draining", "handoff", 1)]
    assert pools.released == []


def test_a_handoff_that_does_not_match_the_delivered_tokens_is_released_and_recomputed() -> None:
    async def go(pools: FakePools) -> list[int]:
        pd = orchestrator(pools, [], max_resumes=0)
        prompt = {"type": "token", "prompt_token_ids": list(PROMPT)}
        got = [t async for o in pd.generate(prompt, streamed(), "r1")
               for t in o.outputs[0].token_ids]
        await asyncio.gather(*pd._releases)
        return got

    pools = FakePools(lose_after=[2]).drains()
    pools.handoff_miscount = 1
    assert asyncio.run(go(pools)) == greedy_tokens()
    assert len(pools.prefills) == 2  # planned afresh: the prefill pool computes it
    assert pools.decodes[1].kv_transfer_params["remote_engine_id"] == "p0"
    assert len(pools.released) == 1  # the drained engine's KV is not left to its lease


def test_each_attempt_and_resume_is_traced_under_the_requests_span() -> None:
    """Spans go to the tracer the process has (Ray's in a replica); here a provider of the
    test's own, its spans kept in memory."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    parent = provider.get_tracer("test").start_span("request")
    pools = FakePools(lose_after=[2])
    pd = orchestrator(pools, [], max_resumes=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("pdserve.tracing._TRACER", provider.get_tracer("pdserve"))

        async def collect() -> list[RequestOutput]:
            prompt = {"type": "token", "prompt_token_ids": list(PROMPT)}
            params = SamplingParams(max_tokens=STEPS, output_kind=RequestOutputKind.DELTA)
            return [o async for o in pd.generate(prompt, params, "r1", trace_parent=parent)]

        asyncio.run(collect())
    parent.end()
    spans = exporter.get_finished_spans()
    calls = [s for s in spans if s.name in ("pdserve.prefill", "pdserve.decode")]
    assert [s.name for s in calls] == ["pdserve.prefill", "pdserve.decode"] * 2
    assert all(s.parent.span_id == parent.get_span_context().span_id for s in calls)
    lost, resumed = [s for s in calls if s.name == "pdserve.decode"]
    assert lost.attributes["pdserve.replica_lost"] == "replica_died"
    assert resumed.attributes["pdserve.plan"] == "remote"
    (event,) = [e for e in parent.events if e.name == "pdserve.resume"]
    assert event.attributes["pdserve.resume.reason"] == "replica_died"
    assert event.attributes["pdserve.resume.recomputed_tokens"] == 2


def test_replicas_being_drained_turning_a_request_away_use_none_of_its_resumes() -> None:
    pools, resumes = FakePools(), []
    pools.refusals = 3
    pd = orchestrator(pools, [], max_resumes=0, on_resume=resumes.append)
    assert run(pd, SamplingParams(max_tokens=STEPS)) == greedy_tokens()
    assert [r.reason for r in resumes] == ["draining"] * 3
    # each went elsewhere: the replicas that refused it are avoided
    assert pools.decodes[-1].routing.avoid == ("d0", "d1", "d2")


def test_refusals_beyond_their_limit_fail_with_a_retryable_error() -> None:
    from pdserve.decode.orchestrator import MAX_DRAIN_REFUSALS

    pools = FakePools()
    pools.refusals = MAX_DRAIN_REFUSALS + 1
    with pytest.raises(RetryableRequestError, match="being drained"):
        run(orchestrator(pools, [], max_resumes=3), SamplingParams(max_tokens=STEPS))
    assert len(pools.decodes) == MAX_DRAIN_REFUSALS + 1


def test_streams_a_drain_moves_by_recomputing_use_none_of_their_resumes() -> None:
    pools, resumes = FakePools(lose_after=[2, 3]), []
    pools.drains_recompute = True  # as a drained colocated replica ends its streams
    pd = orchestrator(pools, [], max_resumes=0, on_resume=resumes.append)
    assert run(pd, streamed()) == greedy_tokens()
    assert [(r.reason, r.recomputed_tokens) for r in resumes] == [("draining", 2),
                                                                   ("draining", 5)]
