"""One request's outputs from a vLLM engine to its Serve caller, and its abort.

A pump task drains the engine's generator into a queue; the caller's stream coalesces whatever
waits into one message (as vLLM's own output collector does for a slow reader), so under load
Ray sends one stream message per burst instead of one per engine step, and only the first
message carries the prompt (`wire.py`). A decode that is still pulling KV when its caller goes
away is aborted only once the pull finished: aborting a request mid-transfer can crash vLLM's
engine core.

A live stream can be ended from outside: with an error (`fail_all`, e.g. the engine stalled;
`fail_caller`, its caller is gone: `callers.py`) or by handing it off (`hand_off_all`, a
drain): the stream stops after the last output its caller received and raises what its
`hand_off` callback returns (the request's KV prepared for another replica), while the engine
still holds the request, so its blocks stay cached until the hand-off is ready; the request is
aborted after that.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from vllm.inputs import EngineInput
from vllm.lora.request import LoRARequest
from vllm.outputs import RequestOutput
from vllm.sampling_params import RequestOutputKind, SamplingParams
from vllm.v1.engine.async_llm import AsyncLLM

from pdserve.deployments.autoscaling.signals import RequestSignals
from pdserve.deployments.engine.callers import Caller
from pdserve.deployments.engine.wire import trim

logger = logging.getLogger(__name__)

#: Queue item after the engine's last output.
END = object()
#: Queue item asking the stream to hand its request off (`OutputStream.hand_off_all`).
HAND_OFF = object()

#: Builds the exception that ends a handed-off stream; its argument says whether the request
#: had produced output yet (before that, nothing needs to move).
HandOff = Callable[[bool], Awaitable[BaseException]]


@dataclass
class LiveStream:
    queue: asyncio.Queue
    hand_off: HandOff | None
    caller: Caller | None = None


def coalesce(
    output: RequestOutput, queue: asyncio.Queue, aggregate: bool
) -> tuple[RequestOutput, Any]:
    """Merge outputs that are already waiting into one message; return it and the first
    non-output item (`END` or an error), if any."""
    while not queue.empty():
        item = queue.get_nowait()
        if item is END or item is HAND_OFF or isinstance(item, BaseException):
            return output, item
        if aggregate:
            output.add(item, aggregate=True)
        else:
            output = item  # cumulative outputs: the newest one holds everything
    return output, None


class OutputStream:
    """Streams requests' engine outputs; `aborts` keeps deferred aborts alive."""

    def __init__(self, engine: AsyncLLM, aborts: set[asyncio.Task]) -> None:
        self.engine = engine
        self.aborts = aborts
        self.live: dict[str, LiveStream] = {}

    def fail_all(self, error: Callable[[], BaseException]) -> int:
        """End every live stream with `error()` (after the outputs already queued)."""
        for stream in self.live.values():
            stream.queue.put_nowait(error())
        return len(self.live)

    def callers(self) -> set[Caller]:
        """The callers live streams are for (those that said who they are)."""
        return {s.caller for s in self.live.values() if s.caller is not None}

    def fail_caller(self, caller: Caller, error: Callable[[], BaseException]) -> int:
        """End `caller`'s live streams with `error()`; how many."""
        mine = [s for s in self.live.values() if s.caller == caller]
        for stream in mine:
            stream.queue.put_nowait(error())
        return len(mine)

    def hand_off_all(self) -> int:
        """Ask every live stream that can be handed off to do so; how many were asked (the
        others run to their end here)."""
        asked = [s for s in self.live.values() if s.hand_off is not None]
        for stream in asked:
            stream.queue.put_nowait(HAND_OFF)
        return len(asked)

    async def outputs(self, engine_input: EngineInput, params: SamplingParams, request_id: str,
                      signals: RequestSignals, pulling: bool,
                      hand_off: HandOff | None = None,
                      caller: Caller | None = None,
                      trace_headers: dict[str, str] | None = None,
                      lora_request: LoRARequest | None = None,
                      ) -> AsyncIterator[RequestOutput]:
        """The request's outputs, coalesced; `pulling`: its KV may still be in transfer until
        the first output, so an abort waits for that; `hand_off`: how this stream ends when
        `hand_off_all` asks (None: it cannot be handed off); `caller`: who reads it;
        `trace_headers`: the trace vLLM's own request span joins; `lora_request`: the LoRA
        adapter it runs with."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self.live[request_id] = LiveStream(queue, hand_off, caller)
        first_output = asyncio.Event()
        aggregate = params.output_kind == RequestOutputKind.DELTA
        pump = asyncio.create_task(
            self._pump(engine_input, params, request_id, queue, first_output, signals, aggregate,
                       trace_headers, lora_request),
            name=f"pump-{request_id}",
        )
        finished = False
        pending: Any = None
        first = True
        try:
            while True:
                item = pending if pending is not None else await queue.get()
                if item is END:
                    finished = True
                    return
                if item is HAND_OFF:
                    assert hand_off is not None
                    raise await hand_off(first_output.is_set())
                if isinstance(item, BaseException):
                    raise item
                item, pending = coalesce(item, queue, aggregate)
                yield trim(item, first)
                first = False
        finally:
            self.live.pop(request_id, None)
            signals.finish()
            if not finished:
                self._stop(request_id, pump, first_output, pulling)

    async def _pump(
        self, engine_input: EngineInput, params: SamplingParams, request_id: str,
        queue: asyncio.Queue, first: asyncio.Event, signals: RequestSignals, delta: bool,
        trace_headers: dict[str, str] | None = None, lora_request: LoRARequest | None = None,
    ) -> None:
        seen = 0
        try:
            async for output in self.engine.generate(engine_input, params, request_id,
                                                     lora_request=lora_request,
                                                     trace_headers=trace_headers):
                first.set()
                tokens = sum(len(o.token_ids) for o in output.outputs)
                signals.on_output(tokens if delta else tokens - seen)
                seen = tokens
                queue.put_nowait(output)
            queue.put_nowait(END)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # surfaced to the consumer, which re-raises it
            queue.put_nowait(exc)

    def _stop(self, request_id: str, pump: asyncio.Task, first: asyncio.Event,
              pulling: bool) -> None:
        """Abort a request whose caller left; if its KV pull may be in flight, wait for it."""
        if not pulling or first.is_set():
            pump.cancel()  # vLLM aborts the request when its generator is cancelled
            return
        logger.info("request %s: caller left during KV pull; abort deferred", request_id)

        async def abort_after_pull() -> None:
            waiter = asyncio.ensure_future(first.wait())
            await asyncio.wait({waiter, pump}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            pump.cancel()

        task = asyncio.create_task(abort_after_pull())
        self.aborts.add(task)
        task.add_done_callback(self.aborts.discard)
