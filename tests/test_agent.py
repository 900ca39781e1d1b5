"""The worker (localtts_agent.worker) run in-process: real AgentSessions speaking through the real
bundled Piper voice into a capturing audio output, with a scripted LLM in place of the
OpenAI-compatible one. The worker in real rooms: tests/test_agent_rooms.py."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    APIConnectOptions,
    JobExecutorType,
    JobProcess,
    inference,
    llm,
    utils,
)
from livekit.agents import vad as agents_vad
from livekit.agents.types import NOT_GIVEN, NotGivenOr
from livekit.agents.worker import ServerEnvOption
from livekit.plugins import localtts
from livekit.plugins.localtts.engines.piper import PiperEngine
from livekit.plugins.localtts.vad import VAD

from localtts_agent.settings import AgentSettings
from localtts_agent.worker.load import GpuLoad, worker_load
from localtts_agent.worker.main import build_server, http_port, missing_server_settings, prewarm
from localtts_agent.worker.runtime import WorkerRuntime
from localtts_agent.worker.session import build_llm, build_stt, start_session
from localtts_agent.worker.turns import VoicedSpeechVAD, build_vad, turn_handling

from .livekit_helpers import CapturingAudioOutput, piper_speech, rms

E = agents_vad.VADEventType

GREETING = "Hello, this is the local voice agent."


class ScriptedLLM(llm.LLM):
    """Answers with the next scripted reply, streamed word by word like a real LLM, and
    keeps every chat context it was given."""

    def __init__(self, replies: list[str]) -> None:
        super().__init__()
        self._replies = list(replies)
        self.requests: list[llm.ChatContext] = []

    @property
    def model(self) -> str:
        return "scripted"

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> llm.LLMStream:
        self.requests.append(chat_ctx.copy())
        reply = self._replies.pop(0) if self._replies else "I have nothing more to say."
        return _ScriptedStream(self, reply, chat_ctx=chat_ctx, tools=tools or [], conn=conn_options)


class _ScriptedStream(llm.LLMStream):
    def __init__(
        self,
        llm_: ScriptedLLM,
        reply: str,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool],
        conn: APIConnectOptions,
    ) -> None:
        super().__init__(llm_, chat_ctx=chat_ctx, tools=tools, conn_options=conn)
        self._reply = reply

    async def _run(self) -> None:
        request_id = utils.shortuuid()
        for i, word in enumerate(self._reply.split(" ")):
            self._event_ch.send_nowait(
                llm.ChatChunk(
                    id=request_id,
                    delta=llm.ChoiceDelta(role="assistant", content=word if i == 0 else f" {word}"),
                )
            )
            await asyncio.sleep(0)


def _user_texts(ctx: llm.ChatContext) -> list[str]:
    return [m.text_content or "" for m in ctx.messages() if m.role == "user"]


@pytest.fixture(scope="module")
async def runtime() -> AsyncIterator[WorkerRuntime]:
    settings = localtts.Settings(_env_file=None, engine="piper")  # type: ignore[call-arg]
    agent = AgentSettings(_env_file=None, agent_greeting=GREETING, agent_max_sessions=4)  # type: ignore[call-arg]
    rt = WorkerRuntime(settings=settings, agent_settings=agent)
    await rt.ready()
    yield rt
    rt.close()


def _agent_settings() -> AgentSettings:
    return AgentSettings(_env_file=None, agent_greeting=GREETING)  # type: ignore[call-arg]


async def _greet(runtime: WorkerRuntime) -> CapturingAudioOutput:
    """A room's session says its greeting into a capturing output, then closes."""
    session = runtime.new_session(llm=ScriptedLLM([]), stt=None)
    output = CapturingAudioOutput()
    session.output.audio = output
    try:
        greeting = await start_session(session, runtime)
        assert greeting is not None
        await greeting
    finally:
        await session.aclose()
    return output


async def _speak_and_answer(
    runtime: WorkerRuntime, question: str, answer: str
) -> tuple[CapturingAudioOutput, ScriptedLLM, Any, float]:
    scripted = ScriptedLLM([answer])
    session = runtime.new_session(llm=scripted, stt=None)
    output = CapturingAudioOutput()
    session.output.audio = output
    try:
        greeting = await start_session(session, runtime)
        assert greeting is not None
        await greeting  # played out
        greeting_s = sum(f.duration for f in output.frames)
        result = await session.run(user_input=question)  # text mode: no STT involved
        return output, scripted, result, greeting_s
    finally:
        await session.aclose()


async def test_session_greets_and_answers_through_the_engine(runtime: WorkerRuntime) -> None:
    output, scripted, result, greeting_s = await _speak_and_answer(
        runtime, "What is the answer?", "The answer is forty two, as always."
    )
    # the greeting was synthesized by Piper and played (about 2 s of speech, not silence)
    assert 1.0 < greeting_s < 6.0
    assert rms(output.samples()) > 0.02

    # the LLM saw the instructions and the user's text; its reply became the agent's message
    (request,) = scripted.requests
    assert _user_texts(request) == ["What is the answer?"]
    assert runtime.agent_settings.agent_instructions in str(request.items[0].content)
    said = [ev.item.text_content for ev in result.events if ev.type == "message"]
    assert said == ["The answer is forty two, as always."]

    # and the reply was spoken after the greeting
    reply_s = sum(f.duration for f in output.frames) - greeting_s
    assert 1.0 < reply_s < 6.0
    assert runtime.active_sessions == 0  # the closed session is forgotten


async def test_three_sessions_at_once_share_one_engine(runtime: WorkerRuntime) -> None:
    engine = runtime.engine
    assert isinstance(engine, PiperEngine)
    loaded_model = engine._voice
    peak = {"sessions": 0, "load": 0.0, "streams": 0}
    stop = asyncio.Event()

    async def watch() -> None:
        while not stop.is_set():
            peak["sessions"] = max(peak["sessions"], runtime.active_sessions)
            peak["load"] = max(peak["load"], runtime.load())
            peak["streams"] = max(peak["streams"], runtime.load_report()["engine_streams"])
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    questions = ["Where is the station?", "What time is it?", "Who won the game?"]
    answers = [
        "The station is two streets away.",
        "It is half past nine in the evening.",
        "The home team won by three points.",
    ]
    try:
        results = await asyncio.gather(
            *(_speak_and_answer(runtime, q, a) for q, a in zip(questions, answers, strict=True))
        )
    finally:
        stop.set()
        await watcher

    assert peak["sessions"] == 3
    # 3 rooms of LOCALTTS_AGENT_MAX_SESSIONS=4, or the engine's streams against its capacity
    # (measured at warmup: fewer on a busy machine), whichever is fuller
    capacity = engine.info().capacity
    assert capacity is not None and peak["streams"] >= 1
    assert peak["load"] == pytest.approx(min(1.0, max(3 / 4, peak["streams"] / capacity)))
    for (output, scripted, result, greeting_s), question, answer in zip(
        results, questions, answers, strict=True
    ):
        assert _user_texts(scripted.requests[0]) == [question]  # each session its own turn
        assert [ev.item.text_content for ev in result.events if ev.type == "message"] == [answer]
        assert greeting_s > 1.0 and sum(f.duration for f in output.frames) > greeting_s + 1.0
        assert rms(output.samples()) > 0.02
    # one engine, one loaded model, for all three
    assert runtime.engine is engine and engine._voice is loaded_model
    assert localtts.TTS(engine="piper", settings=runtime.settings).engine is engine


async def test_each_session_has_its_own_tts_and_vad_over_the_shared_engine(
    runtime: WorkerRuntime,
) -> None:
    a = runtime.new_session(llm=ScriptedLLM([]), stt=None)
    b = runtime.new_session(llm=ScriptedLLM([]), stt=None)
    try:
        # errors and metrics of one room's TTS must not reach another room's session
        assert a.tts is not b.tts and a.vad is not b.vad
        assert isinstance(a.tts, localtts.TTS) and a.tts.engine is b.tts.engine is runtime.engine
        assert isinstance(a.vad, VoicedSpeechVAD) and isinstance(a.vad.wrapped, VAD)
        assert isinstance(b.vad, VoicedSpeechVAD) and a.vad.wrapped is not b.vad.wrapped
        await start_session(a, runtime)
        await start_session(b, runtime)
        assert runtime.active_sessions == 2
    finally:
        await a.aclose()
        await b.aclose()
    assert runtime.active_sessions == 0


async def test_new_session_before_ready_is_a_clear_error() -> None:
    rt = WorkerRuntime(settings=localtts.Settings(_env_file=None, engine="piper"))  # type: ignore[call-arg]
    with pytest.raises(RuntimeError, match="not ready"):
        rt.new_session(llm=ScriptedLLM([]), stt=None)
    rt.close()


def test_prewarm_loads_once_for_every_executor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Thread executors each run prewarm: the first loads, the others reuse the load."""
    monkeypatch.setenv("LOCALTTS_ENGINE", "piper")
    # threads are part of the shared-engine key: 5 (used by no other test) makes an engine
    # of its own, not yet loaded, whatever ran before
    monkeypatch.setenv("LOCALTTS_THREADS", "5")
    localtts.get_settings.cache_clear()
    monkeypatch.setattr(WorkerRuntime, "_shared", None)
    loads: list[str] = []
    real_load = PiperEngine.load

    def counting_load(self: PiperEngine) -> None:
        if self._voice is None:
            loads.append(threading.current_thread().name)
        real_load(self)

    monkeypatch.setattr(PiperEngine, "load", counting_load)
    procs = [
        JobProcess(executor_type=JobExecutorType.THREAD, user_arguments=None, http_proxy=None)
        for _ in range(4)
    ]
    threads = [threading.Thread(target=prewarm, args=(p,)) for p in procs]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        runtimes = {id(p.userdata["runtime"]) for p in procs}
        assert len(runtimes) == 1
        runtime = procs[0].userdata["runtime"]
        assert runtime.engine is not None and runtime.engine._voice is not None
        assert len(loads) == 1, loads
    finally:
        if WorkerRuntime._shared is not None:
            WorkerRuntime._shared.close()
        localtts.get_settings.cache_clear()


def _build_server_recording_its_arguments(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Any, dict[str, Any]]:
    """`build_server()`, and what it asked of livekit's AgentServer: the public
    constructor's arguments (the server keeps them in private attributes an upgrade may
    rename)."""
    from localtts_agent.worker import main

    monkeypatch.setattr(WorkerRuntime, "_shared", None)
    asked: dict[str, Any] = {}
    real_server = main.AgentServer

    def recording_server(**kwargs: Any) -> Any:
        asked.update(kwargs)
        return real_server(**kwargs)

    monkeypatch.setattr(main, "AgentServer", recording_server)
    server = build_server()
    assert isinstance(server, real_server)
    return server, asked


def test_server_runs_jobs_in_threads_of_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    server, asked = _build_server_recording_its_arguments(monkeypatch)
    runtime = WorkerRuntime._shared
    assert runtime is not None
    assert asked["job_executor_type"] == JobExecutorType.THREAD
    assert server.setup_fnc is prewarm
    assert server.load_fnc == runtime.load
    assert asked["initialize_process_timeout"] >= 600  # model loads are not 10 s jobs
    runtime.close()


def test_worker_load() -> None:
    assert worker_load(0, 4, None) == 0.0
    assert worker_load(2, 4, None) == 0.5
    assert worker_load(6, 4, None) == 1.0  # capped
    # the scarcest resource decides
    assert worker_load(1, 4, GpuLoad(memory_used=0.9, utilisation=0.2)) == 0.9
    assert worker_load(1, 4, GpuLoad(memory_used=0.1, utilisation=0.8)) == 0.8
    assert worker_load(3, 4, GpuLoad(memory_used=0.1, utilisation=None)) == 0.75
    # streams against the engine's capacity: two speaking where two keep real time is full
    assert worker_load(1, 4, None, streams=2, capacity=2) == 1.0
    assert worker_load(2, 4, None, streams=1, capacity=4) == 0.5
    assert worker_load(1, 4, None, streams=3, capacity=None) == 0.25  # not measured yet


def test_load_counts_the_servers_rooms(runtime: WorkerRuntime) -> None:
    server = SimpleNamespace(active_jobs=[object()] * 4)  # the part of AgentServer load reads
    assert runtime.load(server) == 1.0  # type: ignore[arg-type]
    report = runtime.load_report()
    assert report["max_sessions"] == 4 and report["gpu_memory_used"] is None  # no CUDA here


async def test_stt_and_llm_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The LLM talks to OPENAI_BASE_URL, the STT to LOCALTTS_STT_BASE_URL when set: each
    request is seen by the server it was meant for (two local OpenAI-compatible stubs)."""
    from livekit.agents import llm as agents_llm

    from .openai_stub import OpenAIStub

    llm_server, stt_server = OpenAIStub(), OpenAIStub(transcribe=lambda audio, rate: "hello")
    await llm_server.start()
    await stt_server.start()
    try:
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        monkeypatch.setenv("OPENAI_BASE_URL", llm_server.base_url)
        settings = AgentSettings(_env_file=None, llm_model="llama3.1:8b")  # type: ignore[call-arg]
        model = build_llm(settings)
        assert model.model == "llama3.1:8b"
        chat = agents_llm.ChatContext()
        chat.add_message(role="user", content="Hi there.")
        async with model.chat(chat_ctx=chat) as stream:
            async for _ in stream:
                pass
        (request,) = llm_server.chats
        assert request.body["model"] == "llama3.1:8b" and request.texts("user") == ["Hi there."]
        # a separate STT server overrides OPENAI_BASE_URL for STT only
        monkeypatch.setenv("LOCALTTS_STT_BASE_URL", stt_server.base_url)
        monkeypatch.setenv("LOCALTTS_STT_MODEL", "Systran/faster-whisper-small")
        settings = AgentSettings(_env_file=None)  # type: ignore[call-arg]
        transcriber = build_stt(settings)
        assert transcriber.model == "Systran/faster-whisper-small"
        frame = rtc.AudioFrame(
            bytes(3200), sample_rate=16000, num_channels=1, samples_per_channel=1600
        )
        event = await transcriber.recognize(frame)
        assert event.alternatives[0].text == "hello"
        (heard,) = stt_server.transcriptions
        assert heard.form["model"] == "Systran/faster-whisper-small"
        assert len(llm_server.transcriptions) == 0 and len(stt_server.chats) == 0
    finally:
        await llm_server.aclose()
        await stt_server.aclose()


def test_vad_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCALTTS_VAD", raising=False)
    monkeypatch.setenv("LOCALTTS_VAD_AGGRESSIVENESS", "3")
    vad = build_vad(AgentSettings(_env_file=None))  # type: ignore[call-arg]
    assert isinstance(vad, VAD) and vad._opts.aggressiveness == 3
    monkeypatch.setenv("LOCALTTS_VAD", "silero")
    settings = AgentSettings(_env_file=None)  # type: ignore[call-arg]
    # without the extra: one clear line naming the fix (sys.modules None: not importable)
    monkeypatch.setitem(sys.modules, "livekit.plugins.silero", None)
    with pytest.raises(RuntimeError, match=r"pip install 'localtts\[silero\]'"):
        build_vad(settings)
    monkeypatch.delitem(sys.modules, "livekit.plugins.silero")
    pytest.importorskip("livekit.plugins.silero")
    assert build_vad(settings).model == "silero"


def test_python_m_agent_asked_for_a_missing_silero_fails_clearly(tmp_path: Any) -> None:
    # a sitecustomize that hides the silero plugin, whether or not this venv has it
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\nsys.modules['livekit.plugins.silero'] = None\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "localtts_agent", "console"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LOCALTTS_VAD": "silero", "PYTHONPATH": str(tmp_path)},
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert out.returncode != 0
    assert "pip install 'localtts[silero]'" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_python_m_agent_offers_the_livekit_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "localtts_agent", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LOCALTTS_ENGINE": "piper"},
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert out.returncode == 0, out.stderr
    for command in ("dev", "start", "console"):
        assert command in out.stdout


async def test_a_default_voice_the_engine_cannot_clone_is_ignored_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Piper (the fallback) clones nothing: LOCALTTS_VOICE must not silence every reply."""
    settings = localtts.Settings(_env_file=None, engine="piper", voice="narrator")  # type: ignore[call-arg]
    rt = WorkerRuntime(settings=settings, agent_settings=_agent_settings())
    try:
        with caplog.at_level(logging.WARNING, logger="livekit.plugins.localtts"):
            await rt.ready()
        (warning,) = [r.getMessage() for r in caplog.records if "IS IGNORED" in r.getMessage()]
        assert "LOCALTTS_VOICE='narrator'" in warning and "cannot clone" in warning
        assert rt.voice is None and rt.library is None  # no library opened for Piper
        report = rt.load_report()
        assert report["engine"] == "piper" and report["voice"] is None
        assert report["warnings"] == [warning]

        # and the agent speaks, with Piper's own voice
        output = await _greet(rt)
        assert sum(f.duration for f in output.frames) > 1.0
        assert rms(output.samples()) > 0.02
    finally:
        rt.close()


def _tiny_xtts_settings(tmp_path: Any, database_url: str, **overrides: Any) -> localtts.Settings:
    """A cloning engine from a checkpoint directory (tiny random weights, the real directory
    loader; built-in voice "Ana") with its voice library on `database_url`."""
    from .tiny_xtts import write_xtts_checkpoint

    return localtts.Settings(  # type: ignore[call-arg]
        _env_file=None,
        engine="xtts",
        xtts_model=str(write_xtts_checkpoint(tmp_path / "xtts", speaker="Ana")),
        xtts_int8=False,
        database_url=database_url,
        voices_dir=tmp_path / "no-voices",
        **overrides,
    )


async def test_a_failed_engine_warmup_is_reported_as_the_engines(
    tmp_path: Any, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Weights that cannot load: `ready` fails with the engine's own error and the log says
    the engine failed; the voice library, which is fine, is not blamed (it used to be: the
    warmup was awaited inside the library's error handling)."""
    settings = _tiny_xtts_settings(tmp_path, database_url, voice="narrator")
    (Path(settings.xtts_model) / "model.pth").write_bytes(b"not a checkpoint")
    rt = WorkerRuntime(settings=settings, agent_settings=_agent_settings())
    try:
        with caplog.at_level(logging.INFO, logger="livekit.plugins.localtts"):
            with pytest.raises(localtts.EngineUnavailableError, match="could not load XTTS"):
                await rt.ready()
        # ours only: asyncio may log an earlier test's session tasks collected meanwhile
        errors = [
            r.getMessage()
            for r in caplog.records
            if r.levelno >= logging.ERROR and r.name != "asyncio"
        ]
        assert len(errors) == 1, errors
        assert "could not load its engine: could not load XTTS" in errors[0]
        assert rt.library is not None and rt.library.status == "ok"
        assert rt.voice == "narrator" and rt.warnings == []
    finally:
        rt.close()


async def test_an_unreachable_voice_database_is_reported_as_the_librarys(
    tmp_path: Any, dead_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The database is down: the engine warms and the rooms are served, the log names the
    database (not the engine), and a default voice that lives in the database is dropped
    loudly - every reply with it would fail - for the engine's own voice."""
    settings = _tiny_xtts_settings(tmp_path, dead_database_url, voice="narrator")
    rt = WorkerRuntime(settings=settings, agent_settings=_agent_settings())
    try:
        with caplog.at_level(logging.INFO, logger="livekit.plugins.localtts"):
            await rt.ready()
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors and all("voice library" in m and "cannot reach" in m for m in errors)
        assert rt.engine is not None and rt.engine.name == "xtts"
        assert rt.library is not None and rt.library.status == "degraded"
        (warning,) = rt.load_report()["warnings"]
        assert "LOCALTTS_VOICE='narrator' IS IGNORED" in warning and "cannot reach" in warning
        assert rt.voice is None
        # new sessions speak with the engine's own voice, not the dropped one
        assert rt.new_session(llm=ScriptedLLM([]), stt=None).tts._opts.voice is None  # type: ignore[union-attr]
        rt.engine.max_tokens = 30  # type: ignore[attr-defined]  # random weights never stop
        output = await _greet(rt)  # with the checkpoint's own voice
        assert sum(f.duration for f in output.frames) > 0.2
    finally:
        rt.close()


def test_load_report_without_a_default_voice_has_no_warning(runtime: WorkerRuntime) -> None:
    report = runtime.load_report()
    assert report["engine"] == "piper" and report["voice"] is None and report["warnings"] == []


@pytest.mark.parametrize(
    ("argv", "missing"),
    [
        (["start"], ["LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"]),
        (["dev", "--log-level", "debug"], ["LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"]),
        (["connect", "--room", "r", "--url", "ws://x"], ["LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"]),
        (["start", "--url=ws://x", "--api-key=k", "--api-secret=s"], []),
        (["start", "--help"], []),
        (["--help"], []),
        (["console"], []),
        (["download-files"], []),
        ([], []),
    ],
)
def test_missing_server_settings(argv: list[str], missing: list[str]) -> None:
    assert missing_server_settings(argv, {}) == missing
    full = {"LIVEKIT_URL": "ws://x", "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s"}
    assert missing_server_settings(argv, full) == []
    # an empty variable is as good as none
    assert missing_server_settings(argv, {**full, "LIVEKIT_URL": ""}) == (
        ["LIVEKIT_URL"] if "LIVEKIT_URL" in missing else []
    )


@pytest.mark.parametrize("command", ["start", "dev"])
def test_python_m_agent_without_a_server_fails_clearly(command: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    out = subprocess.run(
        [sys.executable, "-m", "localtts_agent", command],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "LOCALTTS_ENGINE": "piper", "LIVEKIT_API_KEY": "devkey"},
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert out.returncode != 0
    assert "LIVEKIT_URL, LIVEKIT_API_SECRET not set" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


async def test_worker_with_a_cloning_engine_speaks_a_preloaded_voice(
    tmp_path: Any, database_url: str
) -> None:
    """The cloning path end to end: an XTTS checkpoint directory (tiny random weights, the
    real directory loader), the voice library on the runtime's own loop, a default cloned
    voice preloaded once, and a room's session speaking with it from another loop."""
    import io

    import soundfile as sf
    from livekit.plugins.localtts.voices import VoiceLibrary

    from .tiny_xtts import write_xtts_checkpoint

    piper = PiperEngine()
    speech = np.concatenate(
        list(
            piper.stream(
                "A reference clip of clear speech, spoken slowly. " * 2,
                None,
                localtts.SynthesisParams(),
                threading.Event(),
            )
        )
    )
    clip = io.BytesIO()
    sf.write(clip, speech, piper.sample_rate, format="WAV", subtype="PCM_16")
    seed = VoiceLibrary(database_url=database_url, voices_dir=tmp_path / "no-voices")
    await seed.start()
    await seed.add("narrator", clip.getvalue())
    await seed.aclose()

    settings = localtts.Settings(  # type: ignore[call-arg]
        _env_file=None,
        engine="xtts",
        xtts_model=str(write_xtts_checkpoint(tmp_path / "xtts")),
        xtts_int8=False,
        database_url=database_url,
        voices_dir=tmp_path / "no-voices",
        voice="narrator",
    )
    rt = WorkerRuntime(settings=settings, agent_settings=_agent_settings())
    try:
        await rt.ready()
        assert rt.engine is not None and rt.engine.name == "xtts"
        assert rt.voice == "narrator" and rt.load_report()["warnings"] == []
        calls = 0
        condition = rt.engine.condition

        def counting(clip: Any) -> Any:
            nonlocal calls
            calls += 1
            return condition(clip)

        rt.engine.condition = counting  # type: ignore[method-assign]
        rt.engine.max_tokens = 30  # type: ignore[attr-defined]  # random weights never stop
        output = await _greet(rt)
        assert sum(f.duration for f in output.frames) > 0.2
        assert rms(output.samples()) > 0.0
        assert calls == 0, "the preloaded voice was conditioned again for a room"
    finally:
        rt.close()


def test_turn_taking_runs_locally_in_every_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under `dev` livekit would send end-of-turn and interruption detection to LiveKit
    Cloud (with this server's key); the worker pins the local choices."""
    monkeypatch.setenv("LIVEKIT_DEV_MODE", "1")  # what `python -m localtts_agent dev` sets
    settings = AgentSettings(_env_file=None, agent_min_interruption_s=0.3)  # type: ignore[call-arg]
    options = turn_handling(settings)
    detector = options["turn_detection"]
    assert isinstance(detector, inference.TurnDetector)
    assert detector.model == "turn-detector-v1-mini"  # local weights, not the cloud v1
    assert options["interruption"] == {"mode": "vad", "min_duration": 0.3}


async def test_sessions_interrupt_on_voiced_speech(runtime: WorkerRuntime) -> None:
    session = runtime.new_session(llm=ScriptedLLM([]), stt=None)
    try:
        assert isinstance(session.vad, VoicedSpeechVAD) and isinstance(session.vad.wrapped, VAD)
        assert session.options.interruption["mode"] == "vad"
        assert session.options.interruption["min_duration"] == 0.2  # the default
    finally:
        await session.aclose()


async def _vad_events(
    vad_: agents_vad.VAD, audio: np.ndarray, rate: int
) -> list[agents_vad.VADEvent]:
    pcm = (audio * 32767).astype(np.int16)
    stream = vad_.stream()
    hop = rate // 100
    for i in range(0, pcm.size, hop):
        piece = pcm[i : i + hop]
        stream.push_frame(rtc.AudioFrame(piece.tobytes(), rate, 1, piece.size))
    stream.end_input()
    events = [ev async for ev in stream]
    await stream.aclose()
    return events


async def test_voiced_speech_vad_counts_voice_not_the_silence_after_it() -> None:
    """What the interruption threshold (0.2 s) is compared with. A 0.12 s "uh" reads 0.5 s
    on the plain VAD (speech is "on" until 0.55 s of silence ends it), under 0.2 s counted
    voiced; real speech passes 0.2 s within a third of a second of its onset either way;
    START/END_OF_SPEECH are the plain VAD's."""
    rate = 24_000
    ah = piper_speech("Ah.", rate)
    start = int(np.argmax(np.abs(ah) > 0.05))
    uh = ah[start : start + int(0.12 * rate)]
    sentence = piper_speech("Sorry, I have another question.", rate)
    pad = np.zeros(int(0.3 * rate), np.float32)
    tail = np.zeros(int(1.0 * rate), np.float32)

    def peak(events: list[agents_vad.VADEvent]) -> float:
        return max(ev.speech_duration for ev in events if ev.type == E.INFERENCE_DONE)

    with_uh = np.concatenate([pad, uh, tail])
    plain_uh = await _vad_events(VAD(), with_uh, rate)
    voiced_uh = await _vad_events(VoicedSpeechVAD(VAD()), with_uh, rate)
    assert peak(plain_uh) >= 0.5
    assert 0.09 <= peak(voiced_uh) < 0.2  # heard as speech (START), too short to interrupt

    audio = np.concatenate([pad, sentence, tail])
    onset = pad.size / rate + int(np.argmax(np.abs(sentence) > 0.01)) / rate
    events = await _vad_events(VoicedSpeechVAD(VAD()), audio, rate)
    crossed = next(
        ev.timestamp for ev in events if ev.type == E.INFERENCE_DONE and ev.speech_duration >= 0.2
    )
    assert crossed - onset < 0.33
    plain = await _vad_events(VAD(), audio, rate)
    turns = [(ev.type, ev.timestamp) for ev in plain if ev.type != E.INFERENCE_DONE]
    assert turns == [(ev.type, ev.timestamp) for ev in events if ev.type != E.INFERENCE_DONE]
    assert [t for t, _ in turns] == [E.START_OF_SPEECH, E.END_OF_SPEECH]


def test_health_port_follows_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second worker on the host (one per GPU) must not fight over livekit's port 8081."""
    default = http_port(AgentSettings(_env_file=None))  # type: ignore[call-arg]
    assert isinstance(default, ServerEnvOption)
    assert (default.dev_default, default.prod_default) == (0, 8081)  # livekit's own
    assert http_port(AgentSettings(_env_file=None, agent_http_port=0)) == 0  # type: ignore[call-arg]
    monkeypatch.setenv("LOCALTTS_AGENT_HTTP_PORT", "9123")
    monkeypatch.setenv("LOCALTTS_AGENT_HTTP_HOST", "127.0.0.1")
    localtts.get_settings.cache_clear()
    try:
        _, asked = _build_server_recording_its_arguments(monkeypatch)
        assert (asked["host"], asked["port"]) == ("127.0.0.1", 9123)
    finally:
        if WorkerRuntime._shared is not None:
            WorkerRuntime._shared.close()
        localtts.get_settings.cache_clear()
