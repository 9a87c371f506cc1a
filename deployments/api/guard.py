"""The ingress's front door, as ASGI middleware in front of every route: the `Host` allow-list,
API keys and their scopes, the body-size limit and admission (requests in flight), all decided
before a body byte is read.

What it admits is stored as the request's `caller` (`request.state.caller`), which the routes
check against the model a body names (a key may be limited to some models).
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pdserve.deployments.api.keys import ANONYMOUS, Caller, KeyRing
from pdserve.deployments.api.ledger import LedgerLink
from pdserve.deployments.api.quotas import Quotas
from pdserve.deployments.api.refusal import (
    BodyTooLarge,
    declared_too_large,
    openai_error,
    too_large,
)
from pdserve.deployments.api.scopes import required_scope
from pdserve.deployments.config.security import AuthConfig, LimitsConfig
from pdserve.deployments.frontend.usage import close_count, open_count

logger = logging.getLogger(__name__)

#: The caller of a public route (`/health`) who sent no key: may see only what is public.
PUBLIC = Caller("public", frozenset(), frozenset())


def host_name(host: str) -> str:
    """A `Host` value (or an allowed-hosts entry) without port or IPv6 brackets, lower-case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


#: The `Host` names a loopback server without keys answers (DNS rebinding: a web page whose
#: own name resolves to 127.0.0.1 must not reach it).
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def route_path(scope: Scope) -> str:
    """The path the app routes on: Ray Serve mounts an app under its `route_prefix`."""
    path, root = scope.get("path", "/"), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    return path or "/"


def presented_key(headers: Headers) -> str | None:
    """`Authorization: Bearer <key>` (OpenAI's SDKs) or `x-api-key: <key>` (Anthropic's)."""
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return headers.get("x-api-key") or None


class EdgeGuard:
    """Refuses, in OpenAI's error shape, what must not reach a route: a foreign `Host`, a
    missing or wrong key (401), a key without the route's scope (403), a body over the limit
    (413: at once from `Content-Length`, else as soon as the streamed body passes it), a
    request beyond `max_concurrent` in flight in this replica (503 with `Retry-After`), and a
    key over its rate limits (429 with `Retry-After`; its tokens are counted as it runs)."""

    def __init__(self, app: ASGIApp, auth: AuthConfig, limits: LimitsConfig,
                 keys: KeyRing | None, max_concurrent: int, quotas: Quotas | None = None,
                 ledger: LedgerLink | None = None,
                 default_hosts: frozenset[str] | None = None) -> None:
        self.app = app
        self.keys = keys
        self.limits = limits
        self.max_concurrent = max_concurrent
        self.in_flight = 0
        self.quotas = quotas or Quotas()
        self.ledger = ledger
        hosts = auth.allowed_hosts if auth.allowed_hosts is not None else default_hosts
        self.allowed_hosts = None if hosts is None else {host_name(h) for h in hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self._host_refusal(headers)
        caller: Caller | None = ANONYMOUS
        if refusal is None:
            caller, refusal = self._authenticate(scope, headers)
        if refusal is None:
            refusal = self._size_refusal(headers)
        counted = route_path(scope) != "/health"  # a probe is answered even when full
        metered = counted and caller is not None and caller.rate_limits is not None
        if refusal is None and metered and self.ledger is not None:
            self.ledger.start()
            if not self.quotas.knows(caller):  # type: ignore[arg-type]
                await self.ledger.meet(caller)  # type: ignore[arg-type]
        if refusal is None and counted and self.in_flight >= self.max_concurrent:
            refusal = openai_error(
                HTTPStatus.SERVICE_UNAVAILABLE, "The server is at capacity; retry later.",
                "server_overloaded", err_type="server_error", headers={"Retry-After": "1"})
        if refusal is None and metered:
            refusal = self.quotas.admit(caller)  # type: ignore[arg-type]
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        scope.setdefault("state", {})["caller"] = caller
        self.in_flight += counted
        tokens, count_token = open_count()
        try:
            await self.app(scope, self._limited(receive), send)
        finally:
            close_count(count_token)
            self.in_flight -= counted
            if metered:
                self.quotas.finish(caller, tokens[0])  # type: ignore[arg-type]

    def _host_refusal(self, headers: Headers) -> JSONResponse | None:
        host = headers.get("host")
        if self.allowed_hosts is None or host is None:  # (no Host: no browser sent it)
            return None
        if host_name(host) in self.allowed_hosts:
            return None
        return openai_error(HTTPStatus.BAD_REQUEST, "This server does not answer for the "
                            "requested Host.", "invalid_host")

    def _authenticate(self, scope: Scope, headers: Headers
                      ) -> tuple[Caller | None, JSONResponse | None]:
        if self.keys is None or not self.keys.enabled:
            return ANONYMOUS, None
        need = required_scope(scope.get("method", "GET"), route_path(scope))
        key = presented_key(headers)
        if key is None:
            if need is None:
                return PUBLIC, None
            return None, openai_error(
                HTTPStatus.UNAUTHORIZED, "You didn't provide an API key. Send it as "
                "`Authorization: Bearer <key>` or `x-api-key: <key>`.", "invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"})
        self.keys.reload_if_changed()
        caller = self.keys.identify(key)
        if caller is None:
            logger.warning("refused a request with an unknown API key")
            return None, openai_error(HTTPStatus.UNAUTHORIZED, "Incorrect API key provided.",
                                      "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        if need is not None and not caller.may(need):
            return None, openai_error(
                HTTPStatus.FORBIDDEN, f"The API key `{caller.name}` lacks the scope `{need}` "
                "this route needs.", "insufficient_permissions", err_type="permission_error")
        return caller, None

    def _size_refusal(self, headers: Headers) -> JSONResponse | None:
        if declared_too_large(headers, self.limits.max_body_bytes):
            return too_large(self.limits.max_body_bytes)
        return None

    def _limited(self, receive: Receive) -> Receive:
        limit, seen = self.limits.max_body_bytes, 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # answered by its handler (`errors.py`): `too_large`
                    raise BodyTooLarge(limit)
            return message

        return limited_receive


def caller_of(state: Any) -> Caller:
    """The caller `EdgeGuard` admitted (anonymous where no guard ran: handle callers)."""
    return getattr(state, "caller", ANONYMOUS)
