#!/usr/bin/env bash
# How the graph's CPU demand window (`graph_overhead.cpu_window_s`: the graph's CPU for the
# arrivals and streamed tokens of the last S seconds, spread over them; 2 s until now) moves
# every validation measured so far. Nothing is measured anew: each run's comparison is re-run at
# this commit with S = 2, 0.5 and 0.2 (files `*-window-S.*` beside each run's own), then
# summarized here (summary.md). ~6 minutes.
set -euo pipefail
B=benchmarks/results
PY=.venv/bin/python
for S in 2 0.5 0.2; do
  # Intel box, profile, calibration and validation in one window (v3 quiet, v4 noisy)
  for V in sim-validation-cpu-v3 sim-validation-cpu-v4; do
    $PY -m pdserve.benchmarks.sim_validation --compare --profile $B/$V/profile.json \
      --cpu-window $S --suffix=-window-$S --out $B/$V --step-model scaled
  done
  # AMD box (v1); Intel box with a calibration measured right after the loads and a profile
  # of 9.5 hours before (v2, its `-fresh` comparison)
  $PY -m pdserve.benchmarks.sim_validation --compare \
    --profile $B/sim-validation-cpu-v1/profile.json --calibration $B/sim-calibration-cpu-v1 \
    --cpu-window $S --suffix=-window-$S --out $B/sim-validation-cpu-v1 --step-model scaled
  $PY -m pdserve.benchmarks.sim_validation --compare \
    --profile $B/sim-calibration-cpu-v2/profile.json --calibration $B/sim-calibration-cpu-v3 \
    --cpu-window $S --suffix=-fresh-window-$S --out $B/sim-validation-cpu-v2 --step-model scaled
  # the planner's candidates (Intel box)
  $PY -m pdserve.benchmarks.plan_validation --plan $B/plan-cpu-v2 --compare \
    --profile $B/sim-calibration-cpu-v2/profile-pd.json --cpu-window $S \
    --out $B/plan-validation-cpu-v4 --report-name validation-window-$S
  $PY -m pdserve.benchmarks.plan_validation --plan $B/plan-cpu-v2 --compare \
    --candidates pd-1-1,colocated-3,pd-1-2 --profile $B/sim-calibration-cpu-v2/profile-pd.json \
    --cpu-window $S --out $B/plan-validation-cpu-v5 --report-name validation-window-$S
done
$PY - <<'PY' > $B/sim-cpu-window-cpu-v1/summary.md
import json
from pathlib import Path

B = Path("benchmarks/results")
KEYS = ("p50_ttft_ms", "p90_ttft_ms", "p50_itl_ms", "p90_itl_ms")
WINDOWS = ("2", "0.5", "0.2")
print("# The graph's CPU demand window, across the validations measured so far\n")
print("`bash benchmarks/results/sim-cpu-window-cpu-v1/run.sh` (comparisons only, nothing "
      "measured anew). Simulator validations: TTFT and ITL p50/p90 within 15 % of the "
      "measured median (of 24), and the mean absolute error. Plan validations: candidates "
      "whose simulated goodput is within 15 % of the measured median, and the mean absolute "
      "error.\n")
print("| validation | " + " | ".join(f"window {w} s" for w in WINDOWS) + " |")
print("|---" * (len(WINDOWS) + 1) + "|")
for name, suffix in (("sim-validation-cpu-v3", ""), ("sim-validation-cpu-v4", ""),
                     ("sim-validation-cpu-v1", ""), ("sim-validation-cpu-v2", "-fresh")):
    cells = []
    for w in WINDOWS:
        rows = json.loads((B / name / f"validation{suffix}-window-{w}.json").read_text())["rows"]
        errors = [abs(r[k]["error_pct"]) for r in rows for k in KEYS]
        cells.append(f"{sum(e <= 15 for e in errors)} of {len(errors)}, "
                     f"{sum(errors) / len(errors):.1f} %")
    print(f"| {name}{suffix} | " + " | ".join(cells) + " |")
for name in ("plan-validation-cpu-v4", "plan-validation-cpu-v5"):
    cells = []
    for w in WINDOWS:
        rows = json.loads((B / name / f"validation-window-{w}.json").read_text())["rows"]
        errors = [abs(r["goodput"]["error_pct"]) for r in rows]
        cells.append(f"{sum(e <= 15 for e in errors)} of {len(errors)}, "
                     f"{sum(errors) / len(errors):.1f} %")
    print(f"| {name} | " + " | ".join(cells) + " |")
PY
cat $B/sim-cpu-window-cpu-v1/summary.md
