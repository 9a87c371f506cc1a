"""Hypothesis over the app config: whatever a YAML file holds, `AppConfig` either accepts it
or fails with a validation error that names the field; it never crashes with anything else."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pdserve.deployments.config import AppConfig

BASE: dict[str, Any] = {
    "models": [
        {"model_id": "tiny", "model": "pdserve://tiny", "mode": "pd",
         "engine_kwargs": {"dtype": "float32", "block_size": 32},
         "prefill": {"ray_actor_options": {"num_cpus": 0.5},
                     "autoscaling_config": {"min_replicas": 1, "max_replicas": 2}},
         "decode": {"num_replicas": 1, "autoscaling_config": {"min_replicas": 1,
                                                               "max_replicas": 2}},
         "slo": {"ttft_ms": 500, "itl_ms": 50},
         "routing": {"local_prefill_below_tokens": 16}},
        {"model_id": "e", "model": "pdserve://all-minilm-l6-v2", "mode": "embed"},
    ],
    "pipelines": [{"name": "docs", "embedding_model": "e", "llm": "tiny"}],
    "auth": {"keys_file": "/k.yaml", "allowed_hosts": ["localhost"]},
    "limits": {"max_n": 4},
    "ingress": {"num_replicas": 1},
    "replica_budget": 4,
}

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=8)


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key or index path into `doc`."""
    found = [prefix] if prefix else []
    if isinstance(doc, dict):
        for key, value in doc.items():
            found += paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            found += paths(value, (*prefix, i))
    return found


ALL_PATHS = paths(BASE)


def test_the_base_config_is_valid() -> None:
    AppConfig.model_validate(BASE)


@settings(max_examples=400, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(ALL_PATHS), JSON, st.booleans()), min_size=1,
                max_size=3))
def test_any_mutation_is_accepted_or_a_field_named_error(
        mutations: list[tuple[tuple[Any, ...], Any, bool]]) -> None:
    doc = copy.deepcopy(BASE)
    for path, value, add_key in mutations:
        parent = doc
        try:
            for key in path[:-1]:
                parent = parent[key]
            if add_key and isinstance(parent, dict):
                parent[f"{path[-1]}_x"] = value  # an unknown key beside a known one
            else:
                parent[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation replaced this part of the tree
    try:
        AppConfig.model_validate(doc)
    except ValidationError as exc:
        for error in exc.errors():
            assert error["loc"] or error["msg"], error  # names where, or says what
            if error["type"] == "value_error" and not error["loc"]:
                assert ":" in error["msg"], error["msg"]  # our validators name the field
