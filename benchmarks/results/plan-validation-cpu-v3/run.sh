#!/usr/bin/env bash
# Held-out validation of the planner's simulator (engines sharing the cores they are pinned
# to; the graph's demand on idle cores first, then on busy cores alike), chosen after
# plan-validation-cpu-v2: the same plan and candidates, new requests (seed 1), 3 rounds.
set -euo pipefail
.venv/bin/python -m pdserve.benchmarks.plan_validation --plan benchmarks/results/plan-cpu-v2 \
  --rounds 3 --num-prompts 120 --seed 1 --out benchmarks/results/plan-validation-cpu-v3
