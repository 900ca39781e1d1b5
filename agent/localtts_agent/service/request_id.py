"""`X-Request-Id` on every response, as OpenAI's API sends it: clients log it (LiveKit's
OpenAI TTS warns on every utterance without one) and it ties a client's report to the log."""

from __future__ import annotations

import re
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "x-request-id"
# a caller's own id is kept when it is a plain token (it may reach logs): else a new one
_CALLER_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestId:
    """Echoes the caller's `X-Request-Id` when it is a plain token, else makes one up."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers", [])).get(REQUEST_ID_HEADER.encode(), b"")
        given_id = given.decode("latin-1")
        request_id = given_id if _CALLER_ID.fullmatch(given_id) else f"req_{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)
