"""The simulated engine: vLLM's own scheduler stepped without a model. Pins the vLLM internals
it relies on (the scheduler's constructor and its KV-event publisher attribute, the batch's
resumed-request field, connectors loaded by module path), and shows chunked prefill,
preemption, KV events and transferred prompts behaving as in the engine."""

from __future__ import annotations

import inspect

import pytest
from vllm.engine.arg_utils import EngineArgs
from vllm.v1.core.sched.output import CachedRequestData
from vllm.v1.core.sched.scheduler import Scheduler

from pdserve.models import resolve_model
from pdserve.simulation.engine import SimEngine


def engine(num_blocks: int = 64, **kwargs) -> SimEngine:
    args = EngineArgs(model=str(resolve_model("pdserve://tiny")), dtype="float32",
                      max_model_len=320, max_num_batched_tokens=64, block_size=32,
                      enforce_eager=True, max_num_seqs=8)
    return SimEngine(args.create_engine_config(), num_blocks, **kwargs)


def run(sim: SimEngine) -> list:
    batches = []
    while sim.has_work():
        batch = sim.step()
        if batch.work:  # a last step may only retire finished requests
            batches.append(batch)
    return batches


def test_vllm_internals_the_simulator_relies_on() -> None:
    params = inspect.signature(Scheduler.__init__).parameters
    assert {"vllm_config", "kv_cache_config", "structured_output_manager", "block_size",
            "hash_block_size", "log_stats"} <= set(params)
    assert "resumed_req_ids" in inspect.signature(CachedRequestData).parameters
    # The scheduler publishes its KV events through this attribute, which the simulated engine
    # replaces by a collector (test_kv_events_report_stored_blocks shows events arrive).
    assert "self.kv_event_publisher.publish(" in inspect.getsource(Scheduler.update_from_output)


def test_a_long_prompt_is_chunked_then_decoded() -> None:
    sim = engine()
    sim.add("a", list(range(10, 110)), max_tokens=3)
    batches = run(sim)
    assert [b.scheduled["a"] for b in batches] == [64, 36, 1, 1]
    assert [b.sampled for b in batches] == [(), ("a",), ("a",), ("a",)]
    assert batches[-1].finished == ("a",) and not any(b.finished for b in batches[:-1])
    assert batches[0].work["a"] == (64, 0, True, True)  # a prompt chunk, new in the batch
    assert batches[2].work["a"] == (1, 100, False, False)  # a decode at context 100


def test_requests_are_preempted_when_the_cache_runs_out() -> None:
    sim = engine(num_blocks=8)
    for i in range(4):
        sim.add(str(i), [10 + i] * 60, max_tokens=100)
    batches = run(sim)
    assert any(b.preempted for b in batches)
    finished = [r for b in batches for r in b.finished]
    assert sorted(finished) == ["0", "1", "2", "3"]
    # A preempted request later re-enters the batch from scratch: its prompt and the tokens it
    # had generated are computed again (context 0, more than its 60 prompt tokens in all).
    n, victim = next((n, r) for n, b in enumerate(batches) for r in b.preempted)
    again = [b.work[victim] for b in batches[n + 1:] if victim in b.work]
    assert again[0][1] == 0 and again[0][2] and again[0][3]
    assert sum(w[0] for w in again if w[2]) > 60


def test_kv_events_report_stored_blocks() -> None:
    sim = engine(kv_events=True)
    sim.add("a", list(range(10, 110)), max_tokens=1)
    run(sim)
    stored = [e for e in sim.take_kv_events() if type(e).__name__ == "BlockStored"]
    assert sum(len(e.block_hashes) for e in stored) == 3  # 100 tokens: three full blocks
    assert sim.take_kv_events() == []


def test_a_transferred_prompt_computes_one_token_and_a_local_one_all() -> None:
    sim = engine(pulls_kv=True)
    sim.add("pulled", list(range(10, 110)), max_tokens=2, transferred=True)
    sim.add("local", list(range(200, 240)), max_tokens=2)
    first = sim.step()
    assert first.scheduled == {"pulled": 1, "local": 40}
    assert first.work["pulled"] == (1, 99, True, True)
    with pytest.raises(ValueError, match="pulls_kv"):
        engine().add("x", [1, 2, 3], 1, transferred=True)
