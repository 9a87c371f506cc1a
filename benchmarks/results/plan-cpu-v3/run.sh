#!/usr/bin/env bash
# plan-cpu-v2's plan again (stop 60) on sim-validation-cpu-v10's calibrated PD profile: the
# engine profiled as served (one thread bound to its core), the graph's CPU per request, per
# engine step and per token, this box's engine-on-engine contention. Same load, SLO and budget.
set -euo pipefail
C=benchmarks/results/sim-validation-cpu-v10
.venv/bin/pdserve plan --profile $C/profile-pd.json --config $C/configs/pd.yaml \
  --rate 2 --num-requests 300 --prompt-tokens 512 --output-tokens 64 \
  --slo-ttft-ms 1000 --slo-itl-ms 50 --attainment 90 --budget 4 --search-rate \
  --out benchmarks/results/plan-cpu-v3
# The calibrated profile as it was when this plan was made (graph CPU split over steps counted
# from the client's token arrivals, commit 95d877d) is kept here as profile-pd.json: v10's own
# profile-pd.json was recalibrated afterwards (steps counted in the simulated replay, 37c70a4).
# To plan exactly as then, give --profile benchmarks/results/plan-cpu-v3/profile-pd.json above.
