"""One model's OpenAI front: vLLM's serving classes over the model's pool graph.

Everything request-shaped (parsing, chat templates, tokenization, sampling params, streaming
chunks, usage, logprobs, errors) is vLLM's own code; pdserve supplies the engine client.
"""

from __future__ import annotations

import logging

from ray.serve.handle import DeploymentHandle
from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion
from vllm.entrypoints.openai.models.protocol import BaseModelPath
from vllm.entrypoints.openai.models.serving import OpenAIServingModels
from vllm.entrypoints.openai.responses.serving import OpenAIServingResponses
from vllm.entrypoints.serve.tokenize.serving import ServingTokenization
from vllm.lora.request import LoRARequest
from vllm.renderers.online_renderer import OnlineRenderer

from pdserve.decode.orchestrator import Orchestrator, always_remote
from pdserve.deployments.config.models import ModelConfig
from pdserve.deployments.config.pools import Role
from pdserve.deployments.engine.actors import this_actor
from pdserve.deployments.engine.adapters import static_adapters
from pdserve.deployments.frontend.engine_client import ModelView, PoolGraphClient
from pdserve.deployments.frontend.metrics import RequestMetrics
from pdserve.deployments.frontend.pool_calls import make_planner, pool_calls, pool_states

logger = logging.getLogger(__name__)


class ModelFrontend:
    """The OpenAI completion and chat handlers of one served model."""

    def __init__(self, model: ModelConfig, handles: dict[Role, DeploymentHandle]) -> None:
        self.model = model
        self.handles = handles
        self.metrics = RequestMetrics(model.model_id, model.mode)
        self.pools = pool_states(handles)
        view = ModelView(model)
        disaggregated = model.mode == "pd"
        generating = model.pools()["decode" if disaggregated else "colocated"]
        orchestrator = Orchestrator(
            pool_calls(handles, self.pools, generating.cold_start_timeout_s,
                       self.metrics.record_cold_start),
            disaggregated=disaggregated,
            prefill_timeout_s=model.kv_transfer.prefill_timeout_s,
            on_fallback=self.metrics.record_fallback,
            planner=(make_planner(model, self.pools, view.hasher.block_size) if disaggregated
                     else always_remote),
            on_plan=self.metrics.record_plan,
            max_resumes=model.resume.max_attempts,
            hasher=view.hasher,
            on_resume=self.metrics.record_resume,
            on_resumed=self.metrics.record_resumed,
            detokenize=view.detokenize,
            caller=this_actor(),
        )
        client = PoolGraphClient(view, orchestrator, self.metrics)
        self.client = client
        # vLLM's registry of the model's names and LoRA adapters: its serving classes look a
        # request's `model` up in it and hand the adapter to `client.generate`
        self.registry = OpenAIServingModels(
            client, [BaseModelPath(name=name, model_path=model.model) for name in model.names()])
        self.static_adapters = static_adapters(model)
        self.serve_adapters({})
        # vLLM's tool and reasoning parsers: the renderer checks requests against them, the
        # chat class reads the model's output with them
        parsers = {"enable_auto_tools": model.enable_auto_tool_choice,
                   "tool_parser": model.tool_call_parser,
                   "reasoning_parser": model.reasoning_parser}
        renderer = OnlineRenderer(
            client.model_config,
            client.renderer,
            request_logger=None,
            chat_template=None,
            chat_template_content_format="auto",
            **parsers,
        )
        renderer.warmup()
        # `usage.prompt_tokens_details.cached_tokens`: the engine's prefix-cache hit, per
        # request (what OpenAI reports too; the routing benchmark reads it).
        self.completions = OpenAIServingCompletion(
            client, self.registry, online_renderer=renderer, request_logger=None,
            enable_prompt_tokens_details=True,
        )
        # what every chat-like serving class of this model takes (chat, Responses, and the
        # Anthropic class `api/messages.py` builds over `self.renderer`)
        self.renderer = renderer
        self.chat_kwargs = {
            "request_logger": None, "chat_template": None,
            "chat_template_content_format": "auto", "enable_prompt_tokens_details": True,
            **parsers, "reasoning_parser": model.reasoning_parser or ""}
        self.chat = OpenAIServingChat(client, self.registry, "assistant",
                                      online_renderer=renderer, **self.chat_kwargs)
        # `/v1/responses`: never stored here (`api/responses.py`: one replica's memory is not
        # the service's), whatever `VLLM_ENABLE_RESPONSES_API_STORE` says
        self.responses = OpenAIServingResponses(client, self.registry, renderer,
                                                **self.chat_kwargs)
        self.responses.enable_store = False
        # `/tokenize`, `/detokenize`: the same renderer, so counts match what generation sends
        self.tokenization = ServingTokenization(
            self.registry, renderer, chat_template=None, chat_template_content_format="auto",
            request_logger=None,
        )

    def serve_adapters(self, runtime: dict[str, LoRARequest]) -> None:
        """Serve the YAML's adapters and `runtime` (those loaded at run time, from the app's
        adapter registry) by name: vLLM's serving classes look each request's `model` up here."""
        self.registry.lora_requests = {**self.static_adapters, **runtime}

    def adapter(self, name: str) -> LoRARequest | None:
        return self.registry.lora_requests.get(name)
