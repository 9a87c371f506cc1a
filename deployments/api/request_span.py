"""One span per HTTP request at the ingress (under Ray Serve's replica span, which continues
the client's `traceparent`), current while the route runs so the request's generation, routing
and pool calls nest under it; its trace id goes back in `x-trace-id` so a user can find their
request (Ray Serve's own `x-request-id` names it in Serve's logs)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pdserve import tracing
from pdserve.deployments.api.guard import route_path

TRACE_ID_HEADER = b"x-trace-id"


class RequestSpan:
    """ASGI middleware, outermost: the request's span and its `x-trace-id` header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, route = scope.get("method", ""), route_path(scope)
        span = tracing.start(f"{method}", kind=tracing.SpanKind.SERVER, **{
            "http.request.method": method, "url.path": route})
        trace_id = tracing.trace_id(span)
        status: int | None = None

        async def send_with_trace_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if trace_id is not None:
                    message = {**message, "headers": [*message.get("headers", ()),
                                                      (TRACE_ID_HEADER, trace_id.encode())]}
            await send(message)

        error: BaseException | None = None
        try:
            with tracing.current(span):
                await self.app(scope, receive, send_with_trace_id)
        except Exception as exc:
            error = exc
            raise
        finally:
            route_template = getattr(scope.get("route"), "path", None)
            span.update_name(f"{method} {route_template or 'unmatched'}")  # bounded names
            if error is None and status is not None and status >= 500:
                error = RuntimeError(f"HTTP {status}")  # a server error fails the span
            tracing.finish(span, error, **{"http.response.status_code": status})
