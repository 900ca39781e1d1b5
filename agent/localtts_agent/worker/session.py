"""One room's conversation: the agent, its STT and LLM (any OpenAI-compatible server), and
the start of its session with the greeting."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from livekit import rtc
from livekit.agents import Agent, AgentSession, llm, stt
from livekit.agents.types import NOT_GIVEN, NotGivenOr
from livekit.agents.voice import SpeechHandle, room_io

# openai is imported here, when the worker's modules load on the main thread: a plugin
# registers itself when first imported, livekit refuses that on any other thread, and rooms
# run in job threads (thread executor)
from livekit.plugins import openai

from ..settings import AgentSettings
from .turns import INPUT_FRAME_MS

if TYPE_CHECKING:
    from .runtime import WorkerRuntime


def _openai_kwargs(base_url: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    base_url = base_url or os.environ.get("OPENAI_BASE_URL")
    if base_url:
        kwargs["base_url"] = base_url
        # local OpenAI-compatible servers need no key, but the client insists on one
        if not os.environ.get("OPENAI_API_KEY"):
            kwargs["api_key"] = "unused"
    return kwargs


def build_llm(settings: AgentSettings) -> llm.LLM:
    return openai.LLM(model=settings.llm_model, **_openai_kwargs(settings.llm_base_url))


def build_stt(settings: AgentSettings) -> stt.STT:
    return openai.STT(
        model=settings.stt_model,
        language=settings.stt_language,
        **_openai_kwargs(settings.stt_base_url),
    )


class VoiceAgent(Agent):
    def __init__(self, *, instructions: str) -> None:
        super().__init__(instructions=instructions)


async def start_session(
    session: AgentSession,
    runtime: WorkerRuntime,
    *,
    room: NotGivenOr[rtc.Room] = NOT_GIVEN,
) -> SpeechHandle | None:
    """Start the agent in `session` (in `room` when given) and say the greeting.

    Returns the greeting's handle (await it to wait until it was played), or None.
    """
    settings = runtime.agent_settings
    runtime.track(session)
    try:
        await session.start(
            agent=VoiceAgent(instructions=settings.agent_instructions),
            room=room,
            room_options=room_io.RoomOptions(
                audio_input=room_io.AudioInputOptions(frame_size_ms=INPUT_FRAME_MS)
            ),
        )
    except BaseException:
        runtime.forget(session)
        raise
    if settings.agent_greeting:
        return session.say(settings.agent_greeting, allow_interruptions=True)
    return None
