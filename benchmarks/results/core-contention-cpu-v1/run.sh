#!/usr/bin/env bash
# How much two `bench` engines slow each other on this 2-core box, in each step's CPU time:
# both on one core (time-shared), each on its own core (side by side), and pd 1P+2D's placement
# (two on core 1, one on core 0); ~5 min each. The first two write profile-pd.json's
# `core_contention` (a copy of sim-calibration-cpu-v2/profile-pd.json).
set -euo pipefail
R=benchmarks/results/core-contention-cpu-v1
cp benchmarks/results/sim-calibration-cpu-v2/profile-pd.json $R/profile-pd.json
.venv/bin/python -m pdserve.benchmarks.core_sharing_probe --cores 1 --repeats 3 \
  --out $R/core-sharing-same-core.json --profile $R/profile-pd.json
.venv/bin/python -m pdserve.benchmarks.core_sharing_probe --cores 0,1 --repeats 3 \
  --out $R/core-sharing-other-core.json --profile $R/profile-pd.json
.venv/bin/python -m pdserve.benchmarks.core_sharing_probe --engines 3 --cores 1,1,0 --repeats 3 \
  --out $R/core-sharing-mixed.json
# profile-pd-low.json: profile-pd.json with the mixed run's ratios instead, written by hand
# (its core_contention.source says how). Then plan-validation-cpu-v4 compared with both:
V=benchmarks/results/plan-validation-cpu-v4
for n in "" "-low"; do
  .venv/bin/python -m pdserve.benchmarks.plan_validation --plan benchmarks/results/plan-cpu-v2 \
    --out $V --compare --profile $R/profile-pd$n.json --report-name validation-contention$n
done
