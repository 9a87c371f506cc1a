#!/usr/bin/env bash
# The autoscaling comparison on a trace heavy enough to make a policy act on this box: the
# default trace's rates ×4 (model A peaks at 3.2 req/s of ~900-token prompts, B at 1 req/s),
# phases half as long (270 s), 3 rounds alternating the policies. The rate was picked with the
# simulator (the same arrivals, the calibrated bench profile, so its 2048-token batches rather
# than this app's 512): at ×3 neither policy scaled, at ×4 Ray's default scaled out (and back in) and
# pdserve's policy (room bound: 3 engines on 2 cores) not at all.
set -euo pipefail
.venv/bin/python -m pdserve.benchmarks.autoscale_bench --rate-scale 4 --phase-scale 0.5 \
  --rounds 3 --out benchmarks/results/autoscale-cpu-v3
