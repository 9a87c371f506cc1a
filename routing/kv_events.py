"""Keeps a `PrefixIndex` exact by listening to every engine's KV events (vLLM's ZMQ publisher).

One background thread per index owns all sockets; the router only calls `watch`/`unwatch`
(non-blocking: they enqueue) and reads the index under the shared lock. A router hook never
waits on the network.

Per engine: a SUB socket on its event endpoint. A new subscription first asks the engine's
replay endpoint for everything it still buffers (so blocks stored before we connected are
known), then applies live batches in sequence order. A gap in sequence numbers is repaired
from the replay buffer; when that is impossible the replica's entries are cleared (the index
then under-reports, never over-reports, until new events arrive).

No event can stop the thread: a batch that fails to decode or apply clears that replica's
entries (it may have held removals) and the stream goes on from the next batch; a socket that
fails is closed and the replica subscribed afresh (replaying what its engine still buffers).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import zmq
from vllm.distributed.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEventBatch

from pdserve.routing.block_hashes import external_hash
from pdserve.routing.prefix_index import PrefixIndex

logger = logging.getLogger(__name__)

END_SEQ = -1
REPLAY_TIMEOUT_MS = 2000
POLL_MS = 20
RETRY_S = 5.0


@dataclass
class StreamState:
    """One engine's event stream as seen by the subscriber."""

    endpoint: str
    replay_endpoint: str | None
    socket: Any = None
    next_seq: int | None = None  # None until the first batch (or replay) is applied
    events: int = 0
    gaps: int = 0
    replays: int = 0
    resyncs: int = 0
    errors: int = 0
    block_size_mismatch: bool = False
    counts: dict[str, int] = field(default_factory=lambda: {"stored": 0, "removed": 0,
                                                             "cleared": 0})


class KVEventSubscriber:
    """Feeds one `PrefixIndex` from the KV-event streams of a pool's engines."""

    def __init__(self, index: PrefixIndex, lock: threading.Lock, block_size: int) -> None:
        self.index = index
        self.lock = lock
        self.block_size = block_size
        self._commands: queue.SimpleQueue[tuple[str, Hashable, Any]] = queue.SimpleQueue()
        self._streams: dict[Hashable, StreamState] = {}
        self._retries: dict[Hashable, tuple[float, str, str | None]] = {}  # thread-owned
        self._decoder = msgspec.msgpack.Decoder(type=KVEventBatch)
        self._ctx = zmq.Context.instance()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pdserve-kv-events", daemon=True)
        self._thread.start()

    # -- called from the router (any thread) -------------------------------------------------
    def watch(self, replica: Hashable, endpoint: str, replay_endpoint: str | None) -> None:
        self._commands.put(("watch", replica, (endpoint, replay_endpoint)))

    def unwatch(self, replica: Hashable) -> None:
        self._commands.put(("unwatch", replica, None))

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per-replica stream counters (for stats and tests)."""
        with self.lock:
            return {
                str(r): {"endpoint": s.endpoint, "events": s.events, "gaps": s.gaps,
                         "replays": s.replays, "resyncs": s.resyncs, "errors": s.errors,
                         **s.counts,
                         "blocks": self.index.num_blocks(r),
                         "block_size_mismatch": s.block_size_mismatch}
                for r, s in list(self._streams.items())
            }

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    # -- the subscriber thread -------------------------------------------------------------
    def _run(self) -> None:
        poller = zmq.Poller()
        while not self._stop.is_set():
            self._apply_commands(poller)
            self._retry_due()  # after the commands: an unwatch already queued cancels a retry
            try:
                ready = dict(poller.poll(POLL_MS))
            except zmq.ZMQError:
                continue
            for replica, stream in list(self._streams.items()):
                if stream.socket in ready:
                    try:
                        self._drain(replica, stream)
                    except Exception:
                        logger.exception("kv events: stream of %s failed; resubscribing", replica)
                        self._resubscribe(replica, stream, poller)
        for stream in self._streams.values():
            stream.socket.close(linger=0)

    def _resubscribe(self, replica: Hashable, stream: StreamState, poller: zmq.Poller) -> None:
        """Start the replica's stream over: its entries are dropped, then replayed."""
        with self.lock:
            self.index.clear(replica)
        try:
            poller.unregister(stream.socket)
            stream.socket.close(linger=0)
            self._subscribe(replica, stream.endpoint, stream.replay_endpoint, poller)
            self._streams[replica].errors = stream.errors + 1
        except Exception:  # leave it unwatched; the next `watch` (engine report) retries
            logger.exception("kv events: could not resubscribe to %s", replica)
            self._drop(replica, poller, stream.endpoint, stream.replay_endpoint)

    def _drop(self, replica: Hashable, poller: zmq.Poller, endpoint: str,
              replay_endpoint: str | None) -> None:
        """Forget a replica whose subscription failed half-way (socket, entries) and try it
        again in `RETRY_S` unless it is unwatched meanwhile."""
        with self.lock:
            stream = self._streams.pop(replica, None)
            self.index.remove_replica(replica)
        if stream is not None:
            with contextlib.suppress(Exception):
                poller.unregister(stream.socket)
            stream.socket.close(linger=0)
        self._retries[replica] = (time.monotonic() + RETRY_S, endpoint, replay_endpoint)

    def _retry_due(self) -> None:
        now = time.monotonic()
        for replica, (due, endpoint, replay) in list(self._retries.items()):
            if due <= now:
                del self._retries[replica]
                self.watch(replica, endpoint, replay)

    def _apply_commands(self, poller: zmq.Poller) -> None:
        while True:
            try:
                command, replica, arg = self._commands.get_nowait()
            except queue.Empty:
                return
            self._retries.pop(replica, None)  # a newer command supersedes a pending retry
            current = self._streams.get(replica)
            if command == "watch" and current is not None and current.endpoint == arg[0]:
                continue
            if current is not None:  # gone, or the same replica with a new engine
                poller.unregister(current.socket)
                current.socket.close(linger=0)
                with self.lock:
                    del self._streams[replica]
                    self.index.remove_replica(replica)
            if command == "watch":
                try:
                    self._subscribe(replica, *arg, poller)
                except Exception:
                    logger.exception("kv events: cannot watch %s at %s", replica, arg[0])
                    self._drop(replica, poller, *arg)

    def _subscribe(
        self, replica: Hashable, endpoint: str, replay_endpoint: str | None, poller: zmq.Poller
    ) -> None:
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(endpoint)
        stream = StreamState(endpoint=endpoint, replay_endpoint=replay_endpoint, socket=sock)
        with self.lock:
            self._streams[replica] = stream
            self.index.add_replica(replica)
        poller.register(sock, zmq.POLLIN)
        logger.info("kv events: watching %s at %s (replay %s)", replica, endpoint,
                    replay_endpoint)
        self._replay(replica, stream, start=0)

    def _drain(self, replica: Hashable, stream: StreamState) -> None:
        while True:
            try:
                _topic, seq_bytes, payload = stream.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            seq = int.from_bytes(seq_bytes, "big", signed=True)
            if stream.next_seq is not None and seq < stream.next_seq:
                continue  # already applied from a replay
            if stream.next_seq is not None and seq > stream.next_seq:
                stream.gaps += 1
                logger.warning("kv events: %s missed batches %d..%d; replaying", replica,
                               stream.next_seq, seq - 1)
                if not self._replay(replica, stream, start=stream.next_seq):
                    self._resync(replica, stream)
                if stream.next_seq is not None and seq < stream.next_seq:
                    continue
            self._apply(replica, stream, seq, payload)

    def _replay(self, replica: Hashable, stream: StreamState, start: int) -> bool:
        """Apply buffered batches from `start` on; False if the buffer no longer has `start`."""
        if stream.replay_endpoint is None:
            return start == 0  # nothing published before we connected is knowable
        sock = self._ctx.socket(zmq.DEALER)
        sock.connect(stream.replay_endpoint)
        stream.replays += 1
        complete = True
        try:
            sock.send_multipart((b"", start.to_bytes(8, "big")))
            first = True
            while sock.poll(REPLAY_TIMEOUT_MS):
                _empty, _topic, seq_bytes, payload = sock.recv_multipart()
                seq = int.from_bytes(seq_bytes, "big", signed=True)
                if seq == END_SEQ:
                    return complete
                if first and seq > start:
                    complete = False  # the buffer rolled past what we missed
                first = False
                if stream.next_seq is None or seq >= stream.next_seq:
                    self._apply(replica, stream, seq, payload)
            logger.warning("kv events: replay from %s timed out", replica)
            return False
        finally:
            sock.close(linger=0)

    def _resync(self, replica: Hashable, stream: StreamState) -> None:
        """Events were lost for good: forget this replica's blocks rather than guess."""
        stream.resyncs += 1
        with self.lock:
            self.index.clear(replica)

    def _apply(self, replica: Hashable, stream: StreamState, seq: int, payload: bytes) -> None:
        error: Exception | None = None
        with self.lock:
            try:
                batch = self._decoder.decode(payload)
                for event in batch.events:
                    self._apply_event(replica, stream, event)
                stream.events += len(batch.events)
            except Exception as exc:
                error = exc
                stream.errors += 1
                self.index.clear(replica)  # it may have removed blocks: never over-report
            stream.next_seq = seq + 1
        if error is not None and stream.errors in (1, 10, 100) or (
                error is not None and stream.errors % 1000 == 0):  # not once per batch
            logger.error("kv events: batch %d of %s is unreadable (%s: %s; %d so far); its "
                         "entries are dropped", seq, replica, type(error).__name__, error,
                         stream.errors)

    def _apply_event(self, replica: Hashable, stream: StreamState, event: Any) -> None:
        if isinstance(event, BlockStored) and event.block_size != self.block_size and (
                not stream.block_size_mismatch):
            stream.block_size_mismatch = True
            logger.error("kv events: %s stores %d-token blocks but the router hashes %d",
                         replica, event.block_size, self.block_size)
        kind = index_event(self.index, replica, event)
        if kind == "stored":
            stream.counts["stored"] += len(event.block_hashes)
        elif kind == "removed":
            stream.counts["removed"] += len(event.block_hashes)
        elif kind == "cleared":
            stream.counts["cleared"] += 1


def index_event(index: PrefixIndex, replica: Hashable, event: Any) -> str | None:
    """Apply one vLLM KV-cache event of `replica` to the prefix index; returns its kind
    (`stored`, `removed`, `cleared`, or None for events the index ignores). Used by the
    subscriber and by the simulator, which collects the same events from vLLM's scheduler."""
    if isinstance(event, BlockStored):
        index.store(replica, [external_hash(h) for h in event.block_hashes])
        return "stored"
    if isinstance(event, BlockRemoved):
        index.remove(replica, [external_hash(h) for h in event.block_hashes])
        return "removed"
    if isinstance(event, AllBlocksCleared):
        index.clear(replica)
        return "cleared"
    return None
