"""Workload -> vllm.benchmarks.serve argument building, checked with vLLM's own parser."""

import pytest

from pdserve.benchmarks import workloads
from pdserve.benchmarks.workloads import LoadSettings

BASE = "http://127.0.0.1:8100"


def parse(workload: str, s: LoadSettings):
    argv = workloads.bench_argv(workload, s, BASE, "tiny", "/models/tiny")
    return workloads.parse_bench_args(argv)


def test_random_workload() -> None:
    s = LoadSettings(num_prompts=10, input_len=256, output_len=16, max_concurrency=4)
    ns = parse("random", s)
    assert ns.dataset_name == "random"
    assert (ns.random_input_len, ns.random_output_len, ns.num_prompts) == (256, 16, 10)
    assert ns.max_concurrency == 4 and ns.request_rate == float("inf")
    assert (ns.base_url, ns.endpoint, ns.backend) == (BASE, "/v1/completions", "openai")
    assert (ns.served_model_name, ns.model, ns.tokenizer) == (
        "tiny",
        "/models/tiny",
        "/models/tiny",
    )
    assert ns.ignore_eos and ns.temperature == 0


def test_prefix_repetition_splits_input_len() -> None:
    s = LoadSettings(input_len=256, prefix_len=192, num_prefixes=4, output_len=32)
    ns = parse("prefix_repetition", s)
    assert ns.dataset_name == "prefix_repetition"
    assert ns.prefix_repetition_prefix_len == 192
    assert ns.prefix_repetition_suffix_len == 64
    assert ns.prefix_repetition_num_prefixes == 4
    assert ns.prefix_repetition_output_len == 32


def test_goodput_and_percentiles() -> None:
    ns = parse("random", LoadSettings(slo_ttft_ms=500, slo_tpot_ms=50))
    assert ns.goodput == ["ttft:500", "tpot:50"]
    assert ns.metric_percentiles == "50,90,99"
    assert set(ns.percentile_metrics.split(",")) >= {"ttft", "tpot", "itl"}


def test_request_rate_without_concurrency_cap() -> None:
    argv = workloads.bench_argv(
        "random", LoadSettings(request_rate=4.0, max_concurrency=None), BASE, "t", "/m"
    )
    assert "--max-concurrency" not in argv
    assert workloads.parse_bench_args(argv).request_rate == 4.0


def test_prefix_len_must_leave_a_suffix() -> None:
    with pytest.raises(ValueError, match="prefix_len"):
        workloads.bench_argv("prefix_repetition", LoadSettings(input_len=64, prefix_len=64),
                             BASE, "t", "/m")  # fmt: skip


def test_unknown_workload() -> None:
    with pytest.raises(KeyError, match="sharegpt"):
        workloads.bench_argv("sharegpt", LoadSettings(), BASE, "t", "/m")


def test_check_rejects_bad_settings_before_any_server() -> None:
    workloads.check(["random", "prefix_repetition"], LoadSettings())
    with pytest.raises(ValueError, match="prefix_len"):
        workloads.check(["prefix_repetition"], LoadSettings(input_len=100, prefix_len=192))
