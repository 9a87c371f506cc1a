"""API keys, scopes and size limits on a real ingress: a second front (`/secure`) over the
session app's engines, with keys from a file, driven over HTTP and by the OpenAI SDK."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest
import yaml
from shapes import APP_NAME, COLOCATED_MODEL, EMBED_MODEL, PD_MODEL, PIPELINE_LANCEDB, app_args

from pdserve.deployments.api.exposure import serve_http_host
from pdserve.deployments.api.keys import key_hash
from pdserve.deployments.config import AppConfig, PoolName

SECURE_APP = "secure"
SECURE_INGRESS = "secure-ingress"
READER, WRITER, ADMIN, LATER = "pds-e2e-reader", "pds-e2e-writer", "pds-e2e-admin", "pds-e2e-new"
MAX_BODY = 1 << 20
MAX_N = 2
MAX_EMBED_INPUTS = 4
MAX_DOCUMENTS = 3
MAX_CONCURRENT = 3


def keys_doc(*extra: dict[str, Any]) -> str:
    return yaml.safe_dump({"keys": [
        {"name": "reader", "sha256": key_hash(READER), "models": [PD_MODEL, EMBED_MODEL]},
        {"name": "writer", "sha256": key_hash(WRITER), "scopes": ["inference",
                                                                  "documents:write"]},
        {"name": "ops", "sha256": key_hash(ADMIN), "scopes": ["admin"]},
        *extra]})


@pytest.fixture(scope="module")
def secure(serve_app: str, model_dir: str, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[str, Path]]:
    """The session app's pools and retrievers behind an ingress of their own, with keys."""
    from ray import serve

    from pdserve.deployments.app import ingress_app

    tmp = tmp_path_factory.mktemp("auth")
    keys_file = tmp / "keys.yaml"
    keys_file.write_text(keys_doc())
    config = AppConfig.model_validate({
        **app_args(model_dir, str(tmp / "stores")),
        "auth": {"keys_file": str(keys_file)},
        "limits": {"max_body_bytes": MAX_BODY, "max_n": MAX_N,
                   "max_embedding_inputs": MAX_EMBED_INPUTS,
                   "max_documents_per_upsert": MAX_DOCUMENTS,
                   "max_concurrent_requests": MAX_CONCURRENT},
    })
    pools = {m.model_id: {role: serve.get_deployment_handle(
        PoolName(m.model_id, role).deployment, app_name=APP_NAME) for role in m.pools()}
        for m in config.models}
    retrievers = {p.name: serve.get_deployment_handle(f"{p.name}-retriever", app_name=APP_NAME)
                  for p in config.pipelines}
    serve.run(ingress_app(config, pools, retrievers, name=SECURE_INGRESS), name=SECURE_APP,
              route_prefix=f"/{SECURE_APP}")
    yield f"{serve_app}/{SECURE_APP}", keys_file
    serve.delete(SECURE_APP)


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def chat_body(model: str = PD_MODEL, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "the cat the"}],
            "max_tokens": 4, "temperature": 0, **extra}


def test_the_http_host_is_read_from_serve(serve_app: str) -> None:
    assert serve_http_host() == "127.0.0.1"  # loopback: the session app may stay open


def test_every_route_needs_a_key_but_health(secure: tuple[str, Path]) -> None:
    url, _ = secure
    with httpx.Client(base_url=url, timeout=60) as http:
        schema = http.get("/openapi.json", headers=bearer(READER))
        assert schema.status_code == 200
        routes = [(method.upper(), path.replace("{name}", PIPELINE_LANCEDB)
                   .replace("{document}", "a.md"))
                  for path, ops in schema.json()["paths"].items() for method in ops]
        routes += [("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/no/such/route")]
        assert ("POST", "/v1/chat/completions") in routes and ("GET", "/v1/pools") in routes
        for method, path in routes:
            r = http.request(method, path, json={})
            if path == "/health":
                assert r.status_code == 200 and r.json() == {"status": "ok"}, r.text
                continue
            assert r.status_code == 401, (method, path, r.status_code)
            assert r.json()["error"]["code"] == "invalid_api_key"
            r = http.request(method, path, json={}, headers={"x-api-key": "pds-wrong"})
            assert r.status_code == 401, (method, path)
        assert "pools" in http.get("/health", headers=bearer(ADMIN)).json()


def test_scopes_and_model_allow_lists(secure: tuple[str, Path]) -> None:
    url, _ = secure
    with httpx.Client(base_url=url, timeout=120) as http:
        r = http.post("/v1/chat/completions", json=chat_body(), headers=bearer(READER))
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
        r = http.post("/v1/chat/completions", json=chat_body(COLOCATED_MODEL),
                      headers=bearer(READER))
        assert r.status_code == 403 and COLOCATED_MODEL in r.json()["error"]["message"]
        r = http.post("/v1/chat/completions", json=chat_body(PIPELINE_LANCEDB),
                      headers=bearer(READER))
        assert r.status_code == 403  # a pipeline is a model of its own
        listed = {m["id"] for m in http.get("/v1/models", headers=bearer(READER)).json()["data"]}
        assert listed == {PD_MODEL, EMBED_MODEL}
        listed = {m["id"] for m in http.get("/v1/models", headers=bearer(WRITER)).json()["data"]}
        assert {PD_MODEL, COLOCATED_MODEL, PIPELINE_LANCEDB} <= listed

        document = f"/v1/pipelines/{PIPELINE_LANCEDB}/documents/no-such-document.md"
        r = http.delete(document, headers=bearer(READER))
        assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_permissions"
        r = http.delete(document, headers=bearer(WRITER))
        assert r.status_code == 200 and r.json()["deleted_chunks"] == 0
        assert http.get("/v1/pools", headers=bearer(WRITER)).status_code == 403
        assert http.get("/v1/pools", headers=bearer(ADMIN)).status_code == 200
        debug = {"x-pdserve-debug": "1"}
        r = http.post("/v1/chat/completions", json=chat_body(PIPELINE_LANCEDB),
                      headers={**bearer(WRITER), **debug})
        assert r.status_code == 403 and "admin" in r.json()["error"]["message"]


def test_the_openai_sdk_with_keys(secure: tuple[str, Path]) -> None:
    url, _ = secure
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=READER, max_retries=0)
    reply = client.chat.completions.create(**chat_body())
    assert reply.choices[0].message.content
    stream = client.completions.create(model=PD_MODEL, prompt="the cat the", max_tokens=4,
                                       temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="pds-wrong",
                      max_retries=0).chat.completions.create(**chat_body())
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(**chat_body(COLOCATED_MODEL))


def test_a_key_added_to_the_file_works_without_a_redeploy(secure: tuple[str, Path]) -> None:
    url, keys_file = secure
    with httpx.Client(base_url=url, timeout=60) as http:
        assert http.get("/v1/models", headers=bearer(LATER)).status_code == 401
        keys_file.write_text(keys_doc({"name": "later", "sha256": key_hash(LATER)}))
        deadline = time.monotonic() + 30
        while http.get("/v1/models", headers=bearer(LATER)).status_code != 200:
            assert time.monotonic() < deadline, "the new key was not picked up"
            time.sleep(0.5)


def rss_of(marker: str) -> int:
    """Resident bytes of the one process whose command line holds `marker`."""
    found = [p for p in psutil.process_iter(["cmdline"])
             if marker in " ".join(p.info["cmdline"] or [])]
    assert len(found) == 1, (marker, len(found))
    return found[0].memory_info().rss


def test_oversized_requests_are_refused_early(secure: tuple[str, Path]) -> None:
    url, _ = secure
    big = 48 * 2**20
    replica = f"ServeReplica:{SECURE_APP}:{SECURE_INGRESS}"

    def chunks() -> Iterator[bytes]:
        for _ in range(big // 2**16):
            yield b"x" * 2**16

    with httpx.Client(base_url=url, timeout=120, headers=bearer(READER)) as http:
        for content in (b"x" * big, chunks()):  # with Content-Length, then chunked
            before = {m: rss_of(m) for m in (replica, "ProxyActor")}
            start = time.monotonic()
            r = http.post("/v1/chat/completions", content=content,
                          headers={"content-type": "application/json"})
            took = time.monotonic() - start
            assert r.status_code == 413, r.text
            assert "larger than this server accepts" in r.json()["error"]["message"]
            assert took < 15, took  # refused as it arrived, not after parsing (84 s before)
            if isinstance(content, bytes):  # refused unread; Ray Serve buffers a chunked
                for marker, rss in before.items():  # body up to the refusal (README)
                    assert rss_of(marker) - rss < big // 2, marker
        r = http.post("/v1/chat/completions", json=chat_body(n=MAX_N + 1))
        assert r.status_code == 400 and r.json()["error"]["param"] == "n"
        r = http.post("/v1/embeddings", json={"model": EMBED_MODEL,
                                              "input": ["a"] * (MAX_EMBED_INPUTS + 1)})
        assert r.status_code == 400 and r.json()["error"]["param"] == "input"
        r = http.post(f"/v1/pipelines/{PIPELINE_LANCEDB}/documents", headers=bearer(WRITER),
                      json={"documents": [{"id": str(i), "text": "x"}
                                          for i in range(MAX_DOCUMENTS + 1)]})
        assert r.status_code == 413 and r.json()["error"]["param"] == "documents"
        r = http.post("/v1/chat/completions", json=chat_body())
        assert r.status_code == 200  # and the server is fine


def test_a_flood_gets_quick_503s_and_the_admitted_requests_complete(
        secure: tuple[str, Path]) -> None:
    url, _ = secure
    body = {"model": PD_MODEL, "prompt": "the cat the dog the", "max_tokens": 48,
            "temperature": 0, "ignore_eos": True, "stream": True}

    def one(http: httpx.Client) -> tuple[int, float, str | None, str | None]:
        start = time.monotonic()
        with http.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                r.read()
                return r.status_code, time.monotonic() - start, r.headers.get("retry-after"), \
                    r.json()["error"]["code"]
            finish = None
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    finish = json.loads(line[6:])["choices"][0]["finish_reason"] or finish
            return 200, time.monotonic() - start, None, finish

    with httpx.Client(base_url=url, timeout=300, headers=bearer(READER),
                      limits=httpx.Limits(max_connections=20)) as http, \
            ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda _: one(http), range(12)))
        refused = [r for r in results if r[0] == 503]
        admitted = [r for r in results if r[0] == 200]
        assert len(admitted) + len(refused) == len(results), results
        assert MAX_CONCURRENT <= len(admitted) < len(results) and refused, results
        assert all(r[2] == "1" and r[3] == "server_overloaded" for r in refused), refused
        assert all(r[3] == "length" for r in admitted), admitted  # complete, not cut short
        assert max(r[1] for r in refused) < min(r[1] for r in admitted), results
        assert http.get("/health").status_code == 200
        r = http.post("/v1/completions", json={**body, "stream": False})
        assert r.status_code == 200
