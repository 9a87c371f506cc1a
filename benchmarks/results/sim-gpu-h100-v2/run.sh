#!/usr/bin/env bash
# The autoscaler's slow loop at a scale this box cannot hold: Llama 3.1 8B PD on H100s,
# simulated from the hand-written profile, the same 10 minutes of diurnal traffic as
# sim-gpu-h100-v1 (mean 20 req/s, half 2048-token prompts with 16 out, half 64-token prompts
# with 256 out), under pdserve's SLO policy with its planner floor (`--planner-profile`: as
# `planner.profile` in the config), the SLO policy alone (the config as shipped) and Ray
# Serve's default.
set -euo pipefail
OUT=benchmarks/results/sim-gpu-h100-v2
P=benchmarks/profiles/h100-llama-3.1-8b.json
C=serve_configs/llama8b_h100.yaml
LOAD="--rate 20 --arrivals diurnal --duration 600 --prompt-tokens 2048 --output-tokens 256 --mixed --slo-ttft-ms 1000 --slo-itl-ms 50"
.venv/bin/pdserve simulate --profile $P --config $C --planner-profile $P --model llama8b \
  --autoscaling config $LOAD --out $OUT/llama8b-slo-planner > /dev/null
.venv/bin/pdserve simulate --profile $P --config $C --model llama8b --autoscaling config $LOAD \
  --out $OUT/llama8b-slo > /dev/null
.venv/bin/pdserve simulate --profile $P --config $C --model llama8b --autoscaling ray_default \
  $LOAD --out $OUT/llama8b-ray_default > /dev/null
