#!/usr/bin/env bash
# plan-cpu-v3's candidates up to 3 engines (the plan made on sim-validation-cpu-v10's faithful
# profile, graph CPU per step, contention), measured on this box with requests no earlier
# validation sent (seed 2), 3 rounds (~50 min), and compared with the plan's simulation of the
# same requests.
set -euo pipefail
.venv/bin/python -m pdserve.benchmarks.plan_validation --plan benchmarks/results/plan-cpu-v3 \
  --rounds 3 --num-prompts 120 --seed 2 --out benchmarks/results/plan-validation-cpu-v6
# validation.md: compared with the plan's profile as planned (plan-cpu-v3/profile-pd.json, the
# same file as sim-validation-cpu-v10/profile-pd.json was then). Again with v10's profile
# recalibrated on steps counted in the simulated replay (37c70a4):
.venv/bin/python -m pdserve.benchmarks.plan_validation --plan benchmarks/results/plan-cpu-v3 \
  --out benchmarks/results/plan-validation-cpu-v6 --compare \
  --profile benchmarks/results/sim-validation-cpu-v10/profile-pd.json \
  --report-name validation-replay-steps
