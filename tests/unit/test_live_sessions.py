"""Live sessions per replica: moves, expiry by last turn, the bound (pure)."""

from __future__ import annotations

from pdserve.routing.live_sessions import LiveSessions


def test_a_session_counts_once_where_its_last_turn_went() -> None:
    live = LiveSessions()
    live.touch("a", "r1", now=0.0, limit=10)
    live.touch("b", "r1", now=1.0, limit=10)
    live.touch("a", "r1", now=2.0, limit=10)
    assert live.counts(now=2.0, window_s=60) == {"r1": 2}
    live.touch("b", "r2", now=3.0, limit=10)  # its replica was lost: it moved
    assert live.counts(now=3.0, window_s=60) == {"r1": 1, "r2": 1}


def test_sessions_expire_by_their_last_turn_not_their_first() -> None:
    live = LiveSessions()
    live.touch("old", "r1", now=0.0, limit=10)
    live.touch("busy", "r1", now=1.0, limit=10)
    live.touch("busy", "r1", now=50.0, limit=10)
    assert live.counts(now=70.0, window_s=30) == {"r1": 1}
    assert live.counts(now=81.0, window_s=30) == {}


def test_the_oldest_sessions_go_past_the_bound() -> None:
    live = LiveSessions()
    for i in range(5):
        live.touch(f"s{i}", f"r{i % 2}", now=float(i), limit=3)
    assert live.counts(now=5.0, window_s=60) == {"r0": 2, "r1": 1}  # s2, s4 | s3


def test_a_gone_replica_holds_no_live_sessions_and_its_sessions_can_start_again() -> None:
    live = LiveSessions()
    live.touch("a", "r1", now=0.0, limit=10)
    live.touch("b", "r2", now=0.0, limit=10)
    live.forget("r1")
    assert live.counts(now=1.0, window_s=60) == {"r2": 1}
    live.touch("a", "r2", now=2.0, limit=10)
    assert live.counts(now=2.0, window_s=60) == {"r2": 2}


def test_a_forgotten_session_does_not_expire_later_from_a_replica_of_the_same_name() -> None:
    live = LiveSessions()
    live.touch("old", "r1", now=0.0, limit=10)
    live.forget("r1")
    live.touch("new", "r1", now=50.0, limit=10)  # a restarted replica may keep its name
    assert live.counts(now=70.0, window_s=60) == {"r1": 1}  # "old" left with the first r1
