"""LoRA adapters loaded at run time: one small Ray actor per app (`AdapterRegistry`) that every
ingress and engine replica of the app syncs with, so an adapter loaded through one ingress
replica is named by all of them and loaded by every engine of its model, replicas started
later (autoscaling, restarts) included.

Run-time adapters get ids from `RUNTIME_IDS_FROM` up, never reused (vLLM tells adapters apart
by id: a name unloaded and loaded again with other weights must not meet the old ones). If the
actor is lost, Ray restarts it empty under a new epoch; each ingress replica then writes back
the run-time adapters it knows (`restore`), so they survive while any ingress replica does.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import ray
from vllm.lora.request import LoRARequest

from pdserve.models import resolve_adapter

#: First id of run-time adapters (the YAML's adapters are 1.. per model).
RUNTIME_IDS_FROM = 1_000_000
REGISTRY_NAMESPACE = "pdserve"
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
        engine loads its own under the same id."""
        return {name: LoRARequest(lora_name=name, lora_int_id=lora_id,
                                  lora_path=resolve_adapter(path), base_model_name=model)
                for name, (lora_id, path) in self.adapters.get(model, {}).items()}


class AdapterBook:
    """The record itself (plain Python; `AdapterRegistry` is this as a Ray actor)."""

    def __init__(self) -> None:
        self.epoch = uuid.uuid4().hex
        self.version = 0
        self.last_id = RUNTIME_IDS_FROM - 1
        self.adapters: Adapters = {}

    def add(self, model: str, name: str, path: str) -> int:
        """Record a new adapter of `model`; its id."""
        self.last_id += 1
        self.adapters.setdefault(model, {})[name] = (self.last_id, path)
        self.version += 1
        return self.last_id

    def remove(self, model: str, name: str) -> bool:
        removed = self.adapters.get(model, {}).pop(name, None) is not None
        self.version += removed
        return removed

    def restore(self, adapters: Adapters) -> None:
        """What an ingress replica knew, written back into a restarted (empty) record."""
        for model, named in adapters.items():
            for name, (lora_id, path) in named.items():
                self.adapters.setdefault(model, {}).setdefault(name, (lora_id, path))
                self.last_id = max(self.last_id, lora_id)
        self.version += 1

    def snapshot(self) -> Snapshot:
        return Snapshot(self.epoch, self.version,
                        {model: dict(named) for model, named in self.adapters.items()})


AdapterRegistry = ray.remote(num_cpus=0, max_restarts=-1)(AdapterBook)


def adapter_registry(app_name: str) -> Any:
    """The app's registry (created by whoever asks first; it outlives its creator)."""
    return AdapterRegistry.options(  # type: ignore[attr-defined]
        name=f"lora-adapters-{app_name}", namespace=REGISTRY_NAMESPACE, lifetime="detached",
        get_if_exists=True).remote()
