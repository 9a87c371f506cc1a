"""What an operator asks the ingress: the served models, each pool's replicas as the routers
see them, health (one replica of every pool answers its engine check), and drains: a
generating replica hands its live streams to the others (with their KV on a decode pool) and
takes no new request until it is undrained."""

from __future__ import annotations

import asyncio
import time
from http import HTTPStatus

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from vllm.entrypoints.serve.engine.protocol import ModelCard, ModelList
from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
from vllm.entrypoints.serve.utils.api_utils import validate_json_request

from pdserve.deployments.api.catalog import Catalog, catalog_of, refused
from pdserve.deployments.api.errors import not_found, to_response
from pdserve.deployments.api.guard import caller_of
from pdserve.deployments.config.pools import PoolName

HEALTH_TIMEOUT_S = 10.0
HEALTH_CACHE_S = 1.0

router = APIRouter()


@router.get("/v1/models")
async def models(raw_request: Request) -> JSONResponse:
    """The models and pipelines served that the caller's key may use."""
    catalog = catalog_of(raw_request)
    cards = []
    for frontend in catalog.frontends.values():
        cards.extend((await frontend.registry.show_available_models()).data)
    cards += [ModelCard(id=name, root=m.model) for name, (m, _) in catalog.embedders.items()]
    cards += [ModelCard(id=name, root=f"pipeline:{p.config.llm}", owned_by="pdserve")
              for name, p in catalog.pipelines.items()]
    caller = caller_of(raw_request.state)
    cards = [card for card in cards if caller.may_use(card.id)]
    return JSONResponse(ModelList(data=cards).model_dump())


@router.get("/v1/pools")
async def pools(raw_request: Request) -> JSONResponse:
    """Replicas each pool of each model routes to now, as this ingress's routers see them
    (follows autoscaling within a second or two); `null` until the pool's router started
    (Ray creates it on the pool's first request)."""
    catalog = catalog_of(raw_request)
    return JSONResponse({
        PoolName(model_id, role).label: {
            "replicas": state.num_replicas() if state.synced else None,
            "replica_ids": state.replica_ids() if state.synced else None}
        for model_id, f in catalog.frontends.items() for role, state in f.pools.items()
    })


class HealthProbe:
    """The pools' health, checked at most once per `HEALTH_CACHE_S` whatever the number of
    probes (`/health` needs no key: a flood of probes must not reach the engines)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._checked: tuple[float, dict[str, str]] | None = None
        self._running: asyncio.Future[dict[str, str]] | None = None

    async def status(self) -> dict[str, str]:
        if self._checked and time.monotonic() - self._checked[0] < HEALTH_CACHE_S:
            return self._checked[1]
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._check())
        return await asyncio.shield(self._running)

    async def _check(self) -> dict[str, str]:
        catalog = self.catalog
        checks = {
            PoolName(model_id, role).label: handle.health.remote()
            for model_id, frontend in catalog.frontends.items()
            for role, handle in frontend.handles.items()
        }
        checks.update({PoolName(m.model_id, "embed").label: handle.health.remote()
                       for m, handle in catalog.embedders.values()})
        status: dict[str, str] = {}
        for name, response in checks.items():
            try:
                await asyncio.wait_for(response, HEALTH_TIMEOUT_S)
                status[name] = "ok"
            except Exception as exc:  # any failure means unhealthy; its kind, never its text
                status[name] = f"unhealthy: {type(exc).__name__}"  # (which names actors, IPs)
        self._checked = (time.monotonic(), status)
        return status


@router.get("/health")
async def health(raw_request: Request) -> JSONResponse:
    """200 when one replica of every pool of every model answers its engine health check; the
    per-pool detail only for an `admin` caller (or a server without keys)."""
    status = await raw_request.app.state.health.status()
    healthy = all(v == "ok" for v in status.values())
    body: dict[str, object] = {"status": "ok" if healthy else "unhealthy"}
    if caller_of(raw_request.state).may("admin"):
        body["pools"] = status
    return JSONResponse(body, status_code=200 if healthy else 503)


class DrainRequest(BaseModel):
    """Which generating replica to drain (ids as `/v1/pools` lists them)."""

    model: str
    replica: str
    timeout_s: float = Field(120.0, gt=0, le=3600, description="How long to wait for the "
                             "streams that cannot move (non-streamed, n > 1) to finish.")


async def _call_replica(raw_request: Request, body: DrainRequest, method: str) -> JSONResponse:
    catalog = catalog_of(raw_request)
    frontend = catalog.frontends.get(body.model)
    if frontend is None:
        return to_response(not_found("model", body.model, list(catalog.frontends), "model"))
    denied = refused(caller_of(raw_request.state), body.model)
    if denied is not None:
        return to_response(denied)
    role = "decode" if "decode" in frontend.handles else "colocated"
    known = frontend.pools[role].replica_ids()
    if body.replica not in known:
        return to_response(create_error_response(
            f"`{body.replica}` is not a replica of {PoolName(body.model, role).label}; its "
            f"replicas: {', '.join(known) or 'none yet'}.", err_type="NotFoundError",
            status_code=HTTPStatus.NOT_FOUND, param="replica"))
    call = getattr(frontend.handles[role], method)
    if method == "drain":
        return JSONResponse(await call.remote(replica=body.replica, timeout_s=body.timeout_s))
    await call.remote(replica=body.replica)
    return JSONResponse({"replica": body.replica, "draining": False})


@router.post("/v1/admin/drain", dependencies=[Depends(validate_json_request)])
async def drain(body: DrainRequest, raw_request: Request) -> JSONResponse:
    """Move a generating replica's live streams to the other replicas and keep new requests
    away from it (for maintenance, or before stopping its node): on a decode pool each stream's
    KV moves with it over NIXL; replies once the replica holds no stream (or at `timeout_s`)."""
    return await _call_replica(raw_request, body, "drain")


@router.post("/v1/admin/undrain", dependencies=[Depends(validate_json_request)])
async def undrain(body: DrainRequest, raw_request: Request) -> JSONResponse:
    """Let a drained replica take requests again."""
    return await _call_replica(raw_request, body, "undrain")
