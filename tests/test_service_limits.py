"""The service on a real socket under slow, stalled and too many clients, and its shutdown:
`localtts serve`'s server (service/server.py) in this process, or `localtts serve` itself
in a subprocess for SIGTERM. Everything on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
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
from localtts_agent.service.server import server_config
from localtts_agent.settings import ServiceSettings

from .service_fixtures import free_port, start_serve, wait_ready
from .test_service import uvicorn_server

ROOT = Path(__file__).resolve().parents[1]
HALF_REQUEST = b"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl"


def _settings(**limits: Any) -> ServiceSettings:
    return ServiceSettings(_env_file=None, api_key=None, **limits)  # type: ignore[call-arg]


def _app(settings: ServiceSettings, tts: localtts.TTS, library: VoiceLibrary) -> Any:
    return create_app(
        localtts.Settings(engine="piper", voice=None),
        service_settings=settings,
        tts=tts,
        voice_library=library,
    )


@asynccontextmanager
async def served(app: Any, settings: ServiceSettings) -> AsyncIterator[int]:
    """The app behind the service's own server configuration, on an ephemeral port."""
    async with uvicorn_server(app, server_config(app, settings, log_level="warning")) as url:
        yield int(url.rsplit(":", 1)[1])


async def _read_until_closed(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (TimeoutError if it
    keeps it open longer than `timeout`)."""
    return await asyncio.wait_for(reader.read(), timeout)


async def test_half_sent_headers_time_out_and_connections_past_the_cap_get_503(
    piper_tts: localtts.TTS, library: VoiceLibrary
) -> None:
    settings = _settings(header_timeout_s=1.0, body_timeout_s=1.0, max_connections=20)
    app = _app(settings, piper_tts, library)
    async with served(app, settings) as port:
        started = time.monotonic()
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(60)]
        for _, writer in conns:
            writer.write(HALF_REQUEST)
        answers = await asyncio.gather(*(_read_until_closed(r, 8.0) for r, _ in conns))
        elapsed = time.monotonic() - started
        busy = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
        late = [a for a in answers if a.startswith(b"HTTP/1.1 408")]
        # every connection is closed by the server: 20 held until the header deadline
        # (1 s; 8 s would mean none), the other 40 refused at once
        assert len(busy) == 40 and len(late) == 20, [a[:40] for a in answers]
        assert elapsed < 6.0
        body = json.loads(busy[0].split(b"\r\n\r\n", 1)[1])
        assert body["error"]["code"] == "too_many_connections"
        assert b"retry-after: 1" in busy[0].lower()
        assert json.loads(late[0].split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
        for _, writer in conns:
            writer.close()

        # a request whose body stalls: Content-Length 1000, 4 bytes sent
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"in'
        )
        stalled_at = time.monotonic()
        answer = await _read_until_closed(reader, 8.0)
        assert 0.8 < time.monotonic() - stalled_at < 6.0
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        error = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
        assert error["code"] == "request_timeout"
        # what stalled and for how long, not the bare status phrase
        assert error["message"] == "the request body stopped arriving (nothing for 1 s)"
        writer.close()

        # and the service still serves, at full speed, with the slow ones gone
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            assert (await client.get("/health")).status_code == 200
            pcm = {"input": "Still here.", "response_format": "pcm"}
            speech = await client.post("/v1/audio/speech", json=pcm)
            assert speech.status_code == 200 and len(speech.content) > 10_000


async def test_refusals_made_before_the_app_are_counted(
    piper_tts: localtts.TTS, library: VoiceLibrary
) -> None:
    settings = _settings()
    app = _app(settings, piper_tts, library)
    async with served(app, settings) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            huge = await client.post(
                "/v1/audio/speech",
                content=b"x" * 1_000_000,
                headers={"content-type": "application/json"},
            )
            assert huge.status_code == 413
            assert huge.json()["error"]["code"] == "payload_too_large"
            metrics = (await client.get("/metrics")).text
    assert 'localtts_errors_total{kind="payload_too_large"} 1.0' in metrics


# ---------------------------------------------------------------------------- SIGTERM


async def test_sigterm_lets_short_streams_finish_ends_long_ones_after_the_grace_exits_0(
    database_url: str, tmp_path: Path
) -> None:
    grace_s = 2.0
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_serve(port, database_url, tmp_path, grace_s)
    try:
        await wait_ready(url, proc, timeout=120)
        # a reader that takes a long reply (~8 minutes of audio) and stops reading
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = json.dumps(
            {"input": "This reply goes on and on, sentence after sentence. " * 180,
             "response_format": "pcm"}
        )
        writer.write(
            f"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
        )
        assert (await asyncio.wait_for(reader.read(4096), 30)).startswith(b"HTTP/1.1 200")

        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            async with client.stream(
                "POST",
                "/v1/audio/speech",
                json={"input": "A short reply, nearly done.", "response_format": "pcm"},
            ) as short:
                assert short.status_code == 200
                proc.send_signal(signal.SIGTERM)
                stopped_at = time.monotonic()
                # in flight at SIGTERM and shorter than the grace: it ends whole (httpx
                # raises on a body cut short)
                short_audio = b"".join([chunk async for chunk in short.aiter_bytes()])
        assert len(short_audio) > 24_000  # over half a second of 24 kHz 16-bit audio

        await asyncio.sleep(0.5)
        with pytest.raises(OSError):  # no new connections once shutting down
            socket.create_connection(("127.0.0.1", port), timeout=2).close()

        rc = await asyncio.to_thread(proc.wait, grace_s + 20)
        took = time.monotonic() - stopped_at
        output = proc.stdout.read().decode()
        assert rc == 0, (rc, output[-6000:])
        # the long stream had the grace, then was ended: the process did not wait for it
        assert grace_s - 0.3 < took < grace_s + 12, (took, output[-3000:])
        rest = await asyncio.wait_for(reader.read(), 10)  # the server closed it
        assert not rest.endswith(b"0\r\n\r\n")  # cut, not presented as complete
        writer.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
