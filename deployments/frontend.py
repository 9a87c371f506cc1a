"""One model's OpenAI front: vLLM's serving classes over the model's pool graph.

Everything request-shaped (parsing, chat templates, tokenization, sampling params, streaming
chunks, usage, logprobs, errors) is vLLM's own code; pdserve supplies the engine client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

from pdserve.deployments.config import ModelConfig
from pdserve.deployments.engine_client import PoolGraphClient
from pdserve.deployments.messages import DecodeRequest, PrefillRequest, PrefillResult, RoutingInfo
from pdserve.deployments.metrics import RequestMetrics
from pdserve.deployments.orchestrator import Orchestrator, Planner, PoolCalls
from pdserve.routing.plan import Plan, PlanInputs, PlanThresholds, decide
from pdserve.routing.pool_state import PoolState, pool_state
from ray.serve.handle import DeploymentHandle
from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion
from vllm.entrypoints.openai.models.protocol import BaseModelPath
from vllm.entrypoints.openai.models.serving import OpenAIModelRegistry
from vllm.exceptions import RetryableRequestError
from vllm.outputs import RequestOutput
from vllm.renderers.online_renderer import OnlineRenderer

logger = logging.getLogger(__name__)


def pool_calls(
    handles: dict[str, DeploymentHandle],
    states: dict[str, PoolState] | None = None,
    cold_start_timeout_s: float = 300.0,
    on_cold_start: Callable[[float, bool], None] | None = None,
) -> PoolCalls:
    """Wrap a model's Serve handles as the plain calls the orchestrator expects.

    A request that finds the generating pool at zero replicas waits for Ray to start one (the
    autoscaler sees it queued at the handle) up to `cold_start_timeout_s`, then fails with a
    retryable 503; `on_cold_start(wait_s, timed_out)` reports the wait.
    """
    role = "decode" if "decode" in handles else "colocated"
    generate_pool = handles[role]
    state = (states or {}).get(role)

    async def generate(request: DecodeRequest) -> AsyncIterator[RequestOutput]:
        cold = state is not None and state.num_replicas() == 0
        started = time.perf_counter()
        responses = generate_pool.options(stream=True).generate.remote(request)
        done = False
        try:
            outputs = aiter(responses)
            if cold:
                try:
                    first = await asyncio.wait_for(anext(outputs), cold_start_timeout_s)
                except TimeoutError:
                    if on_cold_start:
                        on_cold_start(time.perf_counter() - started, True)
                    raise RetryableRequestError(
                        f"no replica of {generate_pool.deployment_name} became ready within "
                        f"{cold_start_timeout_s:g} s (the pool was scaled to zero); retry later"
                    ) from None
                if on_cold_start:
                    on_cold_start(time.perf_counter() - started, False)
                yield first
            async for output in outputs:
                yield output
            done = True
        finally:
            if not done:
                responses.cancel()

    if "prefill" not in handles:
        return PoolCalls(generate=generate)

    async def prefill(request: PrefillRequest) -> PrefillResult:
        response = handles["prefill"].prefill.remote(request)
        try:
            return await response
        except asyncio.CancelledError:
            response.cancel()  # deadline passed or client left: stop the prefill engine too
            raise

    return PoolCalls(generate=generate, prefill=prefill)


def pool_states(handles: dict[str, DeploymentHandle]) -> dict[str, PoolState]:
    """This process's view of each pool (shared with the pools' routers)."""
    return {role: pool_state(h.app_name, h.deployment_name) for role, h in handles.items()}


def make_planner(model: ModelConfig, pools: dict[str, PoolState], block_size: int) -> Planner:
    """The PD plan over live pool data: decode-side cached prefix, prefill calls in flight."""
    thresholds = PlanThresholds(
        local_prefill_below_tokens=model.routing.local_prefill_below_tokens,
        max_prefill_queue_per_replica=model.routing.max_prefill_queue_per_replica,
    )
    prefill, decode = pools["prefill"], pools["decode"]

    def planner(info: RoutingInfo, forced_local: str | None) -> Plan:
        inputs = PlanInputs(
            prompt_tokens=info.prompt_tokens,
            block_size=block_size,
            decode_hit_blocks=decode.best_hit(info.block_hashes) if info.block_hashes else 0,
            prefill_in_flight=prefill.in_flight_total(),
            prefill_replicas=max(1, prefill.num_replicas()),
        )
        return decide(inputs, thresholds, forced_local)

    return planner


class ModelFrontend:
    """The OpenAI completion and chat handlers of one served model."""

    def __init__(self, model: ModelConfig, handles: dict[str, DeploymentHandle]) -> None:
        self.model = model
        self.handles = handles
        self.metrics = RequestMetrics(model.model_id, model.mode)
        self.pools = pool_states(handles)
        generating = model.pools()["decode" if model.mode == "pd" else "colocated"]
        orchestrator = Orchestrator(
            pool_calls(handles, self.pools, generating.cold_start_timeout_s,
                       self.metrics.record_cold_start),
            disaggregated=model.mode == "pd",
            prefill_timeout_s=model.kv_transfer.prefill_timeout_s,
            on_fallback=self.metrics.record_fallback,
        )
        client = PoolGraphClient(model, orchestrator, self.metrics)
        self.client = client
        if model.mode == "pd":
            orchestrator.planner = make_planner(model, self.pools, client.hasher.block_size)
            orchestrator.on_plan = self.metrics.record_plan
        self.registry = OpenAIModelRegistry(
            model_config=client.model_config,
            base_model_paths=[BaseModelPath(name=name, model_path=model.model)
                              for name in model.names()],
        )
        renderer = OnlineRenderer(
            client.model_config,
            client.renderer,
            request_logger=None,
            chat_template=None,
            chat_template_content_format="auto",
        )
        renderer.warmup()
        # `usage.prompt_tokens_details.cached_tokens`: the engine's prefix-cache hit, per
        # request (what OpenAI reports too; the routing benchmark reads it).
        self.completions = OpenAIServingCompletion(
            client, self.registry, online_renderer=renderer, request_logger=None,
            enable_prompt_tokens_details=True,
        )
        self.chat = OpenAIServingChat(
            client,
            self.registry,
            "assistant",
            online_renderer=renderer,
            request_logger=None,
            chat_template=None,
            chat_template_content_format="auto",
            enable_prompt_tokens_details=True,
        )
