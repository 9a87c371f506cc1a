#!/usr/bin/env bash
# Llama 3.1 8B on H100s, simulated from the hand-written profile (no GPU here): 10 minutes of
# diurnal traffic (mean 20 req/s, half 2048-token prompts with 16 out, half 64-token prompts
# with 256 out), PD and colocated, each under pdserve's SLO policy and Ray Serve's default.
set -euo pipefail
OUT=benchmarks/results/sim-gpu-h100-v1
P=benchmarks/profiles/h100-llama-3.1-8b.json
C=serve_configs/llama8b_h100.yaml
for model in llama8b llama8b-colo; do
  for policy in config ray_default; do
    .venv/bin/pdserve simulate --profile $P --config $C --model $model --autoscaling $policy \
      --rate 20 --arrivals diurnal --duration 600 --prompt-tokens 2048 --output-tokens 256 \
      --mixed --slo-ttft-ms 1000 --slo-itl-ms 50 --out $OUT/$model-$policy > /dev/null
  done
done
# The planner's answer for a steady 20 req/s (benchmarks/results/plan-gpu-h100-v1), fixed, on
# the same diurnal traffic (peaking at 36 req/s):
.venv/bin/pdserve simulate --profile $P --config $C --model llama8b --replicas prefill=1 decode=1 \
  --rate 20 --arrivals diurnal --duration 600 --prompt-tokens 2048 --output-tokens 256 \
  --mixed --slo-ttft-ms 1000 --slo-itl-ms 50 --out $OUT/llama8b-fixed-1P1D > /dev/null
