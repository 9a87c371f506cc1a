#!/usr/bin/env bash
# Two models of one app at a scale this box cannot hold: serve_configs/llama8b_h100.yaml's
# Llama 3.1 8B PD (`llama8b`) and colocated (`llama8b-colo`), 8 H100s shared (replica budget
# 8), simulated together from the hand-written H100 profile, each with its own 10 minutes of
# diurnal traffic (mean 20 req/s, half 2048-token prompts with 16 out, half 64-token prompts
# with 256 out; seeds 0 and 1): pdserve's SLO policy with planner floors, without them, and
# Ray Serve's default.
set -euo pipefail
OUT=benchmarks/results/sim-gpu-h100-app-v1
P=benchmarks/profiles/h100-llama-3.1-8b.json
C=serve_configs/llama8b_h100.yaml
LOAD="--model llama8b --also-model llama8b-colo --rate 20 --arrivals diurnal --duration 600 --prompt-tokens 2048 --output-tokens 256 --mixed --slo-ttft-ms 1000 --slo-itl-ms 50"
.venv/bin/pdserve simulate --profile $P --config $C --planner-profile $P --autoscaling config \
  $LOAD --out $OUT/slo-planner > /dev/null
.venv/bin/pdserve simulate --profile $P --config $C --autoscaling config $LOAD --out $OUT/slo \
  > /dev/null
.venv/bin/pdserve simulate --profile $P --config $C --autoscaling ray_default $LOAD \
  --out $OUT/ray_default > /dev/null
