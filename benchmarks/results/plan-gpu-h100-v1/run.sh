#!/usr/bin/env bash
# Plan Llama 3.1 8B on up to 8 H100s (hand-written profile) for 2 minutes of Poisson traffic at
# 20 req/s (half 2048-token prompts with 16 out, half 64-token prompts with 256 out), TTFT 1 s,
# every gap 50 ms, for 90 % of requests.
set -euo pipefail
.venv/bin/pdserve plan --profile benchmarks/profiles/h100-llama-3.1-8b.json \
  --config serve_configs/llama8b_h100.yaml --model llama8b \
  --rate 20 --num-requests 2400 --prompt-tokens 2048 --output-tokens 256 --mixed \
  --slo-ttft-ms 1000 --slo-itl-ms 50 --attainment 90 --budget 8 \
  --out benchmarks/results/plan-gpu-h100-v1
