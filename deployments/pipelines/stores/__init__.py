"""Vector stores by name: `open_store(config)` builds the one a pipeline's YAML names."""

from __future__ import annotations

from collections.abc import Callable

from pdserve.deployments.config.pipeline import VectorStoreConfig
from pdserve.deployments.pipelines.stores.base import StoreUnavailable, VectorStore


def _lancedb(config: VectorStoreConfig, collection: str) -> VectorStore:
    from pdserve.deployments.pipelines.stores.lance import LanceDBStore

    return LanceDBStore(config, collection)


def _qdrant(config: VectorStoreConfig, collection: str) -> VectorStore:
    from pdserve.deployments.pipelines.stores.qdrant import QdrantStore

    return QdrantStore(config, collection)


#: Known stores; a backend's client library is imported only when its store is opened.
STORES: dict[str, Callable[[VectorStoreConfig, str], VectorStore]] = {
    "lancedb": _lancedb,
    "qdrant": _qdrant,
}


def check_store_kind(kind: str) -> None:
    """Raise, listing the known stores, when a config names one that does not exist."""
    if kind not in STORES:
        raise ValueError(f"unknown vector store {kind!r}; known: {', '.join(sorted(STORES))}")


def open_store(config: VectorStoreConfig, default_collection: str) -> VectorStore:
    check_store_kind(config.kind)
    return STORES[config.kind](config, config.collection or default_collection)


__all__ = ["STORES", "StoreUnavailable", "VectorStore", "check_store_kind", "open_store"]
