"""Aligned transcripts over the real bundled Piper voice: the input text, word by word, timed
against the audio; checked against pocketsphinx forced alignment of the same audio, and
through a real AgentSession whose reply is interrupted."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from livekit.agents import Agent, AgentSession
from livekit.agents.voice.transcription.synchronizer import TranscriptSynchronizer
from livekit.plugins import localtts
from livekit.plugins.localtts.engines import SynthesisParams, TimedChunk
from livekit.plugins.localtts.engines.piper import PiperEngine
from livekit.plugins.localtts.textcut import word_spans

from .livekit_helpers import Heard, PlayoutAudioOutput, hear
from .speech_check import align_words, spoken_words

REPLY = (
    "The weather today is sunny with a light breeze from the west. Tomorrow brings clouds, "
    "and perhaps some rain in the afternoon. By the weekend it should be warm again, so "
    "plan something outside with your friends and family."
)
ODD = "Dr. Smith paid **3.5** million, e.g. for the new stadium 😀 in town.Then it rained!  "


def check_timing(heard: Heard, rate: int) -> None:
    """Times never go back, lie within the audio, and no word arrives after its audio began
    (a frame holds at most 200 ms; LiveKit holds back a 10 ms tail)."""
    starts = [t.start_time for t, _ in heard.timed]
    assert starts == sorted(starts)
    duration = len(heard.audio) / rate
    assert 0 <= starts[0] and starts[-1] <= duration
    for t, arrived_at in heard.timed:
        assert arrived_at <= t.start_time + 0.011, (str(t), arrived_at, t.start_time)


def test_piper_word_starts_match_forced_alignment(piper_engine: PiperEngine) -> None:
    chunks = list(piper_engine.stream(REPLY, None, SynthesisParams(), threading.Event()))
    assert all(isinstance(c, TimedChunk) for c in chunks)
    timings = [w for c in chunks for w in c.words]
    assert [w.word for w in timings] == list(range(len(word_spans(REPLY))))  # every word, once
    ours = [w.start_s for w in timings]
    assert ours == sorted(ours)
    reference = align_words(np.concatenate(chunks), piper_engine.sample_rate, REPLY)
    assert [w for w, _ in reference] == spoken_words(REPLY)
    errors = [abs(a - b) for a, (_, b) in zip(ours, reference, strict=True)]
    assert statistics.median(errors) <= 0.05, errors
    assert max(errors) <= 0.25, errors


async def test_synthesize_times_the_input_text_exactly(piper_engine: PiperEngine) -> None:
    tts = localtts.TTS(engine=piper_engine)
    assert tts.capabilities.aligned_transcript
    heard = await hear(tts.synthesize(ODD))
    assert heard.text == ODD  # spaces, punctuation, markup and emoji kept for chat history
    assert len(heard.timed) == len(ODD.split())  # one timed string per word
    check_timing(heard, tts.sample_rate)


async def test_stream_times_the_pushed_text_exactly(piper_engine: PiperEngine) -> None:
    tts = localtts.TTS(engine=piper_engine)
    stream = tts.stream()
    tokens = [w if i == 0 else " " + w for i, w in enumerate(REPLY.split(" "))]

    async def llm() -> None:
        for token in tokens:
            stream.push_text(token)
            await asyncio.sleep(0.02)
        stream.flush()  # "speak what is buffered" (LiveKit drops text pushed after it)
        stream.end_input()

    feeding = asyncio.create_task(llm())
    heard = await hear(stream)
    await feeding
    await stream.aclose()
    assert heard.text == REPLY
    check_timing(heard, tts.sample_rate)
    # what a caller gets (pieces joined, the first cut at a word) is timed as exactly as the
    # engine's own output: every word, against forced alignment of the audio heard
    reference = align_words(heard.audio, tts.sample_rate, REPLY)
    assert len(heard.timed) == len(REPLY.split())
    errors = [
        abs(t.start_time - ref) for (t, _), (_, ref) in zip(heard.timed, reference, strict=True)
    ]
    assert statistics.median(errors) <= 0.05, errors
    assert max(errors) <= 0.25, errors


@dataclass
class UntimedEngine:
    """The real Piper engine as an engine without word timings sees it: plain arrays, in
    chunks of 0.3 s like a streaming model's."""

    inner: PiperEngine

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def stream(self, *args: Any) -> Iterator[np.ndarray]:
        step = int(0.3 * self.inner.sample_rate)
        for chunk in self.inner.stream(*args):
            plain = np.asarray(chunk).view(np.ndarray)
            for i in range(0, len(plain), step):
                yield plain[i : i + step]


async def test_an_engine_without_timings_gets_estimated_times(piper_engine: PiperEngine) -> None:
    tts = localtts.TTS(engine=UntimedEngine(piper_engine))  # type: ignore[arg-type]
    await hear(tts.synthesize(REPLY))  # the pace is learned as it speaks
    heard = await hear(tts.synthesize(REPLY))
    assert heard.text == REPLY
    check_timing(heard, tts.sample_rate)
    reference = align_words(heard.audio, tts.sample_rate, REPLY)
    errors = [
        abs(t.start_time - ref) for (t, _), (_, ref) in zip(heard.timed, reference, strict=True)
    ]
    # exact piece starts, words spread by syllables: well within a word or two
    assert statistics.median(errors) <= 0.3, errors


async def test_interrupted_reply_keeps_the_words_that_were_played(
    piper_engine: PiperEngine,
) -> None:
    """AgentSession as RoomIO wires it (a TranscriptSynchronizer in front of a sink that plays
    on the wall clock), aligned transcripts on; the reply is interrupted mid-way. The chat
    history must hold the words heard by then: within one word of what forced alignment of
    the audio says had started playing."""
    tts = localtts.TTS(engine=piper_engine)
    session = AgentSession(
        tts=tts, vad=None, turn_handling={"turn_detection": None}, use_tts_aligned_transcript=True
    )
    # playback starts once the reply is all there: on a machine loaded enough to make Piper
    # slower than real time the room would run dry, which LiveKit's transcript clock (wall
    # time since playback started) does not see either. The reply is aligned just before it
    # plays: aligning while it played held the event loop, which paces the captions, back
    # (pocketsphinx in a thread; a full suite's run once kept 2 words fewer than had played)
    reference: list[tuple[str, float]] = []

    def align_the_whole_reply() -> None:
        reference.extend(align_words(sink.samples(), sink.frames[0].sample_rate, REPLY))

    sink = PlayoutAudioOutput(prebuffer_s=60.0, before_playing=align_the_whole_reply)
    synchronizer = TranscriptSynchronizer(next_in_chain_audio=sink, next_in_chain_text=None)
    session.output.audio = synchronizer.audio_output
    session.output.transcription = synchronizer.text_output
    await session.start(Agent(instructions="You are a test agent."))
    try:
        handle = session.say(REPLY)
        await asyncio.wait_for(sink.playing.wait(), timeout=60)
        assert sink.started_at is not None and reference
        # interrupt just before the first word to start after 5 s, so that a word at the cut
        # is neither half heard nor half released
        cut = min(start for _, start in reference if start >= 5.0) - 0.05
        await asyncio.sleep(max(0.0, sink.started_at + cut - time.time()))
        handle.interrupt()
        await asyncio.wait_for(handle.wait_for_playout(), timeout=10)
        said = session.history.items[-1]
        assert said.role == "assistant" and said.interrupted
        text = said.text_content or ""
    finally:
        await session.aclose()
    assert sink.interrupted_at is not None and abs(sink.interrupted_at - cut) < 0.3
    assert REPLY.startswith(text), text  # the input's own characters, cut at a word
    played = sum(start < sink.interrupted_at for _, start in reference)
    print(f"interrupted at {sink.interrupted_at:.2f} s: {len(text.split())} words kept, "
          f"{played} had started playing")  # fmt: skip
    assert abs(len(text.split()) - played) <= 1, (text, played, reference)
