"""The LiveKit voice-agent worker: `python -m agent dev|start|connect|console`.

One loaded model per worker process serves every room that process handles
------------------------------------------------------------------------------
LiveKit Agents runs each job (room) in its own process by default. A speech model loaded in
the prewarm of each job process is then loaded once per room: N rooms cost N copies of the
weights in GPU memory and N loads and compilations, and the copies fight for one GPU. So
this worker runs jobs with `JobExecutorType.THREAD`: every room is a thread (with its own
event loop) in the worker process, and all of them use one `WorkerRuntime` holding one
loaded engine (`engines.shared_engine`). The alternative, a shared inference process
(livekit's `InferenceRunner`, used by its turn detector), would move every audio chunk of
every reply across an IPC pipe and needs a cancellation protocol of its own; the thread
executor gets the same sharing with none of that. The model does not hold the GIL while it
computes (torch and onnxruntime release it), and engines serialize model access
themselves, so rooms interleave at the engine's step boundaries. The cost: a job that
crashes the interpreter takes the worker's other rooms with it. Scale past one process by
running more workers (one per GPU) - see `worker_load`.

Scale-out: LiveKit's dispatcher is the balancer
------------------------------------------------
Each worker computes its load (`load_fnc`) every 0.5 s and reports it every 2.5 s: the
larger of rooms / max sessions (LOCALTTS_AGENT_MAX_SESSIONS), the engine's streams (speaking
or waiting to) / its capacity (streams it keeps at real time, measured at warmup or
LOCALTTS_ENGINE_CAPACITY), GPU utilisation and GPU memory in use. At 1.0 the worker reports
itself full and LiveKit sends new rooms to other workers registered under the same agent
name; with none left, a new room gets no agent at all (livekit-server dispatches once, at
room creation). Adding capacity = starting another worker (container) against the same
LiveKit server; nothing else to configure.

Environment
-----------
LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET   the LiveKit server (read by livekit-agents)
LIVEKIT_AGENT_NAME                                  explicit dispatch name (optional)
OPENAI_API_KEY, OPENAI_BASE_URL                     STT and LLM (any OpenAI-compatible server)
LOCALTTS_LLM_MODEL, LOCALTTS_LLM_BASE_URL           LLM model and server (base URL overrides
LOCALTTS_STT_MODEL, LOCALTTS_STT_BASE_URL,          OPENAI_BASE_URL for that one service)
LOCALTTS_STT_LANGUAGE
LOCALTTS_AGENT_INSTRUCTIONS, LOCALTTS_AGENT_GREETING
LOCALTTS_AGENT_MAX_SESSIONS, LOCALTTS_AGENT_MIN_INTERRUPTION_S
LOCALTTS_VAD, LOCALTTS_VAD_AGGRESSIVENESS          turn-taking: webrtc (default) or silero
LOCALTTS_AGENT_HTTP_HOST, LOCALTTS_AGENT_HTTP_PORT   the health endpoint (livekit: *:8081)
LOCALTTS_ENGINE, LOCALTTS_DEVICE, LOCALTTS_VOICE, ...  the speech engine (settings.py)
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import os
import sys
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

from livekit import rtc
from livekit.agents import (
    Agent,
    AgentServer,
    AgentSession,
    CloseEvent,
    JobContext,
    JobExecutorType,
    JobProcess,
    cli,
    inference,
    llm,
    stt,
    utils,
    vad,
)
from livekit.agents.types import NOT_GIVEN, NotGivenOr
from livekit.agents.voice import SpeechHandle, room_io
from livekit.agents.voice.turn import TurnHandlingOptions
from livekit.agents.worker import ServerEnvOption

# openai is imported here, on the main thread: a plugin registers itself when first imported,
# livekit refuses that on any other thread, and rooms run in job threads (thread executor)
from livekit.plugins import localtts, openai
from livekit.plugins.localtts.engines import Engine
from livekit.plugins.localtts.log import logger
from livekit.plugins.localtts.vad import VAD

if TYPE_CHECKING:
    from livekit.plugins.localtts.voices import VoiceLibrary

# Loading a large model and compiling its decode step takes minutes on a cold cache; the
# framework's default (10 s) would kill the job executor mid-load.
PREWARM_TIMEOUT_S = 900.0
# livekit's own default load monitor averages 5 samples taken every 0.5 s
_GPU_UTILISATION_WINDOW = 5
# the participant's audio reaches the VAD in frames this long (livekit: 50 ms): one WebRTC
# packet each, so an interruption is seen up to 30 ms sooner (see `turn_handling`)
INPUT_FRAME_MS = 20


# --- load -------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuLoad:
    memory_used: float  # fraction of the device's memory in use (every process)
    utilisation: float | None  # fraction of time a kernel ran; None without NVML


def gpu_load() -> GpuLoad | None:
    """The GPU's load, or None when this process has not put a model on CUDA."""
    torch = sys.modules.get("torch")  # never import torch here: Piper workers lack it
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    free, total = torch.cuda.mem_get_info()
    try:
        utilisation: float | None = torch.cuda.utilization() / 100.0  # needs nvidia-ml-py
    except Exception:  # NVML missing or refused (MIG): memory still tells something
        utilisation = None
    return GpuLoad(memory_used=1.0 - free / total, utilisation=utilisation)


def worker_load(
    rooms: int,
    max_sessions: int,
    gpu: GpuLoad | None,
    *,
    streams: int = 0,
    capacity: int | None = None,
) -> float:
    """The load LiveKit's dispatcher sees, 0..1: the scarcest resource wins. `streams`
    (speaking or waiting to) against the engine's `capacity` (streams it keeps at real time):
    at 1.0 new rooms go elsewhere before callers here hear gaps."""
    parts = [rooms / max_sessions]
    if capacity:
        parts.append(streams / capacity)
    if gpu is not None:
        parts.append(gpu.memory_used)
        if gpu.utilisation is not None:
            parts.append(gpu.utilisation)
    return min(1.0, max(parts))


# --- the process-wide runtime -------------------------------------------------------------


class _LibraryOnLoop:
    """A VoiceLibrary used from any event loop, run on the loop that owns it.

    Each room runs its own event loop (thread executor); the library's database pool is
    bound to the loop that opened it, so every call is handed to that loop.
    """

    def __init__(self, library: VoiceLibrary, loop: asyncio.AbstractEventLoop) -> None:
        self._library = library
        self._loop = loop

    async def conditioning(self, voice_id: str, engine: Engine) -> Any:
        future = asyncio.run_coroutine_threadsafe(
            self._library.conditioning(voice_id, engine), self._loop
        )
        return await asyncio.wrap_future(future)

    @property
    def status(self) -> Any:
        return self._library.status


class WorkerRuntime:
    """What the worker process loads once and every room shares: the engine (warm), the
    voice library (preloaded) and the count of live sessions."""

    _shared: ClassVar[WorkerRuntime | None] = None
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, *, settings: localtts.Settings | None = None) -> None:
        self.settings = settings or localtts.get_settings()
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
        self._gpu_utilisation = utils.MovingAverage(_GPU_UTILISATION_WINDOW)
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
            logger.error("the worker could not load its engine: %s", error)
            self._ready.set_exception(error)
        else:
            self._ready.set_result(None)

    async def _load(self) -> None:
        settings = self.settings
        # resolves "auto" by the host table, logs the Piper-fallback warning loudly
        tts = localtts.TTS(engine=settings.engine, settings=settings)
        self.selection, self.engine = tts.selection, tts.engine
        logger.info(
            "engine %s on %s (%s): %s",
            tts.engine.name,
            tts.selection.device if tts.selection else "?",
            tts.selection.dtype if tts.selection else "?",
            tts.selection.reason if tts.selection else "given",
        )
        warm = asyncio.ensure_future(tts.warmup())
        # voices load while the model warms up; only engines that clone voices need them
        if self.engine.supports_cloning:
            try:
                await self._open_library(warm)
            except Exception as e:
                # rooms can still be served with the engine's own voice: say so, go on
                logger.error("voice library unavailable, cloned voices cannot be used: %s", e)
                if self._library_proxy is None:  # opened but not preloaded: voices still work
                    self._drop_voice(f"the voice library is unavailable ({e})")
        else:
            self._drop_voice(f"engine {self.engine.name} cannot clone voices")
        await warm

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

    async def _open_library(self, warm: asyncio.Future[None]) -> None:
        from livekit.plugins.localtts.voices import VoiceLibrary

        library = VoiceLibrary.from_settings(self.settings)
        await library.start()
        self.library = library  # closed by close() from here on
        self._library_proxy = _LibraryOnLoop(library, self._loop)
        await warm  # preloading computes conditioning with the model
        await library.preload(self.engine)

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
        settings = self.settings
        tts = localtts.TTS(
            engine=self.engine,
            voice=settings.voice,
            voice_library=self._library_proxy,
            settings=settings,
        )
        session: AgentSession = AgentSession(
            stt=build_stt(settings) if not utils.is_given(stt) else stt,
            llm=build_llm(settings) if not utils.is_given(llm) else llm,
            tts=tts,
            vad=VoicedSpeechVAD(build_vad(settings)),
            turn_handling=turn_handling(settings),
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
        """`load_fnc` for AgentServer: rooms (jobs) and GPU, see `worker_load`."""
        rooms = len(server.active_jobs) if server is not None else self.active_sessions
        gpu = gpu_load()
        if gpu is not None and gpu.utilisation is not None:
            # utilisation swings between words; the average is what a new room meets
            self._gpu_utilisation.add_sample(gpu.utilisation)
            gpu = GpuLoad(gpu.memory_used, self._gpu_utilisation.get_avg())
        streams, capacity = self._engine_streams()
        return worker_load(
            rooms, self.settings.agent_max_sessions, gpu, streams=streams, capacity=capacity
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
            "max_sessions": self.settings.agent_max_sessions,
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


# --- turn taking ----------------------------------------------------------------------------


def turn_handling(settings: localtts.Settings) -> TurnHandlingOptions:
    """Turn taking that runs on this machine in every mode, interrupting on speech only.

    livekit's defaults depend on the mode: under `dev` the end-of-turn detector and the
    "adaptive" interruption detector are LiveKit Cloud services (called with this server's
    key), under `start` the local end-of-turn model (weights in livekit-local-inference) and
    VAD interruptions. Both modes get the local choices here.

    An interruption takes `agent_min_interruption_s` (0.2 s) of voiced speech, counted by
    `VoicedSpeechVAD`. The agent's audio then stops at the listener 0.1-0.2 s later (uplink,
    20 ms input frames, 30 ms VAD windows, RoomIO's output queue, downlink): it falls silent
    0.3-0.4 s after the user starts to speak, inside the 0.5 s target (measured by
    tests/test_agent_rooms.py). The threshold ignores sounds with less voice than that: a
    click, a knock, a short "uh". A cough (about 0.25 s of noise, which reads about 0.27 s
    voiced after Opus) pauses the reply; it resumes when the STT finds no words in it
    (livekit's false-interruption handling, `false_interruption_timeout` 2 s after the
    noise). Ignoring coughs outright would take a threshold near 0.3 s, and the stop would
    come at 0.45-0.5 s: too close to the limit.
    """
    return {
        "turn_detection": inference.TurnDetector(version="v1-mini"),
        "interruption": {"mode": "vad", "min_duration": settings.agent_min_interruption_s},
    }


class VoicedSpeechVAD(vad.VAD):
    """`wrapped`, with the running speech duration of its events counting voiced audio only.

    AgentSession interrupts the agent once an INFERENCE_DONE event's `speech_duration`
    reaches the interruption `min_duration`. Silero and localtts.VAD count that duration
    from the start of speech to its end including the silence before END_OF_SPEECH
    (`min_silence_duration`, 0.55 s), so a 0.1 s cough reads 0.5 s half a second later and
    interrupts at any `min_duration` under about 0.65 s - and a `min_duration` that large
    cannot stop the agent within half a second of real speech. Counted over voiced windows
    only, `min_duration` means "this much speech". START_OF_SPEECH and END_OF_SPEECH (turn
    taking, transcription) pass through unchanged.
    """

    def __init__(self, wrapped: vad.VAD) -> None:
        super().__init__(capabilities=wrapped.capabilities)
        self.wrapped = wrapped

    @property
    def model(self) -> str:
        return self.wrapped.model

    @property
    def provider(self) -> str:
        return self.wrapped.provider

    @property
    def min_silence_duration(self) -> float | None:
        # read by AgentSession to check the turn detector's needs
        return getattr(self.wrapped, "min_silence_duration", None)

    def stream(self) -> vad.VADStream:
        return _VoicedSpeechStream(self, self.wrapped.stream())


class _VoicedSpeechStream(vad.VADStream):
    def __init__(self, vad_: VoicedSpeechVAD, wrapped: vad.VADStream) -> None:
        self._wrapped = wrapped
        super().__init__(vad_)

    async def _forward_input(self) -> None:
        async for item in self._input_ch:
            if isinstance(item, self._FlushSentinel):
                self._wrapped.flush()
            else:
                self._wrapped.push_frame(item)
        self._wrapped.end_input()

    async def _main_task(self) -> None:
        forward = asyncio.create_task(self._forward_input())
        voiced = 0.0
        try:
            async for ev in self._wrapped:
                if ev.type == vad.VADEventType.START_OF_SPEECH:
                    voiced = ev.speech_duration  # the voiced run that started it
                elif ev.type == vad.VADEventType.END_OF_SPEECH:
                    voiced = 0.0
                elif ev.speaking:
                    if ev.probability >= 0.5:
                        voiced += sum(f.duration for f in ev.frames)
                    ev = replace(ev, speech_duration=voiced)
                self._event_ch.send_nowait(ev)
        finally:
            await utils.aio.cancel_and_wait(forward)

    async def aclose(self) -> None:
        await super().aclose()
        await self._wrapped.aclose()


# --- STT / LLM from the environment ---------------------------------------------------------


def _openai_kwargs(base_url: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    base_url = base_url or os.environ.get("OPENAI_BASE_URL")
    if base_url:
        kwargs["base_url"] = base_url
        # local OpenAI-compatible servers need no key, but the client insists on one
        if not os.environ.get("OPENAI_API_KEY"):
            kwargs["api_key"] = "unused"
    return kwargs


def build_llm(settings: localtts.Settings) -> llm.LLM:
    return openai.LLM(model=settings.llm_model, **_openai_kwargs(settings.llm_base_url))


def build_stt(settings: localtts.Settings) -> stt.STT:
    return openai.STT(
        model=settings.stt_model,
        language=settings.stt_language,
        **_openai_kwargs(settings.stt_base_url),
    )


# --- VAD -----------------------------------------------------------------------------------


def vad_problem(settings: localtts.Settings) -> str | None:
    """Why the configured VAD cannot be built, or None (checked at start, imports nothing)."""
    if settings.vad == "silero" and importlib.util.find_spec("livekit.plugins.silero") is None:
        return "LOCALTTS_VAD=silero needs livekit-plugins-silero: pip install 'localtts[silero]'"
    return None


def build_vad(settings: localtts.Settings) -> vad.VAD:
    """localtts.VAD (webrtcvad, robust to noise), or Silero with LOCALTTS_VAD=silero
    (docs/agent.md says when each is the better choice)."""
    if (problem := vad_problem(settings)) is not None:
        raise RuntimeError(problem)
    if settings.vad == "silero":
        from livekit.plugins import silero

        return silero.VAD.load()
    return VAD(aggressiveness=settings.vad_aggressiveness)


# --- the job ------------------------------------------------------------------------------


class VoiceAgent(Agent):
    def __init__(self, *, instructions: str) -> None:
        super().__init__(instructions=instructions)


async def start_session(
    session: AgentSession,
    runtime: WorkerRuntime,
    *,
    room: NotGivenOr[rtc.Room] = NOT_GIVEN,
) -> SpeechHandle | None:
    """Start the agent in `session` (in `room` when given) and say the greeting.

    Returns the greeting's handle (await it to wait until it was played), or None.
    """
    settings = runtime.settings
    runtime.track(session)
    try:
        await session.start(
            agent=VoiceAgent(instructions=settings.agent_instructions),
            room=room,
            room_options=room_io.RoomOptions(
                audio_input=room_io.AudioInputOptions(frame_size_ms=INPUT_FRAME_MS)
            ),
        )
    except BaseException:
        runtime.forget(session)
        raise
    if settings.agent_greeting:
        return session.say(settings.agent_greeting, allow_interruptions=True)
    return None


def prewarm(proc: JobProcess) -> None:
    """Runs in every job executor; the first one loads, the others find it loaded."""
    runtime = WorkerRuntime.shared()
    runtime.wait_ready(PREWARM_TIMEOUT_S)
    proc.userdata["runtime"] = runtime


async def entrypoint(ctx: JobContext) -> None:
    runtime: WorkerRuntime = ctx.proc.userdata.get("runtime") or WorkerRuntime.shared()
    await runtime.ready()
    session = runtime.new_session()

    async def _shutdown(reason: str) -> None:
        # the room is gone or the worker drains: stop speaking, free the engine
        logger.info("room %s closing (%s)", ctx.room.name, reason)
        await session.aclose()

    @session.on("close")
    def _closed(ev: CloseEvent) -> None:
        # the participant left (or the session failed): end the job. livekit would keep it,
        # the agent alone in the room, until the server closes the room (20 s later by
        # default), and the room would count against LOCALTTS_AGENT_MAX_SESSIONS all along
        ctx.shutdown(reason=f"agent session closed ({ev.reason})")

    ctx.add_shutdown_callback(_shutdown)
    await start_session(session, runtime, room=ctx.room)


def http_port(settings: localtts.Settings) -> int | ServerEnvOption[int]:
    """The health endpoint's port: livekit's defaults (8081 for `start`, any free port for
    `dev`) unless LOCALTTS_AGENT_HTTP_PORT says otherwise - a second worker on the host
    (one per GPU) would otherwise fail to bind 8081."""
    if settings.agent_http_port is not None:
        return settings.agent_http_port
    return ServerEnvOption(dev_default=0, prod_default=8081)


def build_server() -> AgentServer:
    runtime = WorkerRuntime.shared()
    settings = runtime.settings
    server = AgentServer(
        job_executor_type=JobExecutorType.THREAD,  # one model per process: see the docstring
        setup_fnc=prewarm,
        load_fnc=runtime.load,
        # load is 1.0 at LOCALTTS_AGENT_MAX_SESSIONS rooms: take rooms until then
        load_threshold=ServerEnvOption(dev_default=float("inf"), prod_default=1.0),
        num_idle_processes=ServerEnvOption(dev_default=1, prod_default=settings.agent_max_sessions),
        initialize_process_timeout=PREWARM_TIMEOUT_S,
        host=settings.agent_http_host,
        port=http_port(settings),
    )
    server.rtc_session(entrypoint)

    @server.on("worker_started")
    def _load_now(*_: Any) -> None:
        runtime.start()  # load while LiveKit registers us, before the first room

    return server


# the commands that connect to a LiveKit server; console, download-files and --help do not
_SERVER_COMMANDS = frozenset({"start", "dev", "connect"})
# what each needs: the environment variable, or the command-line option livekit also takes
_SERVER_SETTINGS = (
    ("LIVEKIT_URL", "--url"),
    ("LIVEKIT_API_KEY", "--api-key"),
    ("LIVEKIT_API_SECRET", "--api-secret"),
)


def missing_server_settings(argv: list[str], environ: Mapping[str, str]) -> list[str]:
    """The LIVEKIT_* variables `argv` (without the program name) needs but lacks.

    Without them livekit-agents logs a traceback ("ws_url is required") and exits 0, which
    a supervisor reads as a clean stop: check before anything loads.
    """
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command not in _SERVER_COMMANDS or {"--help", "-h"} & set(argv):
        return []
    given = {arg.split("=", 1)[0] for arg in argv if arg.startswith("--")}
    return [
        variable
        for variable, option in _SERVER_SETTINGS
        if not environ.get(variable) and option not in given
    ]


def main() -> None:
    if missing := missing_server_settings(sys.argv[1:], os.environ):
        sys.exit(
            f"python -m agent: {', '.join(missing)} not set. Set LIVEKIT_URL, LIVEKIT_API_KEY "
            "and LIVEKIT_API_SECRET (the LiveKit server to register with) in the environment, "
            "or pass --url/--api-key/--api-secret; `python -m agent console` needs none"
        )
    settings = localtts.get_settings()
    if (problem := vad_problem(settings)) is not None:
        sys.exit(f"python -m agent: {problem}")  # now, not in the first room
    if settings.vad == "silero":
        # on the main thread: a plugin registers itself when first imported, livekit refuses
        # that on any other thread, and build_vad runs in job threads
        from livekit.plugins import silero  # noqa: F401
    cli.run_app(build_server())
