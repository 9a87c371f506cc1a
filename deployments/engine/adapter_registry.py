"""LoRA adapters loaded at run time: one small Ray actor per app (`AdapterRegistry`) that every
ingress and engine replica of the app syncs with, so an adapter loaded through one ingress
replica is named by all of them and loaded by every engine of its model, replicas started
later (autoscaling, restarts) included.

Run-time adapters get random ids above `RUNTIME_IDS_FROM` (the YAML's are 1.. per model), not
reused while the record lives (vLLM tells loaded adapters apart by id: a name unloaded and
loaded again with other weights must not meet the old ones), and unlikely to meet an id
recorded before the actor restarted. If the actor is lost, Ray restarts it empty under a new
epoch; each ingress replica then writes back the run-time adapters it knows (`restore`), so
they survive while any ingress replica does.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

import ray
from vllm.lora.request import LoRARequest

from pdserve.deployments.engine.actors import PDSERVE_NAMESPACE
from pdserve.deployments.engine.adapters import adapter_request

logger = logging.getLogger(__name__)

#: Run-time adapters' ids lie in [RUNTIME_IDS_FROM, RUNTIME_IDS_TO) (the YAML's: 1.. per model).
RUNTIME_IDS_FROM, RUNTIME_IDS_TO = 1_000_000, 2**31 - 1
#: How often ingress replicas and engines look for changes made elsewhere.
SYNC_PERIOD_S = 1.0

#: model id → adapter name → (lora_int_id, path as the caller gave it: each process resolves
#: it on its own node, `pdserve.models.resolve_adapter`)
Adapters = dict[str, dict[str, tuple[int, str]]]


@dataclass(frozen=True)
class Snapshot:
    epoch: str
    version: int
    adapters: Adapters = field(default_factory=dict)

    def of(self, model: str) -> dict[str, LoRARequest]:
        """The run-time adapters of `model`, as this process names them (paths resolved on
        this node; may build a `pdserve://` adapter, so call it off the event loop). An ingress
        sends its own in each request, which the engine hashes the request's blocks with; an
        engine loads its own under the same id. One that does not resolve here is left out
        (and logged), not the others."""
        adapters = {}
        for name, (lora_id, path) in self.adapters.get(model, {}).items():
            try:
                adapters[name] = adapter_request(name, lora_id, path, model)
            except ValueError as exc:
                logger.error("LoRA adapter %s of %s left out: %s", name, model, exc)
        return adapters


class AdapterBook:
    """The record itself (plain Python; `AdapterRegistry` is this as a Ray actor)."""

    def __init__(self) -> None:
        self.epoch = uuid.uuid4().hex
        self.version = 0
        self.used_ids: set[int] = set()
        self.adapters: Adapters = {}

    def add(self, model: str, name: str, path: str) -> int:
        """Record a new adapter of `model`; its id. A name already recorded (for any model) is
        refused: two loads racing for one name must not both succeed."""
        if any(name in named for named in self.adapters.values()):
            raise ValueError(f"the LoRA adapter `{name}` is already loaded")
        lora_id = self._new_id()
        self.adapters.setdefault(model, {})[name] = (lora_id, path)
        self.version += 1
        return lora_id

    def _new_id(self) -> int:
        while True:
            lora_id = RUNTIME_IDS_FROM + secrets.randbelow(RUNTIME_IDS_TO - RUNTIME_IDS_FROM)
            if lora_id not in self.used_ids:
                self.used_ids.add(lora_id)
                return lora_id

    def remove(self, model: str, name: str) -> bool:
        removed = self.adapters.get(model, {}).pop(name, None) is not None
        self.version += removed
        return removed

    def restore(self, adapters: Adapters) -> None:
        """What an ingress replica knew, written back into a restarted (empty) record."""
        for model, named in adapters.items():
            for name, (lora_id, path) in named.items():
                self.adapters.setdefault(model, {}).setdefault(name, (lora_id, path))
                self.used_ids.add(lora_id)
        self.version += 1

    def snapshot(self) -> Snapshot:
        return Snapshot(self.epoch, self.version,
                        {model: dict(named) for model, named in self.adapters.items()})


AdapterRegistry = ray.remote(num_cpus=0, max_restarts=-1)(AdapterBook)


def adapter_registry(app_name: str) -> Any:
    """The app's registry (created by whoever asks first; it outlives its creator)."""
    return AdapterRegistry.options(  # type: ignore[attr-defined]
        name=f"lora-adapters-{app_name}", namespace=PDSERVE_NAMESPACE, lifetime="detached",
        get_if_exists=True).remote()
