#!/usr/bin/env bash
# v8's procedure again, right after it (stop 59): the held-out test of the step calibration
# chosen on v8's runs (`added`: a served step is the profiled one plus a constant, now that the
# profile times the engine as served), compared as well with v8's default (`scaled`).
set -euo pipefail
B=benchmarks/results
OUT=$B/sim-validation-cpu-v9
.venv/bin/pdserve profile --config $B/sim-validation-cpu-v2/configs/pd.yaml \
  --out $OUT/profile.json
.venv/bin/python -m pdserve.benchmarks.sim_validation --rounds 3 --out $OUT
.venv/bin/python -m pdserve.benchmarks.sim_validation --compare --profile $OUT/profile.json \
  --out $OUT
.venv/bin/python -m pdserve.benchmarks.sim_validation --compare --profile $OUT/profile.json \
  --out $OUT --step-model scaled --suffix=-scaled
# after the run: what the graph's CPU on the engines' host explains (without it: 2 of 24)
.venv/bin/python -m pdserve.benchmarks.sim_validation --compare --profile $OUT/profile.json \
  --out $OUT --no-cpu-model --suffix=-no-cpu
