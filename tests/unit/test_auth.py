"""API keys, scopes and the edge guard: pure logic, driven through a real FastAPI app."""

from __future__ import annotations

import json
import os
from argparse import Namespace
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from pdserve.cli import main as cli_main
from pdserve.deployments.api.errors import install_error_handlers
from pdserve.deployments.api.exposure import check_exposure, is_loopback
from pdserve.deployments.api.guard import EdgeGuard, caller_of, presented_key
from pdserve.deployments.api.keys import ANONYMOUS, Caller, KeyRing, key_hash, new_key
from pdserve.deployments.api.scopes import required_scope
from pdserve.deployments.config import AppConfig
from pdserve.deployments.config.security import AuthConfig, LimitsConfig, RateLimits

READER, WRITER, ADMIN = "pds-reader-key", "pds-writer-key", "pds-admin-key"


def entries() -> dict:
    return {"keys": [
        {"name": "reader", "sha256": key_hash(READER), "models": ["tiny"]},
        {"name": "writer", "sha256": key_hash(WRITER),
         "scopes": ["inference", "documents:write"]},
        {"name": "ops", "sha256": key_hash(ADMIN), "scopes": ["admin"]},
    ]}


def test_key_hash_and_new_keys() -> None:
    key = new_key()
    assert key.startswith("pds-") and len(key) > 40 and key != new_key()
    assert key_hash("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_keyring_from_the_default_environment_variable() -> None:
    ring = KeyRing(AuthConfig(), environ={"PDSERVE_API_KEYS": json.dumps(entries())})
    assert ring.enabled
    reader = ring.identify(READER)
    assert reader is not None and reader.name == "reader"
    assert reader.may("inference") and not reader.may("documents:write")
    assert reader.may_use("tiny") and not reader.may_use("other")
    admin = ring.identify(ADMIN)
    assert admin is not None and admin.may("documents:write") and admin.may_use("any")
    assert ring.identify("pds-unknown") is None and ring.identify("") is None


def test_no_source_means_no_keys_and_a_named_missing_source_fails() -> None:
    assert not KeyRing(AuthConfig(), environ={}).enabled
    with pytest.raises(ValueError, match="auth.keys_env: the environment variable MY_KEYS"):
        KeyRing(AuthConfig(keys_env="MY_KEYS"), environ={})
    with pytest.raises(ValueError, match="auth.keys_file: cannot read"):
        KeyRing(AuthConfig(keys_file="/nonexistent/keys.yaml"), environ={})


@pytest.mark.parametrize("doc, field", [
    ({"keys": [{"name": "a", "sha256": "xyz"}]}, "sha256"),
    ({"keys": [{"name": "a", "sha256": key_hash("k"), "scopes": ["root"]}]}, "scopes"),
    ({"keys": [{"name": "a", "sha256": key_hash("k"), "secret": "k"}]}, "secret"),
    ({"keys": [{"name": "a", "sha256": key_hash("k")}, {"name": "a", "sha256": key_hash("j")}]},
     "name used twice"),
])
def test_a_bad_entry_is_named_with_its_source(doc: dict, field: str) -> None:
    with pytest.raises(ValueError, match="auth.keys_env") as err:
        KeyRing(AuthConfig(keys_env="K"), environ={"K": json.dumps(doc)})
    assert field in str(err.value)


def test_the_keys_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("keys: []\n")
    ring = KeyRing(AuthConfig(keys_file=str(path)), environ={})
    assert ring.enabled and ring.identify(READER) is None  # an empty file admits nobody
    path.write_text(json.dumps(entries()))
    os.utime(path, (1, 1))
    ring.reload_if_changed(now=1e9)
    assert ring.identify(READER) is not None
    path.write_text("keys: [oops")  # invalid: the keys read before stay
    os.utime(path, (2, 2))
    ring.reload_if_changed(now=2e9)
    assert ring.identify(READER) is not None


def test_scopes_deny_by_default() -> None:
    assert required_scope("GET", "/health") is None
    assert required_scope("HEAD", "/health") is None
    assert required_scope("POST", "/v1/chat/completions") == "inference"
    assert required_scope("GET", "/v1/models") == "inference"
    assert required_scope("GET", "/openapi.json") == "inference"
    assert required_scope("GET", "/v1/pipelines/docs") == "inference"
    assert required_scope("POST", "/v1/pipelines/docs/documents") == "documents:write"
    assert required_scope("DELETE", "/v1/pipelines/docs/documents/a/b.md") == "documents:write"
    assert required_scope("GET", "/v1/pools") == "admin"
    assert required_scope("POST", "/v1/admin/drain") == "admin"
    assert required_scope("GET", "/metrics") == "admin"
    assert required_scope("POST", "/v1/load_lora_adapter") == "admin"
    assert required_scope("POST", "/v1/unload_lora_adapter") == "admin"
    assert required_scope("PROPFIND", "/v1/admin/drain") == "admin"
    assert required_scope("GET", "/not/a/route") == "inference"


def test_exposure() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.5", "my-host"):
        assert not is_loopback(host), host
    check_exposure(AuthConfig(), False, "127.0.0.1")
    check_exposure(AuthConfig(), True, "0.0.0.0")
    check_exposure(AuthConfig(allow_unauthenticated=True), False, "0.0.0.0")
    with pytest.raises(ValueError, match="allow_unauthenticated"):
        check_exposure(AuthConfig(), False, "0.0.0.0")


def test_the_serve_controller_internals_we_read() -> None:
    """`exposure.serve_http_host` asks Serve's controller for its HTTP host: pin the names."""
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
    from ray.serve._private.controller import ServeController
    from ray.serve.config import HTTPOptions

    assert SERVE_CONTROLLER_NAME == "SERVE_CONTROLLER_ACTOR" and SERVE_NAMESPACE == "serve"
    assert callable(ServeController.get_http_config)
    assert HTTPOptions(host="0.0.0.0").host == "0.0.0.0"


def test_presented_key() -> None:
    from starlette.datastructures import Headers

    assert presented_key(Headers({"authorization": "Bearer abc"})) == "abc"
    assert presented_key(Headers({"authorization": "bearer  abc "})) == "abc"
    assert presented_key(Headers({"x-api-key": "abc"})) == "abc"
    assert presented_key(Headers({"authorization": "Basic abc"})) is None
    assert presented_key(Headers({})) is None


def guarded_app(keys: KeyRing | None, **auth: object) -> FastAPI:
    app = FastAPI()
    app.state.args = Namespace(log_error_stack=False)  # as `http.create_app` sets it
    install_error_handlers(app)

    @app.get("/health")
    async def health(request: Request) -> dict:
        return {"admin": caller_of(request.state).may("admin")}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict:
        body = await request.body()
        return {"caller": caller_of(request.state).name, "bytes": len(body)}

    @app.post("/v1/pipelines/{name}/documents")
    async def upsert(name: str) -> dict:
        return {"ok": name}

    @app.post("/v1/parsed")
    async def parsed(body: dict) -> dict:  # FastAPI reads and parses this body itself
        return {"keys": len(body)}

    app.add_middleware(EdgeGuard, auth=AuthConfig(**auth),  # type: ignore[arg-type]
                       limits=LimitsConfig(max_body_bytes=4096), keys=keys, max_concurrent=2)
    return app


@pytest.fixture
def client() -> Iterator[TestClient]:
    ring = KeyRing(AuthConfig(), environ={"PDSERVE_API_KEYS": json.dumps(entries())})
    with TestClient(guarded_app(ring)) as http:
        yield http


def test_without_a_key_only_health_answers_and_says_little(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert client.get("/health").json() == {"admin": False}
    r = client.get("/no/such/route")
    assert r.status_code == 401  # not 404: nothing is learned without a key


def test_keys_scopes_and_headers(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={}, headers={"x-api-key": READER})
    assert r.status_code == 200 and r.json()["caller"] == "reader"
    r = client.post("/v1/chat/completions", json={}, headers={"authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json()["error"]["message"] == "Incorrect API key provided."
    r = client.post("/v1/pipelines/p/documents", headers={"authorization": f"Bearer {READER}"})
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "insufficient_permissions"
    assert "documents:write" in r.json()["error"]["message"]
    for key in (WRITER, ADMIN):
        r = client.post("/v1/pipelines/p/documents", headers={"authorization": f"Bearer {key}"})
        assert r.status_code == 200, key
    assert client.get("/health", headers={"x-api-key": ADMIN}).json() == {"admin": True}


def test_body_limit_with_and_without_content_length(client: TestClient) -> None:
    auth = {"authorization": f"Bearer {READER}"}
    assert client.post("/v1/chat/completions", content=b"x" * 4096, headers=auth).json()[
        "bytes"] == 4096
    r = client.post("/v1/chat/completions", content=b"x" * 5000, headers=auth)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused once the limit is passed
        for _ in range(100):
            yield b"x" * 1000

    r = client.post("/v1/chat/completions", content=chunks(), headers=auth)
    assert r.status_code == 413 and "4096 bytes" in r.json()["error"]["message"]
    assert r.json()["error"]["code"] == "body_too_large"  # one shape, streamed or declared
    assert r.headers["connection"] == "close"
    # passed while FastAPI parses the route's body (the ingress's routes): still 413, not the
    # 400 FastAPI makes of other exceptions there
    r = client.post("/v1/parsed", content=chunks(), headers=auth)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large", r.text
    r = client.post("/v1/parsed", json={"a": 1}, headers=auth)
    assert r.status_code == 200 and r.json() == {"keys": 1}


def test_an_open_server_and_the_host_allow_list() -> None:
    with TestClient(guarded_app(None, allowed_hosts=["localhost"]),
                    base_url="http://localhost:8000") as http:
        r = http.post("/v1/chat/completions", json={})
        assert r.status_code == 200 and r.json()["caller"] == ANONYMOUS.name
        r = http.post("/v1/chat/completions", json={}, headers={"host": "evil.example:8000"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host"


def test_config_sections_name_a_bad_field() -> None:
    base = {"models": [{"model_id": "m", "model": "pdserve://tiny", "mode": "colocated"}]}
    config = AppConfig.model_validate({**base, "auth": {"keys_file": "/k.yaml"},
                                       "limits": {"max_n": 4}})
    assert config.auth.keys_file == "/k.yaml" and config.limits.max_n == 4
    with pytest.raises(ValueError, match="auth.keyfile"):
        AppConfig.model_validate({**base, "auth": {"keyfile": "/k.yaml"}})
    with pytest.raises(ValueError, match="limits.max_body_bytes"):
        AppConfig.model_validate({**base, "limits": {"max_body_bytes": 10}})


def test_cli_new_key_prints_a_key_its_entry_admits(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["keys", "new", "--name", "ci", "--scopes", "inference,admin",
                     "--models", "tiny"]) == 0
    out = capsys.readouterr().out
    key = next(line[2:] for line in out.splitlines() if line.startswith("# pds-"))
    entry_doc = "\n".join(line for line in out.splitlines() if not line.startswith("#"))
    ring = KeyRing(AuthConfig(keys_env="K"), environ={"K": entry_doc})
    caller = ring.identify(key)
    assert caller is not None and caller.may("admin") and caller.models == frozenset({"tiny"})
    assert cli_main(["keys", "new", "--name", "x", "--scopes", "root"]) == 2


def test_admission_refuses_beyond_the_limit_and_recovers() -> None:
    import asyncio

    asyncio.run(admission_round())


async def admission_round() -> None:
    import asyncio

    import httpx

    app = guarded_app(None)
    gate = asyncio.Event()

    @app.post("/v1/completions")
    async def slow() -> dict:
        await gate.wait()
        return {"ok": True}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        held = [asyncio.create_task(http.post("/v1/completions")) for _ in range(2)]
        await asyncio.sleep(0.1)
        r = await http.post("/v1/completions")
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "server_overloaded"
        assert (await http.get("/health")).status_code == 200  # probes still answered
        gate.set()
        assert [t.status_code for t in await asyncio.gather(*held)] == [200, 200]
        assert (await http.post("/v1/completions")).status_code == 200


def test_a_full_pool_queue_is_a_retryable_503() -> None:
    from ray.serve.exceptions import BackPressureError
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

    from pdserve.deployments.api.errors import to_response
    from pdserve.deployments.frontend.remote_errors import engine_error

    error = create_error_response(engine_error(BackPressureError(num_queued_requests=3,
                                                                 max_queued_requests=3)))
    assert error.error.code == 503 and "retry" in error.error.message
    assert to_response(error).headers["retry-after"] == "1"


def test_admission_must_stay_below_rays_queue() -> None:
    base = {"models": [{"model_id": "m", "model": "pdserve://tiny", "mode": "colocated"}]}
    assert AppConfig.model_validate(base).concurrent_requests_limit() == 192
    with pytest.raises(ValueError, match="limits.max_concurrent_requests: 256 must be below"):
        AppConfig.model_validate({**base, "limits": {"max_concurrent_requests": 256}})


def test_each_key_or_tenant_gets_its_own_cache_salt() -> None:
    from pdserve.deployments.api.keys import tenant_cache_salt

    doc = {"keys": [{"name": "a", "sha256": key_hash("ka"), "tenant": "acme"},
                    {"name": "b", "sha256": key_hash("kb"), "tenant": "acme"},
                    {"name": "c", "sha256": key_hash("kc")},
                    {"name": "acme", "sha256": key_hash("kd")}]}
    ring = KeyRing(AuthConfig(keys_env="K"), environ={"K": json.dumps(doc)})
    a, b, c, d = (ring.identify(k) for k in ("ka", "kb", "kc", "kd"))
    assert a and b and c and d
    salts = [tenant_cache_salt(x, None) for x in (a, b, c, d)]
    assert salts[0] == salts[1] and len(set(salts)) == 3  # a key named like a tenant differs
    assert all(len(s) == 64 for s in salts if s)
    # a client's own salt splits its namespace further but never reaches another's
    assert tenant_cache_salt(a, "x") != salts[0] and tenant_cache_salt(a, "x") != \
        tenant_cache_salt(c, "x")
    assert tenant_cache_salt(ANONYMOUS, None) is None  # a server without keys: shared cache
    assert tenant_cache_salt(ANONYMOUS, "mine") == "mine"


def test_rate_limits_through_the_guard_count_streamed_tokens() -> None:
    from fastapi.responses import StreamingResponse

    from pdserve.deployments.frontend.usage import add_tokens

    doc = {"keys": [{"name": "metered", "sha256": key_hash("km"),
                     "rate_limits": {"requests_per_minute": 3, "tokens_per_minute": 100}},
                    {"name": "free", "sha256": key_hash("kf")}]}
    ring = KeyRing(AuthConfig(keys_env="K"), environ={"K": json.dumps(doc)})
    app = guarded_app(ring)

    @app.post("/v1/completions")
    async def stream() -> StreamingResponse:
        async def tokens() -> Iterator[bytes]:  # counted in the response's own task
            for _ in range(3):
                add_tokens(40)
                yield b"data: x\n\n"

        return StreamingResponse(tokens(), media_type="text/event-stream")  # type: ignore

    with TestClient(app) as http:
        metered, free = {"x-api-key": "km"}, {"x-api-key": "kf"}
        assert http.post("/v1/completions", headers=metered).status_code == 200  # 120 tokens
        r = http.post("/v1/completions", headers=metered)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
        assert "tokens per minute" in r.json()["error"]["message"]
        assert int(r.headers["retry-after"]) >= 12  # 20 tokens of debt at 100/min
        for _ in range(5):
            assert http.post("/v1/completions", headers=free).status_code == 200


def test_host_names_and_the_loopback_default() -> None:
    from pdserve.deployments.api.guard import LOOPBACK_NAMES, host_name

    assert host_name("LocalHost:8000") == "localhost"
    assert host_name("[::1]:8000") == host_name("[::1]") == "::1"
    assert host_name("example.com") == "example.com"
    app = FastAPI()
    app.state.args = Namespace(log_error_stack=False)

    @app.get("/v1/models")
    async def models() -> dict:
        return {}

    app.add_middleware(EdgeGuard, auth=AuthConfig(allowed_hosts=["[::1]:8000", "a.example"]),
                       limits=LimitsConfig(), keys=None, max_concurrent=4)
    with TestClient(app) as http:  # configured names, normalised like the header
        for host, status in (("[::1]:9", 200), ("A.example:1", 200), ("b.example", 400)):
            assert http.get("/v1/models", headers={"host": host}).status_code == status, host
    app = FastAPI()
    app.state.args = Namespace(log_error_stack=False)
    app.add_api_route("/v1/models", models)
    app.add_middleware(EdgeGuard, auth=AuthConfig(), limits=LimitsConfig(), keys=None,
                       max_concurrent=4, default_hosts=LOOPBACK_NAMES)
    with TestClient(app) as http:  # an open loopback server: DNS rebinding refused
        assert http.get("/v1/models", headers={"host": "127.0.0.1:8000"}).status_code == 200
        assert http.get("/v1/models", headers={"host": "localhost"}).status_code == 200
        assert http.get("/v1/models", headers={"host": "evil.example"}).status_code == 400


def test_generation_limits_batches_beam_search_and_the_output_cap() -> None:
    from types import SimpleNamespace

    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    from pdserve.deployments.api.generation import cap_output, over_limits

    catalog = SimpleNamespace(limits=LimitsConfig(max_prompts=2))
    batch = CompletionRequest(model="m", prompt=["a", "b", "c"])
    assert over_limits(catalog, batch).error.param == "prompt"  # type: ignore[arg-type,union-attr]
    assert over_limits(catalog, CompletionRequest(model="m", prompt=[1, 2, 3])) is None  # type: ignore[arg-type]
    beam = CompletionRequest(model="m", prompt="a", use_beam_search=True)
    metered = Caller("k", frozenset({"inference"}), None, "key:k",
                     RateLimits(tokens_per_minute=100))
    assert over_limits(catalog, beam, metered) is not None  # type: ignore[arg-type]
    assert over_limits(catalog, beam) is None  # type: ignore[arg-type]

    front = SimpleNamespace(model=SimpleNamespace(max_output_tokens=8, model_id="m"))
    default = CompletionRequest(model="m", prompt="a")  # vLLM's default: 16
    assert cap_output(front, default) is None and default.max_tokens == 8  # type: ignore[arg-type]
    asked = CompletionRequest(model="m", prompt="a", max_tokens=9)
    assert cap_output(front, asked).error.param == "max_tokens"  # type: ignore[arg-type,union-attr]
    chat = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}])
    assert cap_output(front, chat) is None and chat.max_tokens == 8  # type: ignore[arg-type]
    chat = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}],
                                 max_completion_tokens=9)
    assert cap_output(front, chat).error.param == "max_completion_tokens"  # type: ignore


def test_health_probes_share_one_check() -> None:
    import asyncio
    from types import SimpleNamespace

    from pdserve.deployments.api.admin import HealthProbe

    calls = []

    class Handle:
        class health:  # noqa: N801 - a handle method's shape
            @staticmethod
            def remote() -> object:
                calls.append(1)
                return asyncio.sleep(0.05)

    catalog = SimpleNamespace(frontends={"m": SimpleNamespace(handles={"colocated": Handle})},
                              embedders={})
    probe = HealthProbe(catalog)  # type: ignore[arg-type]

    async def flood() -> list[dict[str, str]]:
        return await asyncio.gather(*(probe.status() for _ in range(50)))

    statuses = asyncio.run(flood())
    assert calls == [1] and all(s == {"m/colocated": "ok"} for s in statuses)


def test_a_validation_error_is_logged_without_its_input() -> None:
    from pydantic import BaseModel

    from pdserve.deployments.api.errors import log_text

    class Body(BaseModel):
        n: int

    try:
        Body.model_validate({"n": "my secret prompt"})
    except ValueError as exc:
        text = log_text(exc)
    assert "secret" not in text and "n" in text
