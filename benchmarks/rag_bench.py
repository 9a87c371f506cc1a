"""RAG benchmark: context ordering × router, over the fixture corpus, on the same engines.

One app per router (pdserve's prefix-aware router, Ray Serve's power of two choices), each
with the same engines: a colocated pool of the bench-size model, an embedding pool and a
lancedb store holding the fixture corpus (each app re-ingests it: a replace, so both see the
same chunks).
Each app serves two pipelines over that pool, `canonical` and `score` ordering; their system
prompts differ in the first word, so their contexts never share cached blocks and the two
phases do not help each other. Questions of the corpus are asked in a few phrasings by
concurrent clients, topic by topic: phrasings of one question and questions about one
topic retrieve the same or overlapping chunks, in score orders that vary.

Per request: TTFT (streamed chat), the engine's prefix-cache hit (`usage.prompt_tokens_details
.cached_tokens`, which vLLM takes from the engine's own per-request count) and the retrieval
time the pipeline reports (embedding + search).

    python -m pdserve.benchmarks.rag_bench --out benchmarks/results/rag-cpu-v1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from tqdm import tqdm

from pdserve.benchmarks import report, systems
from pdserve.benchmarks.routing_bench import ROUTERS, percentile
from pdserve.benchmarks.sse import stream_chunks

CORPUS = systems.REPO_ROOT / "tests" / "fixtures" / "rag_corpus"
LLM_ID = "bench"
EMBED_ID = "minilm"
ORDERINGS = ("canonical", "score")
#: How each question is rephrased: the embedding moves a little, the retrieved set rarely.
PHRASINGS = ("{q}", "Quick question: {q}", "{q} Thanks in advance.", "Could you tell me: {q}")
SYSTEM_PROMPT = ("{ordering} context. Answer the question using only the context below. If "
                 "the context does not contain the answer, say so.")


def questions() -> list[dict[str, str]]:
    return [json.loads(line) for path in sorted(CORPUS.glob("questions-*.jsonl"))
            for line in path.read_text().splitlines() if line.strip()]


def workload(seed: int, n_questions: int, n_phrasings: int, order: str = "topic") -> list[str]:
    """Questions × phrasings. `topic`: topics (documents) come one after another, each a
    burst of its questions in shuffled phrasings, as when many users ask about the same
    thing at once; `shuffled`: everything in random order."""
    rng = random.Random(seed)
    picked = rng.sample(questions(), min(n_questions, len(questions())))
    by_topic: dict[str, list[str]] = {}
    for q in picked:
        by_topic.setdefault(q["document"], []).extend(
            p.format(q=q["question"]) for p in PHRASINGS[:n_phrasings])
    if order == "shuffled":
        asks = [a for burst in by_topic.values() for a in burst]
        rng.shuffle(asks)
        return asks
    topics = sorted(by_topic)
    rng.shuffle(topics)
    asks = []
    for topic in topics:
        burst = by_topic[topic]
        rng.shuffle(burst)
        asks += burst
    return asks


def serve_config(model: str, router: str, replicas: int, gpu_blocks: int, store_dir: str,
                 top_k: int) -> dict[str, Any]:
    engine = {"dtype": "float32", "max_model_len": 2048, "max_num_batched_tokens": 2048,
              "block_size": 32, "num_gpu_blocks_override": gpu_blocks,
              "kv_cache_memory_bytes": 512 * 2**20, "enforce_eager": True, "seed": 0}
    engines = replicas + 1
    pipelines = [{"name": f"rag-{o}", "embedding_model": EMBED_ID, "llm": LLM_ID,
                  "ordering": o, "top_k": top_k, "system_prompt": SYSTEM_PROMPT.format(
                      ordering=o.capitalize()),
                  "store": {"kind": "lancedb", "uri": store_dir, "collection": "corpus"}}
                 for o in ORDERINGS]
    return systems.serve_config_doc({
        "models": [
            {"model_id": LLM_ID, "model": model, "mode": "colocated", "engine_kwargs": engine,
             "colocated": {"num_replicas": replicas,
                           "ray_actor_options": {"num_cpus": 2 / engines},
                           "request_router_config": ROUTERS[router]}},
            {"model_id": EMBED_ID, "model": "pdserve://all-minilm-l6-v2", "mode": "embed",
             "engine_kwargs": {"dtype": "float32", "enforce_eager": True,
                               "gpu_memory_utilization": 0.2},
             "embed": {"ray_actor_options": {"num_cpus": 2 / engines}}},
        ],
        "pipelines": pipelines,
    })


async def ask(http: httpx.AsyncClient, pipeline: str, question: str,
              max_tokens: int) -> dict[str, Any]:
    body = {"model": pipeline, "messages": [{"role": "user", "content": question}],
            "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    record: dict[str, Any] = {"ttft": None}
    async for chunk in stream_chunks(http, "/v1/chat/completions", body):
        if "retrieval" in chunk:
            record["retrieval_ms"] = (chunk["retrieval"]["embed_ms"]
                                      + chunk["retrieval"]["search_ms"])
            record["sources"] = [(s["document"], s["chunk"]) for s in chunk["sources"]]
        if record["ttft"] is None and any(
                (c.get("delta") or {}).get("content") for c in chunk.get("choices", [])):
            record["ttft"] = time.perf_counter() - start
        if chunk.get("usage"):
            usage = chunk["usage"]
            record["prompt_tokens"] = usage["prompt_tokens"]
            record["cached_tokens"] = int(
                (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    record["e2e"] = time.perf_counter() - start
    return record


async def drive(base_url: str, pipeline: str, asks: list[str], concurrency: int,
                max_tokens: int, progress: tqdm, rate: float | None = None,
                seed: int = 0) -> tuple[list[dict[str, Any]], float]:
    """Closed loop (`rate` None: `concurrency` clients, each sends when its last answer came)
    or open loop (Poisson arrivals at `rate` req/s, whatever the server's speed): a closed
    loop turns a faster server into more requests per second, an open loop into lower
    latency at the same load."""
    records: list[dict[str, Any]] = []

    async def one(http: httpx.AsyncClient, question: str) -> None:
        records.append(await ask(http, pipeline, question, max_tokens))
        progress.update(1)

    async with httpx.AsyncClient(base_url=base_url, timeout=600) as http:
        started = time.perf_counter()
        if rate is None:
            queue = list(reversed(asks))

            async def client() -> None:
                while queue:
                    await one(http, queue.pop())

            await asyncio.gather(*(client() for _ in range(concurrency)))
        else:
            rng = random.Random(seed)
            tasks = []
            for question in asks:
                tasks.append(asyncio.create_task(one(http, question)))
                await asyncio.sleep(rng.expovariate(rate))
            await asyncio.gather(*tasks)
    return records, time.perf_counter() - started


def summarize(router: str, ordering: str, records: list[dict[str, Any]],
              duration: float) -> dict[str, Any]:
    ttfts = [r["ttft"] * 1000 for r in records if r["ttft"] is not None]
    retrieval = [r["retrieval_ms"] for r in records]
    prompt = sum(r["prompt_tokens"] for r in records)
    return {
        "router": router, "ordering": ordering, "requests": len(records),
        "prompt_tokens": prompt, "cached_tokens": sum(r["cached_tokens"] for r in records),
        "hit_rate": sum(r["cached_tokens"] for r in records) / prompt,
        "ttft_p50_ms": statistics.median(ttfts), "ttft_p99_ms": percentile(ttfts, 99),
        "retrieval_p50_ms": statistics.median(retrieval),
        "retrieval_p99_ms": percentile(retrieval, 99),
        "e2e_p50_ms": statistics.median(r["e2e"] * 1000 for r in records),
        "duration_s": duration, "req_per_s": len(records) / duration,
    }


def table(rows: list[dict[str, Any]]) -> str:
    base = next((r for r in rows if (r["router"], r["ordering"]) == ("pow2", "score")), None)
    lines = ["| ordering | router | prefix-cache hit | TTFT p50 ms | TTFT p99 ms | retrieval "
             "p50 ms | retrieval p99 ms | req/s | TTFT p50: score+pow2 / this |",
             "|" + "---|" * 9]
    for r in rows:
        ratio = base["ttft_p50_ms"] / r["ttft_p50_ms"] if base else None
        lines.append(
            f"| {r['ordering']} | {r['router']} | {r['hit_rate']:.1%} | {r['ttft_p50_ms']:.0f} "
            f"| {r['ttft_p99_ms']:.0f} | {r['retrieval_p50_ms']:.1f} | "
            f"{r['retrieval_p99_ms']:.1f} | {r['req_per_s']:.2f} | "
            f"{'n/a' if ratio is None else f'{ratio:.2f}x'} |")
    return "\n".join(lines)


def ingest(base_url: str, pipeline: str, log: Path) -> None:
    with open(log, "a") as out:
        subprocess.run([str(systems.VENV_BIN / "pdserve"), "ingest", "--pipeline", pipeline,
                        "--url", base_url, str(CORPUS)], check=True, stdout=out,
                       stderr=subprocess.STDOUT, cwd=systems.REPO_ROOT)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--model", default="pdserve://bench")
    p.add_argument("--routers", default="pdserve,pow2", help=f"from: {', '.join(ROUTERS)}")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--gpu-blocks", type=int, default=600,
                   help="KV blocks per engine (32 tokens each): room for ~12 contexts")
    p.add_argument("--questions", type=int, default=40)
    p.add_argument("--phrasings", type=int, default=3, choices=range(1, len(PHRASINGS) + 1))
    p.add_argument("--order", choices=("topic", "shuffled"), default="topic",
                   help="topic: a burst of questions per topic at a time; shuffled: random")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=4,
                   help="closed loop: clients sending back to back (without --rate)")
    p.add_argument("--rate", type=float, default=None,
                   help="open loop: Poisson arrivals at this many requests/s")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-preload", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    store_dir = args.out / "store"
    asks = workload(args.seed, args.questions, args.phrasings, args.order)
    preload = [] if args.no_preload else systems.find_preload_libs()
    command = " ".join(["python -m pdserve.benchmarks.rag_bench", *sys.argv[1:]])
    meta = report.run_metadata(command, systems.REPO_ROOT)
    meta.update(args={k: str(v) for k, v in vars(args).items()}, preload=preload,
                startup_s={}, requests_per_phase=len(asks))
    rows: list[dict[str, Any]] = []
    for router in args.routers.split(","):
        config = serve_config(args.model, router, args.replicas, args.gpu_blocks,
                              str(store_dir.resolve()), args.top_k)
        config_path = args.out / f"serve-{router}.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        system = systems.pdserve_system(router, config_path)
        with systems.running(system, args.out / f"{router}.log", preload) as started:
            meta["startup_s"][router] = started.startup_s
            # Every app (re)ingests: a replace, so the store always holds the whole corpus.
            ingest(system.base_url, f"rag-{ORDERINGS[0]}", args.out / "ingest.log")
            for ordering in ORDERINGS:
                with tqdm(total=len(asks), desc=f"{router}/{ordering}") as bar:
                    records, duration = asyncio.run(drive(
                        system.base_url, f"rag-{ordering}", asks, args.concurrency,
                        args.max_tokens, bar, args.rate, args.seed))
                rows.append(summarize(router, ordering, records, duration))
                print(json.dumps(rows[-1]), flush=True)
                (args.out / "results.json").write_text(json.dumps(
                    {"meta": meta, "rows": rows}, indent=2, default=str))
    load = (f"open loop, Poisson {args.rate:g} req/s" if args.rate
            else f"closed loop, {args.concurrency} clients")
    (args.out / "report.md").write_text(
        f"# RAG benchmark: context ordering x router\n\n- command: `{meta['command']}`\n"
        f"- date: {meta['date']}\n- requests per row: {len(asks)}\n- load: {load}\n\n"
        f"{table(rows)}\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
