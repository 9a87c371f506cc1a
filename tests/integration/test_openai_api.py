"""The OpenAI surface: models, health, SDK use, and bad input → 4xx with the server healthy."""

from __future__ import annotations

import httpx
import openai
import pytest
from client import post
from shapes import (
    COLOCATED_MODEL,
    EMBED_MODEL,
    HTTP_PORT,
    PD_MODEL,
    PIPELINE_DOWN,
    PIPELINE_LANCEDB,
    PIPELINE_QDRANT,
    lora_modules,
)


def test_models_lists_every_served_model(client: httpx.Client) -> None:
    ids = {card["id"] for card in client.get("/v1/models").json()["data"]}
    adapters = {*lora_modules(PD_MODEL), *lora_modules(COLOCATED_MODEL)}
    assert ids == {PD_MODEL, COLOCATED_MODEL, EMBED_MODEL, PIPELINE_LANCEDB, PIPELINE_QDRANT,
                   PIPELINE_DOWN, *adapters}


def test_health_reflects_every_pool(client: httpx.Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert set(response.json()["pools"]) == {
        f"{PD_MODEL}/prefill", f"{PD_MODEL}/decode", f"{COLOCATED_MODEL}/colocated",
        f"{EMBED_MODEL}/embed",
    }


def test_unmodified_openai_sdk_streams_chat_and_completions(serve_app: str) -> None:
    sdk = openai.OpenAI(base_url=f"http://127.0.0.1:{HTTP_PORT}/v1", api_key="unused")
    text = sdk.completions.create(model=PD_MODEL, prompt="the river and the stone",
                                  max_tokens=8, temperature=0).choices[0].text
    stream = sdk.chat.completions.create(
        model=PD_MODEL, messages=[{"role": "user", "content": "the river and the stone"}],
        max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True},
    )
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() and streamed.strip()
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8


BAD_REQUESTS = [
    ("unknown model", {"model": "nope", "prompt": "x"}, 404),
    ("negative temperature", {"model": PD_MODEL, "prompt": "x", "temperature": -1}, 400),
    ("zero max_tokens", {"model": PD_MODEL, "prompt": "x", "max_tokens": 0}, 400),
    ("bad top_p", {"model": PD_MODEL, "prompt": "x", "top_p": 7}, 400),
    ("prompt longer than context", {"model": PD_MODEL, "prompt": "the " * 3000}, 400),
    ("token prompt longer than context", {"model": PD_MODEL, "prompt": [5] * 2100}, 400),
    ("missing prompt", {"model": PD_MODEL}, 400),
    ("wrong type", {"model": PD_MODEL, "prompt": "x", "max_tokens": "many"}, 400),
    ("token id out of vocabulary", {"model": PD_MODEL, "prompt": [10**9]}, 400),
]


@pytest.mark.parametrize(
    ("label", "body", "status"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_completion_requests_get_openai_errors(
    client: httpx.Client, label: str, body: dict, status: int
) -> None:
    response = client.post("/v1/completions", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status and error["message"]


def test_malformed_json_and_bad_chat_get_4xx_and_the_server_stays_healthy(
    client: httpx.Client,
) -> None:
    malformed = client.post("/v1/completions", content=b"{not json",
                            headers={"content-type": "application/json"})
    assert malformed.status_code in (400, 422) and "error" in malformed.json()
    no_messages = client.post("/v1/chat/completions", json={"model": PD_MODEL})
    assert no_messages.status_code == 400
    no_role = client.post("/v1/chat/completions", json={
        "model": PD_MODEL, "messages": [{"content": "x"}]})
    assert no_role.status_code == 400, no_role.text
    not_a_list = client.post("/v1/chat/completions", json={"model": PD_MODEL, "messages": "x"})
    assert not_a_list.status_code == 400, not_a_list.text
    assert client.get("/health").status_code == 200
    ok = post(client, "/v1/completions", {"model": PD_MODEL, "prompt": "the river",
                                          "max_tokens": 4, "temperature": 0})
    assert ok.status == 200 and ok.text.strip()


def test_client_supplied_kv_transfer_params_are_refused(client: httpx.Client) -> None:
    """Only the orchestrator may set transfer params: a client's never reaches an engine (vLLM's
    renderer would even take a prompt from them), it gets a 400 naming the field."""
    hostile = {"do_remote_prefill": True, "remote_engine_id": "evil", "remote_block_ids": [],
               "remote_host": "127.0.0.1", "remote_port": 1, "prompt_token_ids": [1, 2, 3]}
    for path, body in (("/v1/completions", {"prompt": "the river", "n": 2}),
                       ("/v1/completions", {"prompt": "the river"}),
                       ("/v1/chat/completions",
                        {"messages": [{"role": "user", "content": "the river"}]})):
        reply = post(client, path, {"model": PD_MODEL, "max_tokens": 4, "temperature": 0.7,
                                    "seed": 1, "kv_transfer_params": hostile, **body})
        assert reply.status == 400, reply.body
        assert reply.body["error"]["param"] == "kv_transfer_params", reply.body
    assert client.get("/health").status_code == 200


def test_bad_sampling_parameters_are_refused_before_any_prefill_runs(
    client: httpx.Client,
) -> None:
    """A fresh long prompt would go to the prefill pool; an engine-side parameter check
    (vLLM's own: token ids outside the vocabulary) must refuse it first, with vLLM's message
    and no Ray traceback, and the prefill engine must never see it."""
    from conftest import metric_sum
    from test_kv_transfer import fresh_prompt

    def prefill_work() -> tuple[float, float]:
        return (metric_sum(f"{PD_MODEL}-prefill", "vllm:request_success_total"),
                metric_sum(f"{PD_MODEL}-prefill", "vllm:prompt_tokens_total"))

    before = prefill_work()
    for stream in (False, True):
        response = client.post("/v1/completions", json={
            "model": PD_MODEL, "prompt": fresh_prompt(seed=4242 + stream), "max_tokens": 4,
            "allowed_token_ids": [10**6], "stream": stream})
        text = response.text
        if not stream:
            assert response.status_code == 400, text
            assert response.json()["error"]["code"] == 400
        assert "allowed_token_ids" in text or "out of vocabulary" in text.lower(), text
        for leak in ("Traceback", "ray::", "pid=", "ServeReplica", "File \""):
            assert leak not in text, text
    assert prefill_work() == before


def test_tokenize_and_detokenize_as_vllm_serve(client: httpx.Client, model_dir: str) -> None:
    """`/tokenize` and `/detokenize` through vLLM's class on the model's own renderer: the
    counts are the ones generation uses (usage.prompt_tokens), and they round-trip."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt = "the river and the stone the river"
    for model in (PD_MODEL, COLOCATED_MODEL):
        r = client.post("/tokenize", json={"model": model, "prompt": prompt,
                                           "return_token_strs": True})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["tokens"] == tokenizer.encode(prompt) and body["count"] == len(body["tokens"])
        assert body["token_strs"] == tokenizer.convert_ids_to_tokens(body["tokens"])
        assert body["max_model_len"] > 0
        done = post(client, "/v1/completions", {"model": model, "prompt": prompt,
                                                "max_tokens": 1})
        assert done.usage is not None and done.usage["prompt_tokens"] == body["count"]
        r = client.post("/detokenize", json={"model": model, "tokens": body["tokens"]})
        assert r.status_code == 200 and r.json()["prompt"] == tokenizer.decode(body["tokens"])
    messages = [{"role": "user", "content": prompt}]
    r = client.post("/tokenize", json={"model": PD_MODEL, "messages": messages,
                                       "add_generation_prompt": True})
    chat = post(client, "/v1/chat/completions", {"model": PD_MODEL, "messages": messages,
                                                 "max_tokens": 1})
    assert chat.usage is not None and r.status_code == 200
    assert r.json()["count"] == chat.usage["prompt_tokens"]
    assert client.post("/tokenize", json={"prompt": prompt}).json()["tokens"] == (
        tokenizer.encode(prompt))  # no model named: the first generating model


TOKENIZE_REFUSALS = [
    ("unknown model", "/tokenize", {"model": "nope", "prompt": "x"}, 404),
    ("a pipeline", "/tokenize", {"model": PIPELINE_LANCEDB, "prompt": "x"}, 400),
    ("an embedding model", "/detokenize", {"model": EMBED_MODEL, "tokens": [1]}, 400),
    ("neither prompt nor messages", "/tokenize", {"model": PD_MODEL}, 400),
    ("negative token id", "/detokenize", {"model": PD_MODEL, "tokens": [-1]}, 400),
]


@pytest.mark.parametrize(("label", "route", "body", "status"), TOKENIZE_REFUSALS,
                         ids=[t[0] for t in TOKENIZE_REFUSALS])
def test_bad_tokenize_requests_get_openai_errors(
    client: httpx.Client, label: str, route: str, body: dict, status: int
) -> None:
    r = client.post(route, json=body)
    assert r.status_code == status, (label, r.text)
    error = r.json()["error"]
    assert error["message"] and "Traceback" not in error["message"], label
    assert client.get("/health").status_code == 200
