#!/usr/bin/env bash
# plan-validation-cpu-v3 again (same plan, candidates and requests: seed 1), after the harness
# fix that waits for every Ray Serve replica before sending load (v3 began while the second
# and third engines of a candidate were still starting beside the first).
set -euo pipefail
.venv/bin/python -m pdserve.benchmarks.plan_validation --plan benchmarks/results/plan-cpu-v2 \
  --rounds 3 --num-prompts 120 --seed 1 --out benchmarks/results/plan-validation-cpu-v4
# Compared with this box's profile (validation.md; the run above wrote the plan's AMD profile's
# comparison first, kept as validation-plan-profile.md):
.venv/bin/python -m pdserve.benchmarks.plan_validation --plan benchmarks/results/plan-cpu-v2 \
  --out benchmarks/results/plan-validation-cpu-v4 --compare --report-name validation-plan-profile
.venv/bin/python -m pdserve.benchmarks.plan_validation --plan benchmarks/results/plan-cpu-v2 \
  --out benchmarks/results/plan-validation-cpu-v4 --compare \
  --profile benchmarks/results/sim-calibration-cpu-v2/profile-pd.json
