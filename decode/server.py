"""Decode and colocated deployments: generate tokens, pulling transferred KV when given."""

from __future__ import annotations

from pdserve.deployments.engine import EngineHost
from ray import serve


@serve.deployment
class DecodeServer(EngineHost):
    """Decode pool: pulls KV over NIXL, or prefills locally when no params came (fallback)."""

    role = "decode"


@serve.deployment
class ColocatedServer(EngineHost):
    """Colocated pool: one engine prefills and decodes."""

    role = "colocated"
