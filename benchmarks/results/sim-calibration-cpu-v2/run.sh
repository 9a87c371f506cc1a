#!/usr/bin/env bash
# The `bench` model profiled and calibrated again on this session's box (an Intel Xeon; the
# v1 profile and calibration were measured on an AMD EPYC): the engine sweep and NIXL pulls
# (`pdserve profile`), then the concurrency-1 calibration runs of both systems, 3 rounds,
# then the calibrated profiles (profile-pd.json, profile-colocated.json) from them.
set -euo pipefail
OUT=benchmarks/results/sim-calibration-cpu-v2
.venv/bin/pdserve profile --config benchmarks/results/sim-validation-cpu-v1/configs/pd.yaml \
  --out $OUT/profile.json
.venv/bin/python -m pdserve.benchmarks.sim_validation --loads c1,c1-long --rounds 3 --out $OUT
.venv/bin/python -m pdserve.benchmarks.sim_validation --compare --profile $OUT/profile.json \
  --out $OUT --step-model scaled
