"""The synthesis service: the real app over the real Piper voice and a real PostgreSQL.

HTTP goes through httpx against the ASGI app, or through uvicorn on 127.0.0.1 where
streaming matters (httpx's ASGI transport buffers whole responses). Rooms are exercised
here without a server (the publisher's track is read back through `rtc.AudioStream`);
tests/test_service_rooms.py speaks into real rooms on a real LiveKit server.
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import uvicorn
from livekit import rtc
from livekit.plugins import localtts
from livekit.plugins.localtts.engines import create_engine
from livekit.plugins.localtts.voices import VoiceLibrary

from localtts_agent.service.app import create_app
from localtts_agent.service.models import MAX_TEXT_CHARS, MAX_UPLOAD_BYTES
from localtts_agent.service.room_publisher import (
    LiveKitConnector,
    PlaybackReport,
    RoomJoinError,
    RoomPublishers,
)
from localtts_agent.service.routers.speech import OPENAI_SAMPLE_RATE
from localtts_agent.settings import ServiceSettings

from .livekit_helpers import frames_to_float, rms
from .recording_engine import RecordingEngine
from .service_fixtures import running_app

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

LONG_TEXT = (
    "The service streams audio while it is still speaking. "
    "This second sentence is synthesized after the first one has already left. "
    "A third sentence follows, so the whole reply takes a while to produce. "
    "And a fourth one closes the paragraph with a little more to say."
)


# ---------------------------------------------------------------------------- fixtures


class CapturedRoom:
    """A "room" without a server: reads the published track back through AudioStream."""

    def __init__(self, room_name: str, track: rtc.LocalAudioTrack, sample_rate: int) -> None:
        self.room_name = room_name
        self.frames: list[rtc.AudioFrame] = []
        self.closed = False
        self._stream = rtc.AudioStream.from_track(
            track=track, sample_rate=sample_rate, num_channels=1
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for event in self._stream:
            self.frames.append(event.frame)

    @property
    def connected(self) -> bool:
        return not self.closed

    def audio(self) -> np.ndarray:
        return frames_to_float(self.frames)

    async def aclose(self) -> None:
        self.closed = True
        await self._stream.aclose()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


class CapturingConnector:
    """Joins every room locally; `fail_next` makes the next join fail like a dead server."""

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.rooms: list[CapturedRoom] = []
        self.fail_next = 0

    async def join(self, room_name: str, track: rtc.LocalAudioTrack) -> CapturedRoom:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionRefusedError("no LiveKit server at ws://127.0.0.1:1")
        room = CapturedRoom(room_name, track, self.sample_rate)
        self.rooms.append(room)
        return room

    def room(self, name: str) -> CapturedRoom:
        return next(r for r in reversed(self.rooms) if r.room_name == name)


@pytest.fixture
async def service(
    piper_settings: localtts.Settings, piper_tts: localtts.TTS, library: VoiceLibrary
) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    async with running_app(piper_settings, piper_tts, library) as running:
        yield running


@asynccontextmanager
async def uvicorn_server(app: Any, config: uvicorn.Config | None = None) -> AsyncIterator[str]:
    """The app behind a real HTTP server on loopback (an ephemeral port); `config`: the
    server's own (its host and port are not used)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(config or uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(500):
            if server.started:
                break
            await asyncio.sleep(0.02)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


def pcm_audio(data: bytes) -> np.ndarray:
    return np.frombuffer(data[: len(data) // 2 * 2], "<i2").astype(np.float32) / 32768.0


async def piper_clip(tts: localtts.TTS, text: str) -> bytes:
    """A real speech clip (WAV bytes) from the bundled voice: what users upload."""
    frames = []
    async with tts.synthesize(text) as stream:
        async for event in stream:
            frames.append(event.frame)
    buf = io.BytesIO()
    sf.write(buf, frames_to_float(frames), tts.sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


CLIP_TEXT = (
    "A reference clip holds a few sentences of clear speech. The quick brown fox jumps "
    "over the lazy dog, and the voice library keeps it safe."
)


# ---------------------------------------------------------------------------- /v1/audio/speech


@dataclass
class StreamedSpeech:
    """A long text spoken by /v1/audio/speech over real HTTP: what arrived when, and when
    the engine began each piece of the text."""

    engine: RecordingEngine
    headers: httpx.Headers
    arrivals: list[tuple[float, bytes]]  # (when, chunk)

    def before_last_piece(self) -> bytes:
        """What the client held before the engine even began the text's last piece."""
        last_piece_started = self.engine.calls[-1].started
        return b"".join(chunk for t, chunk in self.arrivals if t < last_piece_started)

    def whole(self) -> bytes:
        return b"".join(chunk for _, chunk in self.arrivals)


async def stream_long_speech(
    settings: localtts.Settings,
    piper_tts: localtts.TTS,
    library: VoiceLibrary,
    response_format: str,
) -> StreamedSpeech:
    engine = RecordingEngine(piper_tts.engine)
    tts = localtts.TTS(engine=engine, settings=settings)  # type: ignore[arg-type]
    app = create_app(settings, tts=tts, voice_library=library)
    async with uvicorn_server(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as client:
        await app.state.service.wait_started()
        engine.calls.clear()  # warmup's
        arrivals: list[tuple[float, bytes]] = []
        body = {"model": "tts-1", "input": LONG_TEXT, "response_format": response_format}
        async with client.stream("POST", "/v1/audio/speech", json=body) as response:
            assert response.status_code == 200
            async for chunk in response.aiter_bytes():
                arrivals.append((time.monotonic(), chunk))
    assert len(engine.calls) >= 3
    return StreamedSpeech(engine, response.headers, arrivals)


async def test_speech_streams_audio_while_the_text_is_still_being_spoken(
    piper_settings: localtts.Settings, piper_tts: localtts.TTS, library: VoiceLibrary
) -> None:
    speech = await stream_long_speech(piper_settings, piper_tts, library, "pcm")
    assert speech.headers["content-type"] == "audio/pcm"
    assert speech.headers["x-sample-rate"] == str(OPENAI_SAMPLE_RATE)
    received = speech.whole()
    before_last = len(speech.before_last_piece())
    # a whole second of audio was in the client's hands before the engine even began the
    # last sentence: the reply streams, it is not sent when done
    assert before_last >= 2 * OPENAI_SAMPLE_RATE, (before_last, len(received))
    audio = pcm_audio(received)
    assert len(audio) / OPENAI_SAMPLE_RATE > 8.0  # four sentences
    assert rms(audio) > 0.02
    # speech has pauses and loud parts: not a constant tone, not noise at full scale
    assert np.percentile(np.abs(audio), 99) > 0.2


async def test_openai_plugin_speaks_through_the_service(
    piper_settings: localtts.Settings, piper_tts: localtts.TTS, library: VoiceLibrary
) -> None:
    """livekit-plugins-openai's TTS, pointed at this service, gets 24 kHz speech (its
    stock voice name means the default voice)."""
    from livekit.plugins import openai

    app = create_app(piper_settings, tts=piper_tts, voice_library=library)
    async with uvicorn_server(app) as url:
        await app.state.service.wait_started()
        tts = openai.TTS(
            model="tts-1", voice="alloy", base_url=f"{url}/v1", api_key="unused",
            response_format="pcm",
        )  # fmt: skip
        frames = []
        try:
            async with tts.synthesize("Hello from an OpenAI client.") as stream:
                async for event in stream:
                    frames.append(event.frame)
        finally:
            await tts.aclose()
    assert frames and all(f.sample_rate == OPENAI_SAMPLE_RATE for f in frames)
    audio = frames_to_float(frames)
    assert len(audio) / OPENAI_SAMPLE_RATE > 1.0
    assert rms(audio) > 0.02


async def test_past_the_engines_capacity_speech_is_a_503_with_retry_after(
    piper_settings: localtts.Settings, library: VoiceLibrary
) -> None:
    """Past capacity the caller gets a clear "busy" at once (or after the engine's wait),
    not a slower voice for everyone; the next request after a stream ends works."""
    from livekit.plugins.localtts.engines import EngineScheduler
    from livekit.plugins.localtts.engines.piper import PiperEngine

    engine = PiperEngine(scheduler=EngineScheduler("piper", capacity=1, max_waiting=1,
                                                   wait_s=0.5))
    tts = localtts.TTS(engine=engine, settings=piper_settings)
    async with running_app(piper_settings, tts, library) as (_, client):
        speaking = engine.scheduler.admission.acquire()  # another caller is speaking
        health = (await client.get("/health")).json()
        assert health["capacity"] == 1
        assert health["engine_streams"] == {"speaking": 1, "waiting": 0, "rejected": 0}
        started = time.perf_counter()
        busy = await client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hi."})
        waited = time.perf_counter() - started
        assert busy.status_code == 503, busy.text
        assert busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["code"] == "engine_busy"
        assert "busy" in busy.json()["error"]["message"]
        assert 0.5 <= waited < 3.0  # it waited its turn (0.5 s), once: no retries
        speaking.release()
        ok = await client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hi."})
        assert ok.status_code == 200 and rms(pcm_audio(ok.content)) > 0.02
        assert (await client.get("/health")).json()["engine_streams"]["rejected"] == 1


async def test_speech_wav_has_a_streaming_header_and_real_audio(
    service: tuple[Any, httpx.AsyncClient],
) -> None:
    _, client = service
    response = await client.post(
        "/v1/audio/speech",
        json={"model": "piper", "input": "Hello there. How are you today?", "voice": "default",
              "response_format": "wav", "speed": 1.0},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    data = response.content
    assert data[:4] == b"RIFF" and data[8:16] == b"WAVEfmt "
    assert struct.unpack("<I", data[4:8])[0] == 0xFFFFFFFF  # length unknown while streaming
    _, fmt, channels, rate, _, _, bits = struct.unpack("<IHHIIHH", data[16:36])
    assert (fmt, channels, rate, bits) == (1, 1, OPENAI_SAMPLE_RATE, 16)
    assert data[36:40] == b"data"
    audio = pcm_audio(data[44:])
    assert len(audio) / OPENAI_SAMPLE_RATE > 1.0
    assert rms(audio) > 0.02


async def test_speed_changes_the_duration(service: tuple[Any, httpx.AsyncClient]) -> None:
    _, client = service
    lengths = {}
    for speed in (1.0, 2.0):
        response = await client.post(
            "/v1/audio/speech",
            json={"model": "tts-1", "input": "Counting one, two, three, four.", "speed": speed},
        )
        assert response.status_code == 200
        lengths[speed] = len(response.content)
    assert lengths[2.0] < 0.7 * lengths[1.0]


# ---------------------------------------------------------------------------- health, metrics


async def test_health_warming_then_ready(
    piper_settings: localtts.Settings, library: VoiceLibrary
) -> None:
    # a fresh, unloaded engine: the service must warm it before saying "ready"
    engine = create_engine("piper", piper_settings)
    tts = localtts.TTS(engine=engine, settings=piper_settings)
    async with running_app(piper_settings, tts, library, wait=False) as (app, client):
        response = await client.get("/health")
        assert response.status_code == 503
        assert response.json()["status"] == "warming"
        refused = await client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hi."})
        assert refused.status_code == 503
        assert refused.headers["retry-after"]
        assert "warming up" in refused.json()["error"]["message"]

        await app.state.service.wait_started()
        response = await client.get("/health")
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "ready", body["problems"]
        assert body["engine"] == "piper" and body["device"] == "cpu"
        assert body["dtype"] == "float32" and "onnxruntime" in body["optimizations"]
        assert body["database"]["status"] == "ok"
        assert body["gpu_memory"] is None  # CPU: nothing to report
        assert body["livekit_configured"] is False
        assert engine.info().loaded is True


async def test_health_degraded_without_database_yet_still_speaks(
    piper_settings: localtts.Settings,
    piper_tts: localtts.TTS,
    dead_database_url: str,
    tmp_path: Any,
) -> None:
    library = VoiceLibrary(
        database_url=dead_database_url, voices_dir=None, data_dir=tmp_path,
        connect_attempts=1, connect_backoff=0.01, connect_timeout=1.0,
    )  # fmt: skip
    await library.start()
    try:
        async with running_app(piper_settings, piper_tts, library) as (_, client):
            body = (await client.get("/health")).json()
            assert body["status"] == "degraded"
            assert body["database"]["status"] == "degraded"
            assert any("voice library degraded" in p for p in body["problems"])
            speech = await client.post(
                "/v1/audio/speech",
                json={"model": "tts-1", "input": "Hi.", "response_format": "pcm"},
            )
            assert speech.status_code == 200 and rms(pcm_audio(speech.content)) > 0.01
            upload = await client.post(
                "/api/voices", data={"voice_id": "x"}, files={"file": ("x.wav", b"RIFF")}
            )
            assert upload.status_code == 503
            assert upload.json()["error"]["code"] == "database_unavailable"
    finally:
        await library.aclose()


async def test_metrics_report_latency_rtf_and_errors(
    service: tuple[Any, httpx.AsyncClient],
) -> None:
    _, client = service
    ok = await client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hi."})
    assert ok.is_success
    empty = await client.post("/v1/audio/speech", json={"model": "tts-1", "input": ""})
    assert empty.status_code == 422  # counted below as the one invalid_request
    text = (await client.get("/metrics")).text
    assert 'localtts_first_audio_seconds_count{endpoint="speech"} 1.0' in text
    assert 'localtts_real_time_factor_count{endpoint="speech"} 1.0' in text
    assert 'localtts_active_streams{endpoint="speech"} 0.0' in text
    assert 'localtts_errors_total{kind="invalid_request"} 1.0' in text
    rtf = float(
        next(
            line.split()[-1]
            for line in text.splitlines()
            if line.startswith('localtts_real_time_factor_sum{endpoint="speech"}')
        )
    )
    assert 0.0 < rtf < 10.0


# ---------------------------------------------------------------------------- voices


async def test_voices_crud(service: tuple[Any, httpx.AsyncClient], piper_tts: localtts.TTS) -> None:
    _, client = service
    clip = await piper_clip(piper_tts, CLIP_TEXT)
    assert (await client.get("/api/voices")).json() == {"voices": []}

    created = await client.post(
        "/api/voices",
        data={"voice_id": "narrator «n°1»", "name": "Narrator", "language": "en"},
        files={"file": ("narrator.wav", clip, "audio/wav")},
    )
    assert created.status_code == 201, created.text
    info = created.json()
    assert info["voice_id"] == "narrator «n°1»" and info["name"] == "Narrator"
    assert info["language"] == "en" and info["duration"] > 2.0

    listed = (await client.get("/api/voices")).json()["voices"]
    assert [v["voice_id"] for v in listed] == ["narrator «n°1»"]
    one = await client.get("/api/voices/narrator «n°1»")
    assert one.status_code == 200 and one.json()["name"] == "Narrator"

    again = await client.post(
        "/api/voices", data={"voice_id": "narrator «n°1»"}, files={"file": ("n.wav", clip)}
    )
    assert again.status_code == 409 and again.json()["error"]["code"] == "voice_exists"
    assert "replace=true" in again.json()["error"]["message"]
    replaced = await client.post(
        "/api/voices",
        data={"voice_id": "narrator «n°1»", "name": "Renamed", "replace": "true"},
        files={"file": ("n.wav", clip)},
    )
    assert replaced.status_code == 201 and replaced.json()["name"] == "Renamed"

    # Piper cannot clone: a clear 400 naming the way out, never silence
    spoken = await client.post(
        "/v1/audio/speech",
        json={"model": "tts-1", "input": "Hello.", "voice": "narrator «n°1»"},
    )
    assert spoken.status_code == 400
    assert spoken.json()["error"]["code"] == "unsupported_voice"
    assert "xtts or chatterbox" in spoken.json()["error"]["message"]

    assert (await client.delete("/api/voices/narrator «n°1»")).status_code == 204
    assert (await client.get("/api/voices")).json() == {"voices": []}
    gone = await client.delete("/api/voices/narrator «n°1»")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "unknown_voice"


# ---------------------------------------------------------------------------- auth


async def test_bearer_token_guards_synthesis_and_voices(
    piper_settings: localtts.Settings, piper_tts: localtts.TTS, library: VoiceLibrary
) -> None:
    service_settings = ServiceSettings(_env_file=None, api_key="s3cret-token")  # type: ignore[call-arg]
    async with running_app(
        piper_settings, piper_tts, library, service_settings=service_settings
    ) as (_, client):
        speech = {"model": "tts-1", "input": "Hi."}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
            response = await client.post("/v1/audio/speech", json=speech, headers=headers)
            assert response.status_code == 401, headers
            assert response.headers["www-authenticate"] == "Bearer"
            assert "LOCALTTS_API_KEY" in response.json()["error"]["message"]
        assert (await client.get("/api/voices")).status_code == 401
        assert (await client.delete("/api/voices/x")).status_code == 401
        room = {"text": "Hi.", "room_name": "r"}
        assert (await client.post("/api/tts/synthesize", json=room)).status_code == 401

        good = {"Authorization": "Bearer s3cret-token"}
        ok = await client.post("/v1/audio/speech", json=speech, headers=good)
        assert ok.status_code == 200 and len(ok.content) > 0
        assert (await client.get("/api/voices", headers=good)).status_code == 200
        # probes stay open: orchestrators and Prometheus carry no token
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200


# ---------------------------------------------------------------------------- bad input

BAD_SPEECH: list[tuple[str, Any, int, str]] = [
    ("empty", {"model": "tts-1", "input": ""}, 422, "nothing to speak"),
    ("blank", {"model": "tts-1", "input": "  \n\t "}, 422, "nothing to speak"),
    ("control only", {"model": "tts-1", "input": "\x00\x01\x07\x1b"}, 422, "nothing to speak"),
    ("emoji only", {"model": "tts-1", "input": "🙂🙂"}, 422, "nothing to speak"),
    ("huge", {"model": "tts-1", "input": "word " * 2_001}, 422, f"at most {MAX_TEXT_CHARS}"),
    ("no input", {"model": "tts-1"}, 422, "input"),
    ("input not text", {"model": "tts-1", "input": ["a"]}, 422, "input"),
    ("unknown voice", {"model": "tts-1", "input": "Hi.", "voice": "ghost"}, 404, "ghost"),
    ("format", {"model": "tts-1", "input": "Hi.", "response_format": "ogg"}, 422, "mp3, opus"),
    ("unknown model", {"model": "gpt-9", "input": "Hi."}, 400, "unknown model 'gpt-9'"),
    ("speed too high", {"model": "tts-1", "input": "Hi.", "speed": 9}, 422, "speed"),
    ("speed text", {"model": "tts-1", "input": "Hi.", "speed": "fast"}, 422, "speed"),
    ("other engine", {"model": "chatterbox", "input": "Hi."}, 400, "not loaded"),
    ("bad language", {"model": "tts-1", "input": "Hi.", "language": "../x"}, 422, "language"),
    ("not an object", [1, 2], 422, ""),
]

BAD_ROOM: list[tuple[str, Any, int, str]] = [
    ("no room", {"text": "Hi."}, 422, "room_name"),
    ("empty room", {"text": "Hi.", "room_name": ""}, 422, "room_name"),
    ("control in room", {"text": "Hi.", "room_name": "a\x00b"}, 422, "room_name"),
    ("typo knob", {"text": "Hi.", "room_name": "r", "temprature": 0.5}, 422, "temprature"),
    ("bad exaggeration", {"text": "Hi.", "room_name": "r", "exaggeration": -1}, 422, "exagg"),
    ("empty text", {"text": "", "room_name": "r"}, 422, "nothing to speak"),
]


async def test_bad_inputs_get_clear_4xx_and_the_service_keeps_serving(
    piper_settings: localtts.Settings, piper_tts: localtts.TTS, library: VoiceLibrary
) -> None:
    connector = CapturingConnector(piper_tts.sample_rate)
    async with running_app(piper_settings, piper_tts, library, connector=connector) as (
        _,
        client,
    ):
        cases = [("/v1/audio/speech", *c) for c in BAD_SPEECH]
        cases += [("/api/tts/synthesize", *c) for c in BAD_ROOM]
        for path, label, body, status, says in cases:
            response = await client.post(path, json=body)
            assert response.status_code == status, (label, response.text)
            error = response.json()["error"]
            assert says in error["message"], (label, error)
            assert "Traceback" not in response.text and 'File "' not in response.text
            assert len(response.text) < 4_000, label  # the huge input is not echoed back

        raw = {"content-type": "application/json"}
        for label, payload in [
            ("malformed", b'{"model": "tts-1", "input": '),
            ("not utf-8", b'{"model": "tts-1", "input": "\xff\xfe"}'),
            ("trailing junk", b'{"model": "tts-1", "input": "Hi."} extra'),
        ]:
            response = await client.post("/v1/audio/speech", content=payload, headers=raw)
            assert response.status_code == 400, (label, response.text)
            assert response.json()["error"]["code"].startswith("malformed_"), label

        too_big = b'{"model": "tts-1", "input": "' + b"a" * 400_000 + b'"}'
        response = await client.post("/v1/audio/speech", content=too_big, headers=raw)
        assert response.status_code == 413

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
            yield b'{"model": "tts-1", "input": "'
            for _ in range(40):
                yield b"a" * 10_000
            yield b'"}'

        response = await client.post("/v1/audio/speech", content=chunked(), headers=raw)
        assert response.status_code == 413

        assert (await client.get("/no/such/path")).status_code == 404
        assert (await client.put("/v1/audio/speech")).status_code == 405

        # control characters inside real text are dropped, the rest is spoken
        mixed = await client.post(
            "/v1/audio/speech",
            json={
                "model": "tts-1",
                "input": "Hello\x00 there\x07, friend.",
                "response_format": "pcm",
            },
        )
        assert mixed.status_code == 200 and rms(pcm_audio(mixed.content)) > 0.02
        # and after all that, a plain request still works
        ok = await client.post(
            "/v1/audio/speech",
            json={"model": "tts-1", "input": "Still here.", "response_format": "pcm"},
        )
        assert ok.status_code == 200 and rms(pcm_audio(ok.content)) > 0.02
        assert (await client.get("/health")).json()["status"] == "ready"


async def test_bad_uploads(service: tuple[Any, httpx.AsyncClient], piper_tts: localtts.TTS) -> None:
    _, client = service
    rng = np.random.default_rng(0)
    cases: list[tuple[str, dict[str, str], Any, int, str]] = [
        ("corrupt", {"voice_id": "c"}, ("c.wav", rng.bytes(50_000)), 400, "invalid_voice"),
        ("empty file", {"voice_id": "e"}, ("e.wav", b""), 400, "invalid_voice"),
        ("silence", {"voice_id": "s"}, ("s.wav", _wav(np.zeros(48_000), 16_000)), 400,
         "invalid_voice"),
        ("too short", {"voice_id": "t"},
         ("t.wav", await piper_clip(piper_tts, "Hi.")), 400, "invalid_voice"),
        ("control in id", {"voice_id": "a\x00b"}, ("a.wav", b"RIFF"), 400, "invalid_voice"),
        ("no id", {}, ("a.wav", b"RIFF"), 422, "invalid_request"),
        ("bad language", {"voice_id": "l", "language": "english!"}, ("l.wav", b"RIFF"), 422,
         "invalid_request"),
    ]  # fmt: skip
    for label, data, file, status, code in cases:
        response = await client.post("/api/voices", data=data, files={"file": file})
        assert response.status_code == status, (label, response.text)
        assert response.json()["error"]["code"] == code, label
    no_file = await client.post("/api/voices", data={"voice_id": "n"})
    assert no_file.status_code == 422

    oversize = await client.post(
        "/api/voices",
        data={"voice_id": "big"},
        files={"file": ("big.wav", b"\0" * (MAX_UPLOAD_BYTES + 100_000))},
    )
    assert oversize.status_code == 413
    assert oversize.json()["error"]["code"] == "payload_too_large"
    assert (await client.get("/api/voices")).json() == {"voices": []}  # nothing half-stored

    good = await client.post(
        "/api/voices",
        data={"voice_id": "fine"},
        files={"file": ("fine.wav", await piper_clip(piper_tts, CLIP_TEXT))},
    )
    assert good.status_code == 201, good.text


def _wav(audio: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


# ---------------------------------------------------------------------------- rooms


def tone_factory(level: float, seconds: float, rate: int) -> Callable[[], AsyncIterator[Any]]:
    """An utterance of constant level: which utterance played when is readable from the
    audio that comes out of the track."""

    async def frames() -> AsyncIterator[rtc.AudioFrame]:
        per_frame = rate // 50  # 20 ms
        for _ in range(int(seconds * 50)):
            data = np.full(per_frame, int(level * 32767), dtype=np.int16)
            yield rtc.AudioFrame(data.tobytes(), rate, 1, per_frame)
            await asyncio.sleep(0)

    return frames


async def test_room_utterances_play_in_order_and_rooms_in_parallel() -> None:
    rate = 24_000
    connector = CapturingConnector(rate)
    rooms = RoomPublishers(connector=connector, sample_rate=rate, idle_timeout=30)
    try:
        reports: list[PlaybackReport] = await asyncio.gather(
            rooms.speak("alpha", tone_factory(0.1, 0.6, rate)),
            rooms.speak("alpha", tone_factory(0.3, 0.6, rate)),
            rooms.speak("alpha", tone_factory(0.5, 0.6, rate)),
            rooms.speak("beta", tone_factory(0.7, 0.6, rate)),
        )
        a1, a2, a3, b1 = reports
        # one room: each utterance starts after the previous one is in the room
        assert a1.finished_at <= a2.started_at and a2.finished_at <= a3.started_at
        assert a3.queued_s > a2.queued_s > a1.queued_s
        # different rooms: beta did not wait for alpha
        assert b1.started_at < a1.finished_at and b1.queued_s < a2.queued_s
        assert all(abs(r.audio_s - 0.6) < 0.01 for r in reports)
        assert len(connector.rooms) == 2 and sorted(rooms.rooms) == ["alpha", "beta"]

        for name in ("alpha", "beta"):
            publisher = rooms.publisher(name)
            assert publisher is not None
            await publisher.wait_for_playout()
        await asyncio.sleep(0.2)  # the last frames on their way through the stream
        alpha = connector.room("alpha").audio()
        loud = alpha[np.abs(alpha) > 0.05]
        levels = [round(float(x), 1) for x in loud]
        order = [lvl for i, lvl in enumerate(levels) if i == 0 or lvl != levels[i - 1]]
        assert order == [0.1, 0.3, 0.5], order[:10]
        for level in (0.1, 0.3, 0.5):  # each utterance arrived whole
            assert abs(np.sum(np.isclose(loud, level, atol=0.02)) / rate - 0.6) < 0.05
        beta = connector.room("beta").audio()
        assert abs(np.sum(np.isclose(beta, 0.7, atol=0.02)) / rate - 0.6) < 0.05
    finally:
        await rooms.aclose()
    assert all(room.closed for room in connector.rooms)


async def test_idle_room_is_left_and_rejoined() -> None:
    rate = 24_000
    connector = CapturingConnector(rate)
    rooms = RoomPublishers(connector=connector, sample_rate=rate, idle_timeout=0.3)
    try:
        await rooms.speak("quiet", tone_factory(0.2, 0.1, rate))
        first = connector.room("quiet")
        for _ in range(200):
            if first.closed:
                break
            await asyncio.sleep(0.02)
        assert first.closed and rooms.rooms == []
        await rooms.speak("quiet", tone_factory(0.2, 0.1, rate))
        assert len(connector.rooms) == 2 and not connector.rooms[1].closed
    finally:
        await rooms.aclose()


async def test_failed_join_fails_that_request_and_the_next_one_rejoins() -> None:
    rate = 24_000
    connector = CapturingConnector(rate)
    connector.fail_next = 1
    rooms = RoomPublishers(connector=connector, sample_rate=rate, idle_timeout=30)
    try:
        with pytest.raises(RoomJoinError, match="could not join LiveKit room 'r'"):
            await rooms.speak("r", tone_factory(0.2, 0.1, rate))
        report = await rooms.speak("r", tone_factory(0.2, 0.1, rate))
        assert report.audio_s > 0
    finally:
        await rooms.aclose()


async def test_room_endpoint_speaks_piper_into_the_room(
    piper_settings: localtts.Settings, piper_tts: localtts.TTS, library: VoiceLibrary
) -> None:
    connector = CapturingConnector(piper_tts.sample_rate)
    async with running_app(piper_settings, piper_tts, library, connector=connector) as (
        app,
        client,
    ):
        knobs = {
            "text": "Second in line.",
            "room_name": "a",
            "speed": 1.2,
            "exaggeration": 0.5,
            "cfg_weight": 0.4,
            "temperature": 0.7,
            "language": "en",
        }
        first, second, other = await asyncio.gather(
            client.post("/api/tts/synthesize", json={"text": "Good morning.", "room_name": "a"}),
            client.post("/api/tts/synthesize", json=knobs),
            client.post("/api/tts/synthesize", json={"text": "Elsewhere.", "room_name": "b"}),
        )
        for response in (first, second, other):
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["engine"] == "piper" and body["voice_id"] is None
            assert body["first_chunk_ms"] > 0 and body["total_time_ms"] >= body["first_chunk_ms"]
            assert body["audio_duration_seconds"] > 0.4
            assert body["real_time_factor"] == pytest.approx(
                body["total_time_ms"] / 1000 / body["audio_duration_seconds"], rel=0.01
            )
            assert body["optimizations"] == ["onnxruntime", "decoder windows"]
        # one room plays one utterance at a time: whichever of the two reached the room's
        # queue second waited for the other to play (gather does not fix which is first)
        waits = sorted(r.json()["queued_ms"] for r in (first, second))
        assert waits[1] > waits[0] + 20, waits  # (its wait: the other's synthesis at least)
        publisher = app.state.service.rooms.publisher("a")
        await publisher.wait_for_playout()
        await asyncio.sleep(0.2)
        heard = connector.room("a").audio()
        spoken = first.json()["audio_duration_seconds"] + second.json()["audio_duration_seconds"]
        assert rms(heard) > 0.01
        assert np.sum(np.abs(heard) > 0.01) / piper_tts.sample_rate > 0.3 * spoken
        assert rms(connector.room("b").audio()) > 0.01

        unknown = await client.post(
            "/api/tts/synthesize", json={"text": "Hi.", "room_name": "a", "voice_id": "ghost"}
        )
        assert unknown.status_code == 404
        connector.fail_next = 1
        refused = await client.post("/api/tts/synthesize", json={"text": "Hi.", "room_name": "c"})
        assert refused.status_code == 502 and "could not join" in refused.text
        text = (await client.get("/metrics")).text
        assert 'localtts_first_audio_seconds_count{endpoint="room"} 3.0' in text
        assert 'localtts_room_queue_depth{room="a"} 0.0' in text
        assert 'localtts_errors_total{kind="room_join_failed"} 1.0' in text


async def test_room_endpoint_without_livekit_says_what_to_set(
    service: tuple[Any, httpx.AsyncClient],
) -> None:
    _, client = service
    response = await client.post("/api/tts/synthesize", json={"text": "Hi.", "room_name": "r"})
    assert response.status_code == 503
    message = response.json()["error"]["message"]
    for name in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
        assert name in message


async def test_livekit_token_and_an_unreachable_server(
    piper_settings: localtts.Settings,
    piper_tts: localtts.TTS,
    library: VoiceLibrary,
    dead_database_url: str,  # a local port nothing listens on
) -> None:
    from livekit import api

    port = dead_database_url.rsplit(":", 1)[1].split("/")[0]
    secret = "a-secret-long-enough-for-hs256-signing"
    connector = LiveKitConnector(url=f"ws://127.0.0.1:{port}", api_key="devkey", api_secret=secret)
    claims = api.TokenVerifier("devkey", secret).verify(connector.token("room «1»"))
    assert claims.identity == connector.identity and claims.kind == "agent"
    assert claims.video is not None and claims.video.room == "room «1»"
    assert claims.video.room_join and claims.video.can_publish
    assert not claims.video.can_subscribe

    service_settings = ServiceSettings(  # type: ignore[call-arg]
        _env_file=None,
        livekit_url=f"ws://127.0.0.1:{port}",
        livekit_api_key="devkey",
        livekit_api_secret=secret,
    )
    async with running_app(
        piper_settings, piper_tts, library, service_settings=service_settings
    ) as (_, client):
        assert (await client.get("/health")).json()["livekit_configured"] is True
        response = await client.post("/api/tts/synthesize", json={"text": "Hi.", "room_name": "r"})
        assert response.status_code == 502
        assert "could not join LiveKit room 'r'" in response.json()["error"]["message"]
        ok = await client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Still fine."})
        assert ok.status_code == 200
