"""vLLM's engine processes sleep while they wait for each other instead of spinning.

On CPU vLLM runs the model in worker processes beside the engine-core process
(`platforms/cpu.py`: OpenMP needs the multiprocessing executor; pdserve keeps a one-worker
engine in one process, `placement.single_process_env`, so this matters for engines with tensor
or pipeline parallelism). The engine core and its workers hand each step over a
shared-memory ring (`shm_broadcast.MessageQueue`) whose reader spins (`sched_yield`) for
`busy_loop_s` after its last read (1 s, no setting) before it waits on a ZMQ socket. A decode
step comes well within 1 s of the last, so while the worker computes, the engine core spins: a
whole core for as long as requests run (vLLM's own note: "TODO: make scheduler proc sleep when
idle", `utils/ompmultiprocessing.py`). A plain vLLM server has a core to spare for it; in a
Serve graph on the same cores that core is what the ingress, the replicas and Ray's proxy then
take from the worker.

Here a ring reader spins for at most `SPIN_ENV` seconds from the moment it starts waiting
(vLLM counts from its last read, so a reader that just computed a step never spins), then waits
on the writer's notification socket. A step's short waits (the worker waiting for the sampling
call right after its forward pass, the engine core for the sampled tokens, the worker for the
next step while the core schedules) stay spins; the long one (the engine core waiting out the
forward pass) sleeps after the window and costs one socket wake-up per step. vLLM's writer sends
the notification through a PUB socket with a send high-water mark of 1, so a notification sent
while the previous one is still on its way is dropped: harmless while readers spin through
every wait, a lost wake-up once they sleep (measured: the engine stalled on every step, ~1
token/s). So the writer's socket is bound again without that limit; the reader's socket keeps
only the newest notification (`CONFLATE`) either way, so nothing piles up.

vLLM loads this module in every process it starts (entry point `vllm.general_plugins`, see
`pyproject.toml`), and it acts only where `SPIN_ENV` is set: the engine host sets it before it
starts its engine (`placement.apply_engine_env`), so installing pdserve changes no other vLLM.
`check_spin_condition` pins the lines of vLLM it relies on and fails loudly when an upgrade
changes them: a silent fallback would bring the spinning core back.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import time
from typing import Any

import zmq

logger = logging.getLogger(__name__)

#: Seconds an engine process's ring reader spins once it starts waiting, before it sleeps
#: (vLLM: 1 s from its last read).
SPIN_ENV = "PDSERVE_ENGINE_SPIN_S"
#: What the engine host sets unless the environment already says otherwise.
DEFAULT_SPIN_S = "0.002"


class SpinAssumptionBroken(RuntimeError):
    """vLLM's ring notification no longer looks the way this module changes it."""


def check_spin_condition(cls: type) -> None:
    """Fail unless `cls` takes `busy_loop_s` and `notify_address`, its `wait` spins while
    `self.last_read + self.busy_loop_s` lies ahead, `record_read` sets `self.last_read` and
    `notify` sends on `self.local_notify_socket`."""
    parameters = inspect.signature(cls.__init__).parameters
    for name in ("busy_loop_s", "notify_address"):
        if name not in parameters:
            raise SpinAssumptionBroken(f"{cls.__qualname__}.__init__ takes no {name}")
    needs = {"wait": "self.last_read + self.busy_loop_s",
             "record_read": "self.last_read =",
             "notify": "self.local_notify_socket.send"}
    for method, line in needs.items():
        if line not in inspect.getsource(getattr(cls, method)):
            raise SpinAssumptionBroken(f"{cls.__qualname__}.{method} no longer has `{line}`")


def unlimited_notifications(socket: zmq.Socket, address: str) -> None:
    """Bind the writer's notification socket again with no send limit: ZMQ applies a socket's
    high-water mark to the connections of later binds only."""
    socket.unbind(address)
    socket.setsockopt(zmq.SNDHWM, 0)
    socket.bind(address)


def set_reader_spin(cls: Any, spin_s: float) -> None:
    """Make every ring reader `cls` creates from now on spin at most `spin_s` seconds from the
    moment it starts waiting (vLLM: from its last read), and every writer notify each write."""
    check_spin_condition(cls)
    if getattr(cls, "_pdserve_spin_s", None) is None:
        original_init, original_wait, original_record = cls.__init__, cls.wait, cls.record_read
        signature = inspect.signature(original_init)

        @functools.wraps(original_init)
        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            original_init(self, *args, **kwargs)
            if self.is_reader:
                self.busy_loop_s = type(self)._pdserve_spin_s
                self._pdserve_waiting = False
            else:
                address = signature.bind(self, *args, **kwargs).arguments["notify_address"]
                unlimited_notifications(self.local_notify_socket, address)

        @functools.wraps(original_wait)
        def wait(self: Any, *args: Any, **kwargs: Any) -> None:
            if not getattr(self, "_pdserve_waiting", True):  # the first wait since a read
                self.last_read = time.monotonic()
                self._pdserve_waiting = True
            original_wait(self, *args, **kwargs)

        @functools.wraps(original_record)
        def record_read(self: Any) -> None:
            original_record(self)
            self._pdserve_waiting = False

        cls.__init__, cls.wait, cls.record_read = init, wait, record_read
    cls._pdserve_spin_s = spin_s


def register() -> None:
    """vLLM's plugin hook: in an engine process of pdserve's, stop the ring readers' spin."""
    value = os.environ.get(SPIN_ENV)
    if value is None:
        return
    from vllm.distributed.device_communicators import shm_broadcast

    set_reader_spin(shm_broadcast.SpinCondition, float(value))
    logger.debug("vLLM ring readers spin at most %s s (%s)", value, SPIN_ENV)
