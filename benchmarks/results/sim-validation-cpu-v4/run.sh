#!/usr/bin/env bash
# v3 repeated in a second window, right after it on the same Intel box (is 14 of 24 within 15 %
# reproducible?): the engine profiled (~3 min), the five loads interleaved per round, 3 rounds
# (~35 min), then compared with the calibrated step scale (validation.md).
set -euo pipefail
B=benchmarks/results
OUT=$B/sim-validation-cpu-v4
.venv/bin/pdserve profile --config $B/sim-validation-cpu-v2/configs/pd.yaml \
  --out $OUT/profile.json
.venv/bin/python -m pdserve.benchmarks.sim_validation --rounds 3 --out $OUT
.venv/bin/python -m pdserve.benchmarks.sim_validation --compare --profile $OUT/profile.json \
  --out $OUT --step-model scaled
