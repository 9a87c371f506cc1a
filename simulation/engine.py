"""One engine without a model: vLLM's own v1 scheduler and KV-cache manager, stepped by hand.

vLLM's tests drive its scheduler this way on CPU. Here it is built from the same engine
arguments as the served engine, so chunked prefill, continuous batching, prefix caching,
eviction and preemption follow the engine's own code; only the model's forward pass is
replaced: every request whose prompt is complete after a step samples one (fixed) token, and
the step's duration comes from a step-time model, not from here.

Relies on vLLM internals that its own scheduler tests use (the `Scheduler` constructor,
`ModelRunnerOutput`, `Request`); `tests/unit/test_sim_engine.py` pins them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from vllm.config import VllmConfig
from vllm.sampling_params import SamplingParams
from vllm.utils.hashing import get_hash_fn_by_name
from vllm.v1.core.kv_cache_utils import (
    get_request_block_hasher,
    init_none_hash,
    resolve_kv_cache_block_sizes,
)
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
from vllm.v1.outputs import ModelRunnerOutput
from vllm.v1.request import Request
from vllm.v1.structured_output import StructuredOutputManager

from pdserve.simulation.step_model import Work

#: The token every simulated request samples (never EOS: requests run with `ignore_eos`).
SAMPLED_TOKEN = 7


@dataclass(frozen=True)
class StepBatch:
    """What one engine step computed, as the step-time model reads it."""

    work: dict[str, Work]  # request id -> its share of the step (`step_model.Work`)
    preempted: frozenset[str] = frozenset()
    sampled: tuple[str, ...] = ()  # requests that sampled a token (their next output)
    finished: tuple[str, ...] = ()  # requests that finished (length reached)
    kv_usage: float = 0.0

    @property
    def scheduled(self) -> dict[str, int]:
        return {r: w[0] for r, w in self.work.items()}


class _EventCollector:
    """Stands in for the scheduler's KV-event publisher: keeps the batches it would send."""

    def __init__(self) -> None:
        self.events: list = []

    def publish(self, batch) -> None:
        self.events.extend(batch.events)

    def shutdown(self) -> None:
        pass


@dataclass
class SimEngine:
    """A vLLM scheduler of `num_blocks` KV blocks, stepped without a model.

    `kv_events`: collect the KV-cache events the engine would publish (`take_kv_events`).
    `pulls_kv`: a decode engine of a PD pair; requests added with `transferred=True` find
    their prompt's KV in place (`transferred_kv`)."""

    vllm_config: VllmConfig
    num_blocks: int
    kv_events: bool = False
    pulls_kv: bool = False
    _block_hasher: object = field(init=False, repr=False)

    def __post_init__(self) -> None:
        config = self.vllm_config
        block_size = config.cache_config.block_size
        config.cache_config.num_gpu_blocks = self.num_blocks
        config.kv_transfer_config = None
        config.kv_events_config = None
        if self.kv_events:
            from vllm.config.kv_events import KVEventsConfig

            config.kv_events_config = KVEventsConfig(enable_kv_cache_events=True,
                                                     publisher="null")
        if self.pulls_kv:
            from vllm.config import KVTransferConfig

            from pdserve.simulation import transferred_kv

            config.kv_transfer_config = KVTransferConfig(
                kv_connector=transferred_kv.CONNECTOR_NAME, kv_role="kv_consumer",
                kv_connector_module_path=transferred_kv.MODULE_PATH)
            # One group of full attention: the hybrid manager would change nothing, and the
            # connector does not declare support for it.
            config.scheduler_config.disable_hybrid_kv_cache_manager = True
        # The shape of one attention layer's KV does not matter to the scheduler: it counts
        # blocks. One group of full attention, as a decoder-only Llama has.
        spec = FullAttentionSpec(block_size=block_size, num_kv_heads=1, head_size=1,
                                 dtype=torch.float32)
        kv_cache_config = KVCacheConfig(num_blocks=self.num_blocks, kv_cache_tensors=[],
                                        kv_cache_groups=[KVCacheGroupSpec(["layer"], spec)])
        scheduler_block_size, hash_block_size = resolve_kv_cache_block_sizes(
            kv_cache_config, config)
        scheduler_cls = config.scheduler_config.get_scheduler_cls()
        self.scheduler = scheduler_cls(
            vllm_config=config, kv_cache_config=kv_cache_config,
            structured_output_manager=StructuredOutputManager(config),
            block_size=scheduler_block_size, hash_block_size=hash_block_size, log_stats=True)
        self._events = _EventCollector()
        self.scheduler.kv_event_publisher = self._events
        self._block_hasher = None
        if config.cache_config.enable_prefix_caching or self.pulls_kv:
            hash_fn = get_hash_fn_by_name(config.cache_config.prefix_caching_hash_algo)
            init_none_hash(hash_fn)
            self._block_hasher = get_request_block_hasher(hash_block_size, hash_fn)

    # -- requests ------------------------------------------------------------------------
    def add(self, request_id: str, prompt_token_ids: list[int], max_tokens: int,
            arrival_time: float = 0.0, transferred: bool = False) -> None:
        """Queue a request; `transferred`: its prompt's KV was pulled (needs `pulls_kv`)."""
        if transferred:
            if not self.pulls_kv:
                raise ValueError("transferred=True needs an engine built with pulls_kv=True")
            self.scheduler.connector.transferred.add(request_id)
        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.0)
        params.update_from_generation_config({}, None)
        self.scheduler.add_request(Request(
            request_id=request_id, prompt_token_ids=list(prompt_token_ids),
            sampling_params=params, pooling_params=None, arrival_time=arrival_time,
            block_hasher=self._block_hasher))

    def has_work(self) -> bool:
        return self.scheduler.has_requests()

    # -- one step ------------------------------------------------------------------------
    def step(self) -> StepBatch:
        """Schedule one batch, "run" it, and feed the scheduler its outputs."""
        scheduler = self.scheduler
        output = scheduler.schedule()
        work = describe(scheduler, output)
        sampled_ids, samples = [], []
        for req_id in work:
            request = scheduler.requests[req_id]
            sampled_ids.append(req_id)
            # A request samples only once its prompt (and prior outputs) are all computed.
            samples.append([SAMPLED_TOKEN] if request.num_computed_tokens >= request.num_tokens
                           else [])
        runner_output = ModelRunnerOutput(
            req_ids=sampled_ids, req_id_to_index={r: i for i, r in enumerate(sampled_ids)},
            sampled_token_ids=samples)
        finished = [out.request_id
                    for outputs in scheduler.update_from_output(output, runner_output).values()
                    for out in outputs.outputs if out.finish_reason is not None]
        return StepBatch(work=work, preempted=frozenset(output.preempted_req_ids or ()),
                         sampled=tuple(r for r, t in zip(sampled_ids, samples, strict=True)
                                       if t),
                         finished=tuple(finished),
                         kv_usage=scheduler.kv_cache_manager.usage)

    def take_kv_events(self) -> list:
        """The KV-cache events (blocks stored/removed) since the last call, as vLLM's engine
        would publish them; empty unless built with `kv_events=True`."""
        events, self._events.events = self._events.events, []
        return events


def describe(scheduler, output) -> dict[str, Work]:
    """Each scheduled request's share of a batch `scheduler.schedule()` just returned (it has
    already advanced each request's computed tokens by its share): the one reading of a batch,
    for the simulated and the real engine."""
    entered = {r.req_id for r in output.scheduled_new_reqs}
    entered.update(output.scheduled_cached_reqs.resumed_req_ids or ())
    work = {}
    for req_id, tokens in output.num_scheduled_tokens.items():
        request = scheduler.requests[req_id]
        before = request.num_computed_tokens - tokens
        work[req_id] = (tokens, before, before < request.num_prompt_tokens, req_id in entered)
    return work
