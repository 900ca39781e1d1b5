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
import soxr
from livekit.plugins.localtts.engines.base import VoiceError
from livekit.plugins.localtts.voices.audio import CLIP_RULES, LIBRARY_SAMPLE_RATE, prepare_clip

DEFAULT_WAV = Path(__file__).resolve().parents[1] / "voices" / "default.wav"


@pytest.fixture(scope="module")
def speech() -> tuple[np.ndarray, int]:
    """The default voice's speech, float32, its peak at 0.5 (no sample near full scale)."""
    audio, rate = sf.read(DEFAULT_WAV, dtype="float32")
    # a second of silence first (the clip kept starts at the speech), and a length that is
    # a multiple of 3000 (0.1 % of it is a whole number of flat tops of 3 samples)
    audio = np.concatenate([np.zeros(rate, np.float32), audio])[: audio.size // 3000 * 3000]
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
    limit = audio.size // 1000  # exactly 0.1 % of the samples, in flat tops of 3
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


def test_the_kept_clip_is_the_speech_from_first_word_to_last(speech) -> None:  # type: ignore[no-untyped-def]
    """What is stored and cloned from: the source's own samples (here at the library's rate
    already), from 0.1 s before the first word to 0.1 s after the last."""
    audio, rate = speech
    source = soxr.resample(audio, rate, LIBRARY_SAMPLE_RATE).astype(np.float32)
    kept = prepare_clip("v", _float_wav(source, LIBRARY_SAMPLE_RATE)).clip
    assert kept.audio.dtype == np.float32 and kept.audio.flags.c_contiguous
    # aligned at the first sample that is not silence, in both
    start = int(np.argmax(source != 0)) - int(np.argmax(kept.audio != 0))
    np.testing.assert_array_equal(kept.audio, source[start : start + kept.audio.size])
    # the leading second of silence is gone, the speech (more than 5 s) is all there
    assert 0.8 < start / LIBRARY_SAMPLE_RATE < 1.2 and kept.duration > 5.0


def test_a_clip_may_last_max_seconds_plus_its_edges(speech) -> None:  # type: ignore[no-untyped-def]
    """`max_seconds` bounds the clip from its first word to its last; the 0.1 s kept at each
    edge is not counted. One step over is refused with the clip's own length."""
    audio, rate = speech
    data = _float_wav(audio, rate)
    lasts = prepare_clip("v", data).clip.duration  # first word to last, with its edges
    assert prepare_clip("v", data, max_seconds=lasts - 0.2 + 0.04).clip.duration == lasts
    with pytest.raises(VoiceError) as refused:
        prepare_clip("v", data, max_seconds=lasts - 0.2 - 0.04)
    assert str(refused.value).startswith(
        f"voice 'v': the clip lasts {lasts:.1f} s from its first word to its last, and only "
        f"the first {lasts - 0.24:g} s would be used: trim it."
    )


def test_mostly_noise_is_refused_with_what_was_measured(speech) -> None:  # type: ignore[no-untyped-def]
    """A second of speech, then six of noise: a voice detector takes it all for speech, but
    too little of it has a pitch."""
    audio, rate = speech
    start = int(np.argmax(np.abs(audio) > 0.05))
    noise = np.random.default_rng(0).standard_normal(6 * rate).astype(np.float32) * 0.05
    mixed = np.concatenate([audio[start : start + rate], noise])
    with pytest.raises(VoiceError) as refused:
        prepare_clip("v", _float_wav(mixed, rate))
    assert str(refused.value) == (
        "voice 'v': the audio sounds like noise, not a voice: of the 6.8 s a voice detector "
        "took for speech only 0.5 s have a pitch (voiced speech is periodic); record one "
        f"person speaking in a quiet room. {CLIP_RULES}"
    )


def test_a_file_cut_short_is_named(speech) -> None:  # type: ignore[no-untyped-def]
    """A FLAC upload cut short: its header reads (the length it promised), its body does
    not decode. The same message as for any undecodable file."""
    audio, rate = speech
    out = io.BytesIO()
    sf.write(out, audio, rate, format="FLAC")
    with pytest.raises(VoiceError) as refused:
        prepare_clip("v", out.getvalue()[:1000])
    assert str(refused.value) == (
        "voice 'v': cannot decode the audio (Error : flac decoder lost sync.); use WAV, FLAC, "
        "OGG or MP3"
    )
