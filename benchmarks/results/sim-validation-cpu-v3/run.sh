#!/usr/bin/env bash
# The simulator validated with its profile, calibration and validation loads measured in one
# window (v2 compared loads with a profile taken 9.5 hours earlier): the engine profiled
# (`pdserve profile`, ~6 min), then the five loads, calibration (c1, c1-long) and validation
# (poisson, bursty, mixed) interleaved per round, 3 rounds (~43 min), then compared with the
# served engine's steps scaled by the concurrency-1 calibration (validation.md) and as
# profiled (validation-profiled.md); last, v2's loads (measured 2.5 hours before this window)
# against this window's profile and v2's own calibration (measured right after its loads):
# sim-validation-cpu-v2/validation-v3-profile.md.
set -euo pipefail
B=benchmarks/results
OUT=$B/sim-validation-cpu-v3
.venv/bin/pdserve profile --config $B/sim-validation-cpu-v2/configs/pd.yaml \
  --out $OUT/profile.json
.venv/bin/python -m pdserve.benchmarks.sim_validation --rounds 3 --out $OUT
.venv/bin/python -m pdserve.benchmarks.sim_validation --compare --profile $OUT/profile.json \
  --out $OUT --step-model scaled
.venv/bin/python -m pdserve.benchmarks.sim_validation --compare --profile $OUT/profile.json \
  --step-model profiled --suffix=-profiled --out $OUT
.venv/bin/python -m pdserve.benchmarks.sim_validation --compare --profile $OUT/profile.json \
  --calibration $B/sim-calibration-cpu-v3 --suffix=-v3-profile --out $B/sim-validation-cpu-v2 --step-model scaled
