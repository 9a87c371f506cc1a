#!/usr/bin/env bash
# PD vs colocated on the mixed workload at 2.25 requests/s (v3: 1.0): enough long prompts per
# colocated engine that their prefill stalls pass 1 % of all gaps, where ITL p99 sees them.
# The simulated scan (`sim-scan.md`, ~40 s) chose the rate before the measurement (~15 min).
set -euo pipefail
OUT=benchmarks/results/mixed-cpu-v4
P=benchmarks/results/sim-calibration-cpu-v2
.venv/bin/python -m pdserve.benchmarks.mixed_sim_scan --rates 1,1.5,2,2.25,2.5 \
  --pd-profile $P/profile-pd.json --colocated-profile $P/profile-colocated.json --out $OUT
.venv/bin/python -m pdserve.benchmarks.mixed_bench --rounds 3 --num-prompts 80 \
  --request-rate 2.25 --systems pd,colocated --out $OUT
