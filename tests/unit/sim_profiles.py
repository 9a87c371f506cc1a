"""A profile written by hand for the simulator's unit tests, and the tiny model's config in
any mode (shared by the simulator's test modules; importable because pytest puts this folder
on the path of its test modules)."""

from __future__ import annotations

from pdserve.deployments.config.models import ModelConfig
from pdserve.simulation.profile_file import (
    GraphOverhead,
    KVCache,
    KVTransfer,
    Profile,
    StepTimes,
)

ENGINE = {"dtype": "float32", "max_model_len": 1024, "max_num_batched_tokens": 256,
          "block_size": 32, "enforce_eager": True, "max_num_seqs": 16}
PROFILE = Profile(
    created="2026-12-05", source="written by hand for tests", model="pdserve://tiny",
    engine_kwargs=ENGINE, kv_cache=KVCache(num_blocks=400, block_size=32, bytes_per_token=4096),
    step_times=StepTimes(base=0.004, per_prefill_token=1e-4, per_prefill_pair=5e-8,
                         per_decode=1.5e-4, per_decode_context=1e-6, per_new_request=3e-4),
    kv_transfer=KVTransfer(alpha_s=0.002, bytes_per_s=1e9, source="hand"),
    graph_overhead=GraphOverhead(per_request_s=0.05, per_step_s=0.0005, source="hand"))


def model(mode: str, **pools) -> ModelConfig:
    return ModelConfig(model_id="tiny", model="pdserve://tiny", mode=mode, engine_kwargs=ENGINE,
                       **pools)
