"""LiveKit test helpers: a capturing audio output for a real AgentSession without a server,
a listener participant that records what it hears in a real room, a microphone it can speak
into, and speech to say (the bundled Piper voice)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents.types import USERDATA_TIMED_TRANSCRIPT, TimedString
from livekit.agents.voice import io
from livekit.plugins.localtts.engines import SynthesisParams
from livekit.plugins.localtts.engines.piper import PiperEngine


class CapturingAudioOutput(io.AudioOutput):
    """An AgentSession audio sink that keeps every frame it is given (faster than real time)."""

    def __init__(self, *, sample_rate: int | None = None) -> None:
        super().__init__(
            label="capture",
            capabilities=io.AudioOutputCapabilities(pause=False),
            sample_rate=sample_rate,
        )
        self.frames: list[rtc.AudioFrame] = []
        self.segments = 0
        self._pushed = 0.0
        self.first_frame = asyncio.Event()

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        self.frames.append(frame)
        self._pushed += frame.duration
        self.first_frame.set()

    def flush(self) -> None:
        super().flush()
        self.segments += 1
        self.on_playback_finished(playback_position=self._pushed, interrupted=False)
        self._pushed = 0.0

    def clear_buffer(self) -> None:
        self.on_playback_finished(playback_position=self._pushed, interrupted=True)
        self._pushed = 0.0

    def samples(self) -> np.ndarray:
        """All captured audio as float32 mono in [-1, 1]."""
        return frames_to_float(self.frames)


class PlayoutAudioOutput(CapturingAudioOutput):
    """A sink that takes frames as fast as they come (they are kept, like
    `CapturingAudioOutput`) but plays them out on the wall clock, as a room does: playback
    starts once `prebuffer_s` of a segment is buffered (0: at its first frame; the whole
    segment if it ends sooner), reported by `on_playback_started`; a flushed segment finishes
    when its last frame has played, and `clear_buffer` (an interruption) stops it at the
    position reached by then, reported as `interrupted_at`. Playback never runs dry: a
    prebuffer as long as the segment keeps a loaded machine's slow synthesis out of a test."""

    def __init__(self, *, sample_rate: int | None = None, prebuffer_s: float = 0.0) -> None:
        super().__init__(sample_rate=sample_rate)
        self.prebuffer_s = prebuffer_s
        self.started_at: float | None = None  # time.time() when the segment began to play
        self.interrupted_at: float | None = None  # seconds into the segment
        self._finish: asyncio.TimerHandle | None = None
        self._flushed_s = 0.0  # duration of the flushed segment still playing
        self.playing = asyncio.Event()  # set when a segment begins to play

    def _start_playing(self) -> None:
        if self.started_at is None:
            self.started_at = time.time()
            self.playing.set()
            self.on_playback_started(created_at=self.started_at)

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        if self._pushed >= self.prebuffer_s:
            self._start_playing()

    def _position(self) -> float:
        played = time.time() - self.started_at if self.started_at is not None else 0.0
        return min(self._pushed, played)

    def flush(self) -> None:
        io.AudioOutput.flush(self)
        self.segments += 1
        self._start_playing()
        pushed, remaining = self._pushed, max(0.0, self._pushed - self._position())
        self._flushed_s = pushed

        def finished() -> None:
            self._finish = None
            self.started_at = None
            self.on_playback_finished(playback_position=pushed, interrupted=False)

        self._finish = asyncio.get_running_loop().call_later(remaining, finished)
        self._pushed = 0.0

    def clear_buffer(self) -> None:
        if self._finish is not None:  # a flushed segment still playing
            self._finish.cancel()
            self._finish = None
            position = min(self._flushed_s, time.time() - (self.started_at or time.time()))
        elif self.started_at is not None:  # a segment still arriving
            position = self._position()
        else:
            return
        self.interrupted_at = position
        self.started_at = None
        self._pushed = 0.0
        self.on_playback_finished(playback_position=position, interrupted=True)


@functools.cache
def _piper() -> PiperEngine:
    engine = PiperEngine()
    engine.load()
    return engine


def piper_speech(text: str, sample_rate: int = 24_000) -> np.ndarray:
    """`text` spoken by the bundled Piper voice: float32 mono at `sample_rate`."""
    import soxr

    engine = _piper()
    chunks = list(engine.stream(text, None, SynthesisParams(), threading.Event()))
    audio = soxr.resample(np.concatenate(chunks), engine.sample_rate, sample_rate)
    return audio.astype(np.float32)


def frames_to_float(frames: list[rtc.AudioFrame]) -> np.ndarray:
    if not frames:
        return np.zeros(0, dtype=np.float32)
    pcm = np.concatenate([np.frombuffer(bytes(f.data), dtype=np.int16) for f in frames])
    return pcm.astype(np.float32) / 32768.0


@dataclass
class Heard:
    """What a caller of the TTS got: audio, and each timed string with the audio time at
    which it arrived (the start of the frame that carried it)."""

    audio: np.ndarray
    timed: list[tuple[TimedString, float]]

    @property
    def text(self) -> str:
        return "".join(t for t, _ in self.timed)


async def hear(stream: Any) -> Heard:
    """Everything a TTS stream gives: its audio and aligned transcript."""
    frames, timed, at = [], [], 0.0
    async for ev in stream:
        timed += [(t, at) for t in ev.frame.userdata.get(USERDATA_TIMED_TRANSCRIPT, [])]
        frames.append(ev.frame)
        at += ev.frame.duration
    return Heard(frames_to_float(frames), timed)


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0


# --- real rooms ------------------------------------------------------------------------------

SPEECH_RMS = 0.01  # a 10 ms frame louder than this (-40 dBFS) carries speech, not codec hiss


@dataclass
class HeardTrack:
    """One remote audio track as a listener received it, frame by frame."""

    participant: str
    track_sid: str
    sample_rate: int
    frames: list[np.ndarray] = field(default_factory=list)  # int16 mono
    arrivals: list[float] = field(default_factory=list)  # time.monotonic() of each frame

    def samples(self) -> np.ndarray:
        """Everything heard, float32 in [-1, 1]."""
        if not self.frames:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(self.frames).astype(np.float32) / 32768.0

    def first_speech(self, *, after: float = 0.0, threshold: float = SPEECH_RMS) -> float | None:
        """Arrival time of the first frame after `after` louder than `threshold` (RMS)."""
        for arrival, frame in zip(self.arrivals, self.frames, strict=True):
            if arrival >= after and rms(frame.astype(np.float32) / 32768.0) > threshold:
                return arrival
        return None

    def last_speech(self, *, threshold: float = SPEECH_RMS) -> float | None:
        """Arrival time of the last frame louder than `threshold`."""
        for arrival, frame in zip(reversed(self.arrivals), reversed(self.frames), strict=True):
            if rms(frame.astype(np.float32) / 32768.0) > threshold:
                return arrival
        return None

    def speech_spans(
        self, *, gap: float, after: float = 0.0, threshold: float = SPEECH_RMS
    ) -> list[tuple[float, float]]:
        """(first, last) arrival times of the loud stretches after `after` that are separated
        by at least `gap` seconds of quiet (pauses shorter than `gap` stay inside a span)."""
        spans: list[tuple[float, float]] = []
        for arrival, frame in zip(self.arrivals, self.frames, strict=True):
            if arrival < after or rms(frame.astype(np.float32) / 32768.0) <= threshold:
                continue
            if spans and arrival - spans[-1][1] < gap:
                spans[-1] = (spans[-1][0], arrival)
            else:
                spans.append((arrival, arrival))
        return spans


class RoomListener:
    """A participant of the test's own: joins a room on a real LiveKit server, subscribes to
    every audio track published there and records what it hears, with arrival times.

    What a listener hears is the evidence of a room test, not what the code says it sent.
    """

    def __init__(
        self, url: str, token: str, *, sample_rate: int = 24_000, name: str = "listener"
    ) -> None:
        self._url = url
        self._token = token
        self.sample_rate = sample_rate
        self.name = name
        self.room = rtc.Room()
        self.tracks: list[HeardTrack] = []
        self._readers: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self.room.on("track_subscribed", self._on_track)

    async def __aenter__(self) -> RoomListener:
        await self.join()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.leave()

    async def join(self) -> None:
        await self.room.connect(self._url, self._token)

    async def leave(self) -> None:
        """Disconnect (again: a no-op) and stop recording."""
        if self.room.isconnected():
            await self.room.disconnect()
        for reader in list(self._readers):
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        self._readers.clear()

    def _on_track(
        self, track: rtc.Track, publication: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant
    ) -> None:
        if track.kind != rtc.TrackKind.KIND_AUDIO:
            return
        heard = HeardTrack(p.identity, publication.sid, self.sample_rate)
        self.tracks.append(heard)
        self._notify()
        task = asyncio.ensure_future(self._read(track, heard))
        self._readers.add(task)
        task.add_done_callback(self._readers.discard)

    async def _read(self, track: rtc.Track, heard: HeardTrack) -> None:
        stream = rtc.AudioStream(track, sample_rate=self.sample_rate, num_channels=1)
        try:
            async for event in stream:
                heard.frames.append(np.frombuffer(bytes(event.frame.data), dtype=np.int16))
                heard.arrivals.append(time.monotonic())
                self._notify()
        finally:
            await stream.aclose()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def heard_from(self, participant: str | None = None) -> list[HeardTrack]:
        return [t for t in self.tracks if participant is None or t.participant == participant]

    async def wait_for(
        self, predicate: Callable[[RoomListener], bool], *, timeout: float, what: str
    ) -> None:
        """Wait until `predicate(self)` holds (checked whenever a track or frame arrives)."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.name}: no {what} within {timeout} s")
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    async def wait_for_speech(
        self, *, after: float = 0.0, participant: str | None = None, timeout: float = 20.0
    ) -> float:
        """Arrival time of the first speech heard after `after` (from `participant`)."""
        found: list[float] = []

        def heard(listener: RoomListener) -> bool:
            times = [t.first_speech(after=after) for t in listener.heard_from(participant)]
            found[:] = sorted(x for x in times if x is not None)
            return bool(found)

        await self.wait_for(heard, timeout=timeout, what="speech")
        return found[0]


@dataclass
class Utterance:
    """When a `Microphone` sent an utterance: monotonic times at which frames left the audio
    source for the WebRTC encoder (the moment a real microphone would have captured them)."""

    first_sent: float
    speech_onset: float | None  # its first 10 ms frame louder than SPEECH_RMS
    last_sent: float


class Microphone:
    """A test participant's microphone: an audio track published as SOURCE_MICROPHONE that
    sends silence until it is given something to say, in real time, like a live microphone
    (a receiver's VAD needs the silence after speech to end the turn).

    Frames are 10 ms and the source queue holds at most 50 ms, so the time a frame leaves the
    source is known to within a frame: the capture time plus the audio queued ahead of it.
    """

    FRAME_S = 0.01

    def __init__(self, room: rtc.Room, *, sample_rate: int = 24_000, name: str = "mic") -> None:
        self.room = room
        self.sample_rate = sample_rate
        self.name = name
        self._frame = int(sample_rate * self.FRAME_S)
        self._source = rtc.AudioSource(sample_rate, 1, queue_size_ms=50)
        self._pending: collections.deque[tuple[np.ndarray, asyncio.Future[Utterance] | None]]
        self._pending = collections.deque()
        self._feeder: asyncio.Task[None] | None = None

    async def start(self) -> None:
        track = rtc.LocalAudioTrack.create_audio_track(self.name, self._source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await self.room.local_participant.publish_track(track, options)
        self._feeder = asyncio.ensure_future(self._feed())

    async def aclose(self) -> None:
        if self._feeder is not None:
            self._feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._feeder
        await self._source.aclose()

    async def say(self, audio: np.ndarray) -> Utterance:
        """Send `audio` (float32 mono at `sample_rate`) after what is queued; returns once
        its last frame has left the source."""
        pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
        pcm = np.pad(pcm, (0, -pcm.size % self._frame))
        done: asyncio.Future[Utterance] = asyncio.get_running_loop().create_future()
        frames = pcm.reshape(-1, self._frame)
        for i, frame in enumerate(frames):
            self._pending.append((frame, done if i == len(frames) - 1 else None))
        return await done

    async def _feed(self) -> None:
        silence = np.zeros(self._frame, np.int16)
        first_sent: float | None = None
        onset: float | None = None
        while True:
            frame, done = self._pending.popleft() if self._pending else (silence, None)
            await self._source.capture_frame(
                rtc.AudioFrame(frame.tobytes(), self.sample_rate, 1, frame.size)
            )
            if frame is silence:
                continue
            # this frame leaves the source once the audio queued ahead of it has
            sent = time.monotonic() + self._source.queued_duration - self.FRAME_S
            first_sent = sent if first_sent is None else first_sent
            if onset is None and rms(frame.astype(np.float32) / 32768.0) > SPEECH_RMS:
                onset = sent
            if done is not None:
                if not done.done():
                    done.set_result(Utterance(first_sent, onset, sent))
                first_sent = onset = None
