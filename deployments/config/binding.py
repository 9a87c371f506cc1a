"""The slice of the app config one engine replica serves: its model, role and slot.

Each pool deployment is bound an `EngineBinding` rather than the whole `AppConfig`, so a replica
neither re-validates other models nor looks its own up by id.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from pdserve.deployments.config.app import AppConfig
from pdserve.deployments.config.base import StrictModel
from pdserve.deployments.config.models import ModelConfig
from pdserve.deployments.config.pools import PoolName, Role


class EngineBinding(StrictModel):
    """What an engine replica needs to know about the app it is part of."""

    model: ModelConfig
    role: Role
    pool_index: int = Field(..., ge=0, description="Position of the pool in the app (ports).")
    num_pools: int = Field(..., ge=1, description="Pools in the app (CPU binding spreads them).")
    cpu_binding: Literal["auto", "nobind"] = "auto"
    fault_injection: bool = False
    capacity_profile: dict[str, Any] | None = Field(
        None, description="The model's `planner.profile`, as the app builder read and "
        "validated it (replicas on other nodes need not hold the file).")

    @property
    def pool(self) -> PoolName:
        return PoolName(self.model.model_id, self.role)


def engine_binding(config: AppConfig, model: ModelConfig, role: Role,
                   capacity_profile: dict[str, Any] | None = None) -> EngineBinding:
    """The binding of `model`'s `role` pool in `config`."""
    names = config.pool_names()
    return EngineBinding(
        model=model, role=role, pool_index=names.index(PoolName(model.model_id, role)),
        num_pools=len(names), cpu_binding=config.cpu_binding,
        fault_injection=config.testing.fault_injection, capacity_profile=capacity_profile,
    )
