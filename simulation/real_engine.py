"""The real engine, in this process, stepped one batch at a time: what `pdserve profile` times
and what the simulated engine is checked against.

vLLM's `LLMEngine` with `VLLM_ENABLE_V1_MULTIPROCESSING=0` runs its engine core in-process
(as pdserve's one-worker engines do); each `step()` runs one `EngineCore.step`, which we wrap
to time it and to read the batch `schedule()` returned (`StepRecord`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from pdserve.simulation.engine import describe
from pdserve.simulation.step_model import Work


@dataclass(frozen=True)
class StepRecord:
    """One real engine step: its batch, as the simulated engine reports it, and its time."""

    work: dict[str, Work]  # our request id -> its share of the step
    preempted: frozenset[str]
    seconds: float
    #: This thread's CPU time in the step (a one-thread engine's compute): unlike `seconds`,
    #: not stretched while another process has the core.
    cpu_seconds: float | None = None


class RealEngine:
    """A vLLM engine of these engine arguments, stepped by hand in this process."""

    def __init__(self, engine_kwargs: dict) -> None:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm.engine.arg_utils import EngineArgs
        from vllm.v1.engine.llm_engine import LLMEngine

        self.engine = LLMEngine.from_engine_args(EngineArgs(**engine_kwargs))
        self.core = self.engine.engine_core.engine_core
        self.scheduler = self.core.scheduler
        self.vllm_config = self.core.vllm_config
        self.records: list[StepRecord] = []
        self._ids: dict[str, str] = {}  # engine's request id -> ours
        self._batch = None
        schedule, step = self.scheduler.schedule, self.core.step_fn

        def recording_schedule(*args, **kwargs):
            output = schedule(*args, **kwargs)  # read now: finished requests leave after
            self._batch = (output, describe(self.scheduler, output))
            return output

        def timed_step():
            self._batch = None
            start, cpu_start = time.perf_counter(), time.thread_time()
            result = step()
            seconds, cpu = time.perf_counter() - start, time.thread_time() - cpu_start
            if self._batch is not None and self._batch[0].total_num_scheduled_tokens:
                self.records.append(self._record(*self._batch, seconds, cpu))
            return result

        self.scheduler.schedule = recording_schedule
        self.core.step_fn = timed_step

    @property
    def num_blocks(self) -> int:
        return self.scheduler.kv_cache_config.num_blocks

    def _record(self, output, work: dict[str, Work], seconds: float,
                cpu_seconds: float) -> StepRecord:
        name = self._ids.get
        return StepRecord(work={name(r, r): w for r, w in work.items()},
                          preempted=frozenset(name(r, r) for r in output.preempted_req_ids or ()),
                          seconds=seconds, cpu_seconds=cpu_seconds)

    def add(self, request_id: str, prompt_token_ids: list[int], max_tokens: int) -> None:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.0)
        before = set(self.scheduler.requests)
        self.engine.add_request(request_id, {"prompt_token_ids": list(prompt_token_ids)},
                                params)
        for engine_id in set(self.scheduler.requests) - before:
            self._ids[engine_id] = request_id

    def has_work(self) -> bool:
        return self.engine.has_unfinished_requests()

    def step(self) -> None:
        self.engine.step()

    def close(self) -> None:
        """Stop the engine and drop the wrappers that tie it to this object (a cycle), so its
        KV cache is freed before another engine starts."""
        self.core.step_fn = self.core.step
        self.scheduler.__dict__.pop("schedule", None)
        self.engine.engine_core.shutdown()
        self.engine = self.core = self.scheduler = None
