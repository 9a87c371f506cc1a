"""The run-time LoRA adapter record every ingress and engine replica of an app follows."""

from __future__ import annotations

from pdserve.deployments.engine.adapter_registry import RUNTIME_IDS_FROM, AdapterBook


def test_ids_start_past_the_yaml_adapters_and_are_never_reused() -> None:
    book = AdapterBook()
    first = book.add("m", "sql", "/a/sql")
    assert first == RUNTIME_IDS_FROM
    assert book.remove("m", "sql") and not book.remove("m", "sql")
    again = book.add("m", "sql", "/b/sql")  # the same name, other weights: another id
    assert again == first + 1
    assert book.snapshot().adapters == {"m": {"sql": (again, "/b/sql")}}


def test_every_change_moves_the_version_and_a_snapshot_names_adapters_as_requests() -> None:
    book = AdapterBook()
    versions = [book.snapshot().version]
    book.add("m", "sql", "/a/sql")
    versions.append(book.snapshot().version)
    book.add("other", "chat", "/a/chat")
    versions.append(book.snapshot().version)
    book.remove("m", "nothing")  # no change
    versions.append(book.snapshot().version)
    assert versions == [0, 1, 2, 2]
    (request,) = book.snapshot().of("m").values()
    assert (request.lora_name, request.lora_int_id, request.lora_path,
            request.base_model_name) == ("sql", RUNTIME_IDS_FROM, "/a/sql", "m")
    assert book.snapshot().of("unknown") == {}


def test_a_restarted_record_takes_back_what_a_replica_knew_with_its_ids() -> None:
    old = AdapterBook()
    old.add("m", "sql", "/a/sql")
    old.add("m", "chat", "/a/chat")
    known = old.snapshot()
    fresh = AdapterBook()  # Ray restarted the actor: empty, another epoch
    assert fresh.snapshot().epoch != known.epoch
    fresh.restore(known.adapters)
    assert fresh.snapshot().adapters == known.adapters
    assert fresh.add("m", "new", "/a/new") == RUNTIME_IDS_FROM + 2  # past the restored ids
