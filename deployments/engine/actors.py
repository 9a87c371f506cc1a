"""Ray's side of `callers.py`: which named actor this process is, and whether one still exists."""

from __future__ import annotations

import logging

import ray
from ray.util import list_named_actors

from pdserve.deployments.engine.callers import Caller

logger = logging.getLogger(__name__)

#: Where pdserve's own per-app actors live (the quota ledger, the LoRA adapter registry).
PDSERVE_NAMESPACE = "pdserve"


def this_actor() -> Caller | None:
    """This process's actor, or None outside a named actor (a driver, a unit test).

    Its namespace is the one its name is registered in, which need not be this worker's job
    namespace (Ray Serve registers every replica in its own namespace whatever the driver's)."""
    if not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    name = context.get_actor_name() if context.get_actor_id() is not None else None
    if not name:
        return None
    namespaces = [a["namespace"] for a in list_named_actors(all_namespaces=True)
                  if a["name"] == name]
    if not namespaces:
        return None
    me = Caller(name, context.namespace if context.namespace in namespaces else namespaces[0])
    # engines abort the streams of a caller they cannot look up: make sure they can
    return me if actor_alive(me) else None


def actor_alive(caller: Caller) -> bool:
    """False once Ray no longer knows the actor (a dead actor's name is released)."""
    try:
        ray.get_actor(caller.name, namespace=caller.namespace)
    except ValueError:
        return False
    except Exception as exc:  # GCS unreachable: say nothing we are not sure of
        logger.warning("cannot look up caller %s: %s", caller.name, exc)
    return True
