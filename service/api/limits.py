"""The request body limit (``SHARPMIX_MAX_BODY_BYTES``): 413 before a large body is read.

Content-Length is checked up front, and the bytes actually received are counted too, because a
chunked request has no Content-Length and a client can send more than it announced.
"""

from __future__ import annotations

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` once the body passes the limit; FastAPI passes HTTPExceptions raised
    while it reads the body on to the exception handlers, which answer 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=too_large_message(limit))


def too_large_message(limit: int) -> str:
    """What a client sees: the limit, and who sets it."""
    return (
        f"request body is larger than this server's limit of {limit} bytes "
        "(SHARPMIX_MAX_BODY_BYTES); a sweep spec is a few kilobytes"
    )


class BodyLimitMiddleware:
    """Answer 413 to a request whose body is, or turns out to be, over ``limit`` bytes."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        announced = dict(scope["headers"]).get(b"content-length")
        if announced is not None and announced.isdigit() and int(announced) > self.limit:
            response = JSONResponse({"detail": too_large_message(self.limit)}, status_code=413)
            await response(scope, receive, send)
            return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counted_receive, send)
