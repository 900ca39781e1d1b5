"""The HTTP server around the app (uvicorn), with the limits a service on a network needs:
a cap on open connections, a deadline for a request's headers, and a bounded shutdown.

uvicorn gives the shutdown grace (`timeout_graceful_shutdown`) and the keep-alive timeout;
it has no deadline for headers (a client sending half its headers holds its connection
and a file descriptor forever) and its `limit_concurrency` answers 503 only once a request
is complete, so such connections still pile up. `GuardedH11Protocol` adds both: the
connection past the cap is answered 503 at once and closed, and a connection whose request
headers are not complete within the deadline is answered 408 and closed. Reading a body
that stalls is bounded in the app (`middleware.BodyLimits`), where it can answer in JSON.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, ClassVar

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..settings import ServiceSettings
from .errors import error_body

logger = logging.getLogger("localtts.service")

_BUSY_RETRY_AFTER_S = 1
_REFUSAL_LOG_INTERVAL_S = 10.0


def raw_response(status: int, reason: str, code: str, message: str, **headers: str) -> bytes:
    """A whole HTTP/1.1 response in the service's JSON error shape, connection closing:
    for answers given below the app (no request was parsed to answer through it)."""
    body = json.dumps(error_body(status, code, message)).encode()
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a connection cap and a header deadline
    (class attributes, set per server by `guarded_protocol`)."""

    max_connections: ClassVar[int] = 256
    header_timeout_s: ClassVar[float] = 10.0
    _last_refusal_log: ClassVar[float] = 0.0

    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            # refused before it costs more than this write: no parser, no task, no timer
            self.transport = transport  # connection_lost closes it again; harmless
            transport.write(
                raw_response(
                    503,
                    "Service Unavailable",
                    "too_many_connections",
                    f"the service has {len(self.connections)} connections open, its limit "
                    "(LOCALTTS_MAX_CONNECTIONS); retry shortly",
                    retry_after=str(_BUSY_RETRY_AFTER_S),
                )
            )
            transport.close()
            self._log_refusal()
            return
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the request's headers are in
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():  # keep-alive: the next request's headers, too
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
            return
        # an idle keep-alive connection is no client error: just close it; one that began a
        # request and stalled learns why
        if self.conn.trailing_data[0]:
            self.transport.write(
                raw_response(
                    408,
                    "Request Timeout",
                    "request_timeout",
                    f"the request's headers did not arrive within {self.header_timeout_s:g} s",
                )
            )
        self.transport.close()

    @classmethod
    def _log_refusal(cls) -> None:
        now = time.monotonic()
        if now - cls._last_refusal_log >= _REFUSAL_LOG_INTERVAL_S:  # not once per connection
            cls._last_refusal_log = now
            logger.warning(
                "refusing connections: %d open, the limit (LOCALTTS_MAX_CONNECTIONS)",
                cls.max_connections,
            )


def guarded_protocol(settings: ServiceSettings) -> type[GuardedH11Protocol]:
    """The protocol class with this service's limits."""
    limits = {
        "max_connections": settings.max_connections,
        "header_timeout_s": settings.header_timeout_s,
    }
    return type("ServiceH11Protocol", (GuardedH11Protocol,), limits)


def server_config(
    app: Any,
    settings: ServiceSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
) -> uvicorn.Config:
    """uvicorn's configuration for the service app."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        http=guarded_protocol(settings),
        # after SIGTERM: no new connections; open streams get this long, then end
        timeout_graceful_shutdown=settings.shutdown_grace_s,  # type: ignore[arg-type]
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]
        workers=1,  # a second worker would load a second copy of the model
    )
