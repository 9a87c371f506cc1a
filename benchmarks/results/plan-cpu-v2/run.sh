#!/usr/bin/env bash
# Plan the `bench` model on this 2-core box (the validation's calibrated PD profile: graph
# overhead and CPU sharing included) for 300 Poisson requests at 2 req/s (512 in / 64 out),
# with a rate search per candidate; simulated with engines sharing the cores they are pinned to.
set -euo pipefail
C=benchmarks/results/sim-validation-cpu-v1
.venv/bin/pdserve plan --profile $C/profile-pd.json --config $C/configs/pd.yaml \
  --rate 2 --num-requests 300 --prompt-tokens 512 --output-tokens 64 \
  --slo-ttft-ms 1000 --slo-itl-ms 50 --attainment 90 --budget 4 --search-rate \
  --out benchmarks/results/plan-cpu-v2
