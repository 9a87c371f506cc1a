"""What LoRA costs an engine on this machine: the tiny model's engine with and without
`enable_lora`, base-model requests and requests under a test adapter, side by side.

Each variant runs in a fresh process (`--variant`), one after another within a round, all at
this process's priority; rounds repeat the set so drift hits every variant alike. A variant
times `--requests` greedy requests one at a time (512-token recall prompts, 32 output tokens):
time to the first token (the prefill) and per output token after it (the decode), from vLLM's
own request timestamps. The report gives medians over rounds with min–max, and ratios to the
engine without LoRA.

    python -m pdserve.benchmarks.lora_cost --rounds 3 --out benchmarks/results/lora-cpu-v1
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from pdserve.benchmarks import report, systems

ENGINE: dict[str, Any] = {"dtype": "float32", "max_model_len": 2048, "block_size": 32,
                          "max_num_batched_tokens": 2048, "enforce_eager": True,
                          "kv_cache_memory_bytes": 256 * 2**20, "seed": 0,
                          "enable_prefix_caching": False}
LORA: dict[str, Any] = {"enable_lora": True, "max_loras": 2, "max_lora_rank": 32}
#: variant → (LoRA enabled on the engine, adapter the requests run with)
VARIANTS: dict[str, tuple[bool, str | None]] = {
    "no-lora": (False, None), "lora-engine-base": (True, None),
    "lora-engine-adapter": (True, "shifted")}
PROMPT_WORDS, OUTPUT_TOKENS = 160, 32


def run_variant(name: str, requests: int) -> dict[str, float]:
    """In this process: start the engine of `name`, time `requests` requests."""
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from pdserve.models import resolve_adapter, resolve_model
    from pdserve.tiny_model import recall_prompt_text

    lora, adapter = VARIANTS[name]
    llm = LLM(model=resolve_model("pdserve://tiny"), disable_log_stats=False, **ENGINE,
              **(LORA if lora else {}))
    request = (LoRARequest(adapter, 1, resolve_adapter(f"pdserve://tiny/{adapter}"))
               if adapter else None)
    params = SamplingParams(temperature=0.0, max_tokens=OUTPUT_TOKENS, ignore_eos=True)
    rng = random.Random(0)
    prompts = [recall_prompt_text(rng, PROMPT_WORDS, 20) for _ in range(requests + 2)]
    ttft, tpot = [], []
    for i, prompt in enumerate(prompts):
        (out,) = llm.generate([prompt], params, use_tqdm=False, lora_request=request)
        stats = out.metrics
        if i < 2 or stats is None:  # warm-up
            continue
        ttft.append((stats.first_token_ts - stats.scheduled_ts) * 1000)
        tpot.append((stats.last_token_ts - stats.first_token_ts) * 1000 / (OUTPUT_TOKENS - 1))
    return {"ttft_ms": statistics.median(ttft), "tpot_ms": statistics.median(tpot),
            "prompt_tokens": len(out.prompt_token_ids or [])}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pdserve.benchmarks.lora_cost",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=12)
    p.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/lora-cpu"))
    args = p.parse_args(argv)
    if args.variant:  # a child of the harness
        print("RESULT " + json.dumps(run_variant(args.variant, args.requests)), flush=True)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "-m", "pdserve.benchmarks.lora_cost",
                          *(argv if argv is not None else sys.argv[1:])])
    rows: list[dict[str, Any]] = []
    for n in range(1, args.rounds + 1):
        for name in VARIANTS:
            done = subprocess.run(
                [sys.executable, "-m", "pdserve.benchmarks.lora_cost", "--variant", name,
                 "--requests", str(args.requests)], capture_output=True, text=True, check=True)
            line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
            rows.append({"round": n, "variant": name, **json.loads(line[len("RESULT "):])})
            print(rows[-1], flush=True)
    meta = report.run_metadata(command, systems.REPO_ROOT)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (args.out / "report.md").write_text(markdown(meta, rows))
    print((args.out / "report.md").read_text())


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [f"# LoRA cost on one engine: {meta['command']}", "",
             f"- date: {meta['date']}; commit: {meta['git_revision']}",
             f"- machine: {json.dumps(meta['machine'])}",
             f"- engine: `{json.dumps(ENGINE)}`; LoRA: `{json.dumps(LORA)}`; tiny model, "
             f"{PROMPT_WORDS}-word recall prompts, {OUTPUT_TOKENS} output tokens, one at a time",
             "", "| variant | TTFT ms (prefill) | per-token ms (decode) | TTFT × no-lora | "
             "per-token × no-lora |", "|---|---|---|---|---|"]
    by_round = {(r["round"], r["variant"]): r for r in rows}

    def spread(values: list[float], unit: str = "") -> str:
        return (f"{statistics.median(values):.2f}{unit} "
                f"({min(values):.2f}–{max(values):.2f})")

    for name in VARIANTS:
        mine = [r for r in rows if r["variant"] == name]
        ratios = {k: [r[k] / by_round[(r["round"], "no-lora")][k] for r in mine]
                  for k in ("ttft_ms", "tpot_ms")}
        lines.append(f"| {name} | {spread([r['ttft_ms'] for r in mine])} | "
                     f"{spread([r['tpot_ms'] for r in mine])} | "
                     f"{spread(ratios['ttft_ms'], '×')} | {spread(ratios['tpot_ms'], '×')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
