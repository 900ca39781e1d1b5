"""The LiveKit plugin over the real bundled Piper voice: no server, no network."""

from __future__ import annotations

import asyncio
import gc
import itertools
import threading
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import (
    Agent,
    AgentSession,
    APIConnectionError,
    APIConnectOptions,
    APIError,
    APIStatusError,
    APITimeoutError,
)
from livekit.plugins import localtts
from livekit.plugins.localtts.engines import SynthesisParams, VoiceConditioning
from livekit.plugins.localtts.engines.piper import PiperEngine

from .livekit_helpers import CapturingAudioOutput, frames_to_float, hear, rms
from .recording_engine import RecordingEngine

MULTI = (
    "The weather today is sunny with a light breeze from the west. "
    "Tomorrow brings clouds, and perhaps some rain in the afternoon. "
    "By the weekend it should be warm again, so plan something outside."
)




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


async def test_text_pushed_before_synthesis_starts_is_split_as_one(
    recording: RecordingEngine,
) -> None:
    """Text already queued when the stream reads it (AgentSession.say, a fast LLM) is split
    together: a short first sentence pushed in two parts is not cut as if the rest were
    still to come."""
    tts = localtts.TTS(engine=recording)  # type: ignore[arg-type]
    stream = tts.stream()
    for part in ("Hello, this is the local voice", " agent.", " How can I help you today?"):
        stream.push_text(part)
    stream.end_input()
    await collect(stream)
    await stream.aclose()
    assert [c.text for c in recording.calls] == [
        "Hello, this is the local voice agent.",
        "How can I help you today?",
    ]


async def test_auto_and_named_engine_share_one_instance() -> None:
    settings = localtts.Settings(_env_file=None)  # type: ignore[call-arg]
    auto = localtts.TTS(engine="auto", settings=settings)
    assert auto.selection is not None
    assert not auto.selection.reason.startswith("asked for by")  # the host table chose
    named = localtts.TTS(engine=auto.selection.engine, settings=settings)
    assert named.selection is not None
    assert named.selection.reason == f"asked for by engine={auto.selection.engine!r}"
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


def _sound(audio: np.ndarray) -> tuple[int, int]:
    """(first, last + 1) audible sample (louder than -60 dBFS)."""
    audible = np.flatnonzero(np.abs(audio) > 1e-3)
    return int(audible[0]), int(audible[-1]) + 1


async def test_a_sentence_cut_at_a_word_does_not_pause_there(piper_engine: PiperEngine) -> None:
    """The first piece ends mid-sentence: the engine ends it with silence and starts the next
    piece with more (Piper: 120-260 ms together, a sentence pause). What is heard at the cut
    is a word gap; every sound of both pieces is played unchanged, and the transcript keeps
    the engine's time of the first word after the cut relative to its sound."""
    recording = RecordingEngine(piper_engine, keep_audio=True)
    tts = localtts.TTS(engine=recording)  # type: ignore[arg-type]
    heard = await hear(tts.synthesize(MULTI))
    first, second = recording.calls[0], recording.calls[1]
    assert first.text == "The weather today is sunny"  # a word cut
    assert second.text.startswith("with a light breeze")
    a, b = first.samples(), second.samples()
    # b's sound as heard: 16-bit PCM truncates, so a first sample just over -60 dBFS may
    # be just under it in the output (the piece's edges are found on the engine's floats)
    (a_start, a_end), (b_start, b_end) = _sound(a), _sound(np.trunc(b * 32767) / 32768)
    reply_start = a_start - round(0.005 * tts.sample_rate)  # (the reply starts at its sound)
    out = heard.audio
    a_end_out = a_end - reply_start
    resumes = a_end_out + _sound(out[a_end_out:])[0]
    pause_ms = (resumes - a_end_out) / tts.sample_rate * 1000
    engine_pause_ms = (len(a) - a_end + b_start) / tts.sample_rate * 1000
    print(f"pause at the cut: {pause_ms:.0f} ms (the engine's: {engine_pause_ms:.0f} ms)")
    assert pause_ms <= 90, pause_ms
    pcm_step = 2 / 32768  # the output is 16-bit
    np.testing.assert_allclose(out[:a_end_out], a[reply_start:a_end], atol=pcm_step)
    np.testing.assert_allclose(out[resumes : resumes + b_end - b_start], b[b_start:b_end],
                               atol=pcm_step)  # fmt: skip
    assert heard.text == MULTI
    # "with": the first word of the second piece, timed by the engine from its own audio
    engine_with = second.words[0]
    ours_with = next(t for t, _ in heard.timed if t.strip() == "with")
    expected = (resumes - b_start) / tts.sample_rate + engine_with.start_s
    assert abs(ours_with.start_time - expected) < 0.001, (ours_with.start_time, expected)
    # and the first word: the reply's leading silence is gone from its time too
    ours_first = heard.timed[0][0]
    expected = max(0.0, first.words[0].start_s - reply_start / tts.sample_rate)
    assert abs(ours_first.start_time - expected) < 0.001, (ours_first.start_time, expected)


async def test_a_reply_starts_at_its_first_sound(piper_engine: PiperEngine) -> None:
    """Piper leads with 25-50 ms of silence a listener would wait through: a reply starts
    5 ms before its first audible sample, and is otherwise the engine's audio exactly
    (the pauses between its sentences included; a reply with no piece cut mid-sentence)."""
    recording = RecordingEngine(piper_engine, keep_audio=True)
    tts = localtts.TTS(engine=recording)  # type: ignore[arg-type]
    text = MULTI.replace("The weather today is sunny with a light breeze from the west.",
                         "The weather is sunny today.")  # fmt: skip

    def streamed() -> localtts.SynthesizeStream:
        stream = tts.stream()
        stream.push_text(text)
        stream.end_input()
        return stream

    for reply in (lambda: tts.synthesize(text), streamed):
        recording.calls.clear()
        frames, _ = await collect(reply())
        assert [c.text[-1] for c in recording.calls] == [".", ".", "."]  # whole sentences
        produced = recording.produced(text)
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
    with pytest.raises(APIStatusError, match="unknown engine 'espeak'") as info:
        localtts.TTS(engine="espeak")  # type: ignore[arg-type]
    assert info.value.status_code == 400


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
    with pytest.raises(APIStatusError, match="speed must be within"):  # README: 400
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
    """The real Piper engine, except that its next `times` requests raise `error` after
    `after_chunks` chunks of audio."""

    inner: PiperEngine
    error: Exception
    after_chunks: int = 0
    times: int = 1_000

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def stream(self, *args: Any) -> Iterator[np.ndarray]:
        if self.times <= 0:
            yield from self.inner.stream(*args)
            return
        self.times -= 1
        yield from itertools.islice(self.inner.stream(*args), self.after_chunks)
        raise self.error


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


@dataclass
class StallingEngine:
    """The real Piper engine behind a model that hangs before its first audio on the next
    `stalls` requests, until it is told to stop (its cancel event)."""

    inner: PiperEngine
    stalls: int = 1_000
    stopped: list[float] = field(default_factory=list)  # when each stalled call ended

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def stream(self, *args: Any) -> Iterator[np.ndarray]:
        if self.stalls > 0:
            self.stalls -= 1
            cancel: threading.Event = args[-1]  # (text, voice, params, cancel)
            cancel.wait(30)
            self.stopped.append(time.perf_counter())
            return
        yield from self.inner.stream(*args)


async def test_no_first_audio_within_the_timeout_stops_the_engine(
    piper_engine: PiperEngine,
) -> None:
    engine = StallingEngine(piper_engine, stalls=2)
    tts = localtts.TTS(engine=engine)  # type: ignore[arg-type]
    options = APIConnectOptions(timeout=0.5, max_retry=0)
    for make in (
        lambda: tts.synthesize("Hello there.", conn_options=options),
        lambda: _streamed(tts.stream(conn_options=options), "Hello there, streamed."),
    ):
        started = time.perf_counter()
        with pytest.raises(APITimeoutError, match=r"no audio within 0\.5 s") as info:
            await collect(make())
        failed_after = time.perf_counter() - started
        assert 0.5 <= failed_after < 2.0
        assert info.value.retryable  # LiveKit's contract: a timeout may be retried
        await asyncio.sleep(0.2)  # the worker thread sees the cancel event at once
        assert len(engine.stopped) in (1, 2) and engine.stopped[-1] - started < failed_after + 0.2
    assert len(engine.stopped) == 2, "the stalled engine work was left running"
    frames, _ = await collect(tts.synthesize("The next request works."))
    assert rms(frames_to_float(frames)) > 0.02


def _streamed(stream: Any, text: str) -> Any:
    stream.push_text(text)
    stream.end_input()
    return stream


async def test_transient_failures_before_audio_are_retryable(piper_engine: PiperEngine) -> None:
    from livekit.plugins.localtts import EngineBusyError

    once = APIConnectOptions(max_retry=0)
    busy = EngineBusyError("all decoding slots are taken", retry_after_s=1.0)
    for error, kind in ((busy, APIStatusError), (MemoryError(), APIConnectionError)):
        tts = localtts.TTS(engine=FailingEngine(piper_engine, error))  # type: ignore[arg-type]
        with pytest.raises(kind) as info:
            await collect(tts.synthesize("Hello there.", conn_options=once))
        assert info.value.retryable, error
        # after audio went out, a retry would repeat the start of the reply: not retryable
        late = localtts.TTS(engine=FailingEngine(piper_engine, error, after_chunks=1))  # type: ignore[arg-type]
        with pytest.raises(APIError) as info:
            await collect(late.synthesize("Hello there. And a second sentence.", conn_options=once))
        assert not info.value.retryable, error


async def test_livekit_retries_a_busy_engine(piper_engine: PiperEngine) -> None:
    from livekit.plugins.localtts import EngineBusyError

    busy = EngineBusyError("busy", retry_after_s=0.0)
    busy_once = FailingEngine(piper_engine, busy, times=1)
    tts = localtts.TTS(engine=busy_once)  # type: ignore[arg-type]
    errors: list[Any] = []
    tts.on("error", errors.append)
    options = APIConnectOptions(max_retry=1, retry_interval=0.0)
    frames, _ = await collect(tts.synthesize("Hello after a retry.", conn_options=options))
    assert rms(frames_to_float(frames)) > 0.02
    assert len(errors) == 1 and errors[0].recoverable


async def test_fallback_adapter_fails_over_from_a_stalled_engine(
    piper_engine: PiperEngine,
) -> None:
    from livekit.agents.tts import FallbackAdapter

    stalled = StallingEngine(piper_engine)
    backup = RecordingEngine(PiperEngine())  # a second localtts Piper instance, warm
    backup.inner.warmup()
    primary_tts = localtts.TTS(engine=stalled)  # type: ignore[arg-type]
    backup_tts = localtts.TTS(engine=backup)  # type: ignore[arg-type]
    fallback = FallbackAdapter([primary_tts, backup_tts], max_retry_per_tts=0)
    # the backup's first audio must come within the timeout too: Piper takes up to a second
    # for it when other jobs load the 2 cores
    timeout = 2.0
    options = APIConnectOptions(timeout=timeout)
    firsts: list[float] = []
    try:
        for make in (
            lambda: fallback.synthesize("The backup voice speaks.", conn_options=options),
            lambda: _streamed(fallback.stream(conn_options=options), "The backup streams."),
        ):
            calls = len(backup.calls)
            frames, first = await collect(make())
            assert rms(frames_to_float(frames)) > 0.02
            assert len(backup.calls) > calls  # the audio came from the backup
            assert first is not None
            firsts.append(first)
        assert stalled.stopped, "the stalled engine's work was never stopped"
    finally:
        await fallback.aclose()
    # the first request gave up on the stalled engine at its timeout and moved on; the
    # primary is then marked unavailable, so the next goes to the backup at once
    assert timeout <= firsts[0] < timeout + 2.0, firsts
    assert firsts[1] < timeout, firsts


async def test_a_slow_llm_gets_its_first_words_spoken_after_a_short_wait(
    recording: RecordingEngine,
) -> None:
    settings = localtts.Settings(first_piece_wait_s=0.25)  # type: ignore[call-arg]
    tts = localtts.TTS(engine=recording, settings=settings)  # type: ignore[arg-type]
    stream = tts.stream()
    started = time.perf_counter()
    stream.push_text("Certainly")
    stream.push_text(" my")  # "Certainly" is complete; then nothing comes until audio
    first = await asyncio.wait_for(stream.__anext__(), timeout=10)
    waited = time.perf_counter() - started
    assert first.frame.samples_per_channel > 0
    assert recording.calls[0].text == "Certainly"
    assert 0.25 <= waited < 2.0, waited  # the wait, then a one-word piece
    stream.push_text(" friend, here is the answer you asked for.")
    stream.end_input()
    rest, _ = await collect(stream)
    assert rest and [c.text for c in recording.calls][1:] == [
        "my friend, here is the answer you asked for."
    ]
    await stream.aclose()


# -- many streams on one engine (engines/scheduler.py) -------------------------------------


@dataclass
class FirstChunks:
    """The real Piper engine, noting when each piece's first chunk reached its caller."""

    inner: PiperEngine
    firsts: list[tuple[str, float]] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def stream(self, text: str, *args: Any) -> Iterator[np.ndarray]:
        first = True
        for chunk in self.inner.stream(text, *args):
            if first:
                self.firsts.append((text, time.perf_counter()))
                first = False
            yield chunk


async def test_every_streams_first_piece_goes_before_any_later_piece(
    piper_engine: PiperEngine,
) -> None:
    engine = FirstChunks(piper_engine)
    tts = localtts.TTS(engine=engine)  # type: ignore[arg-type]
    texts = [f"Room {n} is on the line. " + MULTI for n in ("one", "two", "three", "four")]
    results = await asyncio.gather(*(collect(tts.synthesize(t)) for t in texts))
    assert all(rms(frames_to_float(frames)) > 0.02 for frames, _ in results)
    firsts = [t for text, t in engine.firsts if text.startswith("Room")]
    later = [t for text, t in engine.firsts if not text.startswith("Room")]
    assert len(firsts) == 4 and later
    assert max(firsts) < min(later)  # no stream's second piece before every first piece


async def test_past_capacity_callers_wait_then_get_a_retryable_busy() -> None:
    from livekit.agents.metrics import TTSMetrics
    from livekit.plugins.localtts.engines import EngineScheduler

    engine = PiperEngine(scheduler=EngineScheduler("piper", capacity=1, max_waiting=1,
                                                   wait_s=30.0))
    engine.warmup()
    assert engine.info().capacity == 1  # configured: the warmup did not override it
    tts = localtts.TTS(engine=engine, limit_to_capacity=True)
    seen: list[TTSMetrics] = []
    tts.on("metrics_collected", seen.append)
    first = tts.synthesize(MULTI)
    await first.__anext__()  # speaking: holds the one lease
    waiting = asyncio.create_task(collect(tts.synthesize("I waited for my turn.")))
    await asyncio.sleep(0.2)
    assert engine.scheduler.admission.waiting == 1
    with pytest.raises(APIStatusError) as busy:  # the line (1) is full: at once
        once = APIConnectOptions(max_retry=0)
        await collect(tts.synthesize("No room for me.", conn_options=once))
    assert busy.value.status_code == 503 and busy.value.retryable
    assert busy.value.body == {"retry_after_s": 30.0}
    async for _ev in first:
        pass
    await first.aclose()
    frames, _ = await waiting
    assert rms(frames_to_float(frames)) > 0.02
    await asyncio.sleep(0.1)
    acquire = {m.characters_count: m.acquire_time for m in seen}
    # the time waiting for the engine is reported apart from synthesis (LiveKit's
    # acquire_time): the second waited at least while we held the first; the first not at all
    assert acquire[len("I waited for my turn.")] >= 0.2
    assert acquire[len(MULTI)] < 0.1
    # without the limit (an agent's rooms, already dispatched here): counted, never refused
    counted = localtts.TTS(engine=engine)
    holder = engine.scheduler.admission.acquire()
    frames, _ = await collect(counted.synthesize("Served anyway."))
    assert rms(frames_to_float(frames)) > 0.02
    holder.release()
    assert engine.scheduler.admission.active == 0


async def test_only_the_piper_scheduler_thread_runs_piper(monkeypatch) -> None:
    engine = PiperEngine()
    threads: list[int] = []
    for model_call in ("_run_model", "_decode"):  # the front (or whole model), the decoder
        call = getattr(engine, model_call)
        monkeypatch.setattr(engine, model_call,
                            lambda *a, call=call: (threads.append(threading.get_ident()),
                                                   call(*a))[1])
    tts = localtts.TTS(engine=engine)
    await tts.warmup()
    await asyncio.gather(*(collect(tts.synthesize(f"Caller {i} says hello.")) for i in range(3)))
    assert len(threads) >= 6 and set(threads) == {engine.scheduler.thread_ident}
    assert engine.info().capacity is not None and engine.info().capacity >= 1
