"""KV-transfer benchmark: how fast the PD path moves KV next to memcpy and raw NIXL on the same
machine, what the quiet connector's progress-thread delay costs in pull latency, and what an
idle engine of every pool kind costs in CPU.

Each round runs every probe (`kv_transfer_probes.py`) in a fresh process, one after another,
all at the same priority (nice values are read from /proc and reported): memcpy, raw NIXL
between two processes, the PD path between two vLLM engines of the bench model for each
connector variant (`vllm`: vLLM's own NixlConnector; `quiet-<us>`: pdserve's with that
progress-thread delay, `quiet-0` being NIXL's busy poll with pdserve's core binding), and idle
colocated and embedding engines. Rounds repeat the whole set, so drift hits every variant
alike; the report gives the median of the rounds with their min–max.

    python -m pdserve.benchmarks.kv_transfer_bench --out benchmarks/results/kv-transfer-cpu-v1
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from pdserve.benchmarks import report, systems
from pdserve.benchmarks.kv_transfer_summary import markdown, summarize
from pdserve.deployments.config import KVTransferSettings

#: Engine arguments of the PD probes: the bench model, long enough for 8k-token prompts (its
#: rope is effectively off, so positions past its trained 2k are harmless here).
PD_ENGINE_KWARGS: dict[str, Any] = {
    "dtype": "float32", "max_model_len": 8448, "max_num_batched_tokens": 2048,
    "block_size": 32, "kv_cache_memory_bytes": 512 * 2**20, "enforce_eager": True,
    "hf_overrides": {"max_position_embeddings": 8448},
}
EMBED_ENGINE_KWARGS: dict[str, Any] = {"dtype": "float32", "enforce_eager": True,
                                       "gpu_memory_utilization": 0.2}


def kv_geometry(model_dir: str, block_size: int) -> dict[str, int]:
    """KV bytes per token and per block of one layer (K or V), from the model's config."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    heads = config.get("num_key_value_heads", config["num_attention_heads"])
    head_dim = config.get("head_dim", config["hidden_size"] // config["num_attention_heads"])
    layers = config["num_hidden_layers"]
    per_layer_token = heads * head_dim * 4  # float32
    return {"layers": layers, "bytes_per_token": 2 * layers * per_layer_token,
            "block_bytes": block_size * per_layer_token}


def run_probe(probe: str, args: dict[str, Any], log: Path) -> dict[str, Any]:
    """One probe in its own process; its output goes to `log`, its result is parsed from it."""
    command = [sys.executable, "-m", "pdserve.benchmarks.kv_transfer_probes", probe,
               json.dumps(args)]
    with log.open("w") as out:
        proc = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=1800,
                              check=False)
    out_lines = [line for line in log.read_text(errors="replace").splitlines()
                 if line.startswith("RESULT ")]
    if proc.returncode != 0 or not out_lines:
        raise RuntimeError(f"probe {probe} failed (exit {proc.returncode}); see {log}")
    return json.loads(out_lines[-1].removeprefix("RESULT "))


def probes(args: argparse.Namespace) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, probe, arguments) of one round."""
    model = systems.resolve_model_dir(args.model)
    geometry = kv_geometry(model, PD_ENGINE_KWARGS["block_size"])
    sizes = [length * geometry["bytes_per_token"] for length in args.lengths]
    plan = {str(length): args.reps for length in args.lengths}
    plan[str(args.latency_length)] = max(args.latency_reps, plan.get(str(args.latency_length), 0))
    layouts = {"one": {"pieces": 1}, "per_layer": {"pieces": geometry["layers"]},
               "per_block": {"bytes": geometry["block_bytes"]}}
    idle = {"settle_s": args.settle, "idle_s": args.idle}
    out = [("memcpy", "memcpy", {"sizes": sizes, "reps": args.reps + 2}),
           ("raw_nixl", "raw_nixl", {"sizes": sizes, "layouts": layouts, "reps": args.reps + 2,
                                     "delay_us": KVTransferSettings().progress_thread_delay_us}),
           ("raw_nixl:4k", "raw_nixl", {"sizes": sizes, "layouts": {"one": layouts["one"]},
                                        "reps": args.reps + 2, "huge_pages": False,
                                        "delay_us": KVTransferSettings().progress_thread_delay_us})]
    out += [(f"pd:{variant}", "pd_path", {"variant": variant, "model": model, "plan": plan,
                                           "engine_kwargs": PD_ENGINE_KWARGS, **idle})
            for variant in args.variants]
    out.append(("idle:colocated", "idle_engine", {"kind": "colocated", "model": model,
                                                  "engine_kwargs": PD_ENGINE_KWARGS, **idle}))
    out.append(("idle:embed", "idle_engine", {
        "kind": "embed", "model": systems.resolve_model_dir("pdserve://all-minilm-l6-v2"),
        "engine_kwargs": EMBED_ENGINE_KWARGS, **idle}))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", default="pdserve://bench")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", default="vllm,quiet-0,quiet-100,quiet-1000,quiet-10000",
                   type=lambda v: [x for x in v.split(",") if x])
    p.add_argument("--lengths", default="1024,2048,4096,8192",
                   type=lambda v: [int(x) for x in v.split(",") if x])
    p.add_argument("--reps", type=int, default=3, help="transfers per length per round")
    p.add_argument("--latency-length", type=int, default=2048,
                   help="prompt length whose pull latency percentiles are reported")
    p.add_argument("--latency-reps", type=int, default=20)
    p.add_argument("--settle", type=float, default=5.0, help="s before an idle window")
    p.add_argument("--idle", type=float, default=15.0, help="idle window, s")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    command = "python -m pdserve.benchmarks.kv_transfer_bench " + shlex.join(
        argv if argv is not None else sys.argv[1:])
    meta = report.run_metadata(command, systems.REPO_ROOT)
    meta["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    model = systems.resolve_model_dir(args.model)
    meta["geometry"] = kv_geometry(model, PD_ENGINE_KWARGS["block_size"])
    raw: list[dict[str, Any]] = []
    raw_path = args.out / "raw.json"
    for round_index in range(args.rounds):
        for name, probe, probe_args in probes(args):
            log = args.out / "logs" / f"r{round_index}-{name.replace(':', '-')}.log"
            print(f"round {round_index + 1}/{args.rounds}: {name}", flush=True)
            try:
                result = run_probe(probe, probe_args, log)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                result = {"error": str(exc)}
            raw.append({"round": round_index, "name": name, **result})
            raw_path.write_text(json.dumps({"meta": meta, "raw": raw}, indent=1))
    summary = summarize(raw, args.lengths, args.latency_length,
                        meta["geometry"]["bytes_per_token"])
    (args.out / "report.json").write_text(json.dumps({"meta": meta, "summary": summary},
                                                     indent=1))
    (args.out / "report.md").write_text(markdown(meta, summary))
    print((args.out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
