"""The LoRA adapters a model serves, as the `LoRARequest`s every process of it uses.

One definition for the ingress (which names an adapter in each request it sends to the pools,
and hashes the request's blocks with it) and the engines (which load the adapters when they
start): vLLM tells adapters apart by `lora_int_id`, so every process must give one adapter the
same id, and it keys an adapter's prefix-cache blocks by name *and* path, so the router's
hashes match the engines' only with the path the request carries (the engine hashes a request
with its own `LoRARequest`, whatever path it loaded the weights from).
"""

from __future__ import annotations

from vllm.lora.request import LoRARequest

from pdserve.deployments.config.models import ModelConfig
from pdserve.models import resolve_adapter


def adapter_request(name: str, lora_id: int, path: str, model_id: str) -> LoRARequest:
    """An adapter as this process names it: `path` (as configured) resolved on this node."""
    return LoRARequest(lora_name=name, lora_int_id=lora_id, lora_path=resolve_adapter(path),
                       base_model_name=model_id)


def static_adapters(model: ModelConfig) -> dict[str, LoRARequest]:
    """The adapters of `model`'s YAML (`lora_modules`), by name, ids 1.. in declared order."""
    return {name: adapter_request(name, lora_id, path, model.model_id)
            for lora_id, (name, path) in enumerate(model.lora_modules.items(), start=1)}
