"""The prefix index: leading-run matches, eviction, replica removal, bounded memory."""

from __future__ import annotations

import pytest

from pdserve.routing.prefix_index import PrefixIndex


def test_match_counts_only_the_leading_run_each_replica_holds() -> None:
    index = PrefixIndex()
    index.store("a", [1, 2, 3, 4])
    index.store("b", [1, 2, 9])
    index.store("c", [2, 3])  # holds later blocks but not the first: useless to vLLM
    assert index.match([1, 2, 3, 4, 5]) == {"a": 4, "b": 2}
    assert index.match([7, 1, 2]) == {}
    assert index.match([]) == {}


def test_block_removed_shortens_the_match_at_the_evicted_block() -> None:
    index = PrefixIndex()
    index.store("a", [1, 2, 3, 4])
    index.remove("a", [3])
    assert index.match([1, 2, 3, 4]) == {"a": 2}
    assert not index.holds("a", 3)
    assert index.holds("a", 4)  # vLLM evicts leaves first; the index reports what it is told


def test_all_blocks_cleared_and_replica_removal_forget_everything_of_that_replica() -> None:
    index = PrefixIndex()
    index.store("a", [1, 2])
    index.store("b", [1, 2])
    index.clear("a")
    assert index.match([1, 2]) == {"b": 2}
    index.remove_replica("b")
    assert index.match([1, 2]) == {}
    assert len(index) == 0
    assert index.replicas() == ["a"]


def test_a_slot_reused_by_a_new_replica_does_not_inherit_old_blocks() -> None:
    index = PrefixIndex()
    index.store("old", [1, 2, 3])
    index.remove_replica("old")
    index.add_replica("new")
    assert index.match([1, 2, 3]) == {}
    index.store("new", [1])
    assert index.match([1, 2, 3]) == {"new": 1}


def test_each_replica_is_bounded_and_drops_its_oldest_blocks_first() -> None:
    index = PrefixIndex(max_blocks_per_replica=3)
    index.store("a", [1, 2, 3])
    index.store("a", [1])  # touched: now the newest
    index.store("a", [4])
    assert index.num_blocks("a") == 3
    assert not index.holds("a", 2)
    assert index.holds("a", 1) and index.holds("a", 4)


def test_removing_unknown_blocks_or_replicas_is_harmless() -> None:
    index = PrefixIndex()
    index.remove("ghost", [1])
    index.remove_replica("ghost")
    index.store("a", [1])
    index.remove("a", [99])
    assert index.match([1]) == {"a": 1}


def test_many_replicas_match_independently() -> None:
    index = PrefixIndex()
    for r in range(64):
        index.store(r, list(range(r + 1)))
    hits = index.match(list(range(64)))
    assert hits == {r: r + 1 for r in range(64)}


def test_invalid_bound_is_rejected() -> None:
    with pytest.raises(ValueError, match="max_blocks_per_replica"):
        PrefixIndex(max_blocks_per_replica=0)
