"""The plugin's audio path at its exact bounds, over the real Piper voice: float chunks to
16-bit PCM (level and clipping), the read-ahead bound, and the cancel an engine is sent.

Each test states the bound a listener depends on and measures it, rather than a proxy
("some audio came out", "fewer than N pieces").
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from livekit import rtc
from livekit.plugins import localtts
from livekit.plugins.localtts.engines import SynthesisParams, VoiceConditioning
from livekit.plugins.localtts.engines.piper import PiperEngine

from .recording_engine import RecordingEngine

TEXT = (
    "The weather today is sunny with a light breeze from the west. "
    "Tomorrow brings clouds, and perhaps some rain in the afternoon. "
    "By the weekend it should be warm again, so plan something outside."
)


@pytest.fixture(scope="module")
def piper_engine() -> PiperEngine:
    engine = PiperEngine()
    engine.load()
    return engine


@dataclass
class ShapedEngine:
    """The real Piper engine, its output shaped like another model's:

    - `gain`: louder, peaks past full scale (XTTS and Chatterbox overshoot +-1.0 now and
      then; the plugin must clip them, not wrap them);
    - `paced`: 20 ms chunks, one every 20 ms, a model still generating a piece when its
      listener leaves (Piper hands over a whole sentence at once, before anyone could)."""

    inner: PiperEngine
    gain: float = 1.0
    paced: bool = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def stream(
        self,
        text: str,
        voice: VoiceConditioning | None,
        params: SynthesisParams,
        cancel: threading.Event,
    ) -> Iterator[np.ndarray]:
        step = self.inner.sample_rate // 50 if self.paced else None
        for chunk in self.inner.stream(text, voice, params, cancel):
            chunk = (chunk * self.gain).astype(np.float32)
            for i in range(0, chunk.size, step or chunk.size):
                yield chunk[i : i + (step or chunk.size)]
                if self.paced:
                    time.sleep(0.02)


def _pcm(frames: list[rtc.AudioFrame]) -> np.ndarray:
    return np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in frames])


async def test_pcm_is_full_scale_and_clipped_never_wrapped(piper_engine: PiperEngine) -> None:
    recording = RecordingEngine(ShapedEngine(piper_engine, gain=4.0), keep_audio=True)
    tts = localtts.TTS(engine=recording)  # type: ignore[arg-type]
    frames = [ev.frame async for ev in tts.synthesize("Hello there, how loud is this?")]
    pcm = _pcm(frames)
    produced = recording.produced("Hello there, how loud is this?")
    assert np.max(np.abs(produced)) > 1.5  # the engine really went past full scale
    # the reply starts at its first sound: what was pushed is the engine's audio from there,
    # each sample scaled by 32767 (1.0 -> full scale) and clipped to +-1.0 first
    expected = (np.clip(produced, -1.0, 1.0) * 32767.0).astype(np.int16)
    # (the emitter pads the last frame with silence)
    start = next(
        i for i in range(expected.size) if np.array_equal(expected[i : i + 256], pcm[:256])
    )
    spoken = expected.size - start
    np.testing.assert_array_equal(pcm[:spoken], expected[start:])
    assert not pcm[spoken:].any() and pcm.size - spoken <= 0.02 * piper_engine.sample_rate
    # so a sample past full scale is at full scale with its own sign (a wrap would flip it)
    tail = produced[start:]
    assert np.all(pcm[:spoken][tail > 1.0] == 32767) and np.all(pcm[:spoken][tail < -1.0] == -32767)
    assert np.count_nonzero(tail > 1.0) > 10


async def test_read_ahead_stops_at_its_limit_while_the_reader_stalls(
    piper_engine: PiperEngine,
) -> None:
    """Synthesis starts a piece only while less than `read_ahead_s` of audio waits unread:
    with a stalled reader it stops at the limit plus the piece in flight, and each second
    the reader takes lets exactly that much more be made."""
    limit = 6.0  # about two of these sentences: the bound counts the audio of all pieces
    recording = RecordingEngine(piper_engine)
    tts = localtts.TTS(engine=recording, settings=localtts.Settings(read_ahead_s=limit))  # type: ignore[arg-type]
    stream = tts.synthesize(TEXT * 20)
    rate = piper_engine.sample_rate

    async def settled() -> list[float]:
        """Each piece's seconds, once the last finished and nothing new came for 1 s."""
        quiet_since, deadline, seen = time.monotonic(), time.monotonic() + 30, -1
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            if len(recording.calls) != seen or recording.calls[-1].finished is None:
                seen, quiet_since = len(recording.calls), time.monotonic()
            elif time.monotonic() - quiet_since > 1.0:
                break
        return [sum(c.chunk_samples) / rate for c in recording.calls]

    read = 0.0
    for to_read in (0.0, 4.0):  # the first frame, then 4 s more
        while True:
            read += (await stream.__anext__()).frame.duration
            if read >= to_read:
                break
        seconds = await settled()
        # the last piece started with at most `limit` unread (the first piece's lead-in
        # silence, trimmed, is the tolerance); it took the total past the limit, so no
        # further piece started
        assert sum(seconds[:-1]) - read <= limit + 0.1, (read, seconds)
        assert sum(seconds) - read > limit, (read, seconds)
    await stream.aclose()


async def test_read_ahead_bound_is_exact() -> None:
    """The bound itself: synthesis goes on while at most `limit_s` seconds wait unread
    (equality included) and resumes the moment the reader brings it back to the limit."""
    from livekit.plugins.localtts.tts import _ReadAhead

    bound = _ReadAhead(2.0)
    await asyncio.wait_for(bound.wait(), 1.0)  # nothing made yet
    bound.pushed(2.0)
    await asyncio.wait_for(bound.wait(), 1.0)  # exactly at the limit: go on
    bound.pushed(0.5)
    waiting = asyncio.ensure_future(bound.wait())
    await asyncio.sleep(0.05)
    assert not waiting.done()  # 2.5 s unread
    bound.read(0.25)
    await asyncio.sleep(0.05)
    assert not waiting.done()  # 2.25 s unread
    bound.read(0.25)
    await asyncio.wait_for(waiting, 1.0)  # 2.0 s unread: at the limit again


async def test_a_closed_stream_tells_the_engine_to_stop(piper_engine: PiperEngine) -> None:
    recording = RecordingEngine(ShapedEngine(piper_engine, paced=True))
    tts = localtts.TTS(engine=recording)  # type: ignore[arg-type]
    frames = [ev.frame async for ev in tts.synthesize("Hi.")]
    assert frames and [c.cancelled for c in recording.calls] == [False]  # finished on its own
    stream = tts.synthesize(TEXT)
    await stream.__anext__()
    await stream.aclose()
    closed = time.monotonic()
    for _ in range(100):  # the worker thread sees the cancel at the engine's next chunk
        if recording.calls[-1].finished is not None:
            break
        await asyncio.sleep(0.02)
    in_flight = recording.calls[-1]
    assert in_flight.cancelled, "the engine was never told the stream was closed"
    assert in_flight.finished is not None and in_flight.finished - closed < 1.0
    # the piece stopped where it was: far less than its 3 s were generated
    assert sum(in_flight.chunk_samples) < piper_engine.sample_rate
