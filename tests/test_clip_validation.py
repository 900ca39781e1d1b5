"""Reference-clip validation (voices/audio.py `prepare_clip`) at its exact thresholds, on the
shipped default voice (real speech): what counts as clipped, as silent, as too short.

A clip is refused as clipped when more than 0.1 % of its samples sit at full scale (>= 0.999):
a few samples there are a normalised peak, more are distortion a cloned voice would copy.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from livekit.plugins.localtts.engines.base import VoiceError
from livekit.plugins.localtts.voices.audio import CLIP_RULES, LIBRARY_SAMPLE_RATE, prepare_clip

DEFAULT_WAV = Path(__file__).resolve().parents[1] / "voices" / "default.wav"


@pytest.fixture(scope="module")
def speech() -> tuple[np.ndarray, int]:
    """The default voice's speech, float32, its peak at 0.5 (no sample near full scale)."""
    audio, rate = sf.read(DEFAULT_WAV, dtype="float32")
    # a second of silence first (the clip kept starts at the speech), and a length that is
    # a multiple of 1000 (0.1 % of it is a whole number of samples)
    audio = np.concatenate([np.zeros(rate, np.float32), audio])[: audio.size // 1000 * 1000]
    return (audio * (0.5 / np.max(np.abs(audio)))).astype(np.float32), rate


def _float_wav(audio: np.ndarray, rate: int) -> bytes:
    """32-bit float WAV: every sample value arrives exactly as written."""
    out = io.BytesIO()
    sf.write(out, audio, rate, format="WAV", subtype="FLOAT")
    return out.getvalue()


def _with_peaks(audio: np.ndarray, count: int, level: float) -> np.ndarray:
    """`count` samples (rounded down to whole flat tops of 3, spread over the clip,
    alternating sign) set to +-`level`: clipping flattens the wave for samples in a row."""
    out = audio.copy()
    tops = count // 3
    starts = np.linspace(0, out.size - 4, tops).astype(int)
    for i, start in enumerate(starts):
        out[start : start + 3] = np.float32(level if i % 2 == 0 else -level)
    return out


def test_at_most_a_tenth_of_a_percent_at_full_scale_passes(speech) -> None:  # type: ignore[no-untyped-def]
    audio, rate = speech
    limit = audio.size // 1000 // 3 * 3  # 0.1 % of the samples, in flat tops of 3
    kept = prepare_clip("v", _float_wav(_with_peaks(audio, limit, 1.0), rate), language="fr")
    assert kept.speech_seconds > 5.0
    assert (kept.clip.voice_id, kept.clip.language, kept.clip.sample_rate) == (
        "v", "fr", LIBRARY_SAMPLE_RATE,
    )  # fmt: skip
    assert kept.clip.audio.dtype == np.float32
    assert (kept.source_sample_rate, kept.source_channels) == (rate, 1)
    with pytest.raises(VoiceError) as refused:
        prepare_clip("v", _float_wav(_with_peaks(audio, limit + 3, 1.0), rate))
    assert str(refused.value) == (
        "voice 'v': the audio is clipped (0.1% of samples at full scale); a cloned voice "
        "would copy the distortion: record at a lower gain"
    )


def test_full_scale_starts_at_0999(speech) -> None:  # type: ignore[no-untyped-def]
    audio, rate = speech
    many = audio.size // 500  # 0.2 %: twice the limit, if these samples count
    with pytest.raises(VoiceError, match=r"clipped \(0\.2% of samples"):
        prepare_clip("v", _float_wav(_with_peaks(audio, many, np.float32(0.999)), rate))
    assert prepare_clip("v", _float_wav(_with_peaks(audio, many, 0.998), rate)).speech_seconds > 5


def test_silent_below_minus_50_dbfs(speech) -> None:  # type: ignore[no-untyped-def]
    audio, rate = speech
    quiet = audio * (10 ** (-49 / 20) / 0.5)  # peak -49 dBFS: not silent, too quiet to use
    with pytest.raises(VoiceError, match="s of speech found"):  # the next check refuses it
        prepare_clip("v", _float_wav(quiet, rate))
    with pytest.raises(VoiceError) as refused:
        prepare_clip("v", _float_wav(audio * (10 ** (-51 / 20) / 0.5), rate))
    assert str(refused.value) == (
        "voice 'v': the audio is silent (peak -51 dBFS); record the speaker reading a few sentences"
    )


def test_broken_audio_is_named(speech) -> None:  # type: ignore[no-untyped-def]
    audio, rate = speech
    cases = {
        b"": "voice 'v': the audio is empty",
        _float_wav(np.full(rate, np.nan, np.float32), rate): (
            "voice 'v': the audio holds NaN or infinite samples"
        ),
        _float_wav(np.zeros(0, np.float32), rate): "voice 'v': the audio holds no samples",
    }
    for data, message in cases.items():
        with pytest.raises(VoiceError) as refused:
            prepare_clip("v", data)
        assert str(refused.value) == message
    # sizes in MiB, one decimal unless whole (2 MiB is "2", 2,200,000 bytes "2.1")
    for size, limit, said in ((1_050_000, 1_000_000, "1.0 MiB, over the 1.0"),
                              (2_200_000, 2 * 2**20, "2.1 MiB, over the 2")):  # fmt: skip
        with pytest.raises(VoiceError) as refused:
            prepare_clip("v", b"\0" * size, max_bytes=limit)
        assert str(refused.value) == (
            f"voice 'v': the file is {said} MiB limit: trim it, or save it as 16-bit mono "
            f"WAV/FLAC. {CLIP_RULES}"
        )
    big = _float_wav(audio, rate)
    assert prepare_clip("v", big, max_bytes=len(big)).speech_seconds > 5
    with pytest.raises(VoiceError) as refused:
        prepare_clip("v", b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 10)
    assert str(refused.value) == (  # libsndfile's reason, without its "<BytesIO ...>"
        "voice 'v': cannot decode the audio (Error in WAV/W64/RF64 file. Malformed 'fmt ' "
        "chunk.); use WAV, FLAC, OGG or MP3"
    )
    with pytest.raises(VoiceError, match=r"^voice 'v': the audio lasts .* over the"):
        prepare_clip("v", big, max_source_seconds=2.0)
    # one sample is a file with samples (too few to be speech)
    with pytest.raises(VoiceError, match="s of speech found"):
        prepare_clip("v", _float_wav(np.full(1, 0.5, np.float32), rate))


def test_stereo_is_mixed_to_mono(speech) -> None:  # type: ignore[no-untyped-def]
    """Speech on one side of a stereo file only (the other silent) is still the voice."""
    audio, rate = speech
    stereo = np.stack([np.zeros_like(audio), audio], axis=1)
    kept = prepare_clip("v", _float_wav(stereo, rate))
    assert kept.source_channels == 2 and kept.speech_seconds > 5.0
    mono = prepare_clip("v", _float_wav(audio / 2, rate))
    np.testing.assert_allclose(kept.clip.audio, mono.clip.audio, atol=1e-6)


def test_too_little_speech_is_refused_with_the_amount(speech) -> None:  # type: ignore[no-untyped-def]
    audio, rate = speech
    with pytest.raises(VoiceError, match=r"only \d\.\d s of speech found\. A reference clip"):
        prepare_clip("v", _float_wav(audio, rate), min_speech_seconds=9.0)
    with pytest.raises(VoiceError, match=r"only the first 3 s would be used: trim it"):
        prepare_clip("v", _float_wav(audio, rate), max_seconds=3.0)  # refused, never cut
