"""Turn taking: when the agent hears the end of a turn and when speech over it interrupts.

All of it runs on the worker's machine: the VAD (`localtts.VAD`, or Silero with
LOCALTTS_VAD=silero), livekit's local end-of-turn model, and `VoicedSpeechVAD`, which makes
the interruption threshold count voiced audio only.
"""

from __future__ import annotations

import asyncio
import importlib.util
from dataclasses import replace

from livekit.agents import inference, utils, vad
from livekit.agents.voice.turn import TurnHandlingOptions
from livekit.plugins.localtts.vad import VAD

from ..settings import AgentSettings

# the participant's audio reaches the VAD in frames this long (livekit: 50 ms): one WebRTC
# packet each, so an interruption is seen up to 30 ms sooner (see `turn_handling`)
INPUT_FRAME_MS = 20


def turn_handling(settings: AgentSettings) -> TurnHandlingOptions:
    """Turn taking that runs on this machine in every mode, interrupting on speech only.

    livekit's defaults depend on the mode: under `dev` the end-of-turn detector and the
    "adaptive" interruption detector are LiveKit Cloud services (called with this server's
    key), under `start` the local end-of-turn model (weights in livekit-local-inference) and
    VAD interruptions. Both modes get the local choices here.

    An interruption takes `agent_min_interruption_s` (0.2 s) of voiced speech, counted by
    `VoicedSpeechVAD`. The agent's audio then stops at the listener 0.1-0.2 s later (uplink,
    20 ms input frames, 30 ms VAD windows, RoomIO's output queue, downlink): it falls silent
    0.3-0.4 s after the user starts to speak, inside the 0.5 s target (measured by
    tests/test_agent_rooms.py). The threshold ignores sounds with less voice than that: a
    click, a knock, a short "uh". A cough (about 0.25 s of noise, which reads about 0.27 s
    voiced after Opus) pauses the reply; it resumes when the STT finds no words in it
    (livekit's false-interruption handling, `false_interruption_timeout` 2 s after the
    noise). Ignoring coughs outright would take a threshold near 0.3 s, and the stop would
    come at 0.45-0.5 s: too close to the limit.
    """
    return {
        "turn_detection": inference.TurnDetector(version="v1-mini"),
        "interruption": {"mode": "vad", "min_duration": settings.agent_min_interruption_s},
    }


class VoicedSpeechVAD(vad.VAD):
    """`wrapped`, with the running speech duration of its events counting voiced audio only.

    AgentSession interrupts the agent once an INFERENCE_DONE event's `speech_duration`
    reaches the interruption `min_duration`. Silero and localtts.VAD count that duration
    from the start of speech to its end including the silence before END_OF_SPEECH
    (`min_silence_duration`, 0.55 s), so a 0.1 s cough reads 0.5 s half a second later and
    interrupts at any `min_duration` under about 0.65 s - and a `min_duration` that large
    cannot stop the agent within half a second of real speech. Counted over voiced windows
    only, `min_duration` means "this much speech". START_OF_SPEECH and END_OF_SPEECH (turn
    taking, transcription) pass through unchanged.
    """

    def __init__(self, wrapped: vad.VAD) -> None:
        super().__init__(capabilities=wrapped.capabilities)
        self.wrapped = wrapped

    @property
    def model(self) -> str:
        return self.wrapped.model

    @property
    def provider(self) -> str:
        return self.wrapped.provider

    @property
    def min_silence_duration(self) -> float | None:
        # read by AgentSession to check the turn detector's needs
        return getattr(self.wrapped, "min_silence_duration", None)

    def stream(self) -> vad.VADStream:
        return _VoicedSpeechStream(self, self.wrapped.stream())


class _VoicedSpeechStream(vad.VADStream):
    def __init__(self, vad_: VoicedSpeechVAD, wrapped: vad.VADStream) -> None:
        self._wrapped = wrapped
        super().__init__(vad_)

    async def _forward_input(self) -> None:
        async for item in self._input_ch:
            if isinstance(item, self._FlushSentinel):
                self._wrapped.flush()
            else:
                self._wrapped.push_frame(item)
        self._wrapped.end_input()

    async def _main_task(self) -> None:
        forward = asyncio.create_task(self._forward_input())
        voiced = 0.0
        try:
            async for ev in self._wrapped:
                if ev.type == vad.VADEventType.START_OF_SPEECH:
                    voiced = ev.speech_duration  # the voiced run that started it
                elif ev.type == vad.VADEventType.END_OF_SPEECH:
                    voiced = 0.0
                elif ev.speaking:
                    if ev.probability >= 0.5:
                        voiced += sum(f.duration for f in ev.frames)
                    ev = replace(ev, speech_duration=voiced)
                self._event_ch.send_nowait(ev)
        finally:
            await utils.aio.cancel_and_wait(forward)

    async def aclose(self) -> None:
        await super().aclose()
        await self._wrapped.aclose()


def vad_problem(settings: AgentSettings) -> str | None:
    """Why the configured VAD cannot be built, or None (checked at start, imports nothing)."""
    if settings.vad == "silero" and importlib.util.find_spec("livekit.plugins.silero") is None:
        return "LOCALTTS_VAD=silero needs livekit-plugins-silero: pip install 'localtts[silero]'"
    return None


def build_vad(settings: AgentSettings) -> vad.VAD:
    """localtts.VAD (webrtcvad, robust to noise), or Silero with LOCALTTS_VAD=silero
    (docs/agent.md says when each is the better choice)."""
    if (problem := vad_problem(settings)) is not None:
        raise RuntimeError(problem)
    if settings.vad == "silero":
        from livekit.plugins import silero

        return silero.VAD.load()
    return VAD(aggressiveness=settings.vad_aggressiveness)

