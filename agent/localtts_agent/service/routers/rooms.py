"""POST /api/tts/synthesize: speech into a LiveKit room, through the room publishers."""

from __future__ import annotations

from fastapi import APIRouter
from livekit.agents import APIError
from livekit.agents.metrics import TTSMetrics
from livekit.plugins.localtts.engines import EngineUnavailableError, VoiceError
from livekit.plugins.localtts.voices.errors import DatabaseUnavailableError

from ..audio import synthesis_frames
from ..auth import PROTECTED
from ..errors import ServiceError, synthesis_error
from ..models import RoomSpeechRequest, RoomSpeechResponse
from ..room_publisher import RoomJoinError
from ..state import State

router = APIRouter(tags=["speech"], dependencies=PROTECTED)


@router.post("/api/tts/synthesize", response_model=RoomSpeechResponse)
async def synthesize_into_room(body: RoomSpeechRequest, state: State) -> RoomSpeechResponse:
    """Speak `text` into LiveKit room `room_name`; answers when the last audio frame is
    in the room (utterances to one room play in order)."""
    state.require_ready()  # first: without an engine, no room could be spoken into anyway
    if state.rooms is None:
        missing = ", ".join(state.service_settings.missing_livekit())
        raise ServiceError(
            503,
            "livekit_not_configured",
            f"speaking into rooms needs a LiveKit server: set {missing} "
            "(environment or .env) and restart the service",
        )
    voice = body.voice_id if body.voice_id is not None else state.settings.voice
    await state.check_voice(voice)
    tts_ = state.request_tts(
        voice=voice,
        language=body.language,
        speed=body.speed,
        temperature=body.temperature,
        exaggeration=body.exaggeration,
        cfg_weight=body.cfg_weight,
    )
    # the room takes frames at real time, so only the stream knows when synthesis itself
    # produced its first and last audio (LiveKit's TTSMetrics)
    synthesis: list[TTSMetrics] = []
    tts_.on("metrics_collected", synthesis.append)
    gauge = state.metrics.active_streams.labels("room")
    gauge.inc()
    try:
        report = await state.rooms.speak(body.room_name, lambda: synthesis_frames(tts_, body.text))
    except RoomJoinError as e:
        raise ServiceError(502, "room_join_failed", str(e)) from e
    except (APIError, VoiceError, DatabaseUnavailableError, EngineUnavailableError) as e:
        raise synthesis_error(e, state.engine.name) from e
    finally:
        gauge.dec()
    if synthesis:
        first_audio_s: float | None = synthesis[-1].ttfb
        synthesis_s = synthesis[-1].duration
    else:  # (a stream that played reports them; should one not, the room's times)
        first_audio_s = report.first_audio_s
        synthesis_s = report.finished_at - report.started_at
    state.metrics.observe_synthesis(
        "room",
        first_audio_s=first_audio_s,
        synthesis_s=synthesis_s,
        audio_s=report.audio_s,
    )
    info = state.engine.info()
    return RoomSpeechResponse(
        room_name=body.room_name,
        engine=state.engine.name,
        voice_id=voice,
        first_chunk_ms=_ms(first_audio_s),
        total_time_ms=_ms(synthesis_s) or 0.0,
        queued_ms=_ms(report.queued_s) or 0.0,
        audio_duration_seconds=round(report.audio_s, 3),
        real_time_factor=(
            round(synthesis_s / report.audio_s, 4) if report.audio_s > 0 else None
        ),
        optimizations=list(info.optimizations),
    )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 1)
