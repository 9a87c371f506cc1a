"""`pdserve profile`: drive the real engine (the config's engine arguments) through the
designed sweep, time every step, fit the step-time model, and write the profile file.

Resumable: each sweep point's steps are appended to `<out>.steps.jsonl` as it completes, and
a rerun skips the points found there (same engine arguments only). The engine runs in this
process bound to one core (`--cores`), as a pdserve engine replica runs on a 2-core host.
"""

from __future__ import annotations

import gc
import json
import os
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pdserve.simulation import step_model, sweep
from pdserve.simulation.profile_file import (
    KVCache,
    KVTransfer,
    Profile,
    StepTimes,
)


def bind_engine_threads(cores: str) -> None:
    """The environment a one-worker pdserve engine gets (`deployments/engine/placement.py`),
    set before vLLM starts in this process.

    OpenMP reads its thread count and places once, when torch loads it: set any later, they
    are ignored and the engine computes on one thread per core of the host, unbound (every
    profile before this check timed such a two-thread engine, not a served one). So this
    refuses to run once torch is imported; `check_engine_threads` confirms afterwards."""
    from pdserve.deployments.engine.placement import single_process_env

    if "torch" in sys.modules:
        raise RuntimeError("bind_engine_threads must run before torch is imported: OpenMP "
                           "has read its thread settings already")
    os.environ.update(single_process_env(cores))
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cores


def check_engine_threads(cores: str) -> None:
    """Fail loudly unless this process computes as a served engine bound to `cores` does: one
    OpenMP thread per core, on those cores only."""
    import torch

    from pdserve.deployments.engine.placement import cpu_list

    wanted = cpu_list(cores)
    threads, allowed = torch.get_num_threads(), sorted(os.sched_getaffinity(0))
    if threads != len(wanted) or allowed != wanted:
        raise RuntimeError(f"the profiled engine computes on {threads} threads on cores "
                           f"{allowed}, not as a served engine bound to {wanted} (e.g. OpenMP "
                           "read its settings before bind_engine_threads set them)")


def engine_kwargs_of(model: Any) -> dict[str, Any]:
    """The model's engine arguments as a served replica gets them (no KV connector or events:
    step times are the same, and the profile must not need a second engine)."""
    from pdserve.models import resolve_model

    return {"model": str(resolve_model(model.model)), **model.engine_kwargs}


def run_point(engine: Any, point: sweep.Point, rng: random.Random, vocab: int) -> list[dict]:
    """The steps of one sweep point, run to completion: each as `{"work": [Work, ...],
    "s": seconds}` (the raw batch, so a later step model can read it differently)."""
    def prompt(length: int) -> list[int]:
        return [rng.randrange(10, vocab - 10) for _ in range(length)]  # never a cached prefix

    first = len(engine.records)
    for i in range(point.batch):
        engine.add(f"{point.key}-{i}", prompt(point.context), point.output)
    budget = engine.vllm_config.scheduler_config.max_num_batched_tokens
    join_at = -(-point.batch * point.context // budget) + 3 if point.kind == "mixed" else None
    steps = 0
    while engine.has_work():
        engine.step()
        steps += 1
        if steps == join_at:
            engine.add(f"{point.key}-join", prompt(point.joiner), point.output)
    return [{"work": [list(w) for w in r.work.values()], "s": r.seconds}
            for r in engine.records[first:]]


def load_done(path: Path, fingerprint: str) -> dict[str, list[dict]]:
    done: dict[str, list[dict]] = {}
    if not path.exists():
        return done
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row.get("fingerprint") == fingerprint:
            done[row["point"]] = row["steps"]
    return done


def kv_transfer_from_probe(model_dir: str, engine_kwargs: dict[str, Any], delay_us: int,
                           lengths: list[int], reps: int, log: Path) -> KVTransfer:
    """Real NIXL pulls between a prefill and a decode engine (the KV-transfer benchmark's
    `pd_path` probe, pdserve's quiet connector), fitted as alpha + bytes / bandwidth on
    NIXL's own per-transfer times."""
    import numpy as np

    from pdserve.benchmarks.kv_transfer_bench import run_probe

    kwargs = {k: v for k, v in engine_kwargs.items() if k != "model"}
    result = run_probe("pd_path", {"variant": f"quiet-{delay_us}", "model": model_dir,
                                   "engine_kwargs": kwargs,
                                   "plan": {str(n): reps for n in lengths},
                                   "settle_s": 0.0, "idle_s": 0.1}, log)
    sizes, seconds = [], []
    for rows in result["lengths"].values():
        sizes += rows["bytes"]
        seconds += rows["transfer_s"]
    if len(set(sizes)) < 2:
        raise RuntimeError(f"KV transfer probe gave {len(sizes)} transfers; see {log}")
    slope, intercept = np.polyfit(np.array(sizes, float), np.array(seconds, float), 1)
    return KVTransfer(alpha_s=max(float(intercept), 0.0), bytes_per_s=1.0 / max(slope, 1e-15),
                      samples=len(sizes),
                      source=f"pdserve profile: {len(sizes)} NIXL pulls between two vLLM engines "
                      f"(pd_path probe, quiet-{delay_us}), NIXL's transfer time vs bytes, "
                      "least squares")


def step_times(samples: list, groups: list[int]) -> StepTimes:
    fitted = step_model.fit(samples, groups=groups)
    return StepTimes(**fitted.model.as_dict(), heldout_mape=fitted.heldout_mape,
                     heldout_p90_ape=fitted.heldout_p90_ape, train_mape=fitted.train_mape,
                     noise_mape=fitted.noise_mape, steps=len(samples))


def refit(out: Path) -> Profile:
    """Fit the step model of the profile `out` again from its steps log (every point in it,
    in the order measured), keeping the rest of the profile."""
    from pdserve.simulation.profile_file import load

    profile = load(out)
    samples, groups = [], []
    for n, line in enumerate(out.with_name(out.name + ".steps.jsonl").read_text().splitlines()):
        for step in json.loads(line)["steps"]:
            samples.append(([tuple(w) for w in step["work"]], step["s"]))
            groups.append(n)
    result = profile.model_copy(update={"step_times": step_times(samples, groups)})
    result.save(out)
    return result


def first_allowed_core() -> str:
    """The default core to profile on: the lowest this process may run on (not always 0 under
    a cpuset or `taskset`, where binding to 0 would be refused)."""
    return str(min(os.sched_getaffinity(0)))


def profile(model: Any, out: Path, cores: str | None = None, repeats: int = 2,
            quick: bool = False,
            kv_transfer: bool = True, transfer_lengths: tuple[int, ...] = (256, 1024, 1792),
            transfer_reps: int = 3, graph_runs: list[Path] | None = None,
            command: str = "") -> Profile:
    cores = cores or first_allowed_core()
    bind_engine_threads(cores)  # first: the imports below load torch
    from tqdm import tqdm

    from pdserve.benchmarks.report import machine_info
    from pdserve.simulation.real_engine import RealEngine

    kwargs = engine_kwargs_of(model)
    # "threads": steps logged before the engine was bound as served (two OpenMP threads over
    # the host's cores) must not be resumed into a profile of one bound thread
    fingerprint = json.dumps({**kwargs, "cores": cores, "threads": "one per core, bound"},
                             sort_keys=True)
    steps_path = out.with_name(out.name + ".steps.jsonl")
    done = load_done(steps_path, fingerprint)
    started = time.perf_counter()
    engine = RealEngine(kwargs)
    startup_s = time.perf_counter() - started
    check_engine_threads(cores)
    config = engine.vllm_config
    block_size = config.cache_config.block_size
    points = sweep.design(config.model_config.max_model_len,
                          config.scheduler_config.max_num_seqs,
                          engine.num_blocks * block_size, repeats=repeats, quick=quick)
    vocab = config.model_config.get_vocab_size()
    rng = random.Random(0)
    run_point(engine, sweep.Point("decode", 2, 64, 4), rng, vocab)  # warm-up, not kept
    out.parent.mkdir(parents=True, exist_ok=True)
    with steps_path.open("a") as log:
        for point in tqdm(points, desc="profile sweep", unit="point"):
            if point.key in done:
                continue
            rng = random.Random(point.key)
            # As vLLM's engine core does after start-up: collect, then freeze what survives,
            # so a collection during a timed step does not scan the records kept so far.
            gc.collect()
            gc.freeze()
            done[point.key] = run_point(engine, point, rng, vocab)
            log.write(json.dumps({"fingerprint": fingerprint, "point": point.key,
                                  "steps": done[point.key]}) + "\n")
            log.flush()
    samples = [([tuple(w) for w in step["work"]], step["s"])
               for p in points for step in done[p.key]]
    groups = [n for n, p in enumerate(points) for _ in done[p.key]]  # hold out whole points
    times = step_times(samples, groups)
    blocks = engine.num_blocks
    engine.close()  # the KV probe starts two engines of its own
    gc.unfreeze()
    gc.collect()
    transfer = None
    if kv_transfer:
        transfer = kv_transfer_from_probe(kwargs["model"], kwargs,
                                          model.kv_transfer.progress_thread_delay_us,
                                          list(transfer_lengths), transfer_reps,
                                          out.with_name(out.name + ".kv_transfer.log"))
    result = Profile(
        created=datetime.now(UTC).isoformat(timespec="seconds"), source=command,
        machine=machine_info(), model=model.model, engine_kwargs=dict(model.engine_kwargs),
        kv_cache=KVCache(num_blocks=blocks, block_size=block_size,
                         bytes_per_token=kv_bytes_per_token(config)),
        step_times=times,
        kv_transfer=transfer,
        startup_s=startup_s)
    if graph_runs:
        from pdserve.simulation.calibration import graph_overhead

        result = result.model_copy(update={
            "graph_overhead": graph_overhead(result, model, list(graph_runs))})
    result.save(out)
    return result


def kv_bytes_per_token(config: Any) -> int:
    """K and V of every layer for one token, in the KV cache's dtype."""
    import torch
    from vllm.utils.torch_utils import STR_DTYPE_TO_TORCH_DTYPE

    model = config.model_config
    dtype = config.cache_config.cache_dtype
    torch_dtype = model.dtype if dtype == "auto" else STR_DTYPE_TO_TORCH_DTYPE.get(dtype)
    element = torch.tensor([], dtype=torch_dtype).element_size() if torch_dtype else 1  # fp8
    layers = model.get_num_layers(config.parallel_config)
    return 2 * layers * model.get_num_kv_heads(config.parallel_config) * model.get_head_size() \
        * element
