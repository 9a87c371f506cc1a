#!/usr/bin/env bash
# v7's procedure after the profiler fix (stop 59): the engine profiled as served (one OpenMP
# thread bound to its core; every earlier profile timed a two-thread unbound engine) (~3.5 min),
# the five loads interleaved per round, 3 rounds (~35 min), then compared with the calibration
# as in v7 and with the prompt cost as graph latency (`validation-graph.md`).
set -euo pipefail
B=benchmarks/results
OUT=$B/sim-validation-cpu-v8
.venv/bin/pdserve profile --config $B/sim-validation-cpu-v2/configs/pd.yaml \
  --out $OUT/profile.json
.venv/bin/python -m pdserve.benchmarks.sim_validation --rounds 3 --out $OUT
.venv/bin/python -m pdserve.benchmarks.sim_validation --compare --profile $OUT/profile.json \
  --out $OUT --step-model scaled
.venv/bin/python -m pdserve.benchmarks.sim_validation --compare --profile $OUT/profile.json \
  --out $OUT --prompt-cost graph --suffix=-graph --step-model scaled
# after the run (stop 59): a constant per step (`added`, then made the default), and v7's
# busy-core share on the step scale
.venv/bin/python -m pdserve.benchmarks.sim_validation --compare --profile $OUT/profile.json \
  --out $OUT --step-model added --suffix=-added
.venv/bin/python -m pdserve.benchmarks.sim_validation --compare --profile $OUT/profile.json \
  --out $OUT --busy-cores --step-model scaled --suffix=-busy-cores
# tried, not kept (bursty TTFT p90 right, Poisson p90s wrong): the graph's CPU demanded over a
# longer window of arrivals and tokens
for w in 4 8; do
  .venv/bin/python -m pdserve.benchmarks.sim_validation --compare --profile $OUT/profile.json \
    --out $OUT --cpu-window $w --suffix=-added-window$w
done
