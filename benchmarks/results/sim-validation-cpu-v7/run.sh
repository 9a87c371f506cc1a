#!/usr/bin/env bash
# v6's procedure at stop 58's code, which records each process's run-queue wait: the engine
# profiled (~3 min), the five loads interleaved per round, 3 rounds (~35 min), then compared
# with the calibration as changed this stop (the TTFT per prompt token as engine time, chosen on
# v6's runs: this run is its held-out test) and as before (`validation-graph.md`).
set -euo pipefail
B=benchmarks/results
OUT=$B/sim-validation-cpu-v7
.venv/bin/pdserve profile --config $B/sim-validation-cpu-v2/configs/pd.yaml \
  --out $OUT/profile.json
.venv/bin/python -m pdserve.benchmarks.sim_validation --rounds 3 --out $OUT
.venv/bin/python -m pdserve.benchmarks.sim_validation --compare --profile $OUT/profile.json \
  --out $OUT --step-model scaled
.venv/bin/python -m pdserve.benchmarks.sim_validation --compare --profile $OUT/profile.json \
  --out $OUT --prompt-cost graph --suffix=-graph --step-model scaled
