"""vLLM's NIXL connector with a progress thread that sleeps between polls.

`nixl_agent.__init__` hard-codes `agent_config.pthrDelay = 0`, so the UCX backend's progress
thread calls `poll(..., 0)` in a loop and an idle PD engine burns a whole core. vLLM passes no
option for it, so this module (named in `kv_connector_module_path`; vLLM prefers a module path
over its registry) replaces `nixlBind` in the module that defines vLLM's `NixlWrapper` with a
proxy whose `nixlAgent(name, cfg)` sets `cfg.pthrDelay` first; every other attribute is the
real binding's. NIXL is reached exactly as vLLM reaches it (`vllm.distributed.nixl_utils`), so
vLLM's own UCX environment settings still apply.

`NixlConnector` is vLLM's pull connector under the name vLLM checks (`platforms/cpu.py`
tests the configured name); it takes the delay from its `kv_connector_extra_config` before
its worker creates the agent. It also undoes a CPU-only move of vLLM's: the NIXL worker pins
the calling thread, which is the engine's compute thread, to the last core of the NUMA node,
so all PD engines of a host would compute on one core; the compute thread goes back to its
own core and the connector's threads (the agent's progress thread among them) go elsewhere.

UCX's keepalive is switched off (`UCX_KEEPALIVE_INTERVAL=inf`, unless the environment sets it):
after a keepalive round, UCX's TCP transport can leave an established, idle socket armed for
EPOLLOUT, so the worker's event fd stays readable, the progress thread's `poll()` returns at once
whatever its delay, and the decode engine busy-polls a core again (seen with strace: poll,
epoll_wait → EPOLLOUT, no send, repeat). Dead peers are still caught by vLLM's transfer
timeouts and pdserve's prefill deadline.

Before NIXL registers the KV cache, the connector puts it on 2 MiB huge pages
(`huge_pages.py`): on one host NIXL reads it with cross-memory attach, about twice as fast on
huge pages as on torch's 4 KiB ones here.

The patch rests on one line of NIXL's source. `check_agent_constructor` verifies it at import
and fails loudly when an upgrade removed it: a silent fallback would bring the busy loop back.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import sys
from collections.abc import MutableMapping
from types import ModuleType
from typing import Any

from vllm.distributed.kv_transfer.kv_connector.v1.nixl import NixlPullConnector
from vllm.distributed.nixl_utils import NixlWrapper

from pdserve.kv_transfer import huge_pages
from pdserve.kv_transfer.connector import PROGRESS_DELAY_KEY

logger = logging.getLogger(__name__)

#: UCX setting the connector applies unless the environment already names it (see above).
UCX_KEEPALIVE = ("UCX_KEEPALIVE_INTERVAL", "inf")

_ASSIGNMENT = re.compile(r"^\s*(\w+)\.pthrDelay\s*=", re.MULTILINE)


class NixlAssumptionBroken(ImportError):
    """NIXL's agent constructor no longer looks the way this module patches it."""


def check_agent_constructor(agent_class: Any) -> ModuleType:
    """The module defining `agent_class`, after checking that its constructor still builds a
    `nixlBind.nixlAgentConfig`, sets its `pthrDelay` and passes it to `nixlBind.nixlAgent`."""
    module = sys.modules.get(getattr(agent_class, "__module__", ""), None)
    where = f"{getattr(module, '__file__', None) or agent_class!r}"
    try:
        source = inspect.getsource(agent_class.__init__)
    except (OSError, TypeError) as exc:
        raise NixlAssumptionBroken(f"pdserve quiet NIXL connector: cannot read the source of "
                                   f"{where} ({exc}); re-check {__name__}") from exc
    needed = ("nixlBind.nixlAgentConfig(", "nixlBind.nixlAgent(")
    missing = [text for text in needed if text not in source]
    if missing or not _ASSIGNMENT.search(source) or module is None or not hasattr(
        module, "nixlBind"
    ):
        raise NixlAssumptionBroken(
            f"pdserve quiet NIXL connector: the NIXL agent constructor in {where} no longer "
            f"sets `agent_config.pthrDelay` on a `nixlBind.nixlAgentConfig` passed to "
            f"`nixlBind.nixlAgent` (missing: {missing or ['pthrDelay assignment']}). Re-check "
            f"how this NIXL version configures its progress thread and update {__name__}; "
            "until then an idle PD engine busy-polls a whole core."
        )
    return module


class _QuietBindings:
    """Stands in for NIXL's `_bindings` module in the agent's module: every attribute is the
    real one except `nixlAgent`, which sets the progress-thread delay first."""

    def __init__(self, real: ModuleType) -> None:
        self._real = real
        self.delay_us = 0  # NIXL's own value until a connector sets its configured one
        self.applied: list[int] = []  # the delay each agent of this process was created with

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def nixlAgent(self, name: str, config: Any) -> Any:  # noqa: N802 (NIXL's name)
        config.pthrDelay = self.delay_us
        agent = self._real.nixlAgent(name, config)
        self.applied.append(self.delay_us)
        return agent


def install(agent_class: Any = NixlWrapper) -> _QuietBindings:
    """Put the quiet bindings into the module that defines `agent_class` (once per process)."""
    module = check_agent_constructor(agent_class)
    current = module.nixlBind
    if isinstance(current, _QuietBindings):
        return current
    quiet = _QuietBindings(current)
    module.nixlBind = quiet
    return quiet


_BINDINGS = install()
#: Threads the worker's connector started (NIXL agent, UCX backend), for tests and logs.
_AGENT_THREADS: list[int] = []
#: What backing this process's KV cache with huge pages achieved (`huge_pages.py`: why).
_KV_HUGE_PAGES: dict[str, Any] = {}


def state() -> dict[str, Any]:
    """What this process's NIXL agents were created with, and where their threads may run
    next to the compute (main) thread: read from the engine process by the tests."""
    from vllm.distributed.kv_transfer.kv_transfer_state import (
        get_kv_transfer_group,
        has_kv_transfer_group,
    )

    connector = get_kv_transfer_group() if has_kv_transfer_group() else None
    threads = {tid: sorted(_affinity(tid)) for tid in _AGENT_THREADS if _affinity(tid)}
    return {"connector": None if connector is None
            else f"{type(connector).__module__}.{type(connector).__qualname__}",
            "delays_us": list(_BINDINGS.applied), "agent_threads": threads,
            "ucx_keepalive_interval": os.environ.get(UCX_KEEPALIVE[0]),
            "kv_huge_pages": dict(_KV_HUGE_PAGES),
            "compute_cores": sorted(os.sched_getaffinity(0)), "pid": os.getpid()}


def _affinity(tid: int) -> set[int]:
    try:
        return os.sched_getaffinity(tid)
    except OSError:  # the thread ended
        return set()


def _thread_ids() -> set[int]:
    try:
        return {int(tid) for tid in os.listdir("/proc/self/task")}
    except OSError:  # no procfs: nothing to rebind
        return set()


def allowed_cores() -> set[int]:
    """Cores this engine may use at all: those of its parent (the process that started it:
    the engine-core process, or the Serve replica for a one-process engine; no binding
    narrowed them), else every online core."""
    try:
        return os.sched_getaffinity(os.getppid())
    except OSError:
        return set(range(os.cpu_count() or 1))


def spare_cores(allowed: set[int], compute: set[int]) -> set[int]:
    """Cores for the agent's threads: the allowed ones the compute threads do not use, or all
    allowed ones when compute holds them all (the kernel may then still move them)."""
    return (allowed - compute) or allowed


def separate_from_compute(compute: set[int], new_threads: set[int]) -> set[int]:
    """Keep the compute (calling) thread on `compute`, the connector's threads elsewhere.

    vLLM's NIXL worker moves the calling thread to the last core of each NUMA node "for KV
    transfer" (`base_worker.py`, `os.sched_setaffinity(0, ...)`), but on CPU that thread is the
    OpenMP master that runs the forward pass: every PD engine of a host would compute on one
    core. Its threads, created after, inherit the core the forward pass runs on.
    """
    os.sched_setaffinity(0, compute)
    cores = spare_cores(allowed_cores(), compute)
    for tid in new_threads:
        try:
            os.sched_setaffinity(tid, cores)
        except OSError:  # the thread ended
            continue
    return cores


def apply_ucx_defaults(environ: MutableMapping[str, str]) -> None:
    """Switch UCX's keepalive off unless the operator chose a value (module docstring: why)."""
    environ.setdefault(*UCX_KEEPALIVE)


class NixlConnector(NixlPullConnector):
    """vLLM's (pull) `NixlConnector` whose NIXL agent polls every `PROGRESS_DELAY_KEY`
    microseconds, with its threads off the engine's compute core."""

    def __init__(self, vllm_config: Any, role: Any, kv_cache_config: Any) -> None:
        delay = vllm_config.kv_transfer_config.get_from_extra_config(PROGRESS_DELAY_KEY, None)
        if not isinstance(delay, int) or delay < 0:
            raise ValueError(f"{__name__}.NixlConnector needs kv_connector_extra_config."
                             f"{PROGRESS_DELAY_KEY} (microseconds, >= 0), got {delay!r}")
        compute = os.sched_getaffinity(0)
        before = _thread_ids()
        _BINDINGS.delay_us = delay
        apply_ucx_defaults(os.environ)  # read when the agent creates its UCX context
        super().__init__(vllm_config, role, kv_cache_config)
        if self.connector_worker is None:  # scheduler side: no agent, no binding
            return
        new_threads = _thread_ids() - before
        cores = separate_from_compute(compute, new_threads)
        _AGENT_THREADS.extend(sorted(new_threads))
        logger.info("NIXL agent: progress delay %d us; threads %s on cores %s, compute on %s",
                    delay, sorted(new_threads), sorted(cores), sorted(compute))

    def register_kv_caches(self, kv_caches: dict[str, Any]) -> None:
        """Put the KV cache on huge pages before NIXL registers it (`huge_pages.py`: why)."""
        _KV_HUGE_PAGES.clear()
        _KV_HUGE_PAGES.update(back_kv_cache(list(kv_caches.values())))
        super().register_kv_caches(kv_caches)


def back_kv_cache(caches: list[Any]) -> dict[str, Any]:
    """Huge pages under the host-memory KV cache, as far as the kernel allows: never fatal
    (small pages only make transfers slower), logged as a warning where it fell short. A KV
    cache on an accelerator has nothing to advise."""
    mode = huge_pages.thp_mode()
    if not huge_pages.cpu_tensors(caches):
        logger.info("KV cache not in host memory: no huge pages to advise")
        return {"thp_mode": mode, "collapsed": False, "errors": ["no CPU tensors"]}
    try:
        outcome = huge_pages.back_tensors(caches)
    except (OSError, ValueError, AttributeError) as exc:  # no libc madvise, odd storage
        outcome = huge_pages.HugePageOutcome(errors=[f"{type(exc).__name__}: {exc}"])
    log = logger.info if outcome.collapsed else logger.warning
    log("KV cache on huge pages: %d of %d MiB in %d regions%s", outcome.collapsed_bytes >> 20,
        outcome.bytes >> 20, outcome.regions,
        f" ({'; '.join(outcome.errors)}; transfers run slower)" if outcome.errors else "")
    return {**outcome.as_dict(), "thp_mode": mode}


class NixlStateExtension:
    """Mixed into vLLM's worker (`worker_extension_cls`), so the engine host can ask the worker
    process, through `AsyncLLM.collective_rpc("pdserve_nixl_state")`, what its agent got."""

    def pdserve_nixl_state(self) -> dict[str, Any]:
        return state()
