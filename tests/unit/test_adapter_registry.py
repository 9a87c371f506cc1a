"""The run-time LoRA adapter record every ingress and engine replica of an app follows."""

from __future__ import annotations

import pytest

from pdserve.deployments.engine.adapter_registry import (
    RUNTIME_IDS_FROM,
    RUNTIME_IDS_TO,
    AdapterBook,
)


def test_ids_lie_past_the_yaml_adapters_and_are_never_reused() -> None:
    book = AdapterBook()
    first = book.add("m", "sql", "/a/sql")
    assert RUNTIME_IDS_FROM <= first < RUNTIME_IDS_TO
    assert book.remove("m", "sql") and not book.remove("m", "sql")
    again = book.add("m", "sql", "/b/sql")  # the same name, other weights: another id
    assert again != first
    assert book.snapshot().adapters == {"m": {"sql": (again, "/b/sql")}}
    ids = {book.add("m", f"a{i}", "/p") for i in range(200)}
    assert len(ids) == 200 and not ids & {first, again}


def test_a_name_is_loaded_once_whatever_the_model() -> None:
    book = AdapterBook()
    book.add("m", "sql", "/a/sql")
    with pytest.raises(ValueError, match="already loaded"):
        book.add("m", "sql", "/b/sql")
    with pytest.raises(ValueError, match="already loaded"):
        book.add("other", "sql", "/b/sql")
    assert book.snapshot().version == 1


def test_every_change_moves_the_version_and_a_snapshot_names_adapters_as_requests() -> None:
    book = AdapterBook()
    versions = [book.snapshot().version]
    lora_id = book.add("m", "sql", "/a/sql")
    versions.append(book.snapshot().version)
    book.add("other", "chat", "/a/chat")
    versions.append(book.snapshot().version)
    book.remove("m", "nothing")  # no change
    versions.append(book.snapshot().version)
    assert versions == [0, 1, 2, 2]
    (request,) = book.snapshot().of("m").values()
    assert (request.lora_name, request.lora_int_id, request.lora_path,
            request.base_model_name) == ("sql", lora_id, "/a/sql", "m")
    assert book.snapshot().of("unknown") == {}


def test_an_adapter_that_does_not_resolve_here_leaves_the_others_served() -> None:
    book = AdapterBook()
    book.add("m", "gone", "pdserve://tiny/no-such-adapter")
    book.add("m", "sql", "/a/sql")
    assert list(book.snapshot().of("m")) == ["sql"]


def test_a_restarted_record_takes_back_what_a_replica_knew_with_its_ids() -> None:
    old = AdapterBook()
    old.add("m", "sql", "/a/sql")
    old.add("m", "chat", "/a/chat")
    known = old.snapshot()
    fresh = AdapterBook()  # Ray restarted the actor: empty, another epoch
    assert fresh.snapshot().epoch != known.epoch
    fresh.restore(known.adapters)
    assert fresh.snapshot().adapters == known.adapters
    restored = {lora_id for named in known.adapters.values() for lora_id, _ in named.values()}
    assert fresh.add("m", "new", "/a/new") not in restored
