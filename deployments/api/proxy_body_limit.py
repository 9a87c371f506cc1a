"""A body ceiling in Ray Serve's own HTTP proxy: a request body over it is refused there as
it arrives (413), so no process holds more of a body than the ceiling.

Why in the proxy: Ray 2.60's proxy reads a request's body into an unbounded queue as fast as
the client sends it (`proxy_asgi_receive`) and the ingress replica pulls it the same way,
whatever the app decides. An ingress that refuses a chunked body at its own limit still had
all 48 MB of one buffered in both processes. Here the proxy is told the client left once the
body passes the ceiling (it stops reading and cancels its request upstream) while the client
gets the 413; a body whose `Content-Length` is over it is refused before the proxy reads
any. Either way what the client still sends is read and dropped for a bounded time (closing a
socket with unread data resets it, and the client loses the 413 it was sent: httpx uploading
48 MB with its length did, now and then); a client that asked `Expect: 100-continue` (curl)
usually sends nothing, and the connection closes within that time.

Ray calls `proxy_middlewares` in each proxy (one per node, and in each direct-ingress
replica) when `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH` names it in the environment Ray
starts in (`RAY_PROXY_ENV`). The ceiling is one per proxy, for every app behind it; each
app's own `limits.max_body_bytes` still applies behind it, so the ceiling should be the
largest of them: `PDSERVE_PROXY_MAX_BODY_BYTES`, by default the config's default limit.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pdserve.deployments.api.refusal import declared_too_large, too_large
from pdserve.deployments.config.ray_serve_env import PROXY_CEILING_ENV, RAY_PROXY_ENV
from pdserve.deployments.config.security import LimitsConfig

logger = logging.getLogger(__name__)

#: Ray's environment variable that names the proxy callback, and our callback's import path
((CALLBACK_ENV, CALLBACK),) = RAY_PROXY_ENV.items()

#: after a refusal, what the client still sends is read and dropped for at most this long and
#: this many bytes, then the connection closes
DRAIN_S = 2.0
DRAIN_BYTES = 64 << 20


def disconnect() -> Message:
    return {"type": "http.disconnect"}


class ProxyBodyLimit:
    """Refuses a body over `max_body_bytes` with 413: at once from `Content-Length` (the
    proxy reads none of it), else as soon as the streamed body passes it (the wrapped proxy
    then sees the client leave). What the client still sends is dropped. If the proxy had
    already begun answering (the app refused first), its answer goes on and it is passed no
    more of the body."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, drain_s: float = DRAIN_S,
                 drain_bytes: int = DRAIN_BYTES) -> None:
        self.app = app
        self.limit = max_body_bytes
        self.drain_s = drain_s
        self.drain_bytes = drain_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if declared_too_large(Headers(scope=scope), self.limit):  # refused before a byte
            # reaches the proxy; what the client sends anyway is dropped (a client that asked
            # `Expect: 100-continue` gets no `100 Continue` once the 413 has begun: uvicorn)
            logger.info("refused a request body of declared size over %d bytes", self.limit)
            await self._refuse(receive, send)
            return
        seen, answering = 0, False
        refusal: asyncio.Task[None] | None = None

        async def counted_receive() -> Message:
            nonlocal seen, refusal
            if refusal is not None:
                return disconnect()
            message = await receive()
            if message["type"] != "http.request":
                return message
            seen += len(message.get("body", b""))
            if seen <= self.limit:
                return message
            if answering:  # the app answers already: pass it no more of the body
                return {**message, "body": b""}
            logger.info("refused a streamed request body over %d bytes", self.limit)
            # set before any await: the proxy's own sends are dropped from here on
            refusal = asyncio.ensure_future(self._refuse(receive, send))
            return disconnect()

        async def proxy_send(message: Message) -> None:
            nonlocal answering
            if refusal is not None:
                return
            answering = answering or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, proxy_send)
        finally:
            if refusal is not None:
                await refusal

    async def _refuse(self, receive: Receive, send: Send) -> None:
        """The 413, held open while what the client still sends is read and dropped (bounded),
        then closed: the client reads the whole 413 instead of a connection reset."""
        response = too_large(self.limit)
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body, "more_body": True})
        loop = asyncio.get_running_loop()
        deadline, dropped = loop.time() + self.drain_s, 0
        try:
            while dropped < self.drain_bytes:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
                if message["type"] != "http.request":
                    break
                dropped += len(message.get("body", b""))
                if not message.get("more_body", False):
                    break
        except TimeoutError:
            pass
        await send({"type": "http.response.body", "body": b""})


def proxy_ceiling(environ: Mapping[str, str] = os.environ) -> int:
    """The ceiling from `PDSERVE_PROXY_MAX_BODY_BYTES`, or the config's default body limit."""
    raw = environ.get(PROXY_CEILING_ENV)
    if raw is None:
        return LimitsConfig.model_fields["max_body_bytes"].default
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise ValueError(f"{PROXY_CEILING_ENV} must be a positive number of bytes, not {raw!r}")
    return int(raw)


def proxy_middlewares() -> list[Middleware]:
    """Ray Serve's proxy callback (`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`). A deployment
    with proxy middlewares of its own returns these from its callback too."""
    return [Middleware(ProxyBodyLimit, max_body_bytes=proxy_ceiling())]


def ceiling_warning(app_limit: int, environ: Mapping[str, str] = os.environ) -> str | None:
    """What an ingress should warn of at start, reading the environment Ray started in (a
    replica inherits it; proxies on other nodes are not seen): a proxy callback other than
    ours, or a ceiling below the app's own limit."""
    if environ.get(CALLBACK_ENV) != CALLBACK:
        return (f"Ray's HTTP proxy may have no body ceiling ({CALLBACK_ENV} is not {CALLBACK}): "
                f"a request body sent without Content-Length is then buffered whole by the "
                f"proxy and this ingress before limits.max_body_bytes refuses it. Export it "
                f"where Ray starts, on every node (`make serve` does), or return "
                f"proxy_middlewares() from your own callback.")
    ceiling = proxy_ceiling(environ)
    if ceiling < app_limit:
        return (f"Ray's HTTP proxy refuses bodies over {ceiling} bytes ({PROXY_CEILING_ENV}), "
                f"below this app's limits.max_body_bytes ({app_limit}): raise the ceiling "
                f"where Ray starts.")
    return None
