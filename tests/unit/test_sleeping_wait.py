"""The engine processes' sleeping wait: what it assumes of vLLM's ring reader, what it changes,
and that vLLM finds it as a plugin."""

from __future__ import annotations

import inspect
import threading
import time
from importlib.metadata import entry_points

import pytest
import zmq
from vllm.distributed.device_communicators import shm_broadcast
from vllm.utils.network_utils import get_open_zmq_ipc_path

from pdserve.deployments.engine import sleeping_wait
from pdserve.deployments.engine.sleeping_wait import (
    SPIN_ENV,
    SpinAssumptionBroken,
    check_spin_condition,
    register,
    set_reader_spin,
)


@pytest.fixture
def context() -> zmq.Context:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def condition(cls: type, ctx: zmq.Context, is_reader: bool) -> shm_broadcast.SpinCondition:
    return cls(is_reader=is_reader, context=ctx, notify_address=get_open_zmq_ipc_path())


def test_installed_vllm_reader_spins_one_second_and_is_patchable() -> None:
    """The assumption itself, on the installed vLLM (fails loudly when an upgrade changes it)."""
    check_spin_condition(shm_broadcast.SpinCondition)
    spin = inspect.signature(shm_broadcast.SpinCondition.__init__).parameters["busy_loop_s"]
    assert spin.default == 1


def test_readers_made_from_now_on_do_not_spin(context: zmq.Context) -> None:
    class Reader(shm_broadcast.SpinCondition):
        pass

    assert condition(Reader, context, True).busy_loop_s == 1
    set_reader_spin(Reader, 0.0)
    reader = condition(Reader, context, True)
    assert reader.busy_loop_s == 0.0
    set_reader_spin(Reader, 0.002)  # applied again: the newest value, wrapped once
    assert condition(Reader, context, True).busy_loop_s == 0.002
    assert not hasattr(Reader.__init__.__wrapped__, "__wrapped__")


def test_a_reader_spins_from_when_it_starts_waiting(context: zmq.Context) -> None:
    """vLLM spins for `busy_loop_s` after the last read, so a reader that worked longer than
    that (the worker's forward pass) sleeps at once; here the window starts with the wait, so
    the short waits of a step (sampling right after the forward pass) spin, the long ones
    sleep. A spinning `wait` returns at once; a sleeping one waits for its timeout."""
    class Reader(shm_broadcast.SpinCondition):
        pass

    set_reader_spin(Reader, 0.05)
    reader = condition(Reader, context, True)
    reader.record_read()
    time.sleep(0.1)  # computed a step since the last read
    started = time.monotonic()
    reader.wait(timeout_ms=1000)
    assert time.monotonic() - started < 0.5, "waited on the socket: spun from the last read"
    time.sleep(0.06)  # waited past the window
    started = time.monotonic()
    reader.wait(timeout_ms=300)
    assert time.monotonic() - started >= 0.25, "still spinning after the window"


def test_a_reader_that_does_not_spin_still_wakes_on_a_write(context: zmq.Context) -> None:
    """With no spin, `wait` blocks on the writer's notification: it returns once notified and
    not before (a lost wake-up would stall every engine step)."""
    class Pair(shm_broadcast.SpinCondition):
        pass

    set_reader_spin(Pair, 0.0)
    address = get_open_zmq_ipc_path()
    writer = Pair(is_reader=False, context=context, notify_address=address)
    reader = Pair(is_reader=True, context=context, notify_address=address)
    reader.wait(timeout_ms=50)  # no write yet: times out (let the subscription settle)
    events = []
    for _ in range(20):  # PUB drops messages until the subscription reached it
        writer.notify()
        if reader.local_notify_socket.poll(timeout=50):
            events.append(True)
            break
    assert events, "the reader never saw the writer's notification"
    writer.notify()
    reader.wait(timeout_ms=5000)  # returns at once: notified


def test_a_changed_reader_is_refused() -> None:
    class Condition:
        def __init__(self, is_reader: bool, notify_address: str, busy_loop_s: float = 1) -> None:
            self.is_reader = is_reader

        def wait(self) -> None:
            if self.last_read + self.busy_loop_s:
                pass

        def record_read(self) -> None:
            self.last_read = 0

        def notify(self) -> None:
            self.local_notify_socket.send(b"")

    check_spin_condition(Condition)

    class NoSpinArgument(Condition):
        def __init__(self, is_reader: bool, notify_address: str) -> None:
            self.is_reader = is_reader

    class NoSpinInWait(Condition):
        def wait(self) -> None:
            pass

    class NotifiesElsewhere(Condition):
        def notify(self) -> None:
            pass

    class RecordsNoRead(Condition):
        def record_read(self) -> None:
            pass

    with pytest.raises(SpinAssumptionBroken, match="busy_loop_s"):
        check_spin_condition(NoSpinArgument)
    with pytest.raises(SpinAssumptionBroken, match="wait"):
        set_reader_spin(NoSpinInWait, 0.0)
    with pytest.raises(SpinAssumptionBroken, match="notify"):
        check_spin_condition(NotifiesElsewhere)
    with pytest.raises(SpinAssumptionBroken, match="record_read"):
        check_spin_condition(RecordsNoRead)


def test_register_acts_only_where_the_engine_host_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[type, float]] = []
    monkeypatch.setattr(sleeping_wait, "set_reader_spin", lambda cls, s: calls.append((cls, s)))
    monkeypatch.delenv(SPIN_ENV, raising=False)
    register()
    assert calls == []
    monkeypatch.setenv(SPIN_ENV, "0")
    register()
    assert calls == [(shm_broadcast.SpinCondition, 0.0)]


def test_vllm_finds_the_plugin() -> None:
    found = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert found.get("pdserve_sleeping_wait") == (
        "pdserve.deployments.engine.sleeping_wait:register"), found


@pytest.fixture
def sleeping_rings(monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM's real ring, as the plugin leaves it in an engine process (undone afterwards)."""
    cls = shm_broadcast.SpinCondition
    monkeypatch.setattr(cls, "__init__", cls.__init__)
    monkeypatch.setattr(cls, "_pdserve_spin_s", None, raising=False)
    set_reader_spin(cls, 0.0)


def ring() -> tuple[shm_broadcast.MessageQueue, shm_broadcast.MessageQueue]:
    """A writer and its one local reader, connected."""
    writer = shm_broadcast.MessageQueue(n_reader=1, n_local_reader=1, max_chunk_bytes=1 << 16)
    reader = shm_broadcast.MessageQueue.create_from_handle(writer.export_handle(), 0)
    ready = threading.Thread(target=reader.wait_until_ready)
    ready.start()
    writer.wait_until_ready()
    ready.join()
    return writer, reader


def test_engine_steps_lose_no_wake_up_when_nobody_spins(sleeping_rings: None) -> None:
    """The engine core's exchange with its worker, as vLLM runs a step on CPU: two messages
    each way in quick succession (execute, then sample). No reader spins, so a dropped
    notification would leave one waiting until its timeout."""
    to_worker, worker_in = ring()
    to_core, core_in = ring()
    assert worker_in._spin_condition.busy_loop_s == 0.0
    steps = 300
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(steps):
                for _ in range(2):
                    kind, step = worker_in.dequeue(timeout=2.0)
                    to_core.enqueue((kind, step))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    for step in range(steps):
        to_worker.enqueue(("execute", step))
        to_worker.enqueue(("sample", step))
        assert core_in.dequeue(timeout=2.0) == ("execute", step)
        assert core_in.dequeue(timeout=2.0) == ("sample", step)
    thread.join(timeout=10.0)
    assert not errors, errors
