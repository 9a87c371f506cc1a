"""The core-sharing probe's step classification, on the step records the real engine writes."""

from __future__ import annotations

from pathlib import Path

from pdserve.benchmarks.core_sharing_probe import CONFIG, computes_a_prompt, engine_args
from pdserve.simulation.real_engine import StepRecord

ROOT = Path(__file__).resolve().parents[2]


def test_a_step_with_a_prompt_chunk_is_a_prefill_step() -> None:
    decode = StepRecord(work={"a": (1, 600, False, False), "b": (1, 520, False, False)},
                        preempted=frozenset(), seconds=0.01)
    mixed = StepRecord(work={"a": (1, 601, False, False), "c": (512, 0, True, True)},
                       preempted=frozenset(), seconds=0.4)
    assert not computes_a_prompt(decode)
    assert computes_a_prompt(mixed)


def test_the_probe_runs_the_engine_the_profile_was_measured_with() -> None:
    import json

    kwargs = engine_args(ROOT / CONFIG)
    profile = json.loads((ROOT / "benchmarks/results/sim-calibration-cpu-v2/profile.json")
                         .read_text())
    assert {k: v for k, v in kwargs.items() if k != "model"} == profile["engine_kwargs"]
