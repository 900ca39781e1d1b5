"""LiveKit test helpers: a capturing audio output for a real AgentSession without a server,
a listener participant that records what it hears in a real room, a microphone it can speak
into, speech to say (the bundled Piper voice), and `match_heard`, which says whether what was
heard is the audio that was sent: whole, once, in order."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import math
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
from scipy.signal import resample_poly  # here, not in a test: the import takes ~1 s


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
    prebuffer as long as the segment keeps a loaded machine's slow synthesis out of a test.
    `before_playing`: run on the event loop just before a segment begins to play (a test's
    heavy work on the buffered audio, kept out of the playback's wall-clock pacing)."""

    def __init__(self, *, sample_rate: int | None = None, prebuffer_s: float = 0.0,
                 before_playing: Callable[[], None] | None = None) -> None:
        super().__init__(sample_rate=sample_rate)
        self.prebuffer_s = prebuffer_s
        self.before_playing = before_playing
        self.started_at: float | None = None  # time.time() when the segment began to play
        self.interrupted_at: float | None = None  # seconds into the segment
        self._finish: asyncio.TimerHandle | None = None
        self._flushed_s = 0.0  # duration of the flushed segment still playing
        self.playing = asyncio.Event()  # set when a segment begins to play

    def _start_playing(self) -> None:
        if self.started_at is None:
            if self.before_playing is not None:
                self.before_playing()
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
    levels: list[float] = field(default_factory=list)  # RMS of each frame, in [0, 1]

    def add(self, frame: np.ndarray, arrival: float) -> None:
        self.frames.append(frame)
        self.arrivals.append(arrival)
        # once per frame: waits re-read the levels at every frame, and a busy event loop
        # delays the room's own audio threads (they hand frames over under the GIL)
        self.levels.append(rms(frame.astype(np.float32) / 32768.0))

    def samples(self) -> np.ndarray:
        """Everything heard, float32 in [-1, 1]."""
        if not self.frames:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(self.frames).astype(np.float32) / 32768.0

    def seconds(self, *, after: float = 0.0) -> float:
        """How much audio arrived at or after `after` (a time.monotonic())."""
        n = sum(f.size for f, t in zip(self.frames, self.arrivals, strict=True) if t >= after)
        return n / self.sample_rate

    def arrival_at(self, seconds: float) -> float:
        """When the audio `seconds` into the track arrived."""
        position = round(seconds * self.sample_rate)
        for arrival, frame in zip(self.arrivals, self.frames, strict=True):
            position -= frame.size
            if position < 0:
                return arrival
        raise ValueError(f"the track holds less than {seconds:.2f} s")

    def first_speech(self, *, after: float = 0.0, threshold: float = SPEECH_RMS) -> float | None:
        """Arrival time of the first frame after `after` louder than `threshold` (RMS)."""
        for arrival, level in zip(self.arrivals, self.levels, strict=True):
            if arrival >= after and level > threshold:
                return arrival
        return None

    def last_speech(self, *, threshold: float = SPEECH_RMS) -> float | None:
        """Arrival time of the last frame louder than `threshold`."""
        for arrival, level in zip(reversed(self.arrivals), reversed(self.levels), strict=True):
            if level > threshold:
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
                heard.add(np.frombuffer(bytes(event.frame.data), dtype=np.int16), time.monotonic())
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
            with contextlib.suppress(asyncio.TimeoutError):  # not TimeoutError before 3.11
                await asyncio.wait_for(changed.wait(), remaining)

    async def wait_for_speech(
        self,
        *,
        after: float = 0.0,
        participant: str | None = None,
        timeout: float = 20.0,
        threshold: float = SPEECH_RMS,
    ) -> float:
        """Arrival time of the first speech heard after `after` (from `participant`)."""
        found: list[float] = []

        def heard(listener: RoomListener) -> bool:
            times = [
                t.first_speech(after=after, threshold=threshold)
                for t in listener.heard_from(participant)
            ]
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
# --- what was heard vs what was sent -----------------------------------------------------

ENVELOPE_S = 0.02  # energy envelope resolution: 20 ms windows
_HEAD_S = 0.3  # the reference's first voiced stretch, checked frame by frame
_LOCAL_S = 0.5  # cut or extra speech is summed over stretches this long
_FLOOR_DB = -60.0
_BAND_EDGES_HZ = (80, 160, 300, 500, 750, 1000, 1400, 1900, 2500, 3300, 4300, 5600, 7500)
# alignment costs, in (20 dB)^2 per 20 ms and band: matching frames costs their spectral
# difference; skipping a voiced frame costs as much as a 20 dB mismatch, a silent one next
# to nothing; hearing a frame again (the jitter buffer stretching a vowel) its difference
# from the frame it repeats and a little
_SKIP_VOICED = 1.0
_SKIP_SILENT = 0.05
_STRETCH = 0.1


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Band-limited resampling (what LiveKit's resampler does, near enough for envelopes)."""
    if from_rate == to_rate:
        return audio.astype(np.float32, copy=False)
    g = math.gcd(from_rate, to_rate)
    return resample_poly(audio, to_rate // g, from_rate // g).astype(np.float32)


def energy_envelope(audio: np.ndarray, rate: int) -> np.ndarray:
    """RMS of each ENVELOPE_S window."""
    n = round(rate * ENVELOPE_S)
    k = audio.size // n
    frames = audio[: k * n].reshape(k, n).astype(np.float64)
    return np.sqrt(np.mean(np.square(frames), axis=1))


def band_levels(audio: np.ndarray, rate: int) -> np.ndarray:
    """Each ENVELOPE_S window's level in speech bands, in units of 20 dB (a spectrogram
    coarse enough that Opus keeps it and fine enough to tell sounds apart)."""
    n = round(rate * ENVELOPE_S)
    k = audio.size // n
    windows = audio[: k * n].reshape(k, n).astype(np.float64) * np.hanning(n)
    power = np.abs(np.fft.rfft(windows, axis=1)) ** 2 / n
    edges = np.searchsorted(np.fft.rfftfreq(n, 1 / rate), _BAND_EDGES_HZ)
    bands = np.stack([power[:, lo:hi].mean(axis=1) for lo, hi in itertools.pairwise(edges)], 1)
    return np.maximum(10 * np.log10(np.maximum(bands, 1e-12)), _FLOOR_DB) / 20


def _densest(flags: np.ndarray) -> tuple[int, int]:
    """The most True flags within any _LOCAL_S stretch, and where that stretch starts."""
    width = round(_LOCAL_S / ENVELOPE_S)
    counts = np.convolve(flags.astype(int), np.ones(width, dtype=int), mode="valid")
    if counts.size == 0:
        return int(flags.sum()), 0
    at = int(np.argmax(counts))
    return int(counts[at]), at + int(np.argmax(flags[at : at + width]))


@dataclass(frozen=True)
class HeardMatch:
    """How a reference (what was sent) appears in what a listener heard.

    Coarse spectra are compared, not samples: Opus and the jitter buffer keep the energy
    of speech over time and frequency, not its waveform. The reference is aligned to the
    heard audio in order (an edit-distance alignment of 20-ms band levels): each reference
    frame is heard once or skipped, and heard frames that match nothing are extra. Then:

    - reference speech skipped: cut;
    - extra heard speech: doubled, or the jitter buffer stretching a sound (cheap in the
      alignment when it sounds like the frame before) or fading it out to cover a stall;
    - extra heard silence: a gap (playback stalled: the jitter buffer ran dry; on a loaded
      2-core machine WebRTC's threads run a few hundred ms late). The audio is still whole
      and in order, so gaps are reported, not failed;
    - reordered or foreign audio matches only in part: its speech is skipped, the matched
      levels correlate poorly;
    - the reference's first voiced frames missing: a cut start.
    """

    offset_s: float  # where the reference's first frame was heard (s into the heard audio)
    end_s: float  # where its last frame was heard
    r: float  # correlation of the matched frames' levels
    worst_cut_s: float  # the most reference speech not heard within _LOCAL_S
    cut_at_s: float  # where that starts in the reference
    cut_s: float  # all reference speech not heard
    worst_extra_s: float  # the most speech heard beyond the reference within _LOCAL_S
    extra_at_s: float  # where that starts in the heard audio
    gaps_s: float  # silence heard beyond the reference (stalls)
    head_heard: float  # share of the reference's first voiced frames heard as voiced
    voiced_heard_s: float  # voiced time heard from the reference's start to its end
    voiced_reference_s: float

    def problems(
        self,
        *,
        min_r: float = 0.9,
        max_cut_s: float = 0.1,
        max_extra_s: float = 0.24,
        duration_tolerance: float = 0.1,
    ) -> list[str]:
        """What is wrong, in words; empty when the reference was heard whole, once, in order.

        LiveKit's frames are 200 ms, and one skipped is beyond `max_cut_s`: the jitter
        buffer squeezes time only by a pitch period here and there. Extra speech is
        judged more loosely: covering a stall, the jitter buffer stretches and fades out
        the last sound, up to ~180 ms above the speech level within half a second on a
        loaded 2-core machine, as much as one doubled 200-ms frame; two doubled frames
        (or a repeated sentence) are beyond `max_extra_s`.
        """
        found = []
        if self.r < min_r:
            found.append(f"levels correlate {self.r:.3f} < {min_r}")
        if self.worst_cut_s > max_cut_s + 1e-9:
            found.append(
                f"{self.worst_cut_s * 1000:.0f} ms of speech from {self.cut_at_s:.2f} s into "
                "the reference not heard (cut)"
            )
        if self.worst_extra_s > max_extra_s + 1e-9:
            found.append(
                f"{self.worst_extra_s * 1000:.0f} ms of speech heard extra at "
                f"{self.extra_at_s:.2f} s (doubled)"
            )
        if self.head_heard < 0.8:
            found.append(f"start cut: {self.head_heard:.0%} of the first voiced frames heard")
        ratio = self.voiced_heard_s / self.voiced_reference_s if self.voiced_reference_s else 0
        if abs(ratio - 1) > duration_tolerance or self.cut_s > duration_tolerance * (
            self.voiced_reference_s
        ):
            found.append(
                f"voiced {self.voiced_heard_s:.2f} s heard vs {self.voiced_reference_s:.2f} s "
                f"sent, {self.cut_s:.2f} s of it not heard"
            )
        return found


def match_heard(
    heard: np.ndarray, reference: np.ndarray, rate: int, *, after_s: float = 0.0
) -> HeardMatch:
    """Align `reference` to `heard` (both float32 at `rate`), looking from `after_s` (s into
    `heard`) on; heard audio before and after the reference costs nothing."""
    skip = round(after_s / ENVELOPE_S)
    ref_env = energy_envelope(reference, rate)
    env = energy_envelope(heard, rate)[skip:]
    assert env.size, "nothing was heard there"
    a, b = band_levels(reference, rate), band_levels(heard, rate)[skip:]
    ref_voiced, heard_voiced = ref_env > SPEECH_RMS, env > SPEECH_RMS
    assert ref_voiced.any(), "the reference has no speech"
    skip_ref = np.where(ref_voiced, _SKIP_VOICED, _SKIP_SILENT)
    extra = np.where(heard_voiced, _SKIP_VOICED, _SKIP_SILENT)  # heard, matching nothing
    n, m = len(a), len(b)

    # cost[i, j]: reference frames :i aligned with heard frames :j (any heard before free).
    # Along a row, extra heard frames are a running minimum over a cumulative sum: no
    # Python loop over columns.
    cost = np.zeros(m + 1)
    entered = np.zeros((n + 1, m + 1), dtype=np.int32)  # where row i was entered
    diagonal = np.zeros((n + 1, m + 1), dtype=bool)  # entered by a match (else: ref skipped)
    columns = np.arange(m + 1)
    for i in range(1, n + 1):
        difference = np.mean((b - a[i - 1]) ** 2, axis=1)
        extra_sum = np.concatenate([[0.0], np.cumsum(np.minimum(extra, difference + _STRETCH))])
        matched = np.full(m + 1, np.inf)
        matched[1:] = cost[:-1] + difference
        skipped = cost + skip_ref[i - 1]
        diagonal[i] = matched <= skipped
        enter = np.minimum(matched, skipped) - extra_sum
        best = np.minimum.accumulate(enter)
        entered[i] = np.maximum.accumulate(np.where(enter == best, columns, 0))
        cost = best + extra_sum

    # walk back from the cheapest end (any heard after the reference free)
    j = int(np.argmin(cost))
    end = j
    pairs: list[tuple[int, int]] = []
    extra_heard = np.zeros(m, dtype=bool)
    not_heard = np.zeros(n, dtype=bool)
    for i in range(n, 0, -1):
        k = int(entered[i, j])
        extra_heard[k:j] = True  # heard after ref frame i-1, matching no other
        if diagonal[i, k]:
            pairs.append((i - 1, k - 1))
            j = k - 1
        else:
            not_heard[i - 1] = True
            j = k
    start = j
    extra_heard[:start] = extra_heard[end:] = False  # before and after: not the reference's
    pairs.reverse()
    ref_idx = np.array([p[0] for p in pairs], dtype=int)
    heard_idx = np.array([p[1] for p in pairs], dtype=int)
    r = float(np.corrcoef(ref_env[ref_idx], env[heard_idx])[0, 1]) if len(pairs) > 2 else 0.0

    head = np.flatnonzero(ref_voiced)
    head = head[head < head[0] + round(_HEAD_S / ENVELOPE_S)]
    heard_at = dict(pairs)
    head_heard = np.mean([i in heard_at and env[heard_at[i]] > SPEECH_RMS / 2 for i in head])
    worst_cut, cut_at = _densest(not_heard & ref_voiced)
    worst_extra, extra_at = _densest(extra_heard & heard_voiced)
    return HeardMatch(
        offset_s=(skip + (heard_idx[0] if len(pairs) else start)) * ENVELOPE_S,
        end_s=(skip + end) * ENVELOPE_S,
        r=r if np.isfinite(r) else 0.0,
        worst_cut_s=worst_cut * ENVELOPE_S,
        cut_at_s=cut_at * ENVELOPE_S,
        cut_s=float(np.sum(not_heard & ref_voiced)) * ENVELOPE_S,
        worst_extra_s=worst_extra * ENVELOPE_S,
        extra_at_s=(skip + extra_at) * ENVELOPE_S,
        gaps_s=float(np.sum(extra_heard & ~heard_voiced)) * ENVELOPE_S,
        head_heard=float(head_heard),
        voiced_heard_s=float(np.sum(heard_voiced[start:end])) * ENVELOPE_S,
        voiced_reference_s=float(np.sum(ref_voiced)) * ENVELOPE_S,
    )
