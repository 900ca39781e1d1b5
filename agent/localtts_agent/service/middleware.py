"""ASGI middleware of the service."""

from __future__ import annotations

from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_response


class _PayloadTooLarge(HTTPException):
    """Raised from `receive` while a body is read: an HTTPException, so FastAPI's body
    parsing lets it through instead of turning it into a generic 400."""

    def __init__(self, message: str) -> None:
        super().__init__(413, message)


class BodySizeLimit:
    """Bounds every request body before it is read into memory or spooled to disk:
    by Content-Length up front, and by counting bytes for chunked uploads."""

    def __init__(self, app: ASGIApp, *, limit_for: Callable[[str], tuple[int, str]]) -> None:
        """`limit_for(path)`: (the most bytes a body may have, what to say beyond it)."""
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, message = self.limit_for(scope["path"])
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > limit:
                    response = error_response(413, "payload_too_large", message)
                    await response(scope, receive, send)
                    return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _PayloadTooLarge(message)
            return message

        await self.app(scope, limited_receive, send)

