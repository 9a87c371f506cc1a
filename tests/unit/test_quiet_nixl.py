"""The quiet NIXL connector's patch: what it assumes of NIXL, and what it does to an agent."""

from __future__ import annotations

import importlib.util
import os
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

from pdserve.kv_transfer import quiet_nixl
from pdserve.kv_transfer.connector import (
    PROGRESS_DELAY_KEY,
    QUIET_CONNECTOR_MODULE,
    kv_transfer_config,
)

AGENT_SOURCE = """
import types

nixlBind = types.SimpleNamespace(
    nixlAgentConfig=lambda: types.SimpleNamespace(pthrDelay=None),
    nixlAgent=lambda name, cfg: ("agent", name, cfg.pthrDelay),
    DRAM_SEG=7,
)


class nixl_agent:
    def __init__(self, agent_name):
        agent_config = nixlBind.nixlAgentConfig()
        {delay_line}
        self.agent = nixlBind.nixlAgent(agent_name, agent_config)
        self.segment = nixlBind.DRAM_SEG
"""


def stand_in(tmp_path: Path, name: str, delay_line: str) -> ModuleType:
    """A module shaped like NIXL's `_api`, imported from a real file (source is inspected)."""
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(AGENT_SOURCE).replace("{delay_line}", delay_line))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_a_nixl_without_the_delay_assignment_fails_loudly_at_install(tmp_path: Path) -> None:
    module = stand_in(tmp_path, "nixl_without_delay", "pass")
    with pytest.raises(quiet_nixl.NixlAssumptionBroken, match=r"pthrDelay.*Re-check"):
        quiet_nixl.install(module.nixl_agent)
    assert not isinstance(module.nixlBind, quiet_nixl._QuietBindings)  # nothing was patched


def test_install_sets_the_delay_and_forwards_every_other_binding(tmp_path: Path) -> None:
    module = stand_in(tmp_path, "nixl_with_delay", "agent_config.pthrDelay = 0")
    quiet = quiet_nixl.install(module.nixl_agent)
    quiet.delay_us = 250
    agent = module.nixl_agent("a")
    assert agent.agent == ("agent", "a", 250)
    assert agent.segment == 7  # forwarded unchanged
    assert quiet.applied == [250]
    assert quiet_nixl.install(module.nixl_agent) is quiet  # installing twice wraps once


def test_the_real_nixl_agent_gets_the_delay() -> None:
    """Pins the assumption on the installed NIXL: vLLM's `NixlWrapper` builds its agent
    through the patched bindings (the module imported cleanly, so its check passed)."""
    from vllm.distributed.nixl_utils import NixlWrapper, nixl_agent_config

    bindings = sys.modules[NixlWrapper.__module__].nixlBind
    assert bindings is quiet_nixl._BINDINGS
    bindings.delay_us = 4321
    NixlWrapper("pdserve-unit-test", nixl_agent_config(backends=[]))
    assert bindings.applied[-1] == 4321


def test_agent_threads_go_to_cores_the_compute_threads_do_not_use() -> None:
    assert quiet_nixl.spare_cores({0, 1, 2, 3}, {1}) == {0, 2, 3}
    assert quiet_nixl.spare_cores({0, 1}, {0, 1}) == {0, 1}  # no spare core: share them all


def test_separating_keeps_the_caller_on_its_compute_cores() -> None:
    allowed = os.sched_getaffinity(0)
    compute = {min(allowed)}
    try:
        cores = quiet_nixl.separate_from_compute(compute, set())
        assert os.sched_getaffinity(0) == compute
        assert cores == quiet_nixl.spare_cores(quiet_nixl.allowed_cores(), compute)
    finally:
        os.sched_setaffinity(0, allowed)


@pytest.mark.parametrize("kv_role", ["kv_producer", "kv_consumer"])
def test_nixl_engines_load_the_quiet_connector_with_their_delay(kv_role: str) -> None:
    config = kv_transfer_config(kv_role, "e", "cpu", 2000)  # type: ignore[arg-type]
    assert config["kv_connector"] == "NixlConnector"  # the name vLLM's CPU platform checks
    assert config["kv_connector_module_path"] == QUIET_CONNECTOR_MODULE
    assert config["kv_connector_extra_config"][PROGRESS_DELAY_KEY] == 2000
    assert importlib.util.find_spec(QUIET_CONNECTOR_MODULE) is not None


def test_the_connector_keeps_vllms_name_and_pull_behaviour() -> None:
    from vllm.distributed.kv_transfer.kv_connector.v1.nixl import NixlConnector

    assert quiet_nixl.NixlConnector.__name__ == "NixlConnector"
    assert issubclass(quiet_nixl.NixlConnector, NixlConnector)


def test_ucx_keepalive_is_off_unless_the_operator_set_it() -> None:
    environ: dict[str, str] = {}
    quiet_nixl.apply_ucx_defaults(environ)
    assert environ == {"UCX_KEEPALIVE_INTERVAL": "inf"}
    chosen = {"UCX_KEEPALIVE_INTERVAL": "30s"}
    quiet_nixl.apply_ucx_defaults(chosen)
    assert chosen == {"UCX_KEEPALIVE_INTERVAL": "30s"}
