"""PD orchestration logic with fake pools: which calls happen, and the fallback rules."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from vllm.sampling_params import SamplingParams

from pdserve.decode.orchestrator import Orchestrator, PoolCalls, local_prefill_reason
from pdserve.decode.request import DecodeRequest
from pdserve.prefill.request import PrefillRequest, PrefillResult

KV = {"do_remote_prefill": True, "remote_engine_id": "p0", "remote_block_ids": [1]}


class FakePools:
    def __init__(self, prefill_error: Exception | None = None, prefill_delay: float = 0) -> None:
        self.prefill_error = prefill_error
        self.prefill_delay = prefill_delay
        self.prefills: list[PrefillRequest] = []
        self.decodes: list[DecodeRequest] = []

    async def prefill(self, request: PrefillRequest) -> PrefillResult:
        self.prefills.append(request)
        await asyncio.sleep(self.prefill_delay)
        if self.prefill_error:
            raise self.prefill_error
        return PrefillResult(request.request_id, KV, prompt_tokens=3)

    async def generate(self, request: DecodeRequest) -> AsyncIterator[str]:
        self.decodes.append(request)
        for token in ("a", "b"):
            yield token

    def calls(self) -> PoolCalls:
        return PoolCalls(generate=self.generate, prefill=self.prefill)  # type: ignore[arg-type]


def run(orchestrator: Orchestrator, params: SamplingParams) -> list[str]:
    async def collect() -> list[str]:
        prompt = {"prompt_token_ids": [1, 2, 3]}
        return [o async for o in orchestrator.generate(prompt, params, "r1")]

    return asyncio.run(collect())


def orchestrator(pools: FakePools, fallbacks: list[str], timeout: float = 5) -> Orchestrator:
    return Orchestrator(
        pools.calls(), disaggregated=True, prefill_timeout_s=timeout, on_fallback=fallbacks.append
    )


def test_pd_prefills_once_then_decodes_with_the_transfer_params() -> None:
    pools, fallbacks = FakePools(), []
    assert run(orchestrator(pools, fallbacks), SamplingParams(max_tokens=4)) == ["a", "b"]
    assert len(pools.prefills) == 1 and pools.prefills[0].request_id == "r1-prefill"
    assert pools.decodes[0].kv_transfer_params == KV
    assert fallbacks == []


def test_failed_prefill_falls_back_to_local_prefill_and_is_counted() -> None:
    pools, fallbacks = FakePools(prefill_error=RuntimeError("replica died")), []
    assert run(orchestrator(pools, fallbacks), SamplingParams(max_tokens=4)) == ["a", "b"]
    assert pools.decodes[0].kv_transfer_params is None
    assert fallbacks == ["error"]


def test_slow_prefill_times_out_and_falls_back() -> None:
    pools, fallbacks = FakePools(prefill_delay=1.0), []
    assert run(orchestrator(pools, fallbacks, timeout=0.05), SamplingParams()) == ["a", "b"]
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
    run(orchestrator(pools, fallbacks), SamplingParams(n=2))
    assert pools.prefills == [] and fallbacks == []


def test_colocated_mode_never_prefills_remotely() -> None:
    pools = FakePools()
    colocated = Orchestrator(
        PoolCalls(generate=pools.generate), disaggregated=False, prefill_timeout_s=1  # type: ignore[arg-type]
    )
    assert run(colocated, SamplingParams()) == ["a", "b"]
    assert pools.prefills == [] and pools.decodes[0].kv_transfer_params is None


def test_pd_mode_without_a_prefill_pool_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="prefill"):
        Orchestrator(PoolCalls(generate=FakePools().generate), disaggregated=True,  # type: ignore[arg-type]
                     prefill_timeout_s=1)
