"""`match_heard`, the real-room tests' judge, on real speech with known damage: it must
pass what a room does to audio (noise, a level change, a stall) and fail a 200-ms frame
cut, two frames doubled, a reordering, a cut start and another text. No server: the
damage is made here (Piper samples noise: every run judges different speech)."""

from __future__ import annotations

import numpy as np
import pytest
from livekit.plugins import localtts

from .livekit_helpers import ENVELOPE_S, SPEECH_RMS, energy_envelope, match_heard, resample

RATE = 24_000
FRAME = RATE // 5  # LiveKit's TTS frames are 200 ms


@pytest.fixture(scope="module")
async def speech(piper_tts: localtts.TTS) -> np.ndarray:
    frames = [
        ev.frame.data
        async for ev in piper_tts.synthesize(
            "The weather today is sunny with a light breeze from the west. "
            "Tomorrow brings clouds, and perhaps some rain in the afternoon."
        )
    ]
    pcm = np.concatenate([np.frombuffer(bytes(f), dtype=np.int16) for f in frames])
    return resample(pcm.astype(np.float32) / 32768.0, piper_tts.sample_rate, RATE)


def voiced_frame_at(audio: np.ndarray, after_s: float) -> int:
    """Start (sample) of the first 200-ms frame after `after_s` that is speech throughout."""
    voiced = energy_envelope(audio, RATE) > SPEECH_RMS
    per_frame = round(0.2 / ENVELOPE_S)
    for i in range(round(after_s / ENVELOPE_S), voiced.size - per_frame):
        if voiced[i : i + per_frame].all():
            return round(i * ENVELOPE_S * RATE)
    raise AssertionError("no 200 ms of continuous speech")


def heard(audio: np.ndarray) -> np.ndarray:
    """What a listener records: silence before and after, a little noise, a level change."""
    rng = np.random.default_rng(0)
    padded = np.concatenate([np.zeros(RATE // 2), 0.9 * audio, np.zeros(RATE)])
    return (padded + 0.001 * rng.standard_normal(padded.size)).astype(np.float32)


def test_the_audio_itself_and_a_stall_pass(speech: np.ndarray) -> None:
    match = match_heard(heard(speech), speech, RATE)
    assert not match.problems(), match
    assert match.offset_s == pytest.approx(0.5, abs=0.03)
    assert match.end_s == pytest.approx(0.5 + speech.size / RATE, abs=0.03)

    at = voiced_frame_at(speech, 2.0)
    fade = speech[at - FRAME // 2 : at] * np.linspace(1, 0, FRAME // 2)  # concealment
    stalled = np.concatenate([speech[:at], fade, np.zeros(RATE // 4), speech[at:]])
    match = match_heard(heard(stalled), speech, RATE)
    assert not match.problems(), match
    assert match.gaps_s >= 0.25


@pytest.mark.parametrize("at_s", [0.6, 2.0, 4.5])
def test_a_frame_cut_or_two_doubled_fail(speech: np.ndarray, at_s: float) -> None:
    at = voiced_frame_at(speech, at_s)
    cut = np.concatenate([speech[:at], speech[at + FRAME :]])
    problems = match_heard(heard(cut), speech, RATE).problems()
    assert any("(cut)" in p for p in problems), problems
    # one doubled frame is as much extra speech as the jitter buffer's cover for a stall
    doubled = np.concatenate([speech[: at + 2 * FRAME], speech[at:]])
    problems = match_heard(heard(doubled), speech, RATE).problems()
    assert any("(doubled)" in p for p in problems), problems


def test_reordered_a_cut_start_and_other_speech_fail(speech: np.ndarray) -> None:
    half = voiced_frame_at(speech, speech.size / RATE / 2)
    reordered = np.concatenate([speech[half:], speech[:half]])
    assert match_heard(heard(reordered), speech, RATE).problems()

    onset = voiced_frame_at(speech, 0.0)
    late_start = speech[onset + RATE // 10 :]  # the first 100 ms of speech never arrived
    problems = match_heard(heard(late_start), speech, RATE).problems()
    assert any("start cut" in p for p in problems), problems

    other = np.concatenate([speech[half:], speech[half:]])[: speech.size]
    assert match_heard(heard(other), speech, RATE).problems()
