"""The synthesis service as the tests run it (pytest plugin): the real app over the real
Piper voice and a real PostgreSQL voice library, requests through httpx.

Fixtures: `piper_settings` and `piper_tts` (session: the process's one engine, loaded once,
as in a real service) and `library` (a started VoiceLibrary on a fresh database).
`running_app(settings, tts, library, ...)` runs the app's lifespan and yields it with a
client; its service settings (API key, LiveKit) are none unless `service_settings` says.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from livekit.plugins import localtts
from livekit.plugins.localtts.voices import VoiceLibrary

from localtts_agent.service.app import create_app
from localtts_agent.service.room_publisher import RoomConnector
from localtts_agent.settings import ServiceSettings


@pytest.fixture(scope="session")
def piper_settings() -> localtts.Settings:
    # a capacity measured at warmup follows the machine's load (1 stream at load 20 on 2
    # cores): tests not about admission must not meet it (its own test sets one)
    return localtts.Settings(engine="piper", voice=None, engine_capacity=8)


@pytest.fixture(scope="session")
async def piper_tts(piper_settings: localtts.Settings) -> localtts.TTS:
    """The process's engine, loaded once for the whole session (as in a real service)."""
    tts = localtts.TTS(engine="piper", settings=piper_settings)
    await tts.warmup()
    return tts


@pytest.fixture
async def library(database_url: str, tmp_path: Any) -> AsyncIterator[VoiceLibrary]:
    lib = VoiceLibrary(database_url=database_url, voices_dir=None, data_dir=tmp_path)
    await lib.start()
    assert lib.status == "ok", lib.status_detail
    yield lib
    await lib.aclose()


@asynccontextmanager
async def running_app(
    settings: localtts.Settings,
    tts: localtts.TTS,
    library: VoiceLibrary | None,
    *,
    service_settings: ServiceSettings | None = None,
    connector: RoomConnector | None = None,
    wait: bool = True,
    room_idle_timeout: float = 60.0,
) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    app = create_app(
        settings,
        service_settings=service_settings or ServiceSettings(_env_file=None, api_key=None),  # type: ignore[call-arg]
        tts=tts,
        voice_library=library,
        room_connector=connector,
        room_idle_timeout=room_idle_timeout,
    )
    async with app.router.lifespan_context(app):
        if wait:
            await app.state.service.wait_started()
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://service", timeout=60
        ) as client:
            yield app, client
