"""The synthesis service as the tests run it (pytest plugin): the real app over the real
Piper voice and a real PostgreSQL voice library, requests through httpx.

Fixtures: `piper_settings` and `piper_tts` (session: the process's one engine, loaded once,
as in a real service) and `library` (a started VoiceLibrary on a fresh database).
`running_app(settings, tts, library, ...)` runs the app's lifespan and yields it with a
client; its service settings (API key, LiveKit) are none unless `service_settings` says.
`start_serve` runs `localtts serve` itself in a subprocess (`wait_ready` until it answers).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
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


# ---------------------------------------------------------------------------- subprocess


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_serve(port: int, database_url: str, tmp_path: Path, grace_s: float) -> Any:
    """`localtts serve` over Piper and `database_url` in a subprocess (stdout: its log)."""
    env = {
        **os.environ,
        "LOCALTTS_ENGINE": "piper",
        "DATABASE_URL": database_url,
        "LOCALTTS_VOICES_DIR": str(tmp_path),
        "LOCALTTS_SHUTDOWN_GRACE_S": str(grace_s),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        # a capacity measured at warmup follows the machine's load (1 on a busy machine):
        # these tests run a few streams at once and are not about admission
        "LOCALTTS_ENGINE_CAPACITY": "16",
    }
    env.pop("LOCALTTS_API_KEY", None)
    command = [sys.executable, "-m", "localtts_agent.cli.app", "serve", "--port", str(port)]
    return subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


async def wait_ready(url: str, proc: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            try:
                if (await client.get(url + "/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.3)
    raise AssertionError("the service did not become ready")
