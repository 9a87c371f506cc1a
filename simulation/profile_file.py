"""The profile file: what `pdserve profile` measured (or what a person wrote from published
figures), and what `pdserve simulate` reads. One definition, validated on both sides."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pdserve.simulation.step_model import FEATURES, StepModel

#: Bumped when a field's meaning changes; `load` refuses other versions.
PROFILE_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StepTimes(_Strict):
    """`step_model.StepModel` coefficients (seconds per unit) and how well they fit."""

    base: float = Field(..., ge=0, description="s per step")
    per_prefill_token: float = Field(..., ge=0, description="s per prompt token computed")
    per_prefill_pair: float = Field(..., ge=0, description="s per prompt attention pair")
    per_decode: float = Field(..., ge=0, description="s per decoding request")
    per_decode_context: float = Field(..., ge=0, description="s per token a decode attends to")
    per_new_request: float = Field(..., ge=0, description="s per request entering the batch")
    heldout_mape: float | None = Field(None, description="% error on steps not fitted")
    heldout_p90_ape: float | None = None
    train_mape: float | None = None
    steps: int | None = Field(None, description="steps measured")

    def model(self) -> StepModel:
        return StepModel(**{name: getattr(self, name) for name in FEATURES})


class KVCache(_Strict):
    num_blocks: int = Field(..., ge=1, description="KV blocks one engine holds")
    block_size: int = Field(..., ge=1, description="tokens per block")
    bytes_per_token: int | None = Field(None, ge=1, description="KV bytes per token (all layers)")


class KVTransfer(_Strict):
    """A KV pull of b bytes takes alpha_s + b / bytes_per_s; pulls share one link per pair of
    hosts (here: the machine)."""

    alpha_s: float = Field(..., ge=0)
    bytes_per_s: float = Field(..., gt=0)
    source: str = Field(..., description="how it was measured, or where the figures come from")
    samples: int | None = None


class GraphOverhead(_Strict):
    """What the serving graph adds over a bare engine, per request and per streamed token."""

    per_request_s: float = Field(0.0, ge=0)
    per_token_s: float = Field(0.0, ge=0)
    source: str = "not measured (0)"


class Profile(_Strict):
    version: int = PROFILE_VERSION
    created: str
    source: str = Field(..., description="`pdserve profile` command, or who wrote it from what")
    machine: dict[str, Any] = Field(default_factory=dict)
    model: str
    engine_kwargs: dict[str, Any] = Field(
        ..., description="the engine arguments profiled (vLLM's names); the simulated "
        "scheduler is built from them")
    kv_cache: KVCache
    step_times: StepTimes
    kv_transfer: KVTransfer | None = None
    graph_overhead: GraphOverhead = Field(default_factory=GraphOverhead)
    startup_s: float | None = Field(None, ge=0, description="engine replica start-up time")

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.model_dump(), indent=1) + "\n")


def load(path: Path) -> Profile:
    data = json.loads(Path(path).read_text())
    if data.get("version") != PROFILE_VERSION:
        raise ValueError(f"{path}: profile version {data.get('version')!r}, this pdserve "
                         f"reads version {PROFILE_VERSION}")
    return Profile.model_validate(data)
