"""The simulator's event loop against queueing theory: a single FIFO server fed Poisson
arrivals waits as the closed forms say (M/M/1: Wq = ρ / (μ − λ); M/D/1: Wq = ρ / (2μ(1 − ρ)))."""

from __future__ import annotations

import random
from collections import deque

import pytest

from pdserve.simulation.events import EventLoop

ARRIVAL_RATE, SERVICE_RATE, CUSTOMERS = 0.7, 1.0, 200_000


def mean_wait(service: str, seed: int = 7) -> float:
    """Mean time in queue (before service) of a single server, FIFO, on the event loop."""
    loop, rng = EventLoop(), random.Random(seed)
    queue: deque[float] = deque()
    waits: list[float] = []
    busy = False

    def service_time() -> float:
        return rng.expovariate(SERVICE_RATE) if service == "M" else 1.0 / SERVICE_RATE

    def start(arrived: float) -> None:
        nonlocal busy
        busy = True
        waits.append(loop.now - arrived)
        loop.after(service_time(), depart)

    def depart() -> None:
        nonlocal busy
        busy = False
        if queue:
            start(queue.popleft())

    def arrive(n: int) -> None:
        if busy:
            queue.append(loop.now)
        else:
            start(loop.now)
        if n + 1 < CUSTOMERS:
            loop.after(rng.expovariate(ARRIVAL_RATE), arrive, n + 1)

    loop.at(0.0, arrive, 0)
    loop.run()
    return sum(waits) / len(waits)


@pytest.mark.parametrize(("service", "closed_form"), [
    ("M", (ARRIVAL_RATE / SERVICE_RATE) / (SERVICE_RATE - ARRIVAL_RATE)),
    ("D", (ARRIVAL_RATE / SERVICE_RATE) / (2 * SERVICE_RATE * (1 - ARRIVAL_RATE / SERVICE_RATE))),
])
def test_single_server_queue_waits_as_theory_says(service: str, closed_form: float) -> None:
    assert mean_wait(service) == pytest.approx(closed_form, rel=0.05)


def test_events_run_in_time_order_and_ties_in_scheduling_order() -> None:
    loop, seen = EventLoop(), []
    loop.at(2.0, seen.append, "c")
    loop.at(1.0, seen.append, "a")
    loop.at(1.0, seen.append, "b")
    loop.run()
    assert seen == ["a", "b", "c"] and loop.now == 2.0


def test_run_until_stops_before_later_events() -> None:
    loop, seen = EventLoop(), []
    loop.at(1.0, seen.append, 1)
    loop.at(5.0, seen.append, 5)
    loop.run(until=3.0)
    assert seen == [1] and loop.now == 3.0 and loop.pending() == 1
    with pytest.raises(ValueError, match="before now"):
        loop.at(2.0, seen.append, 2)
