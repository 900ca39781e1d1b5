"""The LiveKit plugin over the real bundled Piper voice: no server, no network."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import Agent, AgentSession, APIError, APIStatusError
from livekit.plugins import localtts
from livekit.plugins.localtts.engines import SynthesisParams, VoiceConditioning
from livekit.plugins.localtts.engines.piper import PiperEngine

from .livekit_helpers import CapturingAudioOutput, frames_to_float, rms
from .recording_engine import RecordingEngine

MULTI = (
    "The weather today is sunny with a light breeze from the west. "
    "Tomorrow brings clouds, and perhaps some rain in the afternoon. "
    "By the weekend it should be warm again, so plan something outside."
)


@pytest.fixture(scope="session")
def piper_engine() -> PiperEngine:
    engine = PiperEngine()
    engine.load()
    engine.warmup()
    return engine


@pytest.fixture
def recording(piper_engine: PiperEngine) -> RecordingEngine:
    return RecordingEngine(piper_engine)


def plausible_duration(text: str, seconds: float) -> bool:
    # English speech runs at roughly 10-20 characters per second
    return len(text) / 25 <= seconds <= len(text) / 7


async def collect(stream: Any) -> tuple[list[rtc.AudioFrame], float | None]:
    frames: list[rtc.AudioFrame] = []
    t0, first = time.perf_counter(), None
    async for ev in stream:
        if first is None:
            first = time.perf_counter() - t0
        frames.append(ev.frame)
    return frames, first


async def test_synthesize_speaks_at_declared_rate(piper_engine: PiperEngine) -> None:
    tts = localtts.TTS(engine=piper_engine)
    assert tts.sample_rate == 22050 == piper_engine.sample_rate
    assert tts.capabilities.streaming
    assert (tts.model, tts.provider) == ("piper", "localtts")
    text = "Hello from a local voice agent."
    frames, _ = await collect(tts.synthesize(text))
    assert {f.sample_rate for f in frames} == {22050}
    assert {f.num_channels for f in frames} == {1}
    audio = frames_to_float(frames)
    assert rms(audio) > 0.02
    assert plausible_duration(text, len(audio) / 22050)


async def test_stream_pushed_tokens(piper_engine: PiperEngine) -> None:
    tts = localtts.TTS(engine=piper_engine)
    stream = tts.stream()
    for word in MULTI.split(" "):
        stream.push_text(word + " ")
    stream.end_input()
    frames, _ = await collect(stream)
    audio = frames_to_float(frames)
    assert rms(audio) > 0.02
    assert plausible_duration(MULTI, len(audio) / 22050)
    await stream.aclose()


async def test_auto_and_named_engine_share_one_instance() -> None:
    settings = localtts.Settings(_env_file=None)  # type: ignore[call-arg]
    auto = localtts.TTS(engine="auto", settings=settings)
    assert auto.selection is not None
    assert auto.selection.reason != "asked for by LOCALTTS_ENGINE"  # the host table chose
    named = localtts.TTS(engine=auto.selection.engine, settings=settings)
    assert named.selection is not None and named.selection.reason == "asked for by LOCALTTS_ENGINE"
    assert named.engine is auto.engine
    again = localtts.TTS(engine=auto.selection.engine, settings=settings)
    assert again.engine is named.engine


async def test_first_audio_before_whole_text_is_synthesized(recording: RecordingEngine) -> None:
    tts = localtts.TTS(engine=recording)  # type: ignore[arg-type]
    first_frame_at = None
    async for _ev in tts.synthesize(MULTI):
        if first_frame_at is None:
            first_frame_at = time.monotonic()  # the clock RecordingEngine stamps with
    assert len(recording.calls) >= 3, [c.text for c in recording.calls]
    # the first piece is a short clause; the last piece started after audio was out
    assert len(recording.calls[0].text) < 70
    assert first_frame_at is not None and first_frame_at < recording.calls[-1].started


async def test_a_reply_starts_at_its_first_sound(piper_engine: PiperEngine) -> None:
    """Piper leads with 25-50 ms of silence a listener would wait through: a reply starts
    5 ms before its first audible sample, and is otherwise the engine's audio exactly
    (the pauses between its sentences included)."""
    recording = RecordingEngine(piper_engine, keep_audio=True)
    tts = localtts.TTS(engine=recording)  # type: ignore[arg-type]

    def streamed() -> localtts.SynthesizeStream:
        stream = tts.stream()
        stream.push_text(MULTI)
        stream.end_input()
        return stream

    for reply in (lambda: tts.synthesize(MULTI), streamed):
        recording.calls.clear()
        frames, _ = await collect(reply())
        produced = recording.produced(MULTI)
        first_sound = int(np.flatnonzero(np.abs(produced) > 1e-3)[0])
        lead_in = round(0.005 * tts.sample_rate)
        assert first_sound > 2 * lead_in  # silence to skip (else this proves nothing)
        expected = produced[first_sound - lead_in :]
        heard = frames_to_float(frames)
        # (LiveKit's emitter pads the last frame to whole 10 ms and a stream's end may add
        # a 10-ms marker frame; PCM16 rounds)
        assert expected.size <= heard.size <= expected.size + 2 * tts.sample_rate // 100
        np.testing.assert_allclose(heard[: expected.size], expected, atol=3 / 32768)


async def test_stream_first_audio_while_text_still_arrives(piper_engine: PiperEngine) -> None:
    tts = localtts.TTS(engine=piper_engine)
    stream = tts.stream()
    stream.push_text("Sure thing, let me look that up for you right now. ")
    stream.push_text("The answer")
    # no more text, no flush: the first clause alone must already produce audio
    ev = await asyncio.wait_for(stream.__anext__(), timeout=10)
    assert ev.frame.samples_per_channel > 0
    stream.push_text(" is forty two.")
    stream.end_input()
    rest, _ = await collect(stream)
    assert rest
    await stream.aclose()


async def test_cancel_mid_utterance_then_next_request(recording: RecordingEngine) -> None:
    tts = localtts.TTS(engine=recording)  # type: ignore[arg-type]
    stream = tts.synthesize(MULTI * 20)
    await stream.__anext__()
    await stream.aclose()
    # the worker thread notices at its next sentence boundary: 0.1 s on a quiet machine,
    # over 0.5 s when other jobs share the 2 cores
    for _ in range(100):
        if all(c.finished is not None for c in recording.calls):
            break
        await asyncio.sleep(0.05)
    assert all(c.finished is not None for c in recording.calls)
    assert len(recording.calls) < 10, "generation went on after the stream was closed"
    frames, _ = await collect(tts.synthesize("And now the next request."))
    assert rms(frames_to_float(frames)) > 0.02


async def test_agent_session_say_through_capturing_output(piper_engine: PiperEngine) -> None:
    tts = localtts.TTS(engine=piper_engine)
    session = AgentSession(tts=tts, vad=None, turn_handling={"turn_detection": None})
    output = CapturingAudioOutput()
    session.output.audio = output
    await session.start(Agent(instructions="You are a test agent."))
    try:
        handle = session.say("Hello there. This is the local voice speaking.")
        await asyncio.wait_for(handle.wait_for_playout(), timeout=30)
    finally:
        await session.aclose()
    audio = output.samples()
    assert rms(audio) > 0.02
    rate = output.frames[0].sample_rate
    assert 1.0 < len(audio) / rate < 8.0


async def test_frames_through_audio_source_track_and_stream(piper_engine: PiperEngine) -> None:
    tts = localtts.TTS(engine=piper_engine)
    source = rtc.AudioSource(tts.sample_rate, 1)
    track = rtc.LocalAudioTrack.create_audio_track("tts", source)
    received: list[rtc.AudioFrame] = []
    audio_stream = rtc.AudioStream(track, sample_rate=tts.sample_rate, num_channels=1)

    async def read() -> None:
        async for ev in audio_stream:
            received.append(ev.frame)

    reader = asyncio.create_task(read())
    sent = 0
    async for ev in tts.synthesize("Frames travel through a real audio source."):
        await source.capture_frame(ev.frame)
        sent += ev.frame.samples_per_channel
    await source.wait_for_playout()
    await asyncio.sleep(0.3)
    await audio_stream.aclose()
    reader.cancel()
    got = frames_to_float(received)
    assert sent > 0
    assert len(got) >= 0.8 * sent
    assert rms(got) > 0.02
    await source.aclose()


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
async def test_blank_text_gives_no_audio_and_no_error(piper_engine: PiperEngine, text: str) -> None:
    tts = localtts.TTS(engine=piper_engine)
    frames, _ = await collect(tts.synthesize(text))
    assert frames == []


@pytest.mark.parametrize(
    "text",
    [
        "Hello\x00 wor\x07ld\x1b[31m, red.",
        "I love it 😀🎉!",
        "<speak>Hi <b>there</b></speak> **bold**",
    ],
)
async def test_odd_text_still_speaks(piper_engine: PiperEngine, text: str) -> None:
    tts = localtts.TTS(engine=piper_engine)
    frames, _ = await collect(tts.synthesize(text))
    assert rms(frames_to_float(frames)) > 0.02


async def test_nothing_speakable_is_short_silence_not_error(piper_engine: PiperEngine) -> None:
    tts = localtts.TTS(engine=piper_engine)
    frames, _ = await collect(tts.synthesize("😀🎉 ..."))
    audio = frames_to_float(frames)
    assert 0 < len(audio) <= 0.1 * 22050
    assert rms(audio) == 0.0


async def test_50000_characters_stream_with_bounded_memory(recording: RecordingEngine) -> None:
    text = ("This sentence is part of a very long text, and it keeps going. " * 800)[:50_000]
    tts = localtts.TTS(engine=recording)  # type: ignore[arg-type]
    tracemalloc.start()
    try:
        stream = tts.synthesize(text)
        got = 0.0
        async for ev in stream:
            got += ev.frame.duration
            if got > 20:
                break
        _, peak = tracemalloc.get_traced_memory()
        await stream.aclose()
    finally:
        tracemalloc.stop()
    # 20 s of audio came out, but only a few pieces of the text were ever synthesized
    assert got > 20
    assert max(len(c.text) for c in recording.calls) <= 300
    assert len(recording.calls) < 40
    assert peak < 50 * 2**20, f"peak traced memory {peak / 2**20:.1f} MiB"
    frames, _ = await collect(tts.synthesize("Still working."))
    assert frames


async def test_unknown_engine_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown engine 'espeak'"):
        localtts.TTS(engine="espeak")  # type: ignore[arg-type]


async def test_unknown_voice_is_a_clear_error(piper_engine: PiperEngine) -> None:
    tts = localtts.TTS(engine=piper_engine, voice="nobody")
    with pytest.raises(APIStatusError, match="unknown voice 'nobody'") as info:
        await collect(tts.synthesize("Hello there."))
    assert info.value.status_code == 404
    assert not info.value.retryable
    # the engine is fine for the next request
    tts.update_options(voice=None)
    frames, _ = await collect(tts.synthesize("Hello again."))
    assert frames


async def test_update_options_applies_to_new_streams(piper_engine: PiperEngine) -> None:
    tts = localtts.TTS(engine=piper_engine)
    normal = frames_to_float((await collect(tts.synthesize("Speed changes the length.")))[0])
    tts.update_options(speed=2.0)
    fast = frames_to_float((await collect(tts.synthesize("Speed changes the length.")))[0])
    assert len(fast) < 0.75 * len(normal)
    with pytest.raises(ValueError):
        tts.update_options(speed=10.0)


async def test_concurrent_streams_share_the_engine(piper_engine: PiperEngine) -> None:
    tts = localtts.TTS(engine=piper_engine)
    texts = [f"Room number {i} hears its own sentence." for i in range(3)]
    results = await asyncio.gather(*(collect(tts.synthesize(t)) for t in texts))
    for frames, _ in results:
        assert rms(frames_to_float(frames)) > 0.02


async def test_aclose_closes_open_streams(piper_engine: PiperEngine) -> None:
    tts = localtts.TTS(engine=piper_engine)
    stream = tts.stream()
    stream.push_text(MULTI)
    await stream.__anext__()
    await tts.aclose()
    with pytest.raises((StopAsyncIteration, APIError)):
        while True:
            await stream.__anext__()


async def test_metrics_come_from_the_base_class(piper_engine: PiperEngine) -> None:
    from livekit.agents.metrics import TTSMetrics

    tts = localtts.TTS(engine=piper_engine)
    seen: list[TTSMetrics] = []
    tts.on("metrics_collected", seen.append)
    await collect(tts.synthesize("Metrics for a chunked request."))
    stream = tts.stream()
    stream.push_text("Metrics for a streamed request.")
    stream.end_input()
    await collect(stream)
    await stream.aclose()
    await asyncio.sleep(0.1)
    assert len(seen) == 2
    assert all(m.ttfb > 0 and m.audio_duration > 0.5 for m in seen)
    assert [m.streamed for m in seen] == [False, True]


async def test_synthesis_waits_for_a_slow_listener(recording: RecordingEngine) -> None:
    settings = localtts.Settings(read_ahead_s=3.0)
    tts = localtts.TTS(engine=recording, settings=settings)  # type: ignore[arg-type]
    stream = tts.synthesize(MULTI * 30)  # about 8 minutes of speech
    await stream.__anext__()
    await asyncio.sleep(3.0)  # the listener stalls; Piper could say minutes meanwhile
    pieces_while_stalled = len(recording.calls)
    # at most the read-ahead (3 s) plus the piece in flight: a few sentences, not 90
    assert pieces_while_stalled <= 4, [c.text for c in recording.calls]
    got = 0.0
    async for ev in stream:  # reading on lets synthesis go on
        got += ev.frame.duration
        if got > 20:
            break
    assert len(recording.calls) > pieces_while_stalled
    await stream.aclose()


@dataclass
class FailingEngine:
    """The real Piper engine, except that speaking raises `error`."""

    inner: PiperEngine
    error: Exception

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def stream(self, *_: Any) -> Iterator[np.ndarray]:
        raise self.error
        yield  # a generator, like every engine's stream


async def test_only_the_callers_faults_are_4xx(piper_engine: PiperEngine) -> None:
    """An internal fault that happens to be a ValueError (a KV cache too small, a bug deep in
    a model) is the engine's failure, not a bad request; a request the engine cannot serve
    or a bad voice is the caller's (400)."""
    from livekit.plugins.localtts import InvalidRequestError, KVCacheOverflowError, VoiceError

    internal = [KVCacheOverflowError("prompt of 900 positions exceeds the KV cache"),
                ValueError("math domain error")]  # fmt: skip
    for error in internal:
        tts = localtts.TTS(engine=FailingEngine(piper_engine, error))  # type: ignore[arg-type]
        with pytest.raises(APIError) as info:
            await collect(tts.synthesize("Hello there."))
        assert not isinstance(info.value, APIStatusError), error
        assert "piper engine failed" in str(info.value) and not info.value.retryable
    for error in (InvalidRequestError("XTTS does not speak 'xx'"), VoiceError("bad clip")):
        tts = localtts.TTS(engine=FailingEngine(piper_engine, error))  # type: ignore[arg-type]
        with pytest.raises(APIStatusError) as status:
            await collect(tts.synthesize("Hello there."))
        assert status.value.status_code == 400 and not status.value.retryable, error
    frames, _ = await collect(localtts.TTS(engine=piper_engine).synthesize("Still fine."))
    assert frames


@dataclass
class LockingEngine:
    """The real Piper engine behind a generation lock held while a piece is spoken, as the
    model engines hold theirs; its generator is in a reference cycle (as any generator whose
    frame reaches an object holding it is), so only closing it releases the lock at once."""

    inner: PiperEngine
    lock: threading.Lock = field(default_factory=threading.Lock)
    paused: bool = False  # the first piece pauses mid-way until its listener leaves

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def stream(self, text: str, *args: Any) -> Iterator[np.ndarray]:
        cancel: threading.Event = args[-1]  # (text, voice, params, cancel)
        holder: list[Any] = []
        gen = self._speak(text, cancel, holder)
        holder.append(gen)
        return gen

    def _speak(self, text: str, cancel: threading.Event, holder: list[Any]) -> Iterator[np.ndarray]:
        with self.lock:
            for chunk in self.inner.stream(text, None, SynthesisParams(), threading.Event()):
                half = len(chunk) // 2
                yield chunk[:half]
                if not self.paused:
                    self.paused = True
                    cancel.wait(5)  # the listener leaves while this piece is being spoken
                yield chunk[half:]


async def test_closing_a_stream_closes_the_engine_generator(piper_engine: PiperEngine) -> None:
    engine = LockingEngine(piper_engine)
    tts = localtts.TTS(engine=engine)  # type: ignore[arg-type]
    gc.disable()  # the cycle collector must not be what releases the engine
    try:
        stream = tts.synthesize("The first sentence is being spoken right now. A second one.")
        await stream.__anext__()
        await stream.aclose()
        # the worker notices at its next chunk (at once here) and closes the generator
        released = await asyncio.to_thread(engine.lock.acquire, timeout=5)
        assert released, "the engine's generator was left open, its lock held"
        engine.lock.release()
    finally:
        gc.enable()
    frames, _ = await collect(tts.synthesize("And the next request."))
    assert rms(frames_to_float(frames)) > 0.02


def test_piper_fulfils_the_engine_contract(piper_engine: PiperEngine) -> None:
    import json

    from livekit.plugins.localtts import Engine, EngineInfo, Settings, UnsupportedVoiceError

    assert isinstance(piper_engine, Engine)
    settings = Settings(_env_file=None, engine="piper")  # type: ignore[call-arg]
    assert PiperEngine.availability(settings) is None
    assert isinstance(PiperEngine.from_settings(settings), PiperEngine)
    info = piper_engine.info()
    assert isinstance(info, EngineInfo) and info.loaded and info.device == "cpu"
    assert json.loads(json.dumps(info.as_dict()))["sample_rate"] == 22050
    assert piper_engine.min_reference_seconds is None is piper_engine.max_reference_seconds
    assert piper_engine.max_piece_chars("en") is None  # Piper splits into sentences itself
    piper_engine.set_default_voice(None)
    with pytest.raises(UnsupportedVoiceError):
        piper_engine.set_default_voice(VoiceConditioning("v", "xtts", "r", None))
