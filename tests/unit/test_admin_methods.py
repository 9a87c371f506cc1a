"""Every engine-host method an operator or a test pins to one replica (`replica=<id>`) is one
the routers send to that replica: otherwise the call lands on any replica of the pool."""

from __future__ import annotations

import inspect

from pdserve.decode.server import DecodeServer, GeneratingHost
from pdserve.deployments.engine.host import EngineHost
from pdserve.prefill.server import PrefillServer
from pdserve.routing.router import ADMIN_METHODS


def test_every_method_taking_a_replica_id_is_pinned_by_the_routers() -> None:
    hosts = (EngineHost, GeneratingHost, DecodeServer, PrefillServer)
    pinned = {name for host in hosts for name, member in inspect.getmembers(host)
              if callable(member) and not name.startswith("_")
              and "replica" in inspect.signature(member).parameters}
    assert pinned == ADMIN_METHODS
