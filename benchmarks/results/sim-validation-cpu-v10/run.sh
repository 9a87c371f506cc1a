#!/usr/bin/env bash
# v9's procedure with two calibration measurements added (stop 60), both made before any
# validation load is compared: a closed-loop concurrency-4 load (`c4`) in every round, whose
# steps carry several tokens each, so the graph's CPU per engine step is told from its CPU per
# token; and this box's engine-on-engine slow-down (two `bench` engines, one per core, 3
# alone-then-shared pairs) written into the profile's `core_contention`. ~55 min.
set -euo pipefail
B=benchmarks/results
OUT=$B/sim-validation-cpu-v10
.venv/bin/pdserve profile --config $B/sim-validation-cpu-v2/configs/pd.yaml \
  --out $OUT/profile.json
cp $OUT/profile.json $OUT/profile-no-contention.json
.venv/bin/python -m pdserve.benchmarks.core_sharing_probe --cores 0,1 --repeats 3 \
  --out $OUT/core-sharing-other-core.json --profile $OUT/profile.json
.venv/bin/python -m pdserve.benchmarks.sim_validation --rounds 3 --out $OUT
# the default: CPU per request, per step and per token (c1, c1-long and c4), contention
.venv/bin/python -m pdserve.benchmarks.sim_validation --compare --profile $OUT/profile.json \
  --out $OUT
# each addition alone, and neither (v9's calibration)
.venv/bin/python -m pdserve.benchmarks.sim_validation --compare --profile $OUT/profile.json \
  --out $OUT --concurrency-1-cpu --suffix=-c1-cpu
.venv/bin/python -m pdserve.benchmarks.sim_validation --compare \
  --profile $OUT/profile-no-contention.json --out $OUT --suffix=-no-contention
.venv/bin/python -m pdserve.benchmarks.sim_validation --compare \
  --profile $OUT/profile-no-contention.json --out $OUT --concurrency-1-cpu --suffix=-as-v9
# after the run (stop 60), tried, not kept: v7's busy-core share with the new CPU split
.venv/bin/python -m pdserve.benchmarks.sim_validation --compare --profile $OUT/profile.json \
  --out $OUT --busy-cores --suffix=-busy-cores
