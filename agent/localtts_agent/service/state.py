"""The process's state: the one engine, voice library and room publishers of the service,
its warm-up (model and voices in parallel) and its health."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Depends, Request
from livekit.agents import APIError
from livekit.plugins import localtts
from livekit.plugins.localtts.engines import VoiceError
from livekit.plugins.localtts.voices.errors import DatabaseUnavailableError

from ..settings import ServiceSettings
from .encoding import OPENAI_SAMPLE_RATE
from .errors import ServiceError, voice_error
from .memory import trim_when_idle
from .metrics import ServiceMetrics
from .room_publisher import LiveKitConnector, RoomConnector, RoomPublishers

if TYPE_CHECKING:
    from livekit.plugins.localtts.voices import VoiceLibrary

logger = logging.getLogger("localtts.service")

ROOM_IDLE_TIMEOUT_S = 60.0
_WARMING_RETRY_AFTER_S = 2
_ENGINE_IDLE_WAIT_S = 5.0  # at shutdown, for the engine to finish the step it is in


class ServiceState:
    """The one engine, voice library and room publishers of this process."""

    def __init__(
        self,
        settings: localtts.Settings,
        service_settings: ServiceSettings,
        *,
        tts: localtts.TTS | None,
        voice_library: VoiceLibrary | None,
        room_connector: RoomConnector | None,
        room_idle_timeout: float,
    ) -> None:
        self.settings = settings  # the plugin's: engine, default voice, voice library
        self.service_settings = service_settings  # API key, LiveKit
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
        self._trimmer: asyncio.Task[None] | None = None

    @property
    def tts(self) -> localtts.TTS:
        assert self._tts is not None, "no engine: callers check `require_ready` first"
        return self._tts

    @property
    def engine(self) -> localtts.Engine:
        return self.tts.engine

    async def open(self) -> None:
        """Build what was not injected and start warming in the background."""
        if self._tts is None:
            started = time.perf_counter()
            try:  # engine choice is quick: weights are looked for, not loaded
                self._tts = localtts.TTS(settings=self.settings)
            except APIError as e:
                if self.settings.strict:  # `localtts serve` says so in one line first
                    raise
                # the service stays up and says why on /health (503) and on every request
                self.engine_error = e.message
                logger.error("no engine: %s", e.message)
            else:
                selection = self._tts.selection
                _phase_done(
                    f"engine {self.engine.name} chosen"
                    + (f" ({selection.reason})" if selection else ""),
                    started,
                )
        if self.voice_library is None:
            from livekit.plugins.localtts.voices import VoiceLibrary

            self.voice_library = VoiceLibrary.from_settings(self.settings)
            self._owns_library = True
        connector = self._room_connector or _livekit_connector(self.service_settings)
        if connector is not None and self._tts is not None:
            self.rooms = RoomPublishers(
                connector=connector,
                sample_rate=self.engine.sample_rate,
                idle_timeout=self._room_idle_timeout,
                metrics=self.metrics,
            )
        self._startup = asyncio.create_task(self._warm_up(), name="localtts-warmup")
        self._trimmer = asyncio.create_task(trim_when_idle(self.idle), name="localtts-trim")

    def idle(self) -> bool:
        """No synthesis is streaming (HTTP or room)."""
        gauge = self.metrics.active_streams
        return sum(sample.value for metric in gauge.collect() for sample in metric.samples) == 0

    async def _warm_up(self) -> None:
        started = time.perf_counter()

        async def engine() -> None:
            if self._tts is None:
                return
            try:
                await self.tts.warmup()
                _phase_done(f"{self.engine.name} engine loaded and warm", started)
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
                _phase_done(f"voice library {library.status}: {library.status_detail}", started)
            if self._tts is None:
                return  # nothing to prepare voices for
            try:
                self.preload = await library.preload(self.engine)
                _phase_done(f"voices prepared: {self.preload.summary()}", started)
            except Exception as e:
                self.problems.append(f"voice preload failed: {type(e).__name__}: {e}")
                logger.exception("voice preload failed")
            await self._check_default_voice()

        await asyncio.gather(engine(), voices())
        self.ready_after_s = time.perf_counter() - started
        self.warming = False
        _phase_done(f"service {self.status()}", started)

    async def _check_default_voice(self) -> None:
        """LOCALTTS_VOICE means the same here as in the worker and `localtts say`: the voice
        of requests that name none, or, when it cannot be used, the engine's own voice with
        the reason on /health (not a 400 on every request)."""
        voice = self.settings.voice
        if voice is None:
            return
        try:
            await self.check_voice(voice)
        except ServiceError as e:
            problem = (
                f"LOCALTTS_VOICE={voice!r} is ignored: {e.message}; requests without a voice "
                f"use the {self.engine.name} engine's own voice"
            )
            self.problems.append(problem)
            logger.warning(problem)
            self.settings = self.settings.model_copy(update={"voice": None})

    async def wait_started(self) -> None:
        """Until warmup and preload are done (tests, and `serve` logging)."""
        if self._startup is not None:
            await asyncio.shield(self._startup)

    async def aclose(self) -> None:
        for task in (self._startup, self._trimmer):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.rooms is not None:
            await self.rooms.aclose()
        if self._tts is not None:
            await self._tts.aclose()
            try:
                await asyncio.wait_for(
                    asyncio.to_thread(_until_engine_idle, self.engine), _ENGINE_IDLE_WAIT_S
                )
            except asyncio.TimeoutError:
                logger.warning("the engine was still computing at exit")
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
        selection = self._tts.selection if self._tts is not None else None
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
        library = self.voice_library
        known = [v.voice_id for v in await library.list()] if library is not None else []
        # now, not at startup: voices are added, replaced and removed while the service runs
        ready = library.ready_voices(self.engine) if library and self._tts else []
        preload = self.preload
        failed = {
            voice_id: why
            for voice_id, why in (preload.failed.items() if preload is not None else ())
            if voice_id in known and voice_id not in ready
        }
        return {
            "status": self.status(),
            "problems": ([self.engine_error] if self.engine_error else [])
            + self.problems
            + self.degradations(),
            **self._engine_health(),
            "speech_sample_rate": OPENAI_SAMPLE_RATE,  # what /v1/audio/speech answers at
            "voices": {
                "known": len(known),
                "loaded": len(ready),
                "failed": failed,
                "note": preload.skipped if preload is not None else None,
            },
            "database": {
                "status": library.status if library else "absent",
                "detail": library.status_detail if library else "no voice library",
            },
            "rooms": self.rooms.rooms if self.rooms is not None else [],
            "livekit_configured": self.rooms is not None,
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "ready_after_s": round(self.ready_after_s, 3) if self.ready_after_s else None,
        }

    def _engine_health(self) -> dict[str, Any]:
        """The engine's part of /health; all None when no engine could be chosen."""
        if self._tts is None:
            return dict.fromkeys(
                ("engine", "device", "dtype", "sample_rate", "model_revision", "capacity",
                 "engine_streams", "selection", "gpu_memory"),
                None,
            ) | {"optimizations": []}  # fmt: skip
        info = self.engine.info()
        selection = self.tts.selection
        return {
            "engine": info.engine,
            "device": info.device,
            "dtype": info.dtype,
            "optimizations": list(info.optimizations),
            "sample_rate": self.engine.sample_rate,  # the engine's: rooms, the plugin
            "model_revision": info.model_revision,
            # streams kept at real time, and how many speak or wait now (past it: 503)
            "capacity": info.capacity,
            "engine_streams": {
                "speaking": self.engine.scheduler.admission.active,
                "waiting": self.engine.scheduler.admission.waiting,
                "rejected": self.engine.scheduler.admission.rejected,
            },
            "selection": dataclasses.asdict(selection) if selection else None,
            "gpu_memory": _gpu_memory(info.device),
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
            raise voice_error(e) from e

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


def _until_engine_idle(engine: localtts.Engine) -> None:
    """Until the engine's thread runs no stream. Streams ended at shutdown are dropped at its
    next step; a process that exits while onnxruntime computes on that thread is aborted by
    the runtime's teardown (SIGABRT, seen with Piper) instead of exiting 0."""
    scheduler = engine.scheduler
    if scheduler.thread_ident is None:
        return  # it never ran
    # `call` runs between two steps, on the thread itself: no step is running then
    while scheduler.call(lambda: scheduler.active_streams) > 0:
        time.sleep(0.05)
def _phase_done(what: str, started: float) -> None:
    """One log line per startup phase, with the seconds since startup began (the phases of
    warm-up run in parallel: each line says when its phase was done)."""
    logger.info("startup: %s, after %.2f s", what, time.perf_counter() - started)


def _livekit_connector(settings: ServiceSettings) -> LiveKitConnector | None:
    if settings.livekit_url and settings.livekit_api_key and settings.livekit_api_secret:
        return LiveKitConnector(
            url=settings.livekit_url,
            api_key=settings.livekit_api_key,
            api_secret=settings.livekit_api_secret,
        )
    return None


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


def service_state(request: Request) -> ServiceState:
    return request.app.state.service  # type: ignore[no-any-return]


# a route's parameter of this type receives the app's ServiceState
State = Annotated[ServiceState, Depends(service_state)]
