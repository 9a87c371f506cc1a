"""LoRA adapters loaded and unloaded at run time, on vLLM's routes (`/v1/load_lora_adapter`,
`/v1/unload_lora_adapter`; admin scope): the app's adapter registry records them, every engine
of the model loads them (and replicas started later do, from the registry), and every ingress
replica names them (`AdapterSync`, once a second)."""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from ray.exceptions import RayTaskError
from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
from vllm.entrypoints.serve.utils.api_utils import validate_json_request

from pdserve.deployments.api.catalog import Catalog, catalog_of
from pdserve.deployments.api.errors import not_found, to_response
from pdserve.deployments.engine.adapter_registry import (
    SYNC_PERIOD_S,
    Adapters,
    Snapshot,
    adapter_registry,
)
from pdserve.deployments.frontend.model import ModelFrontend
from pdserve.models import resolve_adapter

logger = logging.getLogger(__name__)

router = APIRouter()
#: How long a load or unload waits for one engine to follow the registry.
ENGINE_SYNC_TIMEOUT_S = 120.0


class AdapterSync:
    """An ingress replica's side of the registry: what it serves follows the registry, and a
    restarted (empty) registry gets back what this replica knew."""

    def __init__(self, catalog: Catalog, app_name: str) -> None:
        self.catalog = catalog
        self.app_name = app_name
        self.known = Snapshot("", -1)
        self._registry: Any = None
        self._task: asyncio.Task[None] | None = None
        self._refreshing = asyncio.Lock()  # the loop's refreshes and the routes', in order
        self.enabled = any(f.model.serves_lora() for f in catalog.frontends.values())

    def start(self) -> None:
        if self._task is None and self.enabled:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def registry(self) -> Any:
        if self._registry is None:  # (a GCS lookup: off the event loop)
            self._registry = await asyncio.to_thread(adapter_registry, self.app_name)
        return self._registry

    async def refresh(self) -> Snapshot:
        async with self._refreshing:
            registry = await self.registry()
            snapshot: Snapshot = await registry.snapshot.remote()
            if snapshot.epoch != self.known.epoch and self.known.adapters:
                logger.warning("LoRA adapter registry restarted; restoring %s",
                               self.known.adapters)
                await registry.restore.remote(self.known.adapters)
                snapshot = await registry.snapshot.remote()
            if (snapshot.epoch, snapshot.version) != (self.known.epoch, self.known.version):
                for model_id, frontend in self.catalog.frontends.items():
                    if frontend.model.serves_lora():
                        frontend.serve_adapters(
                            await asyncio.to_thread(snapshot.of, model_id))
                self.known = snapshot
            return self.known

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # the registry restarts; try again next period
                logger.warning("LoRA adapter registry unreachable (%s)", type(exc).__name__)
                self._registry = None
            await asyncio.sleep(SYNC_PERIOD_S)

    async def add(self, model: str, name: str, path: str) -> int:
        return await (await self.registry()).add.remote(model, name, path)

    async def remove(self, model: str, name: str) -> bool:
        return await (await self.registry()).remove.remote(model, name)

    @property
    def adapters(self) -> Adapters:
        return self.known.adapters


async def sync_engines(frontend: ModelFrontend, adapter: str) -> list[str]:
    """Have every engine of `frontend`'s model follow the registry now; which replicas could
    not load `adapter` or did not answer, if any (their logs say why)."""

    failed = []
    # one call at a time: Ray's router hands a replica it picked to its oldest pending
    # request, so concurrent calls pinned to different replicas of a pool could swap targets
    for role, handle in frontend.handles.items():
        for replica in frontend.pools[role].replica_ids():
            try:
                result = await asyncio.wait_for(handle.sync_adapters.remote(replica=replica),
                                                ENGINE_SYNC_TIMEOUT_S)
            except TimeoutError:
                failed.append(f"{role} replica {replica}: no answer within "
                              f"{ENGINE_SYNC_TIMEOUT_S:g} s")
                continue
            if adapter in result["failed"]:
                failed.append(f"{role} replica {replica} could not load it")
    return failed


def sync_of(raw_request: Request) -> AdapterSync:
    return raw_request.app.state.adapter_sync


class LoadAdapter(BaseModel):
    """vLLM's load request, plus the base model when the app serves more than one."""

    model_config = ConfigDict(extra="forbid")
    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1, description="HF id, local directory, or "
                           "`pdserve://tiny/<adapter>`, as in `lora_modules`")
    model: str | None = Field(None, description="The base model (default: the first "
                              "generating model)")


class UnloadAdapter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: str = Field(min_length=1)


def _bad(message: str, param: str = "lora_name") -> JSONResponse:
    return to_response(create_error_response(message, param=param))


def _model_front(catalog: Catalog, model: str) -> ModelFrontend | None:
    front = catalog.by_name.get(model)  # the id or an alias
    return front if isinstance(front, ModelFrontend) else None


@router.post("/v1/load_lora_adapter", dependencies=[Depends(validate_json_request)])
async def load_lora_adapter(body: LoadAdapter, raw_request: Request) -> Response:
    """Load an adapter on every engine of its model (and of replicas started later); clients
    name it as `model` once this returns."""
    catalog, sync = catalog_of(raw_request), sync_of(raw_request)
    model = body.model or catalog.default_model
    frontend = _model_front(catalog, model)
    if frontend is None:
        return to_response(not_found("model", model, list(catalog.frontends), "model"))
    if not frontend.model.serves_lora():
        return _bad(f"The model `{model}` does not serve LoRA adapters (its engine_kwargs do "
                    "not set enable_lora).", param="model")
    if not all(state.synced for state in frontend.pools.values()):
        return to_response(create_error_response(
            f"The pools of `{model}` are not routed from this replica yet; retry in a moment.",
            err_type="ServiceUnavailableError", status_code=HTTPStatus.SERVICE_UNAVAILABLE))
    sync.start()
    await sync.refresh()  # what other replicas loaded counts too
    if body.lora_name in catalog.names():
        return _bad(f"`{body.lora_name}` is already served; unload it first (or pick "
                    "another name).")
    try:  # (each engine resolves it again on its own node)
        await asyncio.to_thread(resolve_adapter, body.lora_path)
    except ValueError as exc:
        return _bad(str(exc), param="lora_path")
    model_id = frontend.model.model_id
    try:
        await sync.add(model_id, body.lora_name, body.lora_path)
    except RayTaskError as exc:
        if not isinstance(exc.cause, ValueError):
            raise
        return _bad(f"`{body.lora_name}` is already served; unload it first (or pick "
                    "another name).")  # another load of this name won the race
    try:
        failed = await sync_engines(frontend, body.lora_name)
    except BaseException:  # (a cancelled or broken call): nothing half-loaded stays recorded
        await asyncio.shield(_undo(sync, frontend, model_id, body.lora_name))
        raise
    if failed:
        logger.error("LoRA adapter %s not loaded: %s", body.lora_name, failed)
        await _undo(sync, frontend, model_id, body.lora_name)
        return _bad(f"The LoRA adapter `{body.lora_name}` could not be loaded "
                    f"({'; '.join(failed)}): check that `lora_path` names an adapter of "
                    f"`{model}` that every node can read.", param="lora_path")
    await sync.refresh()
    return Response(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


async def _undo(sync: AdapterSync, frontend: ModelFrontend, model_id: str, name: str) -> None:
    await sync.remove(model_id, name)
    await sync.refresh()
    await sync_engines(frontend, name)


@router.post("/v1/unload_lora_adapter", dependencies=[Depends(validate_json_request)])
async def unload_lora_adapter(body: UnloadAdapter, raw_request: Request) -> Response:
    """Stop serving an adapter loaded at run time; every engine of its model drops it."""
    catalog, sync = catalog_of(raw_request), sync_of(raw_request)
    if not sync.enabled:
        return to_response(not_found("LoRA adapter", body.lora_name, [], "lora_name"))
    sync.start()
    await sync.refresh()
    frontend = catalog.adapter_owner(body.lora_name)
    if frontend is None:
        runtime = [n for named in sync.adapters.values() for n in named]
        return to_response(not_found("LoRA adapter", body.lora_name, runtime, "lora_name"))
    if body.lora_name in frontend.static_adapters:
        return _bad(f"The LoRA adapter `{body.lora_name}` is declared in the config "
                    "(`lora_modules`): remove it there.")
    await sync.remove(frontend.model.model_id, body.lora_name)
    await sync.refresh()
    await sync_engines(frontend, body.lora_name)
    return Response(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")
