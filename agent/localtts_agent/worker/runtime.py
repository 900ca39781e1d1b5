"""What the worker process loads once and every room shares: the engine (warm), the voice
library (preloaded) and the count of live sessions."""

from __future__ import annotations

import asyncio
import atexit
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, ClassVar

from livekit.agents import AgentServer, AgentSession, llm, stt, utils
from livekit.agents.types import NOT_GIVEN, NotGivenOr
from livekit.plugins import localtts
from livekit.plugins.localtts.engines import Engine, VoiceConditioning
from livekit.plugins.localtts.log import logger

from ..settings import AgentSettings
from .load import GPU_UTILISATION_WINDOW, GpuLoad, gpu_load, worker_load
from .session import build_llm, build_stt
from .turns import VoicedSpeechVAD, build_vad, turn_handling

if TYPE_CHECKING:
    from livekit.plugins.localtts.voices import VoiceLibrary


class _LibraryOnLoop:
    """A VoiceLibrary used from any event loop, run on the loop that owns it: the
    `VoiceSource` of every room's TTS.

    Each room runs its own event loop (thread executor); the library's database pool is
    bound to the loop that opened it, so every call is handed to that loop.
    """

    def __init__(self, library: VoiceLibrary, loop: asyncio.AbstractEventLoop) -> None:
        self._library = library
        self._loop = loop

    async def conditioning(self, voice_id: str, engine: Engine) -> VoiceConditioning:
        future = asyncio.run_coroutine_threadsafe(
            self._library.conditioning(voice_id, engine), self._loop
        )
        return await asyncio.wrap_future(future)


class WorkerRuntime:
    """What the worker process loads once and every room shares: the engine (warm), the
    voice library (preloaded) and the count of live sessions."""

    _shared: ClassVar[WorkerRuntime | None] = None
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        *,
        settings: localtts.Settings | None = None,
        agent_settings: AgentSettings | None = None,
    ) -> None:
        self.settings = settings or localtts.get_settings()  # the plugin's: engine, voice...
        self.agent_settings = agent_settings or AgentSettings()  # greeting, STT/LLM, VAD...
        self.selection: localtts.EngineSelection | None = None
        self.engine: Engine | None = None
        self.library: VoiceLibrary | None = None
        self._library_proxy: _LibraryOnLoop | None = None
        self.warnings: list[str] = []  # what start-up had to give up, for load_report
        self._ready: Future[None] = Future()
        self._started = False
        self._start_lock = threading.Lock()
        self._sessions: set[AgentSession] = set()
        self._speaking: set[AgentSession] = set()
        self._sessions_lock = threading.Lock()
        self._gpu_utilisation = utils.MovingAverage(GPU_UTILISATION_WINDOW)
        # the runtime's own loop, in its own thread: owns the voice library's connections
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(
            target=self._loop.run_forever, name="localtts-runtime", daemon=True
        )
        self._closed = False

    @classmethod
    def shared(cls) -> WorkerRuntime:
        """The worker process's runtime (created at the first call)."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
                atexit.register(cls._shared.close)
            return cls._shared

    # loading -----------------------------------------------------------------------------

    def start(self) -> None:
        """Begin loading in the background (idempotent; returns at once)."""
        with self._start_lock:
            if self._started:
                return
            self._started = True
            self._loop_thread.start()
            asyncio.run_coroutine_threadsafe(self._load(), self._loop).add_done_callback(
                self._loaded
            )

    def _loaded(self, done: Future[None]) -> None:
        if (error := done.exception()) is not None:
            # an APIError's str() is its repr-like form; its message is what to read
            why = getattr(error, "message", None) or error
            logger.error("the worker could not load its engine: %s", why)
            self._ready.set_exception(error)
        else:
            self._ready.set_result(None)

    async def _load(self) -> None:
        settings = self.settings
        # resolves "auto" by the host table, logs the Piper-fallback warning loudly
        tts = localtts.TTS(settings=settings)  # LOCALTTS_ENGINE: errors name it
        self.selection, self.engine = tts.selection, tts.engine
        logger.info(
            "engine %s on %s (%s): %s",
            tts.engine.name,
            tts.selection.device if tts.selection else "?",
            tts.selection.dtype if tts.selection else "?",
            tts.selection.reason if tts.selection else "given",
        )
        warm = asyncio.ensure_future(tts.warmup())
        # voices load while the model warms up; only engines that clone voices need them.
        # The library's failures are reported as its own and the rooms are still served;
        # the engine's fail `ready` with the engine's error (from `await warm`)
        if self.engine.supports_cloning:
            await self._open_library()
        else:
            self._drop_voice(f"engine {self.engine.name} cannot clone voices")
        await warm
        if self.library is not None:
            await self._preload(self.library)  # conditioning is computed with the warm model

    def _drop_voice(self, why: str) -> None:
        """Speak with the engine's own voice: a default voice that cannot be resolved would
        fail every reply (the agent would be silent in every room)."""
        if self.voice is None:
            return
        warning = (
            f"LOCALTTS_VOICE={self.voice!r} IS IGNORED: {why}; the agent speaks with the "
            f"engine's own voice"
        )
        logger.warning(warning)
        self.warnings.append(warning)
        # every session's TTS reads the default voice from these settings
        self.settings = self.settings.model_copy(update={"voice": None})

    @property
    def voice(self) -> str | None:
        """The default voice every session speaks with (None: the engine's own)."""
        return self.settings.voice

    async def _open_library(self) -> None:
        """Start the voice library; one that cannot start leaves the engine's own voice."""
        from livekit.plugins.localtts.voices import VoiceLibrary

        try:
            library = VoiceLibrary.from_settings(self.settings)
            await library.start()
        except Exception as e:
            logger.error("voice library unavailable, cloned voices cannot be used: %s", e)
            self._drop_voice(f"the voice library is unavailable ({e})")
            return
        self.library = library  # closed by close() from here on
        self._library_proxy = _LibraryOnLoop(library, self._loop)

    async def _preload(self, library: VoiceLibrary) -> None:
        assert self.engine is not None
        try:
            report = await library.preload(self.engine)
        except Exception as e:
            # the voices still work: their conditioning is computed when first asked for
            logger.error("voice preload failed: %s", e)
            return
        if library.status != "ok" and self.voice is not None and self.voice not in report.ready:
            # the database is unreachable (directory voices only, until a restart): a
            # default voice from it would fail every reply
            self._drop_voice(f"the voice library is degraded ({library.status_detail})")

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the engine is warm and voices are preloaded (raises on failure)."""
        self.start()
        self._ready.result(timeout)

    async def ready(self) -> None:
        self.start()
        await asyncio.wrap_future(self._ready)

    # sessions ------------------------------------------------------------------------------

    def new_session(
        self,
        *,
        llm: NotGivenOr[llm.LLM | None] = NOT_GIVEN,
        stt: NotGivenOr[stt.STT | None] = NOT_GIVEN,
    ) -> AgentSession:
        """An AgentSession speaking through the shared engine (call after `ready`).

        STT and LLM default to the OpenAI-compatible services the environment names.
        Each session gets its own TTS and VAD objects - their error and metrics events
        belong to one session - over the one shared engine.
        """
        if self.engine is None:
            raise RuntimeError("the worker runtime is not ready: await runtime.ready() first")
        settings, agent = self.settings, self.agent_settings
        tts = localtts.TTS(
            engine=self.engine,
            voice=settings.voice,
            voice_library=self._library_proxy,
            settings=settings,
        )
        session: AgentSession = AgentSession(
            stt=build_stt(agent) if not utils.is_given(stt) else stt,
            llm=build_llm(agent) if not utils.is_given(llm) else llm,
            tts=tts,
            vad=VoicedSpeechVAD(build_vad(agent)),
            turn_handling=turn_handling(agent),
        )
        return session

    def track(self, session: AgentSession) -> None:
        """Count `session` as a live room until it closes."""
        with self._sessions_lock:
            self._sessions.add(session)

        @session.on("agent_state_changed")
        def _state(ev: Any) -> None:
            with self._sessions_lock:
                if ev.new_state == "speaking":
                    self._speaking.add(session)
                else:
                    self._speaking.discard(session)

        @session.on("close")
        def _closed(_: Any) -> None:
            self.forget(session)

    def forget(self, session: AgentSession) -> None:
        with self._sessions_lock:
            self._sessions.discard(session)
            self._speaking.discard(session)

    @property
    def active_sessions(self) -> int:
        with self._sessions_lock:
            return len(self._sessions)

    @property
    def active_streams(self) -> int:
        """Sessions speaking right now (their TTS streams are using the engine)."""
        with self._sessions_lock:
            return len(self._speaking)

    # load ------------------------------------------------------------------------------------

    def load(self, server: AgentServer | None = None) -> float:
        """`load_fnc` for AgentServer: rooms (jobs), the engine's streams and GPU, see
        `worker_load`."""
        rooms = len(server.active_jobs) if server is not None else self.active_sessions
        gpu = gpu_load()
        if gpu is not None and gpu.utilisation is not None:
            # utilisation swings between words; the average is what a new room meets
            self._gpu_utilisation.add_sample(gpu.utilisation)
            gpu = GpuLoad(gpu.memory_used, self._gpu_utilisation.get_avg())
        streams, capacity = self._engine_streams()
        return worker_load(
            rooms, self.agent_settings.agent_max_sessions, gpu, streams=streams,
            capacity=capacity,
        )

    def _engine_streams(self) -> tuple[int, int | None]:
        """(streams speaking or waiting, capacity) of the engine's admission."""
        if self.engine is None:
            return 0, None
        admission = self.engine.scheduler.admission
        return admission.active + admission.waiting, admission.capacity

    def load_report(self) -> dict[str, Any]:
        gpu = gpu_load()
        return {
            "engine": self.engine.name if self.engine is not None else None,
            "voice": self.voice,
            "warnings": list(self.warnings),
            "rooms": self.active_sessions,
            "speaking": self.active_streams,
            "max_sessions": self.agent_settings.agent_max_sessions,
            "engine_streams": self._engine_streams()[0],
            "engine_capacity": self._engine_streams()[1],
            "gpu_memory_used": gpu.memory_used if gpu else None,
            "gpu_utilisation": gpu.utilisation if gpu else None,
            "load": self.load(),
        }

    # shutdown ------------------------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> None:
        """Close the voice library and stop the runtime's loop (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if not self._loop_thread.is_alive():
            self._loop.close()
            return
        if self.library is not None:
            try:
                asyncio.run_coroutine_threadsafe(self.library.aclose(), self._loop).result(timeout)
            except Exception as e:  # shutting down: report, keep going
                logger.warning("voice library did not close cleanly: %s", e)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join(timeout)
        if not self._loop_thread.is_alive():
            self._loop.close()


