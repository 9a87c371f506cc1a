"""Pure parts of the RAG benchmark: the workload, the served config, the report."""

from __future__ import annotations

from pdserve.benchmarks import rag_bench
from pdserve.deployments.config import AppConfig


def test_workload_asks_each_question_in_several_phrasings_topic_by_topic() -> None:
    asks = rag_bench.workload(seed=0, n_questions=20, n_phrasings=3)
    assert len(asks) == 60 and len(set(asks)) == 60
    assert asks == rag_bench.workload(seed=0, n_questions=20, n_phrasings=3)
    originals = {q["question"]: q["document"] for q in rag_bench.questions()}
    assert sum(a in originals for a in asks) == 20
    topic_of = {p.format(q=q): d for q, d in originals.items() for p in rag_bench.PHRASINGS}
    topics = [topic_of[a] for a in asks]
    bursts = [t for i, t in enumerate(topics) if i == 0 or topics[i - 1] != t]
    assert len(bursts) == len(set(topics))  # each topic comes as one burst
    shuffled = rag_bench.workload(seed=0, n_questions=20, n_phrasings=3, order="shuffled")
    assert sorted(shuffled) == sorted(asks) and shuffled != asks


def test_both_pipelines_share_one_pool_store_and_router_but_not_cached_prefixes() -> None:
    doc = rag_bench.serve_config("pdserve://bench", "pow2", 2, 600, "/tmp/store", 5)
    config = AppConfig.model_validate(doc["applications"][0]["args"])
    canonical, score = config.pipelines
    assert (canonical.ordering, score.ordering) == ("canonical", "score")
    assert canonical.store == score.store and canonical.llm == score.llm
    assert canonical.system_prompt.split()[0] != score.system_prompt.split()[0]
    pool = config.models[0].colocated
    assert pool is not None and pool.request_router_config == rag_bench.ROUTERS["pow2"]


def test_table_reports_the_ratio_to_score_ordering_with_power_of_two() -> None:
    records = [{"ttft": t, "retrieval_ms": 10.0, "prompt_tokens": 100, "cached_tokens": c,
                "e2e": t + 0.1} for t, c in [(1.0, 0), (2.0, 0)]]
    base = rag_bench.summarize("pow2", "score", records, duration=3.0)
    fast = rag_bench.summarize("pdserve", "canonical",
                               [{**r, "ttft": r["ttft"] / 3, "cached_tokens": 90}
                                for r in records], duration=1.0)
    assert fast["hit_rate"] == 0.9 and base["ttft_p50_ms"] == 1500
    text = rag_bench.table([fast, base])
    assert "| canonical | pdserve | 90.0% | 500 |" in text and "3.00x |" in text


def test_stream_chunks_parses_data_lines_and_raises_with_the_error_body() -> None:
    import asyncio

    import httpx
    import pytest

    from pdserve.benchmarks.sse import stream_chunks

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/bad":
            return httpx.Response(503, json={"error": {"message": "store down"}})
        return httpx.Response(200, text='data: {"a": 1}\n\n: keep-alive\n\ndata: {"b": 2}\n\n'
                                        "data: [DONE]\n\n")

    async def collect(path: str) -> list[dict]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer),
                                     base_url="http://x") as http:
            return [c async for c in stream_chunks(http, path, {})]

    assert asyncio.run(collect("/ok")) == [{"a": 1}, {"b": 2}]
    with pytest.raises(RuntimeError, match="HTTP 503: .*store down"):
        asyncio.run(collect("/bad"))


def test_open_loop_sends_on_schedule_whatever_the_server_speed() -> None:
    import asyncio

    import httpx
    from tqdm import tqdm

    in_flight = [0, 0]  # now, peak

    async def slow(request: httpx.Request) -> httpx.Response:
        in_flight[0] += 1
        in_flight[1] = max(in_flight)
        await asyncio.sleep(0.3)  # far slower than the arrival gaps (~25 ms)
        in_flight[0] -= 1
        body = ('data: {"retrieval": {"embed_ms": 1, "search_ms": 2}, "sources": []}\n\n'
                'data: {"choices": [{"delta": {"content": "x"}}]}\n\n'
                'data: {"choices": [], "usage": {"prompt_tokens": 10}}\n\ndata: [DONE]\n\n')
        return httpx.Response(200, text=body)

    original = httpx.AsyncClient

    def client(**kwargs: object) -> httpx.AsyncClient:
        return original(transport=httpx.MockTransport(slow), **kwargs)  # type: ignore[arg-type]

    httpx.AsyncClient = client  # type: ignore[assignment,misc]
    try:
        records, duration = asyncio.run(rag_bench.drive(
            "http://x", "rag", ["q"] * 8, concurrency=1, max_tokens=1,
            progress=tqdm(disable=True), rate=40.0, seed=0))
    finally:
        httpx.AsyncClient = original  # type: ignore[misc]
    assert len(records) == 8 and all(r["retrieval_ms"] == 3 for r in records)
    # Closed loop with one client would never overlap; open loop keeps sending.
    assert in_flight[1] >= 4 and duration > 0
