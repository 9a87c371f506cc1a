"""What the HTTP edge answers by itself, before any route: OpenAI's error shape, and the
refusal of a body over a byte limit (shared by the ingress's guard and Ray's proxy)."""

from __future__ import annotations

from http import HTTPStatus

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse


def openai_error(status: HTTPStatus, message: str, code: str | None,
                 err_type: str = "invalid_request_error", param: str | None = None,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    """An error in OpenAI's shape, with OpenAI's string `code` (`invalid_api_key`, …)."""
    body = {"error": {"message": message, "type": err_type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


#: on a refused body: the HTTP server need not read the rest to keep the connection open
CLOSE = {"Connection": "close"}


def body_too_large(limit: int) -> str:
    return f"The request body is larger than this server accepts ({limit} bytes)."


def too_large(limit: int) -> JSONResponse:
    """413 for a body over `limit` bytes; the connection closes (the rest stays unread)."""
    return openai_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, body_too_large(limit),
                        "body_too_large", headers=CLOSE)


def declared_too_large(headers: Headers, limit: int) -> bool:
    """Whether the body's `Content-Length` already says it is over `limit`."""
    length = headers.get("content-length")
    return (length is not None and length.isascii() and length.isdigit()
            and int(length) > limit)


class BodyTooLarge(HTTPException):
    """Raised while a streamed body is read, once it passes `limit` bytes (answered by
    `too_large`, installed in `errors.py`). An HTTP exception because FastAPI turns any other
    exception raised while it parses a route's body into a 400 ("There was an error parsing
    the body"); it passes HTTP exceptions on."""

    def __init__(self, limit: int) -> None:
        super().__init__(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, body_too_large(limit))
        self.limit = limit
