#!/usr/bin/env bash
# The simulator validated on the Intel box (v1 ran on an AMD one): the three validated loads
# measured (~31 min), then compared with the calibration of this morning
# (`sim-calibration-cpu-v2`, measured 9.5 h earlier: validation.md) and with one measured right
# after (`sim-calibration-cpu-v3`, ~12 min: validation-fresh.md).
set -euo pipefail
B=benchmarks/results
OUT=$B/sim-validation-cpu-v2
.venv/bin/python -m pdserve.benchmarks.sim_validation --rounds 3 --loads poisson,bursty,mixed \
  --out $OUT
.venv/bin/python -m pdserve.benchmarks.sim_validation --compare \
  --profile $B/sim-calibration-cpu-v2/profile.json --calibration $B/sim-calibration-cpu-v2 \
  --out $OUT --step-model scaled
.venv/bin/python -m pdserve.benchmarks.sim_validation --loads c1,c1-long --rounds 3 \
  --out $B/sim-calibration-cpu-v3
.venv/bin/python -m pdserve.benchmarks.sim_validation --compare \
  --profile $B/sim-calibration-cpu-v2/profile.json --calibration $B/sim-calibration-cpu-v3 \
  --suffix=-fresh --out $OUT --step-model scaled
