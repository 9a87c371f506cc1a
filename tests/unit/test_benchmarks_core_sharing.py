"""The core-sharing probe's step classification, on the step records the real engine writes."""

from __future__ import annotations

from pdserve.benchmarks.core_sharing_probe import computes_a_prompt
from pdserve.simulation.real_engine import StepRecord


def test_a_step_with_a_prompt_chunk_is_a_prefill_step() -> None:
    decode = StepRecord(work={"a": (1, 600, False, False), "b": (1, 520, False, False)},
                        preempted=frozenset(), seconds=0.01)
    mixed = StepRecord(work={"a": (1, 601, False, False), "c": (512, 0, True, True)},
                       preempted=frozenset(), seconds=0.4)
    assert not computes_a_prompt(decode)
    assert computes_a_prompt(mixed)
