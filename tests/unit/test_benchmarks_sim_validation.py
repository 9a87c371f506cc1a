"""The simulator's validation benchmark: every load is a valid run of vLLM's serving benchmark,
and no two loads draw the same prompts (the simulator replays lengths, not contents, so a
measured prompt found in the prefix cache would be a hit the simulation cannot have)."""

from __future__ import annotations

from pathlib import Path

from pdserve.benchmarks import sim_validation as sv
from pdserve.benchmarks import workloads
from pdserve.benchmarks.systems import System


def test_each_load_parses_and_draws_its_own_prompts(tmp_path: Path) -> None:
    args = sv.parse_args(["--out", str(tmp_path)])
    system = System(name="pd", command=["true"], base_url="http://127.0.0.1:8000",
                    model_name="bench", model_dir="/m")
    seeds = {}
    for load in sv.LOADS:
        parsed = workloads.parse_bench_args(sv.load_argv(load, system, args, tmp_path / "d"))
        seeds[load] = parsed.seed
        if load.startswith("c1"):
            assert parsed.max_concurrency == 1
        else:
            assert parsed.request_rate in (args.rate, args.mixed_rate)
    assert len(set(seeds.values())) == len(sv.LOADS)
    assert set(sv.CALIBRATION_LOADS) | set(sv.VALIDATION_LOADS) == set(sv.LOADS)
