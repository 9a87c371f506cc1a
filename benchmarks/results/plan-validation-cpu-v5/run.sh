#!/usr/bin/env bash
# Three candidates of plan-validation-cpu-v4 again (seed 1: the same requests), with the
# engines' mutual slow-down (core contention) measured just before and just after the runs,
# each written into a copy of this box's profile: does a contention measured beside the runs
# predict them? (This VM's speed and contention drift within tens of minutes.)
set -euo pipefail
V=benchmarks/results/plan-validation-cpu-v5
P=benchmarks/results/sim-calibration-cpu-v2/profile-pd.json
probe() {  # $1: before|after
  cp $P $V/profile-pd-$1.json
  .venv/bin/python -m pdserve.benchmarks.core_sharing_probe --cores 1 --repeats 2 \
    --out $V/core-sharing-same-core-$1.json --profile $V/profile-pd-$1.json
  .venv/bin/python -m pdserve.benchmarks.core_sharing_probe --cores 0,1 --repeats 2 \
    --out $V/core-sharing-other-core-$1.json --profile $V/profile-pd-$1.json
}
probe before
.venv/bin/python -m pdserve.benchmarks.plan_validation --plan benchmarks/results/plan-cpu-v2 \
  --candidates pd-1-1,colocated-3,pd-1-2 --rounds 3 --num-prompts 120 --seed 1 --out $V
probe after
for w in before after; do
  .venv/bin/python -m pdserve.benchmarks.plan_validation --plan benchmarks/results/plan-cpu-v2 \
    --candidates pd-1-1,colocated-3,pd-1-2 --out $V --compare --profile $V/profile-pd-$w.json \
    --report-name validation-contention-$w
done
.venv/bin/python -m pdserve.benchmarks.plan_validation --plan benchmarks/results/plan-cpu-v2 \
  --candidates pd-1-1,colocated-3,pd-1-2 --out $V --compare --profile $P
