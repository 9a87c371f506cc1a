#!/usr/bin/env bash
# v5's procedure again at stop 57's code (per-call routing and bookings), in a new window: the
# engine profiled (~3 min), the five loads interleaved per round, 3 rounds (~35 min), then
# compared with the default CPU window. Why: a traced PD run at 2/s this stop (exploratory)
# gave TTFT p50 180-190 ms where v5 measured 330 (215-340) and simulated 207.
set -euo pipefail
B=benchmarks/results
OUT=$B/sim-validation-cpu-v6
.venv/bin/pdserve profile --config $B/sim-validation-cpu-v2/configs/pd.yaml \
  --out $OUT/profile.json
.venv/bin/python -m pdserve.benchmarks.sim_validation --rounds 3 --out $OUT
.venv/bin/python -m pdserve.benchmarks.sim_validation --compare --profile $OUT/profile.json \
  --out $OUT --step-model scaled
