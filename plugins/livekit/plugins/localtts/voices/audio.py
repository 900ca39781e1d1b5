"""Reference clips: bytes in, a validated mono clip out, all in memory (no temp files).

Every clip goes through `prepare_clip`, whether it is being added, read from the database
or from the voices directory, so a voice is judged the same way wherever it comes from:
decoded with soundfile (after its header says the decoded audio is of a sane size: a few
hundred KB of compressed silence can decode to gigabytes), checked (not silent, not clipped),
mixed to mono, resampled to one library rate, trimmed of leading/trailing silence with
webrtcvad, bounded in length, and required to hold enough speech to clone from.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile as sf
import soxr
import webrtcvad

from ..engines.base import VoiceClip, VoiceError
from ..vad_features import FeatureTracker

# what every stored clip is resampled to: the output rate of both cloning engines
LIBRARY_SAMPLE_RATE = 24_000

# The rules of a reference clip, stated once: every message and doc takes them from here
# (`CLIP_RULES`; tests/test_voice_rules.py checks the docs quote it).
MAX_AUDIO_MIB = 20
MAX_AUDIO_BYTES = MAX_AUDIO_MIB * 1024 * 1024
MIN_SPEECH_SECONDS = 2.0
MAX_CLIP_SECONDS = 30.0  # XTTS reads at most 30 s of reference, Chatterbox 10 s
BEST_SPEECH_SECONDS = (5, 15)


def format_size(size: int) -> str:
    """Bytes as the limits are stated: MiB, one decimal when it is not whole."""
    mib = size / 2**20
    return f"{mib:.0f} MiB" if mib == round(mib) else f"{mib:.1f} MiB"


CLIP_RULES = (
    f"A reference clip holds {MIN_SPEECH_SECONDS:g}-{MAX_CLIP_SECONDS:g} s of speech "
    f"({BEST_SPEECH_SECONDS[0]}-{BEST_SPEECH_SECONDS[1]} s of one clear voice clone best) "
    f"in a WAV, FLAC, OGG or MP3 file of at most {format_size(MAX_AUDIO_BYTES)}."
)
# what a file may hold before decoding: room for silence around the speech, no more
MAX_SOURCE_SECONDS = 300.0
MAX_DECODED_SAMPLES = int(MAX_SOURCE_SECONDS * 48_000 * 2)  # 5 min of 48 kHz stereo: 115 MB

# bump when the pipeline changes what it makes of the same bytes: cached conditioning
# is keyed by it (see `audio_digest`)
PIPELINE_VERSION = "1"

_SILENT_PEAK = 10 ** (-50 / 20)  # -50 dBFS: nothing a microphone would call speech
_CLIP_LEVEL = 0.999
_MAX_CLIPPED_FRACTION = 0.001  # a few samples at full scale are a normalized peak, not clipping
# clipping flattens the wave at full scale for several samples in a row; noise and peaks touch
# full scale in single samples (white noise: ~0.1% of them, as many as a clipped recording)
_CLIP_RUN = 3
_VAD_RATE = 16_000
_VAD_FRAME = 480  # 30 ms at 16 kHz
_VAD_AGGRESSIVENESS = 2
_VAD_WINDOW = 5  # a frame starts/ends speech when most of the 150 ms around it is speech
_EDGE_PAD_SECONDS = 0.1  # keep the breath before the first word and the decay after the last
# webrtcvad takes white or pink noise for speech; a voice is pitched (periodic) much of the
# time: at least this share of what the VAD calls speech must be (speech: ~45%, noise: ~0%)
_MIN_PITCHED_SHARE = 0.2
_PITCHED = 0.35  # YIN aperiodicity below this: a pitched frame (vad_features.py)


@dataclass(frozen=True)
class PreparedClip:
    """A clip that passed validation, with what was measured on the way."""

    clip: VoiceClip
    source_sample_rate: int
    source_channels: int
    speech_seconds: float

    def wav_bytes(self) -> bytes:
        """The clip as 16-bit mono WAV: what the library stores."""
        return encode_wav(self.clip.audio, self.clip.sample_rate)


def encode_wav(audio: np.ndarray, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def audio_digest(data: bytes) -> str:
    """Identifies the stored bytes *and* how they are processed: the conditioning cache key."""
    return digest_from_sha256(hashlib.sha256(data).hexdigest())


def digest_from_sha256(sha256_hex: str) -> str:
    """`audio_digest` from a SHA-256 already known (PostgreSQL computes it for each row)."""
    return f"p{PIPELINE_VERSION}:{sha256_hex}"


def prepare_clip(
    voice_id: str,
    data: bytes,
    *,
    language: str | None = None,
    sample_rate: int = LIBRARY_SAMPLE_RATE,
    max_bytes: int = MAX_AUDIO_BYTES,
    min_speech_seconds: float = MIN_SPEECH_SECONDS,
    max_seconds: float = MAX_CLIP_SECONDS,
    max_source_seconds: float = MAX_SOURCE_SECONDS,
) -> PreparedClip:
    """Decode and validate `data`; VoiceError says what is wrong and what to do.

    `max_seconds` bounds the clip from its first word to its last (a longer one is refused,
    never silently cut), `max_source_seconds` the file read: a longer one is refused from
    its header, before anything is decoded."""
    if len(data) > max_bytes:
        raise VoiceError(f"voice {voice_id!r}: {oversize(len(data), max_bytes)}")
    if not data:
        raise VoiceError(f"voice {voice_id!r}: the audio is empty")
    try:
        header = sf.info(io.BytesIO(data))
    except _DECODE_ERRORS as e:
        raise _undecodable(voice_id, e) from e
    frames, source_rate = int(header.frames), int(header.samplerate)
    if source_rate <= 0 or header.channels <= 0:  # (a file of no frames is refused below)
        raise VoiceError(f"voice {voice_id!r}: the audio holds no samples")
    _check_decoded_size(voice_id, frames, source_rate, header.channels, max_source_seconds)
    try:
        # `frames`: never more than the header promised, whatever the stream holds
        raw, _ = sf.read(io.BytesIO(data), frames=frames, dtype="float32", always_2d=True)
    except _DECODE_ERRORS as e:
        raise _undecodable(voice_id, e) from e
    if raw.size == 0:
        raise VoiceError(f"voice {voice_id!r}: the audio holds no samples")
    if not np.isfinite(raw).all():
        raise VoiceError(f"voice {voice_id!r}: the audio holds NaN or infinite samples")

    peak = float(np.max(np.abs(raw)))
    if peak < _SILENT_PEAK:
        raise VoiceError(
            f"voice {voice_id!r}: the audio is silent (peak {_dbfs(peak):.0f} dBFS); "
            "record the speaker reading a few sentences"
        )
    clipped = _clipped_fraction(raw)
    if clipped > _MAX_CLIPPED_FRACTION:
        raise VoiceError(
            f"voice {voice_id!r}: the audio is clipped ({clipped:.1%} of samples at full "
            "scale); a cloned voice would copy the distortion: record at a lower gain"
        )

    mono = raw.mean(axis=1)  # (of one channel: that channel)
    audio = _resample(mono, source_rate, sample_rate)
    start, end, speech_seconds, pitched_seconds = _speech_bounds(audio, sample_rate)
    if speech_seconds < min_speech_seconds:
        raise VoiceError(
            f"voice {voice_id!r}: only {speech_seconds:.1f} s of speech found. {CLIP_RULES}"
        )
    if pitched_seconds < _MIN_PITCHED_SHARE * speech_seconds:
        raise VoiceError(
            f"voice {voice_id!r}: the audio sounds like noise, not a voice: of the "
            f"{speech_seconds:.1f} s a voice detector took for speech only "
            f"{pitched_seconds:.1f} s have a pitch (voiced speech is periodic); record one "
            f"person speaking in a quiet room. {CLIP_RULES}"
        )
    # the edges' padding is the breath and decay around the words: not counted
    if (end - start) / sample_rate > max_seconds + 2 * _EDGE_PAD_SECONDS:
        raise VoiceError(
            f"voice {voice_id!r}: the clip lasts {(end - start) / sample_rate:.1f} s from its "
            f"first word to its last, and only the first {max_seconds:g} s would be used: "
            f"trim it. {CLIP_RULES}"
        )
    clip = VoiceClip(
        voice_id=voice_id,
        audio=np.ascontiguousarray(audio[start:end]),  # float32: decoded and resampled so
        sample_rate=sample_rate,
        language=language,
    )
    return PreparedClip(
        clip=clip,
        source_sample_rate=int(source_rate),
        source_channels=int(raw.shape[1]),
        speech_seconds=speech_seconds,
    )


_DECODE_ERRORS = (sf.LibsndfileError, RuntimeError, TypeError, ValueError)


def _clipped_fraction(raw: np.ndarray) -> float:
    """The share of samples (frames x channels) in flat tops: runs of at least _CLIP_RUN
    consecutive samples at full scale with one sign."""
    rail = np.sign(raw) * (np.abs(raw) >= _CLIP_LEVEL)  # +1, -1 at full scale, else 0
    n = raw.shape[0] - _CLIP_RUN + 1
    if n <= 0:
        return 0.0
    starts = rail[:n] != 0  # a run of _CLIP_RUN samples on one rail starts here
    for k in range(1, _CLIP_RUN):
        starts &= rail[k : k + n] == rail[:n]
    flat = np.zeros(raw.shape, dtype=bool)
    for k in range(_CLIP_RUN):
        flat[k : k + n] |= starts
    return float(np.mean(flat))


class ClipPreparer:
    """`prepare_clip` with one library's limits, in worker threads, a few at a time."""

    def __init__(self, *, concurrency: int, **limits: Any) -> None:
        self._limits = limits
        self._slots = asyncio.Semaphore(concurrency)

    async def __call__(
        self, voice_id: str, data: bytes, *, language: str | None = None
    ) -> PreparedClip:
        async with self._slots:
            return await asyncio.to_thread(
                prepare_clip, voice_id, data, language=language, **self._limits
            )


def _undecodable(voice_id: str, error: Exception) -> VoiceError:
    reason = str(error).rsplit(">: ", 1)[-1].strip()  # drop libsndfile's "<BytesIO ...>"
    return VoiceError(
        f"voice {voice_id!r}: cannot decode the audio ({reason}); use WAV, FLAC, OGG or MP3"
    )


def _check_decoded_size(
    voice_id: str, frames: int, rate: int, channels: int, max_source_seconds: float
) -> None:
    """Refuse, from the header alone, audio too long or too large to decode in memory."""
    seconds = frames / rate
    if seconds > max_source_seconds:
        raise VoiceError(
            f"voice {voice_id!r}: the audio lasts {_minutes(seconds)}, over the "
            f"{_minutes(max_source_seconds)} limit for a file: trim it. {CLIP_RULES}"
        )
    if frames * channels > MAX_DECODED_SAMPLES:
        raise VoiceError(
            f"voice {voice_id!r}: the audio ({channels} channels at {rate} Hz) would decode "
            f"to {frames * channels * 4 / 1e6:.0f} MB, over the "
            f"{MAX_DECODED_SAMPLES * 4 / 1e6:.0f} MB limit; save it as mono at 48 kHz or less"
        )


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def bound_clip(clip: VoiceClip, max_seconds: float | None) -> VoiceClip:
    """The first `max_seconds` of `clip`: no engine is handed more than it reads."""
    if max_seconds is None or clip.duration <= max_seconds:
        return clip
    return VoiceClip(
        voice_id=clip.voice_id,
        audio=clip.audio[: int(max_seconds * clip.sample_rate)],
        sample_rate=clip.sample_rate,
        language=clip.language,
    )


def _resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    if rate_in == rate_out:
        return audio
    return soxr.resample(audio, rate_in, rate_out, quality="HQ").astype(np.float32, copy=False)


def oversize(size: int, max_bytes: int = MAX_AUDIO_BYTES) -> str:
    """What to say of a file of `size` bytes over the limit."""
    return (
        f"the file is {format_size(size)}, over the {format_size(max_bytes)} limit: trim it, "
        f"or save it as 16-bit mono WAV/FLAC. {CLIP_RULES}"
    )


def _speech_bounds(audio: np.ndarray, sample_rate: int) -> tuple[int, int, float, float]:
    """(start, end) sample indices around the speech in `audio`, seconds of speech, and of
    those the seconds that are pitched (periodic, as a voice is and noise is not)."""
    at_16k = _resample(audio, sample_rate, _VAD_RATE)
    pcm = (np.clip(at_16k, -1.0, 1.0) * 32767).astype("<i2")
    n_frames = len(pcm) // _VAD_FRAME
    if n_frames == 0:
        return 0, 0, 0.0, 0.0
    vad = webrtcvad.Vad(_VAD_AGGRESSIVENESS)
    frames = pcm[: n_frames * _VAD_FRAME].reshape(n_frames, _VAD_FRAME)
    voiced = np.fromiter(
        (vad.is_speech(frame.tobytes(), _VAD_RATE) for frame in frames), bool, n_frames
    )
    features = FeatureTracker(_VAD_RATE, _VAD_FRAME, floor_s=2.0)
    pitched = np.zeros(n_frames, bool)
    for i, frame in enumerate(frames):
        features.update(frame.astype(np.float64))
        pitched[i] = voiced[i] and features.aperiodicity() < _PITCHED
    # majority over a short window: a lone click is not speech, a short pause inside is
    window = np.convolve(voiced, np.ones(_VAD_WINDOW), mode="same")
    steady = np.flatnonzero(window * 2 > _VAD_WINDOW)
    if steady.size == 0:
        return 0, 0, 0.0, 0.0
    first, last = int(steady[0]), int(steady[-1]) + 1
    speech_seconds = float(voiced[first:last].sum()) * _VAD_FRAME / _VAD_RATE
    pitched_seconds = float(pitched[first:last].sum()) * _VAD_FRAME / _VAD_RATE
    scale = sample_rate / _VAD_RATE
    pad = int(_EDGE_PAD_SECONDS * sample_rate)
    start = max(0, int(first * _VAD_FRAME * scale) - pad)
    end = min(len(audio), int(last * _VAD_FRAME * scale) + pad)
    return start, end, speech_seconds, pitched_seconds


def _dbfs(value: float) -> float:
    return 20 * np.log10(max(value, 1e-12))
