"""The app factory: `create_app()` builds the service; `localtts serve` runs it.

One engine and one VoiceLibrary serve the whole process (`state.ServiceState`). Every
request speaks through its own lightweight `localtts.TTS` sharing that engine, so
per-request options never leak between requests. The app answers at once on start: /health
says "warming" while the model warms up and voices preload (in parallel), synthesis answers
503 until then.

    state.py           the process's engine, voice library, room publishers; warm-up, health
    routers/           one module per area: speech, rooms, voices, health (+ metrics)
    models.py          request and response bodies, request bounds
    errors.py          the JSON error shape, error mapping, exception handlers
    auth.py            the bearer token (LOCALTTS_API_KEY)
    middleware.py      request body limits (size, stall)
    server.py          the HTTP server: connection cap, header deadline, bounded shutdown
    request_id.py      X-Request-Id on every response
    encoding.py        OpenAI's speech formats (PyAV), encoded as the audio streams
    audio.py           synthesis frames, resampling, WAV header, streaming response
    room_publisher.py  speaking into LiveKit rooms: one publisher per room
    metrics.py         Prometheus instruments
    memory.py          memory freed by a burst handed back when idle
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from livekit.plugins import localtts

from ..settings import ServiceSettings
from .errors import install_error_handlers
from .middleware import BodyLimits
from .models import body_limit
from .request_id import RequestId
from .room_publisher import RoomConnector
from .routers import health, rooms, speech, voices
from .state import ROOM_IDLE_TIMEOUT_S, ServiceState

if TYPE_CHECKING:
    from livekit.plugins.localtts.voices import VoiceLibrary


def create_app(
    settings: localtts.Settings | None = None,
    *,
    service_settings: ServiceSettings | None = None,
    tts: localtts.TTS | None = None,
    voice_library: VoiceLibrary | None = None,
    room_connector: RoomConnector | None = None,
    room_idle_timeout: float = ROOM_IDLE_TIMEOUT_S,
) -> FastAPI:
    """The service app. Anything not passed is built from the settings at startup.

    Args:
        settings: the plugin's (engine, default voice, voice library); defaults to the
            environment (`LOCALTTS_*`, `DATABASE_URL`).
        service_settings: the API key and the LiveKit server (`LOCALTTS_API_KEY`,
            `LIVEKIT_*`); defaults to the environment.
        tts: a `localtts.TTS` whose engine the service speaks with (warmed up at start).
        voice_library: an already started `VoiceLibrary` (the caller closes it); without
            one, the app starts its own from `settings` and closes it on shutdown.
        room_connector: how rooms are joined; default: LiveKit from `service_settings`.
        room_idle_timeout: seconds without utterances after which a room is left.
    """
    service_settings = service_settings or ServiceSettings()
    state = ServiceState(
        settings or localtts.get_settings(),
        service_settings,
        tts=tts,
        voice_library=voice_library,
        room_connector=room_connector,
        room_idle_timeout=room_idle_timeout,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await state.open()
        try:
            yield
        finally:
            await state.aclose()

    app = FastAPI(
        title="localtts",
        version=localtts.__version__,
        summary="Self-hosted TTS: speech into LiveKit rooms and OpenAI-compatible audio",
        lifespan=lifespan,
    )
    app.state.service = state  # what the routes' `State` parameters receive
    install_error_handlers(app, state.metrics)
    app.add_middleware(
        BodyLimits,
        limit_for=body_limit,
        read_timeout_s=service_settings.body_timeout_s,
        on_refused=state.metrics.error,
    )
    app.add_middleware(RequestId)  # outermost: even a 413 from the size limit carries one
    for router in (health.router, rooms.router, speech.router, voices.router):
        app.include_router(router)
    return app
