"""Which engine replica holds which KV block: the data structure behind prefix-aware routing.

Keys are the block hashes vLLM itself computes (low 64 bits, as its KV events carry them), so a
hit here is a hit in the engine. The index is fed only by what engines report (`store`,
`remove`, `clear`); it does no I/O and keeps no clock.

Invariants:
- `holders[h]` has bit `slot(r)` set  <=>  `h` is in `blocks[r]`.
- Each replica holds at most `max_blocks_per_replica` entries; past that its oldest entries
  are dropped (the engine evicts too, and a lost `BlockRemoved` must not grow us forever).
- `match` reports, per replica, the length of the longest *leading* run of the request's
  blocks that replica holds: vLLM reuses a prefix only up to the first missing block.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence

ReplicaKey = Hashable


class PrefixIndex:
    """Block hash -> replicas holding it, with per-replica bounded membership."""

    def __init__(self, max_blocks_per_replica: int = 1 << 20) -> None:
        if max_blocks_per_replica < 1:
            raise ValueError("max_blocks_per_replica must be >= 1")
        self.max_blocks_per_replica = max_blocks_per_replica
        self._holders: dict[int, int] = {}  # block hash -> bitmask of replica slots
        self._blocks: dict[ReplicaKey, OrderedDict[int, None]] = {}
        self._slot: dict[ReplicaKey, int] = {}
        self._free_slots: list[int] = []
        self._next_slot = 0
        self._by_slot: dict[int, ReplicaKey] = {}

    # -- membership ------------------------------------------------------------------------
    def add_replica(self, replica: ReplicaKey) -> None:
        if replica in self._slot:
            return
        slot = self._free_slots.pop() if self._free_slots else self._take_new_slot()
        self._slot[replica] = slot
        self._by_slot[slot] = replica
        self._blocks[replica] = OrderedDict()

    def _take_new_slot(self) -> int:
        self._next_slot += 1
        return self._next_slot - 1

    def remove_replica(self, replica: ReplicaKey) -> None:
        """Forget a replica (it left, or restarted with an empty cache)."""
        if replica not in self._slot:
            return
        self.clear(replica)
        slot = self._slot.pop(replica)
        del self._by_slot[slot], self._blocks[replica]
        self._free_slots.append(slot)

    def replicas(self) -> list[ReplicaKey]:
        return list(self._slot)

    # -- updates from engine events ----------------------------------------------------------
    def store(self, replica: ReplicaKey, block_hashes: Iterable[int]) -> None:
        """The replica cached these blocks (vLLM `BlockStored`)."""
        self.add_replica(replica)
        bit = 1 << self._slot[replica]
        blocks = self._blocks[replica]
        for h in block_hashes:
            if h in blocks:
                blocks.move_to_end(h)
                continue
            blocks[h] = None
            self._holders[h] = self._holders.get(h, 0) | bit
        while len(blocks) > self.max_blocks_per_replica:
            oldest, _ = blocks.popitem(last=False)
            self._drop_bit(oldest, bit)

    def remove(self, replica: ReplicaKey, block_hashes: Iterable[int]) -> None:
        """The replica evicted these blocks (vLLM `BlockRemoved`)."""
        blocks = self._blocks.get(replica)
        if blocks is None:
            return
        bit = 1 << self._slot[replica]
        for h in block_hashes:
            if blocks.pop(h, 0) is None:
                self._drop_bit(h, bit)

    def clear(self, replica: ReplicaKey) -> None:
        """The replica dropped its whole cache (vLLM `AllBlocksCleared`, or a resync)."""
        blocks = self._blocks.get(replica)
        if blocks is None:
            return
        bit = 1 << self._slot[replica]
        for h in blocks:
            self._drop_bit(h, bit)
        blocks.clear()

    def _drop_bit(self, h: int, bit: int) -> None:
        mask = self._holders.get(h, 0) & ~bit
        if mask:
            self._holders[h] = mask
        else:
            self._holders.pop(h, None)

    # -- queries ---------------------------------------------------------------------------
    def match(self, block_hashes: Sequence[int]) -> dict[ReplicaKey, int]:
        """Leading blocks of the request each replica holds (replicas with 0 are omitted)."""
        holders = self._holders
        if not block_hashes:
            return {}
        alive = holders.get(block_hashes[0], 0)
        hits: dict[ReplicaKey, int] = {}
        depth = 1
        while alive and depth < len(block_hashes):
            still = alive & holders.get(block_hashes[depth], 0)
            if still != alive:
                self._record(alive & ~still, depth, hits)
            alive = still
            depth += 1
        if alive:
            self._record(alive, depth, hits)
        return hits

    def _record(self, mask: int, depth: int, hits: dict[ReplicaKey, int]) -> None:
        while mask:
            low = mask & -mask
            hits[self._by_slot[low.bit_length() - 1]] = depth
            mask ^= low

    def num_blocks(self, replica: ReplicaKey) -> int:
        blocks = self._blocks.get(replica)
        return 0 if blocks is None else len(blocks)

    def sizes(self) -> dict[ReplicaKey, int]:
        """Blocks held per replica."""
        return {r: len(blocks) for r, blocks in self._blocks.items()}

    def holds(self, replica: ReplicaKey, block_hash: int) -> bool:
        blocks = self._blocks.get(replica)
        return blocks is not None and block_hash in blocks

    def __len__(self) -> int:
        """Distinct blocks held by at least one replica."""
        return len(self._holders)
