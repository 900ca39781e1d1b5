"""ASGI middleware of the service."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_response


class _PayloadTooLarge(HTTPException):
    """Raised from `receive` while a body is read: an HTTPException, so FastAPI's body
    parsing lets it through instead of turning it into a generic 400."""

    def __init__(self, message: str) -> None:
        super().__init__(413, message)


class _BodyStalled(HTTPException):
    """Raised from `receive` when the client stops sending a body it announced."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(
            408,
            f"the request body stopped arriving (nothing for {timeout_s:g} s)",
            headers={"Connection": "close"},  # the rest of that body will not be read
        )


class BodyLimits:
    """Bounds every request body before it is read into memory or spooled to disk: its size
    (by Content-Length up front, by counting bytes for chunked uploads) and how long it may
    stall (`read_timeout_s` without a byte: 408). `on_refused(code)` counts refusals made
    here, before the app's error handlers see the request."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit_for: Callable[[str], tuple[int, str]],
        read_timeout_s: float,
        on_refused: Callable[[str], None],
    ) -> None:
        """`limit_for(path)`: (the most bytes a body may have, what to say beyond it)."""
        self.app = app
        self.limit_for = limit_for
        self.read_timeout_s = read_timeout_s
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, too_large = self.limit_for(scope["path"])
        for name, value in scope["headers"]:  # an http scope always has them (ASGI)
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:  # the server answers 400 first (h11, httptools)
                    continue
                if declared > limit:
                    self.on_refused("payload_too_large")
                    response = error_response(413, "payload_too_large", too_large)
                    await response(scope, receive, send)
                    return
        received = 0
        body_complete = False

        async def limited_receive() -> Message:
            nonlocal received, body_complete
            if body_complete:  # from now on only a disconnect can come: wait as long as it takes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.read_timeout_s)
            except asyncio.TimeoutError:
                raise _BodyStalled(self.read_timeout_s) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _PayloadTooLarge(too_large)
                body_complete = not message.get("more_body", False)
            return message

        await self.app(scope, limited_receive, send)
