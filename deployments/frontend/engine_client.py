"""A vLLM `EngineClient` whose engine is a graph of Ray Serve pools.

vLLM's own OpenAI layer (`OpenAIServingCompletion`, `OpenAIServingChat`) runs in the ingress
on top of this client: it parses requests, renders chat templates, tokenizes, builds
`SamplingParams` and formats responses exactly as `vllm serve` does. Only `generate` differs:
it goes through the `Orchestrator` (prefill pool, then decode pool). The config, renderer and
input processor (`ModelView`) are built from the same engine arguments the pools use, without
an engine.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable, Sequence
from contextlib import aclosing
from typing import Any

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.engine.protocol import EngineClient
from vllm.lora.request import LoRARequest
from vllm.outputs import RequestOutput
from vllm.renderers import renderer_from_config
from vllm.sampling_params import RequestOutputKind, SamplingParams
from vllm.usage.usage_lib import UsageContext
from vllm.v1.engine.input_processor import InputProcessor

from pdserve import tracing
from pdserve.decode.orchestrator import Orchestrator
from pdserve.deployments.config.models import ModelConfig
from pdserve.deployments.frontend.metrics import RequestMetrics
from pdserve.deployments.frontend.usage import add_tokens
from pdserve.kv_transfer.params import KV_PARAMS_KEY, without_transfer_params
from pdserve.models import resolve_model
from pdserve.routing.block_hashes import BlockHasher
from pdserve.routing.types import RoutingInfo

#: `vllm_xargs` key the ingress fills from the session header (see `RoutingConfig`).
SESSION_KEY = "pdserve_session_id"


def _split_client_extras(params: SamplingParams) -> tuple[SamplingParams, str | None]:
    """Drop `kv_transfer_params` a client put in its request (only the orchestrator may set
    them: client-made params can make an engine pull from anywhere or fail an assertion) and
    take out the session id, which is routing data, not a sampling parameter."""
    extra = params.extra_args or {}
    if KV_PARAMS_KEY not in extra and SESSION_KEY not in extra:
        return params, None
    session = extra.get(SESSION_KEY)
    params = params.clone()
    remaining = {k: v for k, v in without_transfer_params(extra).items() if k != SESSION_KEY}
    params.extra_args = remaining or None
    return params, None if session is None else str(session)


class _Unsupported(RuntimeError):
    """An engine-admin operation that a remote pool graph does not offer through the ingress."""


class ModelView:
    """What vLLM's OpenAI layer and the router need of a model, built without an engine: its
    vLLM config, renderer (chat template, tokenizer), input processor and block hasher."""

    def __init__(self, model: ModelConfig) -> None:
        args = AsyncEngineArgs(model=resolve_model(model.model), served_model_name=model.model_id,
                               **model.engine_kwargs)
        self.vllm_config = args.create_engine_config(UsageContext.OPENAI_API_SERVER)
        self.model_config = self.vllm_config.model_config
        self.renderer = renderer_from_config(self.vllm_config)
        self.input_processor = InputProcessor(self.vllm_config, self.renderer)
        cache = self.vllm_config.cache_config
        self.hasher = BlockHasher(cache.block_size, cache.prefix_caching_hash_algo)

    def detokenize(self, context: Sequence[int], ids: Sequence[int]) -> str:
        """Text of `ids` following `context` (a few context tokens, so word-boundary spaces
        come out as they do in the engine's incremental detokenizer)."""
        tokenizer = self.input_processor.get_tokenizer()
        tail = list(context[-4:])
        return tokenizer.decode([*tail, *ids])[len(tokenizer.decode(tail)):]


class PoolGraphClient(EngineClient):
    """`EngineClient` for one model served by remote pools."""

    def __init__(
        self, view: ModelView, orchestrator: Orchestrator, metrics: RequestMetrics
    ) -> None:
        self.vllm_config = view.vllm_config
        self.model_config = view.model_config
        self.renderer = view.renderer
        self.input_processor = view.input_processor
        self.hasher = view.hasher
        self.orchestrator = orchestrator
        self.metrics = metrics

    # -- the one real operation -------------------------------------------------------------
    async def generate(  # type: ignore[override]
        self, prompt: Any, sampling_params: SamplingParams, request_id: str,
        lora_request: LoRARequest | None = None, **_: Any
    ) -> AsyncGenerator[RequestOutput, None]:
        """Run the request through the pools (with the LoRA adapter vLLM's OpenAI layer found
        for its `model`), timing TTFT/ITL/e2e as the client sees them."""
        params, session_id = _split_client_extras(sampling_params)
        self.validate(prompt, params, request_id, lora_request)
        timer = self.metrics.start(streaming=params.output_kind == RequestOutputKind.DELTA)
        token_ids = list(prompt.get("prompt_token_ids") or ()) if isinstance(prompt, dict) else []
        salt = prompt.get("cache_salt") if isinstance(prompt, dict) else None
        routing = RoutingInfo(
            block_hashes=self.hasher(token_ids, salt, lora_request),
            prompt_tokens=len(token_ids), adapter=lora_request.lora_name if lora_request else None,
            session_id=session_id,
        )
        text = prompt.get("prompt") if isinstance(prompt, dict) else None
        outcome, error, generated, finish_reasons = "error", None, 0, ()
        cumulative = params.output_kind == RequestOutputKind.CUMULATIVE
        tracing.prepared()  # what vLLM's OpenAI layer did before this call, as a span
        add_tokens(len(token_ids))  # the caller's token budget (per-key limits)
        span = tracing.start(f"pdserve.generate {self.model_config.served_model_name}", **{
            "gen_ai.request.model": self.model_config.served_model_name,
            "gen_ai.request.max_tokens": params.max_tokens,
            "gen_ai.request.temperature": params.temperature,
            "gen_ai.usage.input_tokens": len(token_ids) or None,
            "pdserve.lora": lora_request.lora_name if lora_request else None,
            "pdserve.request_id": request_id})
        try:
            async with aclosing(self.orchestrator.generate(
                    prompt, params, request_id, routing, text or "", trace_parent=span,
                    adapter=lora_request,
            )) as outputs:
                async for output in outputs:
                    new_tokens = sum(len(c.token_ids) for c in output.outputs)
                    generated = new_tokens if cumulative else generated + new_tokens
                    timer.on_tokens(new_tokens)
                    add_tokens(new_tokens)
                    if output.finished:
                        finish_reasons = tuple(str(c.finish_reason) for c in output.outputs)
                    yield output
            outcome = "ok"
        except GeneratorExit:
            outcome = "cancelled"
            raise
        except BaseException as exc:
            outcome = "cancelled" if type(exc).__name__ == "CancelledError" else "error"
            error = exc if outcome == "error" else None
            raise
        finally:
            timer.finish(outcome)
            tracing.finish(span, error, **{
                "gen_ai.usage.output_tokens": generated,
                "gen_ai.response.finish_reasons": finish_reasons or None,
                "pdserve.outcome": outcome})

    def validate(self, prompt: Any, params: SamplingParams, request_id: str,
                 lora_request: LoRARequest | None = None) -> None:
        """Reject what the engines would reject, before any engine runs: vLLM's own input
        processing (sampling params, prompt length), as the engine applies it on admission.
        Otherwise a PD request with a bad parameter would fail on the decode engine after
        its prefill ran and pinned KV."""
        self.input_processor.process_inputs(
            request_id, prompt, params, supported_tasks=("generate",),
            lora_request=lora_request)

    # -- state the OpenAI layer reads ---------------------------------------------------------
    @property
    def is_running(self) -> bool:
        return True

    @property
    def is_stopped(self) -> bool:
        return False

    @property
    def errored(self) -> bool:
        return False

    @property
    def dead_error(self) -> BaseException:
        return RuntimeError("engine pools are unavailable")

    async def get_supported_tasks(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("generate",)

    async def is_tracing_enabled(self) -> bool:
        return False

    async def do_log_stats(self) -> None:
        return None

    async def check_health(self) -> None:
        return None

    async def abort(self, request_id: str | Iterable[str]) -> None:
        """Aborts follow cancellation: closing a stream aborts it on the engines."""
        return None

    async def notify_kv_transfer_request_rejected(
        self, request_id: str, kv_transfer_params: dict[str, Any], *,
        data_parallel_rank: int | None = None,
    ) -> None:
        return None

    # -- engine administration: not offered through the ingress -------------------------------
    def encode(self, *args: Any, **kwargs: Any) -> Any:
        raise _Unsupported("this model serves generation, not pooling")

    async def _unsupported(self, *args: Any, **kwargs: Any) -> Any:
        raise _Unsupported("engine administration is not exposed by the pdserve ingress")

    start_profile = stop_profile = reset_mm_cache = reset_encoder_cache = _unsupported
    reset_prefix_cache = sleep = release_kv_cache_memory = wake_up = _unsupported
    add_lora = pause_generation = resume_generation = _unsupported

    async def is_sleeping(self) -> bool:
        return False

    async def is_paused(self) -> bool:
        return False

    def shutdown(self, timeout: float | None = None) -> None:
        self.renderer.shutdown()
