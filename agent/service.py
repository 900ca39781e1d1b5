"""The synthesis service: speech into LiveKit rooms, OpenAI-compatible audio over HTTP,
voices, health and metrics. `create_app()` builds it; `localtts serve` runs it.

One engine and one VoiceLibrary serve the whole process. Every request speaks through
its own lightweight `localtts.TTS` sharing that engine, so per-request options never
leak between requests. The app answers at once on start: /health says "warming" while
the model warms up and voices preload (in parallel), synthesis answers 503 until then.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import math
import struct
import time
import unicodedata
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Depends, FastAPI, File, Form, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from livekit import rtc
from livekit.agents import APIConnectOptions, APIError, APIStatusError
from livekit.agents.metrics import TTSMetrics
from livekit.plugins import localtts
from livekit.plugins.localtts.engines import (
    EngineUnavailableError,
    UnknownVoiceError,
    UnsupportedVoiceError,
    VoiceError,
)
from livekit.plugins.localtts.models import ENGINE_NAMES
from livekit.plugins.localtts.text import is_speakable, normalize
from livekit.plugins.localtts.voices.audio import MAX_AUDIO_BYTES
from livekit.plugins.localtts.voices.errors import DatabaseUnavailableError, VoiceExistsError
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import ServiceMetrics
from .rooms import LiveKitConnector, RoomConnector, RoomJoinError, RoomPublishers

if TYPE_CHECKING:
    from livekit.plugins.localtts.voices import VoiceLibrary

logger = logging.getLogger("localtts.service")

MAX_TEXT_CHARS = 10_000  # ~10 minutes of speech; longer texts belong in several requests
MAX_JSON_BODY_BYTES = 256 * 1024  # a maximal text, escaped, fits several times over
MAX_UPLOAD_BYTES = MAX_AUDIO_BYTES  # the voice library's own bound on a reference clip
_MULTIPART_OVERHEAD = 64 * 1024  # form fields and boundaries around the clip
OPENAI_SAMPLE_RATE = 24_000  # OpenAI's pcm is 24 kHz mono s16le; its clients assume it
# OpenAI's stock voices: clients always send one; unless the library has a voice of that
# name, they mean "the default voice" here, so an OpenAI client works unchanged
OPENAI_VOICE_NAMES = frozenset(
    {"alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx",
     "sage", "shimmer", "verse"}
)  # fmt: skip
ROOM_IDLE_TIMEOUT_S = 60.0
_WARMING_RETRY_AFTER_S = 2

_LANGUAGE_PATTERN = r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$"
_NO_CONTROL_PATTERN = r"^[^\x00-\x1f\x7f]+$"


# ---------------------------------------------------------------- errors


class ServiceError(Exception):
    """An error meant for the client: status, a stable code and a readable message."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def _error_body(status: int, code: str, message: str) -> dict[str, Any]:
    # OpenAI's error shape: its clients (and ours) read error.message
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "code": code}}


def _error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(_error_body(status, code, message), status_code=status, headers=headers)


def _voice_error(e: Exception) -> ServiceError:
    """Map a voice library / engine voice error to what the client should see."""
    if isinstance(e, UnknownVoiceError):
        return ServiceError(404, "unknown_voice", str(e))
    if isinstance(e, VoiceExistsError):
        return ServiceError(409, "voice_exists", f"{e}: send the form field replace=true")
    if isinstance(e, UnsupportedVoiceError):
        return ServiceError(400, "unsupported_voice", str(e))
    if isinstance(e, VoiceError):
        return ServiceError(400, "invalid_voice", str(e))
    if isinstance(e, DatabaseUnavailableError):
        return ServiceError(503, "database_unavailable", str(e))
    raise e


def _synthesis_error(e: Exception, engine_name: str) -> ServiceError:
    """Map an error raised while synthesizing (the plugin's APIError or a voice error)."""
    if isinstance(e, (VoiceError, DatabaseUnavailableError)):
        return _voice_error(e)
    if isinstance(e, APIStatusError) and e.status_code == 404:
        return ServiceError(404, "unknown_voice", e.message)
    if isinstance(e, APIStatusError) and e.status_code == 503:  # the engine at capacity
        retry_after = (e.body or {}).get("retry_after_s", _WARMING_RETRY_AFTER_S)
        return ServiceError(503, "engine_busy", e.message,
                            headers={"Retry-After": str(math.ceil(retry_after))})
    if isinstance(e, APIStatusError) and 400 <= e.status_code < 500:
        return ServiceError(400, "invalid_request", e.message)
    if isinstance(e, APIError):
        return ServiceError(500, "engine_error", f"the {engine_name} engine failed: {e.message}")
    if isinstance(e, EngineUnavailableError):
        return ServiceError(503, "engine_unavailable", str(e))
    return ServiceError(500, "engine_error", f"the {engine_name} engine failed: {type(e).__name__}")


class _PayloadTooLarge(HTTPException):
    """Raised from `receive` while a body is read: an HTTPException, so FastAPI's body
    parsing lets it through instead of turning it into a generic 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes")


class BodySizeLimit:
    """Bounds every request body before it is read into memory or spooled to disk:
    by Content-Length up front, and by counting bytes for chunked uploads."""

    def __init__(self, app: ASGIApp, *, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > limit:
                    response = _error_response(
                        413, "payload_too_large", f"request body exceeds {limit} bytes"
                    )
                    await response(scope, receive, send)
                    return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _PayloadTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


# ---------------------------------------------------------------- request models


class _Synthesis(BaseModel):
    """Knobs shared by the room and HTTP endpoints; engines ignore the ones they lack."""

    language: Annotated[str | None, Field(pattern=_LANGUAGE_PATTERN, max_length=32)] = None
    speed: Annotated[float, Field(ge=0.25, le=4.0)] = 1.0


def _check_text(text: str) -> str:
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(
            f"text is {len(text)} characters long; at most {MAX_TEXT_CHARS} are allowed "
            "per request (split longer texts)"
        )
    if not is_speakable(normalize(text)):
        raise ValueError(
            "text has nothing to speak (empty, or only punctuation, symbols or control characters)"
        )
    return text


class RoomSpeechRequest(_Synthesis):
    """POST /api/tts/synthesize: speak `text` into LiveKit room `room_name`."""

    model_config = ConfigDict(extra="forbid")  # a misspelt knob is an error, not ignored

    text: str
    room_name: Annotated[str, Field(min_length=1, max_length=128, pattern=_NO_CONTROL_PATTERN)]
    voice_id: Annotated[str | None, Field(min_length=1, max_length=128)] = None
    exaggeration: Annotated[float | None, Field(ge=0.0, le=2.0)] = None
    cfg_weight: Annotated[float | None, Field(ge=0.0, le=1.0)] = None
    temperature: Annotated[float | None, Field(gt=0.0, le=5.0)] = None

    @field_validator("text")
    @classmethod
    def _speakable_text(cls, value: str) -> str:
        return _check_text(value)


class SpeechRequest(_Synthesis):
    """POST /v1/audio/speech, as OpenAI's: unknown fields (instructions, stream_format)
    are accepted and ignored so OpenAI clients work unchanged."""

    model_config = ConfigDict(extra="ignore")

    # OpenAI requires it; here the host's engine answers whatever it says
    model: Annotated[str, Field(min_length=1, max_length=128)] = "localtts"
    input: str
    voice: Annotated[str | None, Field(max_length=128)] = None
    response_format: str = "pcm"
    language: Annotated[str | None, Field(pattern=_LANGUAGE_PATTERN, max_length=32)] = None

    @field_validator("input")
    @classmethod
    def _speakable_input(cls, value: str) -> str:
        return _check_text(value)

    @field_validator("response_format")
    @classmethod
    def _format(cls, value: str) -> str:
        if value not in ("pcm", "wav"):
            raise ValueError(
                f"response_format {value!r} is not supported: use pcm (24 kHz 16-bit mono) or wav"
            )
        return value


class RoomSpeechResponse(BaseModel):
    room_name: str
    engine: str
    voice_id: str | None
    first_chunk_ms: float | None
    total_time_ms: float
    queued_ms: float
    audio_duration_seconds: float
    real_time_factor: float | None
    optimizations: list[str]


# ---------------------------------------------------------------- the process's state


class ServiceState:
    """The one engine, voice library and room publishers of this process."""

    def __init__(
        self,
        settings: localtts.Settings,
        *,
        tts: localtts.TTS | None,
        voice_library: VoiceLibrary | None,
        room_connector: RoomConnector | None,
        room_idle_timeout: float,
    ) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        self._tts = tts
        self.voice_library = voice_library
        self._owns_library = False
        self._room_connector = room_connector
        self._room_idle_timeout = room_idle_timeout
        self.rooms: RoomPublishers | None = None
        self.warming = True
        self.engine_error: str | None = None
        self.problems: list[str] = []
        self.preload: Any = None  # PreloadReport
        self.started_at = time.monotonic()
        self.ready_after_s: float | None = None
        self._startup: asyncio.Task[None] | None = None

    @property
    def tts(self) -> localtts.TTS:
        assert self._tts is not None, "the service has not started"
        return self._tts

    @property
    def engine(self) -> localtts.Engine:
        return self.tts.engine

    async def open(self) -> None:
        """Build what was not injected and start warming in the background."""
        if self._tts is None:
            # engine choice is quick; a `strict` failure here stops the service at once
            self._tts = localtts.TTS(engine=self.settings.engine, settings=self.settings)
        if self.voice_library is None:
            from livekit.plugins.localtts.voices import VoiceLibrary

            self.voice_library = VoiceLibrary.from_settings(self.settings)
            self._owns_library = True
        connector = self._room_connector or _livekit_connector(self.settings)
        if connector is not None:
            self.rooms = RoomPublishers(
                connector=connector,
                sample_rate=self.engine.sample_rate,
                idle_timeout=self._room_idle_timeout,
                metrics=self.metrics,
            )
        self._startup = asyncio.create_task(self._warm_up(), name="localtts-warmup")

    async def _warm_up(self) -> None:
        started = time.perf_counter()

        async def engine() -> None:
            try:
                await self.tts.warmup()
            except Exception as e:
                self.engine_error = f"{type(e).__name__}: {e}"
                logger.exception("the %s engine failed to load", self.engine.name)

        async def voices() -> None:
            library = self.voice_library
            assert library is not None
            if self._owns_library:
                try:
                    await library.start()
                except Exception as e:
                    self.problems.append(f"voice library failed to start: {e}")
                    logger.exception("voice library failed to start")
                    return
            try:
                self.preload = await library.preload(self.engine)
            except Exception as e:
                self.problems.append(f"voice preload failed: {type(e).__name__}: {e}")
                logger.exception("voice preload failed")

        await asyncio.gather(engine(), voices())
        self.ready_after_s = time.perf_counter() - started
        self.warming = False
        logger.info("service %s after %.2f s", self.status(), self.ready_after_s)

    async def wait_started(self) -> None:
        """Until warmup and preload are done (tests, and `serve` logging)."""
        if self._startup is not None:
            await asyncio.shield(self._startup)

    async def aclose(self) -> None:
        if self._startup is not None and not self._startup.done():
            self._startup.cancel()
            await asyncio.gather(self._startup, return_exceptions=True)
        if self.rooms is not None:
            await self.rooms.aclose()
        if self._tts is not None:
            await self._tts.aclose()
        if self._owns_library and self.voice_library is not None:
            await self.voice_library.aclose()

    # ------------------------------------------------------------ health

    def status(self) -> Literal["ready", "warming", "degraded"]:
        if self.warming:
            return "warming"
        if self.engine_error or self.problems or self.degradations():
            return "degraded"
        return "ready"

    def degradations(self) -> list[str]:
        found = []
        selection = self.tts.selection
        if selection is not None:
            found.extend(selection.warnings)  # e.g. Piper standing in for missing weights
        library = self.voice_library
        if library is not None and library.status != "ok" and not self.warming:
            found.append(f"voice library degraded: {library.status_detail}")
        if self.preload is not None and self.preload.failed:
            failed = sorted(self.preload.failed)
            shown = ", ".join(repr(v) for v in failed[:5]) + (", ..." if len(failed) > 5 else "")
            found.append(f"{len(failed)} voice(s) failed to preload: {shown} (see voices.failed)")
        return found

    def require_ready(self) -> None:
        if self.warming:
            raise ServiceError(
                503,
                "warming_up",
                "the engine is warming up; retry in a moment (GET /health says when ready)",
                headers={"Retry-After": str(_WARMING_RETRY_AFTER_S)},
            )
        if self.engine_error:
            raise ServiceError(
                503, "engine_unavailable", f"the engine failed to load: {self.engine_error}"
            )

    async def health(self) -> dict[str, Any]:
        info = self.engine.info()
        library = self.voice_library
        known = len(await library.list()) if library is not None else 0
        preload = self.preload
        return {
            "status": self.status(),
            "problems": ([self.engine_error] if self.engine_error else [])
            + self.problems
            + self.degradations(),
            "engine": info.engine,
            "device": info.device,
            "dtype": info.dtype,
            "optimizations": list(info.optimizations),
            "sample_rate": self.engine.sample_rate,
            "model_revision": info.model_revision,
            # streams kept at real time, and how many speak or wait now (past it: 503)
            "capacity": info.capacity,
            "engine_streams": {
                "speaking": self.engine.scheduler.admission.active,
                "waiting": self.engine.scheduler.admission.waiting,
                "rejected": self.engine.scheduler.admission.rejected,
            },
            "selection": dataclasses.asdict(self.tts.selection) if self.tts.selection else None,
            "voices": {
                "known": known,
                "loaded": len(preload.ready) if preload is not None else 0,
                "failed": dict(preload.failed) if preload is not None else {},
                "note": preload.skipped if preload is not None else None,
            },
            "database": {
                "status": library.status if library else "absent",
                "detail": library.status_detail if library else "no voice library",
            },
            "gpu_memory": _gpu_memory(info.device),
            "rooms": self.rooms.rooms if self.rooms is not None else [],
            "livekit_configured": self.rooms is not None,
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "ready_after_s": round(self.ready_after_s, 3) if self.ready_after_s else None,
        }

    # ------------------------------------------------------------ synthesis

    async def check_voice(self, voice_id: str | None) -> None:
        """Fail before any audio (or room join) when the voice cannot be spoken."""
        if voice_id is None:
            return
        if self.voice_library is None:
            raise ServiceError(404, "unknown_voice", f"unknown voice {voice_id!r}")
        try:
            await self.voice_library.conditioning(voice_id, self.engine)
        except (VoiceError, DatabaseUnavailableError) as e:
            raise _voice_error(e) from e

    async def openai_voice(self, requested: str | None) -> str | None:
        """The voice an OpenAI-style `voice` field means here (see OPENAI_VOICE_NAMES)."""
        if requested in (None, "", "default"):
            return self.settings.voice
        if requested in OPENAI_VOICE_NAMES:
            try:
                if self.voice_library is not None:
                    await self.voice_library.get(requested)
                    return requested
            except UnknownVoiceError:
                pass
            return self.settings.voice
        return requested

    def request_tts(self, *, voice: str | None, **params: Any) -> localtts.TTS:
        """A TTS for one request: its own options, the process's engine and voices."""
        return localtts.TTS(
            engine=self.engine,
            voice=voice,
            voice_library=self.voice_library,
            settings=self.settings,
            limit_to_capacity=True,  # past it: 503 + Retry-After, not a slower voice for all
            **params,
        )


def _livekit_connector(settings: localtts.Settings) -> LiveKitConnector | None:
    if settings.livekit_url and settings.livekit_api_key and settings.livekit_api_secret:
        return LiveKitConnector(
            url=settings.livekit_url,
            api_key=settings.livekit_api_key,
            api_secret=settings.livekit_api_secret,
        )
    return None


def _missing_livekit(settings: localtts.Settings) -> list[str]:
    values = {
        "LIVEKIT_URL": settings.livekit_url,
        "LIVEKIT_API_KEY": settings.livekit_api_key,
        "LIVEKIT_API_SECRET": settings.livekit_api_secret,
    }
    return [name for name, value in values.items() if not value]


def _gpu_memory(device: str) -> dict[str, Any] | None:
    if not device.startswith("cuda"):
        return None
    try:
        import torch

        free, total = torch.cuda.mem_get_info()
        return {
            "device_name": torch.cuda.get_device_name(),
            "allocated_bytes": torch.cuda.memory_allocated(),
            "reserved_bytes": torch.cuda.memory_reserved(),
            "max_allocated_bytes": torch.cuda.max_memory_allocated(),
            "free_bytes": free,
            "total_bytes": total,
        }
    except Exception as e:  # health must answer even when the driver does not
        return {"error": f"{type(e).__name__}: {e}"}


# a busy engine is the client's to retry (503 + Retry-After), not the plugin's: LiveKit's
# default retries would hold the request for several of the engine's waits first
_NO_RETRY = APIConnectOptions(max_retry=0)


async def _frames(tts: localtts.TTS, text: str) -> AsyncGenerator[rtc.AudioFrame, None]:
    """The plugin's audio for `text`, frame by frame, as the engine produces it."""
    try:
        async with tts.synthesize(text, conn_options=_NO_RETRY) as stream:
            async for event in stream:
                yield event.frame
    finally:
        await tts.aclose()


def _resampled(
    frames: AsyncIterator[rtc.AudioFrame], input_rate: int, output_rate: int
) -> AsyncIterator[rtc.AudioFrame]:
    if input_rate == output_rate:
        return frames

    async def resample() -> AsyncIterator[rtc.AudioFrame]:
        resampler = rtc.AudioResampler(
            input_rate, output_rate, quality=rtc.AudioResamplerQuality.MEDIUM
        )
        try:
            async for frame in frames:
                for out in resampler.push(frame):
                    yield out
            for out in resampler.flush():
                yield out
        finally:
            await frames.aclose()  # type: ignore[attr-defined]

    return resample()


def streaming_wav_header(sample_rate: int, *, channels: int = 1, bits: int = 16) -> bytes:
    """A WAV header whose sizes say "unknown" (0xFFFFFFFF): the length of a streamed
    reply is not known when its first bytes leave; players read until the stream ends."""
    unknown = 0xFFFFFFFF
    block_align = channels * bits // 8
    return (
        b"RIFF"
        + struct.pack("<I", unknown)
        + b"WAVEfmt "
        + struct.pack(
            "<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * block_align, block_align, bits
        )
        + b"data"
        + struct.pack("<I", unknown)
    )


class _AudioStreamResponse(StreamingResponse):
    """Closes its body and the synthesis behind it when the response ends however it ends
    (client gone included, even before the first byte), so the engine is told to stop at
    once instead of when a generator is garbage-collected."""

    def __init__(
        self, content: AsyncIterator[bytes], *, close: Callable[[], Any], **kwargs: Any
    ) -> None:
        super().__init__(content, **kwargs)
        self._close = close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]
            await self._close()


# ---------------------------------------------------------------- the app

# module level: handler annotations are strings (postponed) resolved in module globals
_bearer = HTTPBearer(auto_error=False, description="LOCALTTS_API_KEY, when set")


def create_app(
    settings: localtts.Settings | None = None,
    *,
    tts: localtts.TTS | None = None,
    voice_library: VoiceLibrary | None = None,
    room_connector: RoomConnector | None = None,
    room_idle_timeout: float = ROOM_IDLE_TIMEOUT_S,
) -> FastAPI:
    """The service app. Anything not passed is built from `settings` at startup.

    Args:
        settings: defaults to the environment (`LOCALTTS_*`, `DATABASE_URL`, `LIVEKIT_*`).
        tts: a `localtts.TTS` whose engine the service speaks with (warmed up at start).
        voice_library: an already started `VoiceLibrary` (the caller closes it); without
            one, the app starts its own from `settings` and closes it on shutdown.
        room_connector: how rooms are joined; default: LiveKit from `LIVEKIT_*` settings.
        room_idle_timeout: seconds without utterances after which a room is left.
    """
    settings = settings or localtts.get_settings()
    state = ServiceState(
        settings,
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
    app.state.service = state
    _install_error_handlers(app, state.metrics)

    def body_limit(path: str) -> int:
        if path.rstrip("/") == "/api/voices":
            return MAX_UPLOAD_BYTES + _MULTIPART_OVERHEAD
        return MAX_JSON_BODY_BYTES

    app.add_middleware(BodySizeLimit, limit_for=body_limit)

    def require_api_key(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        expected = settings.api_key
        if not expected:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise ServiceError(
                401,
                "unauthorized",
                "missing or wrong bearer token: send 'Authorization: Bearer <LOCALTTS_API_KEY>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    protected = [Depends(require_api_key)]

    # ------------------------------------------------------------ health, metrics

    @app.get("/health", tags=["service"])
    async def health() -> JSONResponse:
        """ready / warming / degraded, the engine and what it runs with, voices, database."""
        body = await state.health()
        usable = body["status"] != "warming" and state.engine_error is None
        return JSONResponse(body, status_code=200 if usable else 503)

    @app.get("/metrics", tags=["service"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus text format."""
        return Response(state.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    # ------------------------------------------------------------ speech into rooms

    @app.post(
        "/api/tts/synthesize",
        tags=["speech"],
        dependencies=protected,
        response_model=RoomSpeechResponse,
    )
    async def synthesize_into_room(body: RoomSpeechRequest) -> RoomSpeechResponse:
        """Speak `text` into LiveKit room `room_name`; answers when the last audio frame is
        in the room (utterances to one room play in order)."""
        if state.rooms is None:
            missing = ", ".join(_missing_livekit(settings))
            raise ServiceError(
                503,
                "livekit_not_configured",
                f"speaking into rooms needs a LiveKit server: set {missing} "
                "(environment or .env) and restart the service",
            )
        state.require_ready()
        voice = body.voice_id if body.voice_id is not None else settings.voice
        await state.check_voice(voice)
        tts_ = state.request_tts(
            voice=voice,
            language=body.language,
            speed=body.speed,
            temperature=body.temperature,
            exaggeration=body.exaggeration,
            cfg_weight=body.cfg_weight,
        )
        # the room takes frames at real time, so only the stream knows when synthesis itself
        # produced its first and last audio (LiveKit's TTSMetrics)
        synthesis: list[TTSMetrics] = []
        tts_.on("metrics_collected", synthesis.append)
        gauge = state.metrics.active_streams.labels("room")
        gauge.inc()
        try:
            report = await state.rooms.speak(body.room_name, lambda: _frames(tts_, body.text))
        except RoomJoinError as e:
            raise ServiceError(502, "room_join_failed", str(e)) from e
        except (APIError, VoiceError, DatabaseUnavailableError, EngineUnavailableError) as e:
            raise _synthesis_error(e, state.engine.name) from e
        finally:
            gauge.dec()
        if synthesis:
            first_audio_s: float | None = synthesis[-1].ttfb
            synthesis_s = synthesis[-1].duration
        else:  # (a stream that played reports them; should one not, the room's times)
            first_audio_s = report.first_audio_s
            synthesis_s = report.finished_at - report.started_at
        state.metrics.observe_synthesis(
            "room",
            first_audio_s=first_audio_s,
            synthesis_s=synthesis_s,
            audio_s=report.audio_s,
        )
        info = state.engine.info()
        return RoomSpeechResponse(
            room_name=body.room_name,
            engine=state.engine.name,
            voice_id=voice,
            first_chunk_ms=_ms(first_audio_s),
            total_time_ms=_ms(synthesis_s) or 0.0,
            queued_ms=_ms(report.queued_s) or 0.0,
            audio_duration_seconds=round(report.audio_s, 3),
            real_time_factor=(
                round(synthesis_s / report.audio_s, 4) if report.audio_s > 0 else None
            ),
            optimizations=list(info.optimizations),
        )

    # ------------------------------------------------------------ OpenAI-compatible audio

    @app.post(
        "/v1/audio/speech",
        tags=["speech"],
        dependencies=protected,
        response_class=StreamingResponse,
        responses={200: {"content": {"audio/pcm": {}, "audio/wav": {}}}},
    )
    async def openai_speech(body: SpeechRequest) -> StreamingResponse:
        """OpenAI's `audio/speech`: 24 kHz 16-bit mono audio streams out as it is made.
        `model` may name the loaded engine or any OpenAI model name (both mean the loaded
        engine); `voice` omitted, "default" or an OpenAI stock voice name (alloy, ash...)
        is the default voice, anything else a voice id of the library."""
        engine_name = state.engine.name
        if body.model in ENGINE_NAMES and body.model != engine_name:
            raise ServiceError(
                400,
                "model_not_loaded",
                f"model {body.model!r} is not loaded: this service runs {engine_name} "
                f"(LOCALTTS_ENGINE); ask for {engine_name!r} or an OpenAI model name",
            )
        state.require_ready()
        voice = await state.openai_voice(body.voice)
        await state.check_voice(voice)
        tts_ = state.request_tts(voice=voice, language=body.language, speed=body.speed)
        started = time.perf_counter()
        frames = _resampled(_frames(tts_, body.input), tts_.sample_rate, OPENAI_SAMPLE_RATE)
        try:  # the first frame before the 200: a failing engine still gets a proper status
            first = await frames.__anext__()  # type: ignore[attr-defined]
        except StopAsyncIteration:
            first = None
        except Exception as e:
            await frames.aclose()  # type: ignore[attr-defined]
            raise _synthesis_error(e, engine_name) from e
        first_audio_s = time.perf_counter() - started

        async def body_bytes() -> AsyncIterator[bytes]:
            gauge = state.metrics.active_streams.labels("speech")
            gauge.inc()
            samples = 0
            completed = False
            try:
                if body.response_format == "wav":
                    yield streaming_wav_header(OPENAI_SAMPLE_RATE)
                if first is not None:
                    samples += first.samples_per_channel
                    yield bytes(first.data)
                async for frame in frames:
                    samples += frame.samples_per_channel
                    yield bytes(frame.data)
                completed = True
            except Exception:
                # the 200 is out: the client sees a short body; the log says why
                state.metrics.error("engine")
                logger.exception("speech stream failed after its first audio")
            finally:
                gauge.dec()
                await frames.aclose()  # type: ignore[attr-defined]
                if completed:
                    state.metrics.observe_synthesis(
                        "speech",
                        first_audio_s=first_audio_s,
                        synthesis_s=time.perf_counter() - started,
                        audio_s=samples / OPENAI_SAMPLE_RATE,
                    )

        media_type = "audio/wav" if body.response_format == "wav" else "audio/pcm"
        return _AudioStreamResponse(
            body_bytes(),
            close=frames.aclose,  # type: ignore[attr-defined]
            media_type=media_type,
            headers={
                "X-Sample-Rate": str(OPENAI_SAMPLE_RATE),
                "X-Engine": engine_name,
                "X-Voice": voice or "default",
                "Cache-Control": "no-store",
            },
        )

    # ------------------------------------------------------------ voices

    @app.get("/api/voices", tags=["voices"], dependencies=protected)
    async def list_voices() -> dict[str, Any]:
        """Every voice (database and directory)."""
        library = _library(state)
        return {"voices": [v.to_dict() for v in await library.list()]}

    @app.post("/api/voices", tags=["voices"], dependencies=protected, status_code=201)
    async def add_voice(
        voice_id: Annotated[str, Form(min_length=1, max_length=128)],
        file: Annotated[UploadFile, File(description="reference clip: wav, flac, ogg, mp3")],
        name: Annotated[str | None, Form(max_length=200)] = None,
        language: Annotated[str | None, Form(pattern=_LANGUAGE_PATTERN, max_length=32)] = None,
        replace: Annotated[bool, Form()] = False,
    ) -> dict[str, Any]:
        """Upload a reference clip (multipart) as voice `voice_id`."""
        library = _library(state)
        data = await file.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise ServiceError(
                413, "payload_too_large", f"the clip exceeds {MAX_UPLOAD_BYTES} bytes"
            )
        if not data:
            raise ServiceError(400, "invalid_voice", "the uploaded clip is empty")
        try:
            info = await library.add(
                voice_id, data, name=name or None, language=language or None, replace=replace
            )
        except (VoiceError, DatabaseUnavailableError) as e:
            raise _voice_error(e) from e
        return info.to_dict()

    @app.get("/api/voices/{voice_id}", tags=["voices"], dependencies=protected)
    async def get_voice(voice_id: str) -> dict[str, Any]:
        library = _library(state)
        try:
            return (await library.get(voice_id)).to_dict()
        except (VoiceError, DatabaseUnavailableError) as e:
            raise _voice_error(e) from e

    @app.delete("/api/voices/{voice_id}", tags=["voices"], dependencies=protected, status_code=204)
    async def delete_voice(voice_id: str) -> Response:
        library = _library(state)
        try:
            await library.remove(voice_id)
        except (VoiceError, DatabaseUnavailableError) as e:
            raise _voice_error(e) from e
        return Response(status_code=204)

    return app


def _library(state: ServiceState) -> VoiceLibrary:
    if state.voice_library is None:
        raise ServiceError(503, "warming_up", "the voice library is not started yet")
    return state.voice_library


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 1)


def _install_error_handlers(app: FastAPI, metrics: ServiceMetrics) -> None:
    async def service_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        metrics.error(exc.code)
        return _error_response(exc.status, exc.code, exc.message, exc.headers)

    async def http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 400:  # FastAPI could not parse the body at all (not UTF-8...)
            metrics.error("malformed_body")
            return _error_response(
                400,
                "malformed_body",
                f"the request body could not be parsed ({exc.detail}): send UTF-8 JSON, or "
                "multipart/form-data for uploads",
            )
        code = {
            404: "not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
        }.get(exc.status_code, "bad_request" if exc.status_code < 500 else "server_error")
        metrics.error(code)
        return _error_response(exc.status_code, code, str(exc.detail), exc.headers)

    async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        for error in errors:
            if error.get("type") == "json_invalid":
                metrics.error("malformed_json")
                why = (error.get("ctx") or {}).get("error") or error.get("msg")
                return _error_response(
                    400, "malformed_json", f"the request body is not valid JSON: {why}"
                )
        metrics.error("invalid_request")
        # the offending input is not echoed back: it may be 10,000 characters long
        return _error_response(422, "invalid_request", _describe(errors))

    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        metrics.error("internal")
        logger.error("unhandled error", exc_info=exc)
        return _error_response(500, "internal_error", "internal error (details in the log)")

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)


def _describe(errors: Any) -> str:
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        message = "".join(ch for ch in message if unicodedata.category(ch) != "Cc")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts) or "invalid request"
