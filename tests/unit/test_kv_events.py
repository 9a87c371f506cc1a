"""The KV-event subscriber against vLLM's own ZMQ publisher (real sockets, no engine)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import msgspec
import pytest
import zmq
from vllm.distributed.kv_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVEventBatch,
    ZmqEventPublisher,
)

from pdserve.routing.kv_events import KVEventSubscriber
from pdserve.routing.prefix_index import PrefixIndex

BLOCK = 16


def stored(*hashes: int) -> BlockStored:
    return BlockStored(block_hashes=list(hashes), parent_block_hash=None,
                       token_ids=[0] * BLOCK * len(hashes), block_size=BLOCK, lora_id=None,
                       medium="GPU", lora_name=None)


def batch(*events: object) -> KVEventBatch:
    return KVEventBatch(ts=time.time(), events=list(events))


def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


@pytest.fixture
def index_and_subscriber() -> Iterator[tuple[PrefixIndex, KVEventSubscriber]]:
    index = PrefixIndex()
    subscriber = KVEventSubscriber(index, threading.Lock(), BLOCK)
    yield index, subscriber
    subscriber.close()


@pytest.fixture
def publisher() -> Iterator[ZmqEventPublisher]:
    pub = ZmqEventPublisher(0, endpoint="tcp://*:0", replay_endpoint="tcp://*:0")
    yield pub
    pub.shutdown()


def test_blocks_stored_before_subscribing_are_recovered_from_the_replay_buffer(
    index_and_subscriber: tuple[PrefixIndex, KVEventSubscriber], publisher: ZmqEventPublisher
) -> None:
    index, subscriber = index_and_subscriber
    publisher.publish(batch(stored(1, 2, 3)))
    time.sleep(0.3)  # published before anyone listens: only the replay buffer has it
    config = publisher.get_publisher_config()
    subscriber.watch("r1", config.endpoint, config.replay_endpoint)
    eventually(lambda: index.match([1, 2, 3]) == {"r1": 3})
    assert subscriber.snapshot()["r1"]["replays"] == 1


def test_live_stored_removed_and_cleared_events_keep_the_index_exact(
    index_and_subscriber: tuple[PrefixIndex, KVEventSubscriber], publisher: ZmqEventPublisher
) -> None:
    index, subscriber = index_and_subscriber
    config = publisher.get_publisher_config()
    subscriber.watch("r1", config.endpoint, config.replay_endpoint)
    eventually(lambda: "r1" in subscriber.snapshot())
    time.sleep(0.3)  # let the SUB connection settle
    publisher.publish(batch(stored(1, 2, 3, 4)))
    eventually(lambda: index.match([1, 2, 3, 4]) == {"r1": 4})
    publisher.publish(batch(BlockRemoved(block_hashes=[3], medium="GPU")))
    eventually(lambda: index.match([1, 2, 3, 4]) == {"r1": 2})
    publisher.publish(batch(AllBlocksCleared()))
    eventually(lambda: index.match([1, 2]) == {})
    counts = subscriber.snapshot()["r1"]
    assert (counts["stored"], counts["removed"], counts["cleared"]) == (4, 1, 1)


def test_a_replica_that_leaves_or_restarts_on_a_new_endpoint_loses_its_blocks(
    index_and_subscriber: tuple[PrefixIndex, KVEventSubscriber], publisher: ZmqEventPublisher
) -> None:
    index, subscriber = index_and_subscriber
    publisher.publish(batch(stored(7, 8)))
    config = publisher.get_publisher_config()
    subscriber.watch("r1", config.endpoint, config.replay_endpoint)
    eventually(lambda: index.match([7, 8]) == {"r1": 2})
    restarted = ZmqEventPublisher(0, endpoint="tcp://*:0", replay_endpoint="tcp://*:0")
    try:
        new = restarted.get_publisher_config()
        subscriber.watch("r1", new.endpoint, new.replay_endpoint)  # same replica, new engine
        eventually(lambda: subscriber.snapshot().get("r1", {}).get("endpoint") == new.endpoint)
        assert index.match([7, 8]) == {}
        subscriber.unwatch("r1")
        eventually(lambda: "r1" not in subscriber.snapshot())
        assert index.replicas() == []
    finally:
        restarted.shutdown()


RawSend = Callable[[int, bytes], None]


@pytest.fixture
def raw_stream(
    index_and_subscriber: tuple[PrefixIndex, KVEventSubscriber]
) -> Iterator[RawSend]:
    """A bare ZMQ publisher (no replay buffer) that "r1" is subscribed to: send(seq, payload)."""
    _, subscriber = index_and_subscriber
    pub = zmq.Context.instance().socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    try:
        subscriber.watch("r1", f"tcp://127.0.0.1:{port}", None)
        eventually(lambda: "r1" in subscriber.snapshot())
        time.sleep(0.3)
        yield lambda seq, payload: pub.send_multipart((b"", seq.to_bytes(8, "big"), payload))
    finally:
        pub.close(linger=0)


encode = msgspec.msgpack.Encoder().encode


def test_missed_batches_without_a_replay_buffer_forget_the_replica_rather_than_guess(
    index_and_subscriber: tuple[PrefixIndex, KVEventSubscriber], raw_stream: RawSend
) -> None:
    index, subscriber = index_and_subscriber
    raw_stream(0, encode(batch(stored(1, 2))))
    eventually(lambda: index.match([1, 2]) == {"r1": 2})
    raw_stream(2, encode(batch(stored(5))))  # batch 1 (say, removing block 2) was lost
    eventually(lambda: subscriber.snapshot()["r1"]["resyncs"] == 1)
    assert index.match([1, 2]) == {}  # forgotten, not trusted
    assert index.match([5]) == {"r1": 1}  # what arrived after the gap is kept
    assert subscriber.snapshot()["r1"]["gaps"] == 1


def test_an_unreadable_batch_drops_the_replicas_entries_and_the_stream_goes_on(
    index_and_subscriber: tuple[PrefixIndex, KVEventSubscriber], raw_stream: RawSend
) -> None:
    index, subscriber = index_and_subscriber
    raw_stream(0, encode(batch(stored(1, 2))))
    eventually(lambda: index.match([1, 2]) == {"r1": 2})
    raw_stream(1, b"\xc1 not msgpack")
    eventually(lambda: subscriber.snapshot()["r1"]["errors"] == 1)
    assert index.match([1, 2]) == {}  # it might have removed them: forgotten
    raw_stream(2, encode(batch(stored(9))))
    eventually(lambda: index.match([9]) == {"r1": 1})  # the thread is alive and applies
    assert subscriber.snapshot()["r1"]["gaps"] == 0


def test_a_failing_subscription_is_retried_not_forgotten(
    index_and_subscriber: tuple[PrefixIndex, KVEventSubscriber], publisher: ZmqEventPublisher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pdserve.routing.kv_events as kv_events

    index, subscriber = index_and_subscriber
    monkeypatch.setattr(kv_events, "RETRY_S", 0.2)
    real, calls = subscriber._subscribe, []

    def flaky(*args: object) -> None:
        calls.append(args[0])
        if len(calls) == 1:
            raise zmq.ZMQError(zmq.EINVAL, "first try fails")
        real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(subscriber, "_subscribe", flaky)
    publisher.publish(batch(stored(4)))
    time.sleep(0.3)
    config = publisher.get_publisher_config()
    subscriber.watch("r1", config.endpoint, config.replay_endpoint)
    eventually(lambda: index.match([4]) == {"r1": 1})
    assert calls == ["r1", "r1"]


def test_a_wildcard_endpoint_binds_the_hosts_cluster_address_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pins vLLM's contract that `engine/args.py` relies on: `tcp://*:0` binds the one address
    `VLLM_HOST_IP` names (set per engine to Ray's node IP), not every interface, and reports
    the bound endpoint; a node's KV events (prompt token ids) stay off its other networks."""
    monkeypatch.setenv("VLLM_HOST_IP", "127.0.0.1")
    pub = ZmqEventPublisher(0, endpoint="tcp://*:0", replay_endpoint="tcp://*:0")
    try:
        for endpoint in (pub._endpoint, pub._replay_endpoint):
            assert endpoint is not None and endpoint.startswith("tcp://127.0.0.1:"), endpoint
        assert pub._pub is not None
        bound = pub._pub.getsockopt_string(zmq.LAST_ENDPOINT)
        assert bound == pub._endpoint, bound
    finally:
        pub.shutdown()
