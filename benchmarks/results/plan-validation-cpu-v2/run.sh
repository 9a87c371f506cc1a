#!/usr/bin/env bash
# Measure the 6 candidates of plan-cpu-v2 up to 3 engines (each as the config the planner
# writes, num_cpus fitted to this box), 4 rounds of the plan's load (120 Poisson requests at
# 2 req/s, 512 in / 64 out), and compare with the planner's simulation of the same requests
# (engines sharing the cores they are pinned to).
set -euo pipefail
.venv/bin/python -m pdserve.benchmarks.plan_validation --plan benchmarks/results/plan-cpu-v2 \
  --rounds 4 --num-prompts 120 --out benchmarks/results/plan-validation-cpu-v2
