"""The body ceiling in Ray Serve's proxy: its logic over raw ASGI (an inner app that reads the
body the way Ray 2.60's proxy does), a real uvicorn server on loopback, and the Ray hooks that
install it (pinned)."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import uvicorn
from starlette.types import Message, Receive, Scope, Send

from pdserve.deployments.api.proxy_body_limit import (
    CALLBACK,
    CALLBACK_ENV,
    ProxyBodyLimit,
    ceiling_warning,
    proxy_ceiling,
)
from pdserve.deployments.config.ray_serve_env import PROXY_CEILING_ENV, ray_start_env
from pdserve.deployments.config.security import LimitsConfig

LIMIT = 1000
CHUNK = 300


class EagerProxy:
    """Reads every body message as it comes until the client leaves (as Ray's
    `proxy_asgi_receive` does), and answers 200 with the bytes it read once the body ended."""

    def __init__(self) -> None:
        self.read = 0
        self.saw_disconnect = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.saw_disconnect = True
                await send({"type": "http.response.start", "status": 499, "headers": []})
                await send({"type": "http.response.body", "body": b""})
                return
            self.read += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(self.read).encode()})


def run(app: ProxyBodyLimit, chunks: int, content_length: str | None = None,
        chunk: int = CHUNK, expect_continue: bool = False) -> tuple[list[Message], int]:
    """Sends `chunks` body messages of `chunk` bytes (then the client leaves); returns what
    the client got and how many messages the server pulled from it."""
    headers = [] if content_length is None else [(b"content-length", content_length.encode())]
    if expect_continue:
        headers.append((b"expect", b"100-continue"))
    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": headers}
    pulled, sent = 0, []

    async def receive() -> Message:
        nonlocal pulled
        pulled += 1
        if pulled > chunks:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": b"x" * chunk, "more_body": pulled < chunks}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
    return sent, pulled


def answer(sent: list[Message]) -> tuple[int, bytes]:
    """The status and the whole body of one complete answer."""
    assert sent[0]["type"] == "http.response.start", sent
    bodies = sent[1:]
    assert all(m["type"] == "http.response.body" for m in bodies), sent
    assert [m.get("more_body", False) for m in bodies][-1] is False, "answer never completed"
    return sent[0]["status"], b"".join(m.get("body", b"") for m in bodies)


def test_a_body_within_the_ceiling_passes_untouched() -> None:
    inner = EagerProxy()
    sent, pulled = run(ProxyBodyLimit(inner, LIMIT), chunks=3)
    assert answer(sent) == (200, b"900") and pulled == 3 and not inner.saw_disconnect
    exactly = EagerProxy()  # a body of exactly the ceiling is allowed
    sent, _ = run(ProxyBodyLimit(exactly, LIMIT), chunks=4, chunk=LIMIT // 4)
    assert answer(sent) == (200, str(LIMIT).encode())
    empty = EagerProxy()  # empty body messages count nothing
    sent, _ = run(ProxyBodyLimit(empty, LIMIT), chunks=50, chunk=0)
    assert answer(sent) == (200, b"0")


@pytest.mark.parametrize("length", [str(LIMIT + 1), "99999999999999999999"])
@pytest.mark.parametrize("expect_continue", [False, True])
def test_a_declared_length_over_the_ceiling_is_refused_before_the_proxy_reads_any(
        length: str, expect_continue: bool) -> None:
    """Answered before anything is read; what the client sends anyway (a client that asked
    for `100 Continue` may send it after its own timeout) is read and dropped, bounded, never
    passed to the proxy (which is never called)."""
    called = False

    async def proxy(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal called
        called = True

    sent, pulled = run(ProxyBodyLimit(proxy, LIMIT), chunks=100, content_length=length,
                       expect_continue=expect_continue)
    status, body = answer(sent)
    assert status == 413 and pulled == 100 and not called
    assert json.loads(body)["error"]["code"] == "body_too_large"
    assert (b"connection", b"close") in sent[0]["headers"]
    assert sent[1].get("more_body") is True  # the 413 went out whole, then the drain


@pytest.mark.parametrize("length", ["abc", " 5", "1e3", "-1", "²"])
def test_a_length_that_is_no_number_is_counted_as_it_streams(length: str) -> None:
    sent, _ = run(ProxyBodyLimit(EagerProxy(), LIMIT), chunks=2, content_length=length)
    assert answer(sent) == (200, b"600")
    sent, _ = run(ProxyBodyLimit(EagerProxy(), LIMIT), chunks=100, content_length=length)
    assert answer(sent)[0] == 413


def test_a_streamed_body_is_refused_as_it_passes_the_ceiling() -> None:
    inner = EagerProxy()
    sent, pulled = run(ProxyBodyLimit(inner, LIMIT), chunks=100)
    status, body = answer(sent)  # the proxy's own (499) answer is dropped
    assert status == 413 and json.loads(body)["error"]["code"] == "body_too_large"
    assert f"({LIMIT} bytes)" in json.loads(body)["error"]["message"]
    assert inner.read == 3 * CHUNK and inner.saw_disconnect  # the proxy saw the client leave
    assert pulled == 100  # the rest was read and dropped before the connection closed


def test_what_follows_a_refusal_is_dropped_within_bounds() -> None:
    sent, pulled = run(ProxyBodyLimit(EagerProxy(), LIMIT, drain_bytes=10 * CHUNK), chunks=1000)
    assert answer(sent)[0] == 413 and pulled == 4 + 10  # bytes bound

    async def endless(scope: Scope, receive: Receive, send: Send) -> None:
        await ProxyBodyLimit(EagerProxy(), LIMIT, drain_s=0.2)(scope, receive, send)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
    sent = []

    async def slow_receive() -> Message:
        await asyncio.sleep(0.01)
        return {"type": "http.request", "body": b"x" * CHUNK, "more_body": True}

    async def send(message: Message) -> None:
        sent.append(message)

    start = time.monotonic()
    asyncio.run(asyncio.wait_for(endless(scope, slow_receive, send), 10))
    assert answer(sent)[0] == 413 and time.monotonic() - start < 2  # time bound


def test_an_answer_already_begun_goes_on_without_more_body() -> None:
    """The app refused first (its own lower limit): its answer is not cut short, and the
    body past the ceiling reaches it empty."""
    got = 0

    async def answers_first(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal got
        await send({"type": "http.response.start", "status": 413, "headers": []})
        while (message := await receive())["type"] != "http.disconnect":
            got += len(message.get("body", b""))
        await send({"type": "http.response.body", "body": b"app's own"})

    sent, pulled = run(ProxyBodyLimit(answers_first, LIMIT), chunks=100)
    assert answer(sent) == (413, b"app's own") and got == 3 * CHUNK and pulled == 101


def test_other_scopes_pass_through() -> None:
    seen = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope["type"], await receive()))

    async def receive() -> Message:
        return {"type": "websocket.receive", "bytes": b"x" * (10 * LIMIT)}

    async def send(message: Message) -> None:
        raise AssertionError(message)

    asyncio.run(ProxyBodyLimit(inner, LIMIT)({"type": "websocket", "headers": []}, receive, send))
    assert seen == [("websocket", {"type": "websocket.receive", "bytes": b"x" * (10 * LIMIT)})]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("framing", ["chunked", "sized", "expect"])
def test_a_real_client_reads_the_whole_413_over_loopback(framing: str) -> None:
    """uvicorn closes the connection after the 413 (`Connection: close`); closing over unread
    bytes would reset it and the client would lose the answer. 8 MB sent chunked or with its
    `Content-Length` (refused before a byte is read), 64 KiB ceiling, read from a raw socket
    (no client library to paper over a reset); or a client that asks `Expect: 100-continue`
    and sends nothing: it gets the 413, not `100 Continue`, and the connection closes."""
    size = 128 << 16
    port = free_port()
    app = ProxyBodyLimit(EagerProxy(), 64 << 10)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    framed = {"chunked": b"Transfer-Encoding: chunked", "sized": b"Content-Length: %d" % size,
              "expect": b"Content-Length: %d\r\nExpect: 100-continue" % size}[framing]
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        for _ in range(1 if framing == "expect" else 3):  # (an expect one idles 2 s)
            with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
                def upload(conn: socket.socket = conn) -> None:
                    try:
                        conn.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\n"
                                     b"%s\r\n\r\n" % framed)
                        if framing == "expect":
                            return
                        data = b"x" * (1 << 16)
                        chunk = b"%x\r\n%s\r\n" % (len(data), data) if framing == "chunked" \
                            else data
                        for _ in range(size >> 16):
                            conn.sendall(chunk)
                        if framing == "chunked":
                            conn.sendall(b"0\r\n\r\n")
                    except OSError:
                        pass  # the server may close once it has answered

                sender = threading.Thread(target=upload)
                sender.start()
                received = b""
                while data := conn.recv(1 << 16):  # a reset raises ConnectionResetError
                    received += data
                sender.join(20)
            head, _, body = received.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 413"), received[:200]
            assert json.loads(body)["error"]["code"] == "body_too_large"
    finally:
        server.should_exit = True
        thread.join(10)


def test_the_ceiling_from_the_environment() -> None:
    assert proxy_ceiling({}) == LimitsConfig().max_body_bytes
    assert proxy_ceiling({PROXY_CEILING_ENV: "4096"}) == 4096
    for bad in ("", "-1", "0", "1e6", "lots", "²", "１２"):
        with pytest.raises(ValueError, match=PROXY_CEILING_ENV):
            proxy_ceiling({PROXY_CEILING_ENV: bad})


def test_the_ingress_warns_of_a_missing_or_low_ceiling() -> None:
    assert "may have no body ceiling" in ceiling_warning(LIMIT, {})  # type: ignore[operator]
    assert ceiling_warning(LIMIT, {CALLBACK_ENV: "theirs:middlewares"}) is not None
    on = {CALLBACK_ENV: CALLBACK}
    assert ceiling_warning(LimitsConfig().max_body_bytes, on) is None
    low = ceiling_warning(8192, {**on, PROXY_CEILING_ENV: "4096"})
    assert low is not None and "4096" in low and "8192" in low
    assert ceiling_warning(4096, {**on, PROXY_CEILING_ENV: "4096"}) is None
    assert ray_start_env()[CALLBACK_ENV] == CALLBACK  # `make serve` and the tests export it


def test_rays_proxy_hooks_install_it() -> None:
    """Ray 2.60 internals we rely on: the proxy reads the callback's import path from
    `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH` when Serve is imported and calls it; its HTTP
    server (and a direct-ingress replica's) wraps its app in the middlewares returned, ours
    outermost; a request's disconnect is watched through the task that pulls its body."""
    probe = (
        "from ray.serve.config import HTTPOptions\n"
        "from ray.serve._private.http_util import configure_http_middlewares, "
        "_apply_middlewares\n"
        "async def app(scope, receive, send): pass\n"
        "outer = _apply_middlewares(app, configure_http_middlewares(HTTPOptions()).middlewares)\n"
        "print(type(outer).__name__, type(outer.app).__name__, outer.app._app is app)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], env={**os.environ, CALLBACK_ENV: CALLBACK},
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip().splitlines()[-1] == "ProxyBodyLimit RequestIdMiddleware True"
    from ray.serve._private import http_util, proxy, replica

    calls = {
        "the proxy actor configures the callback's middlewares":
            ("configure_http_middlewares(http_options)", inspect.getsource(proxy)),
        "a direct-ingress replica does too":
            ("configure_http_middlewares(", inspect.getsource(replica)),
        "the HTTP server applies them":
            ("_apply_middlewares(app, http_options.middlewares)",
             inspect.getsource(http_util.start_asgi_http_server)),
        "the proxy ends a request when its body-pulling task ends (client gone)":
            ("None if request_disconnect_disabled else proxy_asgi_receive_task",
             inspect.getsource(proxy)),
    }
    for what, (needle, source) in calls.items():
        assert needle in source, f"Ray changed: {what}"
