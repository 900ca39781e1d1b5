"""`localtts.VAD`: a LiveKit Agents VAD backed by webrtcvad (the WebRTC GMM detector),
made robust to noise by two measurements of its own.

No model file and no onnxruntime: every stream classifies 10/20/30 ms windows of 16 kHz PCM
in tens of microseconds on the CPU. Events follow the contract the framework relies on (the
same as livekit-plugins-silero): one INFERENCE_DONE per window (probability 1.0 for a voiced
window, 0.0 otherwise), START_OF_SPEECH after `min_speech_duration` of consecutive voiced
windows (its frames: the speech so far plus `prefix_padding_duration` before it),
END_OF_SPEECH after `min_silence_duration` of unvoiced windows (its frames: the whole
utterance). Times and sample indices count audio processed at the inference rate, so they
say where in the stream an event happened.

Noise (`noise_robust`, on by default)
-------------------------------------
webrtcvad alone calls babble-like noise (and pink noise at 0 dB SNR) speech: the turn never
ends and the agent never answers. So a window webrtcvad calls speech is voiced only if
(vad_features.py measures both on the last 64 ms, one 512-point FFT at 8 kHz):

1. its level is `min_snr_db` (5 dB) above the noise floor (band levels against their
   minimum over the last `noise_floor_s`, 2 s: minimum statistics); a steady noise or hum
   never gets there; and
2. it is `clear_snr_db` (25 dB) above that floor - far above any noise heard lately, so
   webrtcvad's word stands, unvoiced sounds and whispers included - or, closer to the
   noise, it has a pitch: aperiodicity (YIN, 60-400 Hz, below 1 kHz) at most
   `max_aperiodicity` (0.5; within a turn, right after a voiced window,
   `max_aperiodicity_in_turn`, 0.55: a vowel's weaker edges). Voiced speech keeps its pitch
   under noise that swamps its level; white, pink and babble-like noise have none.

Turn-taking on top: within a turn one stray voiced window does not restart the silence
count, `min_resume_duration` (60 ms) of voice does (a noise burst would otherwise push the
end of the turn back); in noise (a floor above -70 dBFS) the silence that ends a turn is
`min_silence_duration + noise_tail_s` (0.1 s), because pitch-based decisions lose a word's
unvoiced end (s, t, f) and a comma's pause would otherwise end the turn. The knobs were
tuned with `bench/bench_vad.py` on seeds 0-3 and measured on others (docs/benchmarks.md);
the features cost about 2.5 ms of CPU per audio second. In noise, speech without a pitch
(whispering) is not heard: turn `noise_robust` off, or use Silero (docs/agent.md).
"""

from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from livekit import rtc
from livekit.agents import utils, vad
from livekit.agents.types import NOT_GIVEN, NotGivenOr
from livekit.agents.utils import is_given

from .log import logger
from .vad_features import NOISY_FLOOR_DBFS, FeatureTracker

InferenceRate = Literal[8000, 16000, 32000, 48000]  # the rates webrtcvad accepts
FrameMs = Literal[10, 20, 30]  # the window lengths webrtcvad accepts


@dataclass
class _VADOptions:
    aggressiveness: int
    min_speech_duration: float
    min_silence_duration: float
    min_resume_duration: float
    prefix_padding_duration: float
    max_buffered_speech: float
    frame_duration_ms: int
    sample_rate: int
    energy_floor_dbfs: float
    noise_robust: bool
    min_snr_db: float
    max_aperiodicity: float
    max_aperiodicity_in_turn: float
    clear_snr_db: float
    noise_tail_s: float
    noise_floor_s: float


def _check(opts: _VADOptions) -> None:
    if opts.aggressiveness not in (0, 1, 2, 3):
        raise ValueError(f"aggressiveness must be 0, 1, 2 or 3, not {opts.aggressiveness!r}")
    if opts.frame_duration_ms not in (10, 20, 30):
        raise ValueError(f"frame_duration_ms must be 10, 20 or 30, not {opts.frame_duration_ms!r}")
    if opts.sample_rate not in (8000, 16000, 32000, 48000):
        raise ValueError(f"sample_rate must be 8000, 16000, 32000 or 48000, not {opts.sample_rate}")
    for name in (
        "min_speech_duration",
        "min_silence_duration",
        "min_resume_duration",
        "prefix_padding_duration",
        "noise_tail_s",
        "min_snr_db",
    ):
        if getattr(opts, name) < 0:
            raise ValueError(f"{name} must be >= 0")
    for name in (
        "max_buffered_speech",
        "noise_floor_s",
        "max_aperiodicity",
        "max_aperiodicity_in_turn",
    ):
        if getattr(opts, name) <= 0:
            raise ValueError(f"{name} must be > 0")


class VAD(vad.VAD):
    def __init__(
        self,
        *,
        aggressiveness: int = 2,
        min_speech_duration: float = 0.09,
        min_silence_duration: float = 0.55,
        min_resume_duration: float = 0.06,
        prefix_padding_duration: float = 0.5,
        max_buffered_speech: float = 60.0,
        frame_duration_ms: FrameMs = 30,
        sample_rate: InferenceRate = 16000,
        energy_floor_dbfs: float = -65.0,
        noise_robust: bool = True,
        min_snr_db: float = 5.0,
        max_aperiodicity: float = 0.5,
        max_aperiodicity_in_turn: float = 0.55,
        clear_snr_db: float = 25.0,
        noise_tail_s: float = 0.1,
        noise_floor_s: float = 2.0,
    ) -> None:
        """Voice activity detection with webrtcvad.

        Args:
            aggressiveness: 0 (keeps the most speech) to 3 (filters the most noise).
            min_speech_duration: consecutive voiced audio (s) before START_OF_SPEECH.
            min_silence_duration: unvoiced audio (s) after speech before END_OF_SPEECH.
            prefix_padding_duration: audio (s) before the detected start kept in the events.
            max_buffered_speech: longest utterance (s) kept for END_OF_SPEECH's frames.
            frame_duration_ms: window classified at once (10, 20 or 30 ms).
            sample_rate: inference rate; input at any other rate is resampled to it.
            energy_floor_dbfs: windows quieter than this (RMS) are silence whatever webrtcvad
                says: before its noise model adapts it calls near-digital silence (the
                resampler's +-1 LSB output) speech at aggressiveness 0 and 1.
            min_resume_duration: within a turn, voiced audio (s) that restarts the silence
                count (shorter blips of "voice" in the silence do not).
            noise_robust: check webrtcvad's decisions against the noise (module docstring);
                False: webrtcvad alone, as before.
            min_snr_db: a window less than this above the noise floor is silence.
            max_aperiodicity: in noise, a window with more aperiodicity than this (0: a pure
                pitch, ~1: noise) is silence; lower keeps out more noise and loses more of
                the speech.
            max_aperiodicity_in_turn: the same within a turn right after a voiced window
                (hysteresis: a little looser, for a vowel's weaker edges).
            clear_snr_db: a window this far above the noise floor needs no pitch.
            noise_tail_s: silence added to min_silence_duration in noise.
            noise_floor_s: how long the noise floor remembers its minimum (a new noise is
                learnt in this time; set when a stream starts).
        """
        opts = _VADOptions(
            aggressiveness=aggressiveness,
            min_speech_duration=min_speech_duration,
            min_silence_duration=min_silence_duration,
            min_resume_duration=min_resume_duration,
            prefix_padding_duration=prefix_padding_duration,
            max_buffered_speech=max_buffered_speech,
            frame_duration_ms=frame_duration_ms,
            sample_rate=sample_rate,
            energy_floor_dbfs=energy_floor_dbfs,
            noise_robust=noise_robust,
            min_snr_db=min_snr_db,
            max_aperiodicity=max_aperiodicity,
            max_aperiodicity_in_turn=max_aperiodicity_in_turn,
            clear_snr_db=clear_snr_db,
            noise_tail_s=noise_tail_s,
            noise_floor_s=noise_floor_s,
        )
        _check(opts)
        super().__init__(capabilities=vad.VADCapabilities(update_interval=frame_duration_ms / 1000))
        self._opts = opts
        self._streams: weakref.WeakSet[VADStream] = weakref.WeakSet()

    @property
    def model(self) -> str:
        return "webrtcvad"

    @property
    def provider(self) -> str:
        return "localtts"

    @property
    def min_silence_duration(self) -> float:
        # read by AgentSession to check the turn detector's needs
        return self._opts.min_silence_duration

    def stream(self) -> VADStream:
        stream = VADStream(self, replace(self._opts))
        self._streams.add(stream)
        return stream

    def update_options(
        self,
        *,
        aggressiveness: NotGivenOr[int] = NOT_GIVEN,
        min_speech_duration: NotGivenOr[float] = NOT_GIVEN,
        min_silence_duration: NotGivenOr[float] = NOT_GIVEN,
        min_resume_duration: NotGivenOr[float] = NOT_GIVEN,
        prefix_padding_duration: NotGivenOr[float] = NOT_GIVEN,
        noise_robust: NotGivenOr[bool] = NOT_GIVEN,
        min_snr_db: NotGivenOr[float] = NOT_GIVEN,
        max_aperiodicity: NotGivenOr[float] = NOT_GIVEN,
        max_aperiodicity_in_turn: NotGivenOr[float] = NOT_GIVEN,
        clear_snr_db: NotGivenOr[float] = NOT_GIVEN,
        noise_tail_s: NotGivenOr[float] = NOT_GIVEN,
    ) -> None:
        """Change options for this VAD and its open streams (from their next window)."""
        changes = {
            k: v
            for k, v in {
                "aggressiveness": aggressiveness,
                "min_speech_duration": min_speech_duration,
                "min_silence_duration": min_silence_duration,
                "min_resume_duration": min_resume_duration,
                "prefix_padding_duration": prefix_padding_duration,
                "noise_robust": noise_robust,
                "min_snr_db": min_snr_db,
                "max_aperiodicity": max_aperiodicity,
                "max_aperiodicity_in_turn": max_aperiodicity_in_turn,
                "clear_snr_db": clear_snr_db,
                "noise_tail_s": noise_tail_s,
            }.items()
            if is_given(v)
        }
        _check(replace(self._opts, **changes))
        self._opts = replace(self._opts, **changes)
        for stream in self._streams:
            stream._update_options(changes)


class _SpeechBuffer:
    """Input-rate samples of the current utterance, plus the padding before it."""

    def __init__(self, sample_rate: int, prefix_s: float, max_s: float) -> None:
        self.sample_rate = sample_rate
        self._prefix = int(prefix_s * sample_rate)
        self._max = int(max_s * sample_rate) + self._prefix
        self._chunks: list[np.ndarray] = []
        self._size = 0
        self._full_warned = False

    def append(self, samples: np.ndarray) -> None:
        room = self._max - self._size
        if room <= 0:
            if not self._full_warned:
                self._full_warned = True
                logger.warning("max_buffered_speech reached: later speech is not buffered")
            return
        samples = samples[:room]
        self._chunks.append(samples)
        self._size += samples.size

    def keep_prefix(self) -> None:
        """Outside speech only the last `prefix_padding_duration` is worth keeping."""
        if self._size > self._prefix:
            tail = (
                np.concatenate(self._chunks)[self._size - self._prefix :] if self._prefix else None
            )
            self._chunks = [tail] if tail is not None else []
            self._size = self._prefix
        self._full_warned = False

    def frame(self) -> rtc.AudioFrame:
        data = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return rtc.AudioFrame(
            data=data.tobytes(),
            sample_rate=self.sample_rate,
            num_channels=1,
            samples_per_channel=data.size,
        )

    def set_prefix(self, prefix_s: float) -> None:
        prefix = int(prefix_s * self.sample_rate)
        self._max += prefix - self._prefix
        self._prefix = prefix


def _rms_dbfs(samples: np.ndarray) -> float:
    as_float = samples.astype(np.float64)
    mean_square = float(as_float @ as_float) / (samples.size * 32768.0**2)  # dot: fastest
    return 10.0 * math.log10(mean_square) if mean_square > 0 else -math.inf


def _speech_despite_noise(
    snr_db: float, features: FeatureTracker, opts: _VADOptions, continues_voice: bool
) -> bool:
    if snr_db < opts.min_snr_db:
        return False  # at the noise floor: the noise itself
    if snr_db >= opts.clear_snr_db:
        return True  # far above any noise heard lately: unvoiced speech (whispers) counts
    # in noise, speech has a pitch; right after a voiced window of a turn a weaker one will
    # do (hysteresis: a vowel's edges under the noise), but voice resumes at the strict one
    limit = opts.max_aperiodicity_in_turn if continues_voice else opts.max_aperiodicity
    return features.aperiodicity() <= limit


def _mono(frame: rtc.AudioFrame) -> np.ndarray:
    data = np.frombuffer(frame.data, dtype=np.int16)
    if frame.num_channels == 1:
        return data.copy()
    # average the channels: speech on either side of a stereo track still counts
    return data.reshape(-1, frame.num_channels).mean(axis=1).astype(np.int16)


@dataclass
class _Segment:
    """One segment of a stream (a flush starts the next): audio not yet classified, and the
    turn so far. "pub_" values are what the events report."""

    resampler: rtc.AudioResampler | None
    pending_in: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))  # input rate
    # at the inference rate, not yet classified
    pending_inf: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    copy_fract: float = 0.0  # keeps input/inference alignment exact for non-integer ratios
    speaking: bool = False
    pub_speech_s: float = 0.0
    pub_silence_s: float = 0.0
    pub_sample: int = 0
    pub_time: float = 0.0
    raw_speech_s: float = 0.0
    raw_silence_s: float = 0.0

    def take(self, mono: np.ndarray, input_rate: int) -> None:
        """Queue a frame's samples, as they are and at the inference rate."""
        self.pending_in = np.concatenate([self.pending_in, mono])
        if self.resampler is None:
            self.pending_inf = np.concatenate([self.pending_inf, mono])
            return
        mono_frame = rtc.AudioFrame(
            data=mono.tobytes(),
            sample_rate=input_rate,
            num_channels=1,
            samples_per_channel=mono.size,
        )
        for out in self.resampler.push(mono_frame):
            self.pending_inf = np.concatenate(
                [self.pending_inf, np.frombuffer(out.data, dtype=np.int16)]
            )


class VADStream(vad.VADStream):
    def __init__(self, vad_: VAD, opts: _VADOptions) -> None:
        import webrtcvad  # C extension; imported here so `import localtts` stays light

        self._opts = opts
        self._detector = webrtcvad.Vad(opts.aggressiveness)
        self._speech: _SpeechBuffer | None = None  # created at the first frame's rate
        self._features: FeatureTracker | None = None  # per segment (reset by flush)
        super().__init__(vad_)

    def _update_options(self, changes: dict[str, object]) -> None:
        self._opts = replace(self._opts, **changes)  # type: ignore[arg-type]
        self._detector.set_mode(self._opts.aggressiveness)
        if self._speech is not None:
            self._speech.set_prefix(self._opts.prefix_padding_duration)

    @utils.log_exceptions(logger=logger)
    async def _main_task(self) -> None:
        input_rate = 0
        window = 0  # samples per window at the inference rate
        window_s = 0.0
        segment = self._new_segment(input_rate, window)
        async for item in self._input_ch:
            if isinstance(item, self._FlushSentinel):
                # a hard segment boundary: the next frame starts afresh
                segment = self._new_segment(input_rate, window)
                continue
            frame = item
            if not input_rate:
                input_rate = frame.sample_rate
                window = self._opts.sample_rate * self._opts.frame_duration_ms // 1000
                window_s = window / self._opts.sample_rate
                segment = self._new_segment(input_rate, window)
            elif frame.sample_rate != input_rate:
                logger.error(
                    "VAD input changed sample rate (%d -> %d Hz): frame dropped",
                    input_rate,
                    frame.sample_rate,
                )
                continue
            segment.take(_mono(frame), input_rate)
            while segment.pending_inf.size >= window:
                self._run_window(segment, input_rate, window, window_s)

    def _new_segment(self, input_rate: int, window: int) -> _Segment:
        """A fresh segment (at the first frame, and after each flush)."""
        if input_rate:
            self._features = FeatureTracker(
                self._opts.sample_rate, window, self._opts.noise_floor_s
            )
            self._speech = _SpeechBuffer(
                input_rate, self._opts.prefix_padding_duration, self._opts.max_buffered_speech
            )
        return _Segment(resampler=self._new_resampler(input_rate))

    def _run_window(self, seg: _Segment, input_rate: int, window: int, window_s: float) -> None:
        """Classify the next window of `seg`, report it (INFERENCE_DONE), then move the
        turn on (START/END_OF_SPEECH)."""
        speech = self._speech
        assert speech is not None
        started = time.perf_counter()
        samples = seg.pending_inf[:window]
        # raw_speech_s > 0: the window before was voiced
        voiced = self._classify(samples, seg.speaking and seg.raw_speech_s > 0)
        inference_s = time.perf_counter() - started
        seg.pending_inf = seg.pending_inf[window:]

        # the input-rate audio this window covers (the resampler lags a little)
        ratio = input_rate / self._opts.sample_rate
        to_copy = window * ratio + seg.copy_fract
        n_in = int(to_copy)
        seg.copy_fract = to_copy - n_in
        window_in, seg.pending_in = seg.pending_in[:n_in], seg.pending_in[n_in:]
        speech.append(window_in)

        seg.pub_sample += window
        seg.pub_time += window_s
        if seg.speaking:
            seg.pub_speech_s += window_s
        else:
            seg.pub_silence_s += window_s

        window_frame = rtc.AudioFrame(
            data=window_in.tobytes(),
            sample_rate=input_rate,
            num_channels=1,
            samples_per_channel=window_in.size,
        )
        self._send(
            seg,
            vad.VADEventType.INFERENCE_DONE,
            speech_duration=seg.pub_speech_s,
            silence_duration=seg.pub_silence_s,
            frame=window_frame,
            probability=1.0 if voiced else 0.0,
            inference_duration=inference_s,
            raw_accumulated_silence=seg.raw_silence_s,
            raw_accumulated_speech=seg.raw_speech_s,
        )
        self._advance_turn(seg, voiced, window_s, speech)

    def _advance_turn(
        self, seg: _Segment, voiced: bool, window_s: float, speech: _SpeechBuffer
    ) -> None:
        """Start or end the turn after one more window of `seg`."""
        seg.raw_speech_s = seg.raw_speech_s + window_s if voiced else 0.0
        # within a turn, one stray voiced window (a noise burst) does not restart
        # the silence count: min_resume_duration of voice does
        resumed = seg.raw_speech_s >= self._opts.min_resume_duration - 1e-9  # float sums
        if voiced and (not seg.speaking or resumed):
            seg.raw_silence_s = 0.0
            if not seg.speaking and seg.raw_speech_s >= self._opts.min_speech_duration:
                seg.speaking = True
                seg.pub_silence_s = 0.0
                seg.pub_speech_s = seg.raw_speech_s
                self._send(
                    seg,
                    vad.VADEventType.START_OF_SPEECH,
                    speech_duration=seg.pub_speech_s,
                    silence_duration=0.0,
                    frame=speech.frame(),
                )
            return
        seg.raw_silence_s += window_s
        if not seg.speaking:
            speech.keep_prefix()
        elif seg.raw_silence_s >= self._opts.min_silence_duration + self._noise_tail():
            seg.speaking = False
            seg.pub_silence_s = seg.raw_silence_s
            self._send(
                seg,
                vad.VADEventType.END_OF_SPEECH,
                # the trailing silence is not speech
                speech_duration=max(0.0, seg.pub_speech_s - seg.raw_silence_s),
                silence_duration=seg.pub_silence_s,
                frame=speech.frame(),
            )
            seg.pub_speech_s = 0.0
            speech.keep_prefix()

    def _send(
        self,
        seg: _Segment,
        type_: vad.VADEventType,
        *,
        speech_duration: float,
        silence_duration: float,
        frame: rtc.AudioFrame,
        **extra: float,
    ) -> None:
        """Emit an event at `seg`'s current position and speaking state."""
        self._event_ch.send_nowait(
            vad.VADEvent(
                type=type_,
                samples_index=seg.pub_sample,
                timestamp=seg.pub_time,
                speech_duration=speech_duration,
                silence_duration=silence_duration,
                frames=[frame],
                speaking=seg.speaking,
                **extra,
            )
        )

    def _noise_tail(self) -> float:
        """Silence added to min_silence_duration in noise: decisions there rest on pitch, so
        the unvoiced end of a word (s, t, f) under the noise starts the silence count early;
        without it a comma's pause in a sentence can end the turn."""
        if not self._opts.noise_robust or self._features is None:
            return 0.0
        return self._opts.noise_tail_s if self._features.floor_dbfs() >= NOISY_FLOOR_DBFS else 0.0

    def _classify(self, samples: np.ndarray, continues_voice: bool) -> bool:
        """webrtcvad's decision, overruled where the noise features say it is noise."""
        opts = self._opts
        assert self._features is not None
        # every window, silent ones too: the floor and the 64 ms history must keep up
        snr_db = self._features.update(samples) if opts.noise_robust else None
        if _rms_dbfs(samples) < opts.energy_floor_dbfs:
            return False
        if not self._detector.is_speech(samples.tobytes(), opts.sample_rate):
            return False
        return snr_db is None or _speech_despite_noise(
            snr_db, self._features, opts, continues_voice
        )

    def _new_resampler(self, input_rate: int) -> rtc.AudioResampler | None:
        if not input_rate or input_rate == self._opts.sample_rate:
            return None
        return rtc.AudioResampler(
            input_rate=input_rate,
            output_rate=self._opts.sample_rate,
            num_channels=1,
            quality=rtc.AudioResamplerQuality.QUICK,  # a VAD does not need more
        )
