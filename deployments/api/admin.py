"""What an operator asks the ingress: the served models, each pool's replicas as the routers
see them, and health (one replica of every pool answers its engine check)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from vllm.entrypoints.serve.engine.protocol import ModelCard, ModelList

from pdserve.deployments.api.catalog import catalog_of
from pdserve.deployments.config.pools import PoolName

HEALTH_TIMEOUT_S = 10.0

router = APIRouter()


@router.get("/v1/models")
async def models(raw_request: Request) -> JSONResponse:
    catalog = catalog_of(raw_request)
    cards = []
    for frontend in catalog.frontends.values():
        cards.extend((await frontend.registry.show_available_models()).data)
    cards += [ModelCard(id=name, root=m.model) for name, (m, _) in catalog.embedders.items()]
    cards += [ModelCard(id=name, root=f"pipeline:{p.config.llm}", owned_by="pdserve")
              for name, p in catalog.pipelines.items()]
    return JSONResponse(ModelList(data=cards).model_dump())


@router.get("/v1/pools")
async def pools(raw_request: Request) -> JSONResponse:
    """Replicas each pool of each model routes to now, as this ingress's routers see them
    (follows autoscaling within a second or two); `null` until the pool's router started
    (Ray creates it on the pool's first request)."""
    catalog = catalog_of(raw_request)
    return JSONResponse({
        PoolName(model_id, role).label: {
            "replicas": state.num_replicas() if state.synced else None}
        for model_id, f in catalog.frontends.items() for role, state in f.pools.items()
    })


@router.get("/health")
async def health(raw_request: Request) -> JSONResponse:
    """200 when one replica of every pool of every model answers its engine health check."""
    catalog = catalog_of(raw_request)
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
        except Exception as exc:  # any failure means unhealthy, and says why
            status[name] = f"unhealthy: {type(exc).__name__}: {exc}"
    healthy = all(v == "ok" for v in status.values())
    return JSONResponse({"status": "ok" if healthy else "unhealthy", "pools": status},
                        status_code=200 if healthy else 503)
