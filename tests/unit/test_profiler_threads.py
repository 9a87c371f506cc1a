"""The profiled engine computes as a served one does: one OpenMP thread on its core. OpenMP
reads its settings once, when torch loads it; every profile before this test timed an engine
whose settings came too late (two threads, unbound: prompt steps ~2x faster than served)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pdserve.simulation.profiler import bind_engine_threads, first_allowed_core


def _run(code: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OMP_", "KMP_", "GOMP_", "VLLM_", "LD_PRELOAD"))}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores to tell bound")
def test_bound_before_torch_computes_on_one_thread_on_its_core() -> None:
    core = min(os.sched_getaffinity(0))
    done = _run("from pdserve.simulation.profiler import bind_engine_threads, "
                "check_engine_threads\n"
                f"bind_engine_threads('{core}')\n"
                "import torch, os\n"
                f"check_engine_threads('{core}')\n"
                "print(torch.get_num_threads(), sorted(os.sched_getaffinity(0)))")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == f"1 [{core}]"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores to tell bound")
def test_settings_after_torch_are_caught() -> None:
    """What the profiler did: OpenMP loaded with the host's defaults, settings set after."""
    core = min(os.sched_getaffinity(0))
    done = _run("import torch, os\n"
                "from pdserve.deployments.engine.placement import single_process_env\n"
                f"os.environ.update(single_process_env('{core}'))\n"
                "from pdserve.simulation.profiler import check_engine_threads\n"
                f"check_engine_threads('{core}')")
    assert done.returncode != 0
    assert "not as a served engine bound to" in done.stderr


def test_binding_refuses_once_torch_is_loaded() -> None:
    import torch  # noqa: F401  (loads OpenMP with this process's settings)

    with pytest.raises(RuntimeError, match="before torch is imported"):
        bind_engine_threads("0")


def test_the_profiler_module_loads_no_torch() -> None:
    """`pdserve profile` imports the profiler, then binds: an import of torch on the way would
    make every binding come too late (what happened)."""
    done = _run("import sys\nimport pdserve.cli, pdserve.simulation.profiler, "
                "pdserve.simulation.serve_config, pdserve.benchmarks.core_sharing_probe\n"
                "print('torch' in sys.modules)")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "False"


def test_the_default_core_is_one_this_process_may_run_on() -> None:
    allowed = os.sched_getaffinity(0)
    assert int(first_allowed_core()) == min(allowed)
    last = max(allowed)
    done = _run("from pdserve.simulation.profiler import first_allowed_core\n"
                f"import os; os.sched_setaffinity(0, {{{last}}})\n"
                "print(first_allowed_core())")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == str(last)
