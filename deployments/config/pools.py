"""A pool's role and its deployment name: the one definition every process uses.

A pool is the Ray Serve deployment `{model_id}-{role}`; the app builder names deployments with
`PoolName.deployment`, the autoscaling policy and tests read them back with `PoolName.parse`,
and admin endpoints show `PoolName.label` (`{model_id}/{role}`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Role = Literal["prefill", "decode", "colocated", "embed"]
ROLES: tuple[Role, ...] = get_args(Role)
#: Pools whose engines generate tokens (the autoscaling policy steers these).
GENERATING_ROLES: tuple[Role, ...] = ("prefill", "decode", "colocated")


@dataclass(frozen=True)
class PoolName:
    model: str
    role: Role

    @property
    def deployment(self) -> str:
        """The Ray Serve deployment name."""
        return f"{self.model}-{self.role}"

    @property
    def label(self) -> str:
        """How admin endpoints and routing snapshots name the pool."""
        return f"{self.model}/{self.role}"

    @classmethod
    def parse(cls, deployment: str) -> PoolName | None:
        """The pool a deployment name denotes; None for deployments that are not pools."""
        model, _, role = deployment.rpartition("-")
        if not model or role not in ROLES:
            return None
        return cls(model, role)  # type: ignore[arg-type]
