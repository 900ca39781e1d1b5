"""localtts.VAD (webrtcvad) on real speech: the bundled Piper voice padded with silence.

Where speech really is comes from the signal itself (frame energy), so the events are checked
against the audio, not against numbers the test assumes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import vad as agents_vad
from livekit.plugins.localtts.engines import SynthesisParams
from livekit.plugins.localtts.engines.piper import PiperEngine
from livekit.plugins.localtts.vad import VAD

E = agents_vad.VADEventType
WINDOW_S = 0.03
# an event may land this much after the ideal moment (webrtcvad needs a few voiced windows
# to react to soft onsets and endings) or before it (30 ms windows straddle the onset)
LATE_S = 0.25
EARLY_S = 0.06

LEAD_S, GAP_S, TAIL_S = 1.0, 1.6, 1.5  # silence before, between and after the utterances


@dataclass(frozen=True)
class Speech:
    audio: np.ndarray  # int16 mono
    sample_rate: int
    spans: list[tuple[float, float]]  # (start s, end s) of each utterance, from the signal


def _active_span(audio: np.ndarray, rate: int) -> tuple[float, float]:
    """First and last 10 ms frame louder than -55 dBFS: where the speech is."""
    hop = rate // 100
    frames = audio[: audio.size // hop * hop].astype(np.float64).reshape(-1, hop) / 32768.0
    loud = np.flatnonzero(np.sqrt(np.mean(frames**2, axis=1)) > 10 ** (-55 / 20))
    return loud[0] * hop / rate, (loud[-1] + 1) * hop / rate


@pytest.fixture(scope="module")
def speech() -> Speech:
    engine = PiperEngine()
    rate = engine.sample_rate

    def say(text: str) -> np.ndarray:
        chunks = list(engine.stream(text, None, SynthesisParams(), threading.Event()))
        return (np.concatenate(chunks) * 0.5 * 32767).astype(np.int16)

    first = say("The quick brown fox jumps over the lazy dog.")
    second = say("Please call me back tomorrow morning.")
    silence = lambda s: np.zeros(int(s * rate), np.int16)  # noqa: E731
    audio = np.concatenate([silence(LEAD_S), first, silence(GAP_S), second, silence(TAIL_S)])
    spans = []
    offset = LEAD_S
    for utterance in (first, second):
        start, end = _active_span(utterance, rate)
        spans.append((offset + start, offset + end))
        offset += utterance.size / rate + GAP_S
    return Speech(audio=audio, sample_rate=rate, spans=spans)


def _resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    t_out = np.arange(int(audio.size * rate_out / rate_in)) / rate_out
    return np.interp(t_out, np.arange(audio.size) / rate_in, audio).astype(np.int16)


async def _run(
    vad: VAD, audio: np.ndarray, rate: int, frame_ms: int = 20
) -> list[agents_vad.VADEvent]:
    stream = vad.stream()
    hop = rate * frame_ms // 1000
    for i in range(0, audio.size, hop):
        piece = audio[i : i + hop]
        stream.push_frame(
            rtc.AudioFrame(
                data=piece.tobytes(),
                sample_rate=rate,
                num_channels=1,
                samples_per_channel=piece.size,
            )
        )
    stream.end_input()
    events = [ev async for ev in stream]
    await stream.aclose()
    return events


def _of(events: list[agents_vad.VADEvent], kind: E) -> list[agents_vad.VADEvent]:
    return [ev for ev in events if ev.type == kind]


@pytest.mark.parametrize("rate", [None, 16000, 48000], ids=["piper-22050", "16k", "48k-room"])
async def test_events_mark_each_utterance(speech: Speech, rate: int | None) -> None:
    rate = rate or speech.sample_rate
    audio = speech.audio if rate == speech.sample_rate else _resample(
        speech.audio, speech.sample_rate, rate
    )  # fmt: skip
    vad = VAD(min_speech_duration=0.09, min_silence_duration=0.55)
    events = await _run(vad, audio, rate)

    starts, ends = _of(events, E.START_OF_SPEECH), _of(events, E.END_OF_SPEECH)
    assert len(starts) == 2 and len(ends) == 2, [(e.type.value, e.timestamp) for e in starts + ends]
    # they alternate: start, end, start, end
    ordered = [e for e in events if e.type != E.INFERENCE_DONE]
    assert [e.type for e in ordered] == [E.START_OF_SPEECH, E.END_OF_SPEECH] * 2

    for (begin, finish), start, end in zip(speech.spans, starts, ends, strict=True):
        # START once min_speech_duration of voice has been heard
        assert begin + 0.09 - EARLY_S <= start.timestamp <= begin + 0.09 + LATE_S
        assert start.speaking and start.speech_duration >= 0.09
        # END once min_silence_duration of silence followed the last voiced window
        assert finish + 0.55 - EARLY_S <= end.timestamp <= finish + 0.55 + LATE_S
        assert end.silence_duration >= 0.55 and not end.speaking
        # durations are reported without the trailing silence
        assert end.speech_duration == pytest.approx(finish - begin, abs=LATE_S + 0.1)

        # frames are at the input rate; END carries the utterance + 0.5 s prefix padding
        (utterance,) = end.frames
        assert utterance.sample_rate == rate and utterance.num_channels == 1
        assert utterance.duration == pytest.approx(
            end.timestamp - start.timestamp + start.speech_duration + 0.5, abs=0.1
        )
        (so_far,) = start.frames
        assert so_far.duration == pytest.approx(start.speech_duration + 0.5, abs=0.1)

    # samples_index counts 16 kHz samples; timestamps count processed audio
    for ev in starts + ends:
        assert ev.samples_index == round(ev.timestamp * 16000)


async def test_inference_done_for_every_window(speech: Speech) -> None:
    rate = speech.sample_rate
    events = await _run(VAD(), speech.audio, rate)
    inferences = _of(events, E.INFERENCE_DONE)
    total_s = speech.audio.size / rate
    # every whole 30 ms window is classified (the resampler may hold back a few ms)
    assert total_s / WINDOW_S - 2 <= len(inferences) <= total_s / WINDOW_S
    assert [ev.timestamp for ev in inferences] == pytest.approx(
        [(i + 1) * WINDOW_S for i in range(len(inferences))]
    )
    # the frames of INFERENCE_DONE tile the input: nothing lost, nothing repeated
    covered = sum(ev.frames[0].samples_per_channel for ev in inferences)
    assert abs(covered - len(inferences) * WINDOW_S * rate) <= 1
    # probabilities are webrtcvad's decisions; speech in the middle of an utterance is voiced
    begin, finish = speech.spans[0]
    middle = [ev for ev in inferences if begin + 0.3 < ev.timestamp < finish - 0.3]
    assert np.mean([ev.probability for ev in middle]) > 0.7
    lead = [ev for ev in inferences if ev.timestamp < begin - 0.1]
    assert all(ev.probability == 0.0 and not ev.speaking for ev in lead)
    assert all(ev.inference_duration >= 0 for ev in inferences)


@pytest.mark.parametrize("aggressiveness", [0, 1, 2, 3])
@pytest.mark.parametrize("rate", [16000, 48000])
async def test_silence_alone_gives_no_speech_events(aggressiveness: int, rate: int) -> None:
    # at 48 kHz the resampler turns digital silence into +-1 LSB, which webrtcvad at
    # aggressiveness 0-1 calls speech; the energy floor keeps it silence
    silence = np.zeros(rate * 2, np.int16)
    events = await _run(VAD(aggressiveness=aggressiveness), silence, rate)
    assert _of(events, E.START_OF_SPEECH) == [] and _of(events, E.END_OF_SPEECH) == []
    assert abs(len(_of(events, E.INFERENCE_DONE)) - 2 / WINDOW_S) <= 1


async def test_longer_min_silence_merges_the_utterances(speech: Speech) -> None:
    # the gap between utterances is ~1.6 s: a 2 s min_silence keeps one turn
    events = await _run(VAD(min_silence_duration=2.0), speech.audio, speech.sample_rate)
    # the tail (1.5 s) is shorter than 2 s too: the turn is still open at the end
    assert len(_of(events, E.START_OF_SPEECH)) == 1
    assert len(_of(events, E.END_OF_SPEECH)) == 0


async def test_stereo_input(speech: Speech) -> None:
    stereo = np.repeat(speech.audio, 2)  # interleaved L/R, same signal on both sides
    stream = VAD().stream()
    rate, hop = speech.sample_rate, speech.sample_rate // 50
    for i in range(0, speech.audio.size, hop):
        piece = stereo[2 * i : 2 * (i + hop)]
        stream.push_frame(rtc.AudioFrame(piece.tobytes(), rate, 2, piece.size // 2))
    stream.end_input()
    events = [ev async for ev in stream]
    await stream.aclose()
    assert len(_of(events, E.START_OF_SPEECH)) == 2


async def test_flush_resets_the_segment(speech: Speech) -> None:
    rate = speech.sample_rate
    begin, finish = speech.spans[0]
    stream = VAD().stream()
    cut = int((begin + finish) / 2 * rate)  # flush in the middle of the first utterance
    for part in (speech.audio[:cut], speech.audio[cut:]):
        stream.push_frame(rtc.AudioFrame(part.tobytes(), rate, 1, part.size))
        stream.flush()
    stream.end_input()
    events = [ev async for ev in stream]
    await stream.aclose()
    # the clock restarts after a flush: the second part's events count from 0 again
    stamps = [ev.timestamp for ev in _of(events, E.INFERENCE_DONE)]
    restart = next(i for i in range(1, len(stamps)) if stamps[i] < stamps[i - 1])
    assert stamps[restart] == pytest.approx(WINDOW_S)


async def test_options_are_checked_and_updatable() -> None:
    with pytest.raises(ValueError, match="aggressiveness"):
        VAD(aggressiveness=4)
    with pytest.raises(ValueError, match="frame_duration_ms"):
        VAD(frame_duration_ms=25)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sample_rate"):
        VAD(sample_rate=22050)  # type: ignore[arg-type]
    vad = VAD()
    assert (vad.model, vad.provider, vad.min_silence_duration) == ("webrtcvad", "localtts", 0.55)
    assert vad.capabilities.update_interval == WINDOW_S
    stream = vad.stream()
    vad.update_options(min_silence_duration=0.8, aggressiveness=3)
    assert vad.min_silence_duration == 0.8 and stream._opts.aggressiveness == 3
    with pytest.raises(ValueError, match="aggressiveness"):
        vad.update_options(aggressiveness=-1)
    assert vad._opts.aggressiveness == 3  # a bad update changes nothing
    vad.update_options(noise_robust=False, max_aperiodicity=0.4, noise_tail_s=0.0)
    assert not stream._opts.noise_robust and stream._opts.max_aperiodicity == 0.4
    with pytest.raises(ValueError, match="max_aperiodicity"):
        VAD(max_aperiodicity=0)
    with pytest.raises(ValueError, match="noise_tail_s"):
        vad.update_options(noise_tail_s=-0.1)
    await stream.aclose()


async def test_usable_by_agent_session(speech: Speech) -> None:
    """AgentSession takes the VAD as it is, and what it reads from it marks both turns."""
    from livekit.agents import AgentSession

    vad = VAD()
    session = AgentSession(vad=vad)
    assert session.vad is vad
    events = await _run(session.vad, speech.audio, speech.sample_rate)
    turns = [e.type for e in events if e.type != E.INFERENCE_DONE]
    assert turns == [E.START_OF_SPEECH, E.END_OF_SPEECH] * 2
