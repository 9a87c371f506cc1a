"""What one ingress replica serves, by the names clients use: each generating model's vLLM
front, the embedding pools, and the RAG pipelines (each a model of its own)."""

from __future__ import annotations

from http import HTTPStatus

from fastapi import Request
from ray.serve.handle import DeploymentHandle
from vllm.entrypoints.serve.engine.protocol import ErrorResponse
from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

from pdserve.deployments.api.errors import not_found
from pdserve.deployments.api.guard import caller_of
from pdserve.deployments.api.keys import ANONYMOUS, Caller
from pdserve.deployments.config.app import AppConfig
from pdserve.deployments.config.models import ModelConfig
from pdserve.deployments.config.pools import Role
from pdserve.deployments.frontend.model import ModelFrontend
from pdserve.deployments.pipelines.rag import PipelineFrontend

Served = ModelFrontend | PipelineFrontend


class Catalog:
    def __init__(self, config: AppConfig, pools: dict[str, dict[Role, DeploymentHandle]],
                 retrievers: dict[str, DeploymentHandle]) -> None:
        self.auth, self.limits = config.auth, config.limits
        self.max_concurrent = config.concurrent_requests_limit()
        generating = [m for m in config.models if m.generates()]
        self.frontends = {m.model_id: ModelFrontend(m, pools[m.model_id]) for m in generating}
        self.by_name: dict[str, Served] = {
            name: self.frontends[m.model_id] for m in generating for name in m.names()}
        self.embedders: dict[str, tuple[ModelConfig, DeploymentHandle]] = {
            name: (m, pools[m.model_id]["embed"])
            for m in config.models if m.mode == "embed" for name in m.names()}
        self.pipelines = {
            p.name: PipelineFrontend(p, self.frontends[p.llm], retrievers[p.name])
            for p in config.pipelines}
        self.by_name.update(self.pipelines)
        self.default_model = (generating or config.models)[0].model_id

    def frontend(self, model: str | None, caller: Caller = ANONYMOUS) -> Served | ErrorResponse:
        """The front serving `model` (the first generating model when none is named), if
        `caller` may use it."""
        frontend = self.by_name.get(model or self.default_model) or self.adapter_owner(model)
        if frontend is not None:
            return refused(caller, model or self.default_model) or frontend
        if model in self.embedders:
            return create_error_response(
                f"The model `{model}` is an embedding model: use /v1/embeddings.", param="model")
        served = [n for n in self.names() if caller.may_use(n)]
        return not_found("model", model, served, "model")

    def adapter_owner(self, name: str | None) -> ModelFrontend | None:
        """The model serving the LoRA adapter `name` (declared or loaded at run time)."""
        return next((f for f in self.frontends.values() if name and f.adapter(name)), None)

    def names(self) -> list[str]:
        """Every name a client may send as `model` now, run-time adapters included."""
        runtime = [n for f in self.frontends.values() for n in f.registry.lora_requests]
        return list(dict.fromkeys([*self.by_name, *runtime, *self.embedders]))

    def pipeline(self, name: str, caller: Caller = ANONYMOUS) -> PipelineFrontend | ErrorResponse:
        pipeline = self.pipelines.get(name)
        if pipeline is None:
            return not_found("pipeline", name, [n for n in self.pipelines if caller.may_use(n)],
                             "name")
        return refused(caller, name) or pipeline


def refused(caller: Caller, model: str) -> ErrorResponse | None:
    """403 when `caller`'s key is limited to other models (or pipelines)."""
    if caller.may_use(model):
        return None
    return create_error_response(
        f"The API key `{caller.name}` may not use the model `{model}`.",
        err_type="PermissionDeniedError", status_code=HTTPStatus.FORBIDDEN, param="model")


def model_front(raw_request: Request, model: str | None, hint: str = ""
                ) -> ModelFrontend | ErrorResponse:
    """The named model's front (the first generating model when none is named) for the
    request's caller, on a route only models answer: a pipeline answers chat completions
    alone, so it gets a 400 saying so (and `hint`)."""
    frontend = catalog_of(raw_request).frontend(model, caller_of(raw_request.state))
    if isinstance(frontend, PipelineFrontend):
        return create_error_response(
            f"`{model}` is a pipeline: it answers only chat completions (/v1/chat/completions)"
            f"{hint}.", param="model")
    return frontend


def catalog_of(request: Request) -> Catalog:
    """The catalog of the ingress replica serving `request` (set when its app was built)."""
    return request.app.state.catalog
