"""A KV pull that yields no token within `pull_timeout_s` is taken for stuck: the decode
replica prefills the prompt itself, and the stuck request is not aborted mid-transfer (the
deferred abort waits for its transfer to end). The engine is a stand-in: this is the replica's
stream logic only."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import RequestOutputKind, SamplingParams

from pdserve.decode.request import DecodeRequest
from pdserve.decode.server import DecodeServer
from pdserve.deployments.autoscaling.signals import ReplicaSLOSignals
from pdserve.deployments.engine.streaming import OutputStream


class StuckPullEngine:
    """Requests with transfer params never get their KV; others produce tokens."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.cancelled: list[str] = []

    async def generate(self, engine_input, params, request_id, **_):  # noqa: ANN001, ANN003, ANN201
        self.started.append(request_id)
        try:
            if (params.extra_args or {}).get("kv_transfer_params"):
                await asyncio.Event().wait()  # the pull never completes
            for token in (7, 8, 9):
                completion = CompletionOutput(index=0, text=f"<{token}>", token_ids=[token],
                                              cumulative_logprob=None, logprobs=None)
                yield RequestOutput(request_id, None, [1, 2], None, [completion],
                                    finished=token == 9)
        except asyncio.CancelledError:
            self.cancelled.append(request_id)
            raise


class Counter:
    def __init__(self) -> None:
        self.value = 0

    def inc(self, value: int = 1, tags: dict | None = None) -> None:
        self.value += value


def replica(engine: StuckPullEngine, timeout_s: float) -> DecodeServer:
    host = object.__new__(DecodeServer.func_or_class)  # no engine start: the logic only
    host.model = SimpleNamespace(kv_transfer=SimpleNamespace(pull_timeout_s=timeout_s),
                                 model_id="m")
    host.replica_id, host.role, host.kv_block_bytes, host._engine_traces = "r", "decode", 0, False
    host.stream = OutputStream(engine, set())  # type: ignore[arg-type]
    host.draining = False
    host.slo_signals = ReplicaSLOSignals()
    host._pull_timeouts = Counter()
    return host


def test_a_stuck_pull_falls_back_to_a_local_prefill_without_aborting_mid_transfer() -> None:
    engine = StuckPullEngine()
    host = replica(engine, timeout_s=0.2)
    request = DecodeRequest("r1", {"type": "token", "prompt_token_ids": [1, 2]},
                            SamplingParams(max_tokens=3, output_kind=RequestOutputKind.DELTA),
                            kv_transfer_params={"do_remote_prefill": True,
                                                "remote_engine_id": "p0"})

    async def go() -> tuple[list[int], int, list[str]]:
        tokens = [t async for o in host.generate(request) for t in o.outputs[0].token_ids]
        await asyncio.sleep(0.05)
        return tokens, len(host.stream.aborts), list(engine.cancelled)

    tokens, deferred_aborts, cancelled = asyncio.run(go())
    assert tokens == [7, 8, 9]
    assert engine.started == ["r1", "r1-local"]
    assert host._pull_timeouts.value == 1
    assert deferred_aborts == 1 and cancelled == []  # its abort waits for the transfer


class SlowGenerationEngine:
    """The pull ends at once (a first token after 0.05 s); each later token takes 0.4 s.
    Outputs as `output_kind` asks."""

    def __init__(self) -> None:
        self.kinds: list[RequestOutputKind] = []

    async def generate(self, engine_input, params, request_id, **_):  # noqa: ANN001, ANN003, ANN201
        self.kinds.append(params.output_kind)
        tokens: list[int] = []
        for token in (7, 8, 9):
            await asyncio.sleep(0.05 if token == 7 else 0.4)
            tokens.append(token)
            done = token == 9
            if params.output_kind == RequestOutputKind.FINAL_ONLY and not done:
                continue
            ids = [token] if params.output_kind == RequestOutputKind.DELTA else list(tokens)
            completion = CompletionOutput(index=0, text="", token_ids=ids,
                                          cumulative_logprob=None, logprobs=None)
            yield RequestOutput(request_id, None, [1, 2], None, [completion], finished=done)


def test_a_non_streamed_pull_is_not_taken_for_stuck_when_its_generation_outlasts_the_deadline(
        ) -> None:
    engine = SlowGenerationEngine()
    host = replica(engine, timeout_s=0.5)  # type: ignore[arg-type]
    request = DecodeRequest("r1", {"type": "token", "prompt_token_ids": [1, 2]},
                            SamplingParams(max_tokens=3,
                                           output_kind=RequestOutputKind.FINAL_ONLY),
                            kv_transfer_params={"do_remote_prefill": True,
                                                "remote_engine_id": "p0"})

    async def go() -> list[RequestOutput]:
        return [o async for o in host.generate(request)]

    outputs = asyncio.run(go())
    # one output, the whole answer with its prompt, as FINAL_ONLY gives it (the replica sends
    # the prompt with the first message only); no local prefill started
    assert [o.outputs[0].token_ids for o in outputs] == [[7, 8, 9]] and outputs[0].finished
    assert outputs[0].prompt_token_ids == [1, 2]
    assert engine.kinds == [RequestOutputKind.CUMULATIVE] and host._pull_timeouts.value == 0
