"""The netns cluster's plan, without namespaces: names, addresses, each node's environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pdserve.netns_cluster import GCS_PORT, NODE_UCX_TLS, NetnsCluster


def test_nodes_get_their_own_address_namespace_link_and_resource(tmp_path: Path) -> None:
    cluster = NetnsCluster(prefix="pdu", nodes_count=3, subnet="10.91.0", base_dir=tmp_path)
    assert [n.name for n in cluster.nodes] == ["a", "b", "c"]
    assert [n.ip for n in cluster.nodes] == ["10.91.0.2", "10.91.0.3", "10.91.0.4"]
    assert cluster.gateway == "10.91.0.1" and cluster.address == f"10.91.0.2:{GCS_PORT}"
    assert len({n.namespace for n in cluster.nodes}) == 3
    assert all(len(n.host_link) <= 15 for n in cluster.nodes)  # Linux's interface name limit
    assert cluster.node("b").resources == {"host_b": 100.0}
    with pytest.raises(KeyError, match="nodes: a, b, c"):
        cluster.node("z")


def test_every_node_sees_its_own_directory_at_the_same_path(tmp_path: Path) -> None:
    """Same paths on every node (vLLM's NIXL handshake compares model paths), own contents."""
    a, b = NetnsCluster(prefix="pdu", base_dir=tmp_path).nodes
    assert a.home == b.home and a.ray_temp_dir == b.ray_temp_dir
    assert a.root != b.root
    assert b.seen_from_root(b.home / ".cache") == b.root / "home" / ".cache"


def test_a_nodes_environment_keeps_its_caches_and_pins_ucx_to_tcp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HOME", "/shared/hf")
    monkeypatch.setenv("PDSERVE_HOME", "/shared/pdserve")
    cluster = NetnsCluster(prefix="pdu", base_dir=tmp_path, env={"EXTRA": "1"})
    b = cluster.node("b")
    env = cluster.node_env(b)
    assert "HF_HOME" not in env  # the machine's caches would give node b the model
    assert env["PDSERVE_HOME"].startswith(str(b.home)) and env["HOME"] == str(b.home)
    assert env["UCX_TLS"] == NODE_UCX_TLS == "tcp"
    assert env["VLLM_HOST_IP"] == b.ip and env["RAY_ADDRESS"] == cluster.address
    assert env["EXTRA"] == "1" and env["PATH"] == os.environ["PATH"]


def test_a_node_gets_the_clusters_ray_token_not_the_callers_auth_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ray 2.60 sets RAY_AUTH_MODE=token in a process that started a local cluster; a node
    inheriting it without a token fails `ray start`."""
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", "/elsewhere")
    cluster = NetnsCluster(prefix="pdu", base_dir=tmp_path)
    env = cluster.node_env(cluster.head)
    assert not {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN"} & set(env)
    cluster.head.root.mkdir(parents=True)
    cluster.auth_token_file.write_text("cafe\n")
    env = cluster.node_env(cluster.node("b"))
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"] == "cafe"
    assert "RAY_AUTH_TOKEN_PATH" not in env


def test_a_node_whose_keeper_is_gone_refuses_commands(tmp_path: Path) -> None:
    """Its pid may belong to another process by now: entering its namespaces would be wrong."""
    cluster = NetnsCluster(prefix="pdu", base_dir=tmp_path)
    a = cluster.head
    a.root.mkdir(parents=True)
    a.keeper_pid_file.write_text(str(os.getpid()))  # alive, but not in the node's namespace
    with pytest.raises(RuntimeError, match="node a is gone"):
        cluster.command(a, ["true"])
