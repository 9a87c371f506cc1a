#!/usr/bin/env bash
# A test of the graph's CPU demand window chosen in advance (`sim-cpu-window-cpu-v1`: in the
# two validations measured in one window, 0.5 s fitted better than the 2 s default; in four
# with a profile from another window it did not): v3's procedure again in a new window (the
# engine profiled, ~3 min; the five loads interleaved per round, 3 rounds, ~35 min), then
# compared with the default window (validation.md) and with 0.5 s (validation-window-0.5.md).
set -euo pipefail
B=benchmarks/results
OUT=$B/sim-validation-cpu-v5
.venv/bin/pdserve profile --config $B/sim-validation-cpu-v2/configs/pd.yaml \
  --out $OUT/profile.json
.venv/bin/python -m pdserve.benchmarks.sim_validation --rounds 3 --out $OUT
.venv/bin/python -m pdserve.benchmarks.sim_validation --compare --profile $OUT/profile.json \
  --out $OUT --step-model scaled
.venv/bin/python -m pdserve.benchmarks.sim_validation --compare --profile $OUT/profile.json \
  --cpu-window 0.5 --suffix=-window-0.5 --out $OUT --step-model scaled
