"""The simulator against the real engine: vLLM's scheduler driven without a model makes the
same batches, step by step, as the real engine given the same requests (chunked prefill,
preemption, a prefix hit); and `pdserve profile` → `pdserve simulate` runs end to end on a real
engine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from pdserve.deployments.config.app import AppConfig

HERE = Path(__file__).parent
REPO = HERE.parents[1]
PDSERVE = Path(sys.executable).with_name("pdserve")


def test_simulated_engine_makes_the_real_engines_batches(tmp_path: Path) -> None:
    out = tmp_path / "batches.json"
    subprocess.run([sys.executable, str(HERE / "sim_vs_engine.py"), str(out)], check=True,
                   timeout=600, cwd=HERE)
    result = json.loads(out.read_text())
    real, simulated = result["real"], result["simulated"]
    # The schedule exercises what the test is for: chunked prompts, preemption, 60 requests.
    assert len({r for step in real for r in step["work"]}) == 60
    assert sum(1 for step in real if step["preempted"]) >= 3
    # a prompt chunk after the first (chunked prefill) and a request entering the batch with
    # computed tokens already (its first 64 prompt tokens found in the prefix cache)
    assert any(w[2] and w[1] > 0 and not w[3] for step in real for w in step["work"].values())
    assert any(w[3] and w[1] >= 64 for step in real for w in step["work"].values())
    assert len(real) == len(simulated)
    for n, (a, b) in enumerate(zip(real, simulated, strict=True)):
        assert a == b, f"step {n}: real {a} != simulated {b}"


def test_profile_then_simulate(tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"applications": [{"name": "pdserve", "args": {
        "models": [{"model_id": "tiny", "model": "pdserve://tiny", "mode": "pd",
                    "engine_kwargs": {"dtype": "float32", "max_model_len": 512,
                                      "max_num_batched_tokens": 256, "block_size": 32,
                                      "kv_cache_memory_bytes": 64 * 2**20,
                                      "enforce_eager": True, "max_num_seqs": 16}}]}}]}))
    profile = tmp_path / "tiny.profile.json"
    subprocess.run([str(PDSERVE), "profile", "--config", str(config), "--out", str(profile),
                    "--quick", "--repeats", "1", "--no-kv-transfer"], check=True, timeout=600)
    data = json.loads(profile.read_text())
    steps = data["step_times"]
    assert steps["steps"] > 50 and steps["heldout_mape"] is not None
    assert data["kv_cache"]["num_blocks"] > 0 and data["kv_cache"]["block_size"] == 32
    # A second run resumes: every sweep point is in the steps log, so none runs again.
    steps_log = tmp_path / "tiny.profile.json.steps.jsonl"
    logged = steps_log.read_text()
    subprocess.run([str(PDSERVE), "profile", "--config", str(config), "--out", str(profile),
                    "--quick", "--repeats", "1", "--no-kv-transfer"], check=True, timeout=600)
    assert steps_log.read_text() == logged
    assert json.loads(profile.read_text())["step_times"] == steps
    report = tmp_path / "sim"
    done = subprocess.run(
        [str(PDSERVE), "simulate", "--profile", str(profile), "--config", str(config),
         "--rate", "4", "--num-requests", "60", "--prompt-tokens", "300",
         "--output-tokens", "20", "--slo-ttft-ms", "2000", "--slo-itl-ms", "200",
         "--out", str(report)], check=True, timeout=600, capture_output=True, text=True)
    assert "TTFT ms" in done.stdout
    result = json.loads((report / "report.json").read_text())
    summary = result["summary"]
    assert summary["completed"] == 60 and summary["p50_ttft_ms"] > 0
    assert summary["plans"].get("remote", 0) > 0  # 300-token prompts prefill remotely
    assert (report / "timeline.png").stat().st_size > 0
    # ... and plans a deployment from the same profile: a runnable config comes out.
    planned = tmp_path / "plan"
    done = subprocess.run(
        [str(PDSERVE), "plan", "--profile", str(profile), "--config", str(config),
         "--rate", "1", "--num-requests", "40", "--prompt-tokens", "300",
         "--output-tokens", "20", "--slo-ttft-ms", "3000", "--slo-itl-ms", "500",
         "--budget", "2", "--out", str(planned)], check=True, timeout=600,
        capture_output=True, text=True)
    assert "Recommended:" in done.stdout
    plan = json.loads((planned / "plan.json").read_text())
    assert plan["estimated"] == 3 and plan["recommended"] is not None
    written = yaml.safe_load((planned / "serve_config.yaml").read_text())
    AppConfig.model_validate(written["applications"][0]["args"])
