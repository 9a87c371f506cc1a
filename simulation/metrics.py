"""A simulated run's results in the measured benchmarks' terms: the fields of vLLM's serving
benchmark summary (`p50_ttft_ms`, `p99_itl_ms`, ..., percentiles as numpy computes them, ITLs
pooled over all streams), goodput and attainment under a TTFT + ITL SLO, replica-seconds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pdserve.simulation.graph import Outcome

PERCENTILES = (50, 90, 99)


def summarize(outcomes: Sequence[Outcome], slo_ttft_ms: float | None = None,
              slo_itl_ms: float | None = None, replica_seconds: float | None = None
              ) -> dict[str, Any]:
    import numpy as np

    done = [o for o in outcomes if o.done]
    ttfts = np.array([o.ttft_s for o in done]) * 1e3
    itls = np.array([g for o in done for g in o.itls_s]) * 1e3
    tpots = np.array([(o.token_s[-1] - o.token_s[0]) / (len(o.token_s) - 1) * 1e3
                      for o in done if len(o.token_s) > 1])
    start = min((o.arrival_s for o in outcomes), default=0.0)
    end = max((o.token_s[-1] for o in done), default=start)
    duration = end - start
    out: dict[str, Any] = {"completed": len(done), "failed": len(outcomes) - len(done),
                           "duration": duration,
                           "request_throughput": len(done) / duration if duration else None}
    for name, values in (("ttft", ttfts), ("itl", itls), ("tpot", tpots)):
        out[f"mean_{name}_ms"] = float(values.mean()) if len(values) else None
        for q in PERCENTILES:
            out[f"p{q}_{name}_ms"] = float(np.percentile(values, q)) if len(values) else None
    if slo_ttft_ms is not None or slo_itl_ms is not None:
        met = sum(1 for o in done
                  if (slo_ttft_ms is None or o.ttft_s * 1e3 <= slo_ttft_ms)
                  and (slo_itl_ms is None or all(g * 1e3 <= slo_itl_ms for g in o.itls_s)))
        out["slo_goodput"] = met / duration if duration else None
        out["slo_met_pct"] = 100 * met / len(outcomes) if outcomes else None
    plans: dict[str, int] = {}
    for o in outcomes:
        plans[o.plan] = plans.get(o.plan, 0) + 1
    out["plans"] = plans
    if replica_seconds is not None:
        out["replica_seconds"] = replica_seconds
    return out
