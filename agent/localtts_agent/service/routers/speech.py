"""POST /v1/audio/speech: OpenAI's audio endpoint, streaming as the engine speaks."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from livekit.plugins.localtts.engines import UnknownVoiceError
from livekit.plugins.localtts.models import ENGINE_NAMES

from ..audio import AudioStreamResponse, resampled, synthesis_frames
from ..auth import PROTECTED
from ..encoding import OPENAI_SAMPLE_RATE, SPEECH_FORMATS, StreamEncoder
from ..errors import ServiceError, synthesis_error
from ..models import SpeechRequest
from ..state import ServiceState, State

logger = logging.getLogger("localtts.service")

# OpenAI's speech models, with their dated snapshots (tts-1-1106, gpt-4o-mini-tts-2025-03-20):
# any of them means the loaded engine; another name is a mistake worth a 400
OPENAI_MODEL_PATTERN = re.compile(r"(tts-1(-hd)?|gpt-4o-mini-tts)(-\d{4}(-\d{2}-\d{2})?)?")
OPENAI_MODEL_NAMES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
# OpenAI's stock voices: clients always send one; unless the library has a voice of that
# name, they mean "the default voice" here, so an OpenAI client works unchanged
OPENAI_VOICE_NAMES = frozenset(
    {"alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx",
     "sage", "shimmer", "verse"}
)  # fmt: skip

router = APIRouter(tags=["speech"], dependencies=PROTECTED)


@router.post(
    "/v1/audio/speech",
    response_class=StreamingResponse,
    responses={200: {"content": {f.media_type: {} for f in SPEECH_FORMATS.values()}}},
)
async def openai_speech(body: SpeechRequest, state: State) -> StreamingResponse:
    """OpenAI's `audio/speech`: 24 kHz mono audio in `response_format` (mp3 unless asked
    otherwise, as OpenAI) streams out as it is made. `model` may name the loaded engine or
    an OpenAI speech model (tts-1, tts-1-hd, gpt-4o-mini-tts: all mean the loaded engine);
    `voice` omitted, "default" or an OpenAI stock voice name (alloy, ash...) is the default
    voice, anything else a voice id of the library."""
    state.require_ready()
    engine_name = state.engine.name
    check_model(body.model, engine_name)
    voice = await openai_voice(state, body.voice)
    await state.check_voice(voice)
    tts_ = state.request_tts(voice=voice, language=body.language, speed=body.speed)
    started = time.perf_counter()
    frames = resampled(synthesis_frames(tts_, body.input), tts_.sample_rate, OPENAI_SAMPLE_RATE)
    try:  # the first frame before the 200: a failing engine still gets a proper status
        first = await frames.__anext__()  # type: ignore[attr-defined]
    except StopAsyncIteration:
        first = None
    except Exception as e:
        await frames.aclose()  # type: ignore[attr-defined]
        raise synthesis_error(e, engine_name) from e
    first_audio_s = time.perf_counter() - started
    encoder = StreamEncoder(SPEECH_FORMATS[body.response_format], OPENAI_SAMPLE_RATE)

    async def body_bytes() -> AsyncIterator[bytes]:
        gauge = state.metrics.active_streams.labels("speech")
        gauge.inc()
        samples = 0
        completed = False
        try:
            if first is not None:
                samples += first.samples_per_channel
                if encoded := encoder.encode(bytes(first.data)):
                    yield encoded
            async for frame in frames:
                samples += frame.samples_per_channel
                if encoded := encoder.encode(bytes(frame.data)):
                    yield encoded
            yield encoder.finish()
            completed = True
        except Exception:
            # the 200 is out: the client sees a short body; the log says why
            state.metrics.error("engine")
            logger.exception("speech stream failed after its first audio")
        finally:
            gauge.dec()
            encoder.close()
            await frames.aclose()  # type: ignore[attr-defined]
            if completed:
                state.metrics.observe_synthesis(
                    "speech",
                    first_audio_s=first_audio_s,
                    synthesis_s=time.perf_counter() - started,
                    audio_s=samples / OPENAI_SAMPLE_RATE,
                )

    async def close() -> None:  # also when the body never started (client gone at once)
        encoder.close()
        await frames.aclose()  # type: ignore[attr-defined]

    return AudioStreamResponse(
        body_bytes(),
        close=close,
        media_type=encoder.format.media_type,
        headers={
            "X-Sample-Rate": str(OPENAI_SAMPLE_RATE),
            "X-Engine": engine_name,
            "X-Voice": voice or "default",
            "Cache-Control": "no-store",
        },
    )


def check_model(model: str, engine_name: str) -> None:
    """`model` may be an OpenAI speech model, the loaded engine's name or "localtts" (all
    mean the loaded engine); another engine's name or an unknown name is a clear 400."""
    if model in (engine_name, "localtts") or OPENAI_MODEL_PATTERN.fullmatch(model):
        return
    if model in ENGINE_NAMES:
        raise ServiceError(
            400,
            "model_not_loaded",
            f"model {model!r} is not loaded: this service runs {engine_name} "
            f"(LOCALTTS_ENGINE); ask for {engine_name!r} or an OpenAI model name",
        )
    raise ServiceError(
        400,
        "unknown_model",
        f"unknown model {model!r}: use {', '.join(OPENAI_MODEL_NAMES)} or {engine_name!r} "
        f"(each means the loaded engine, {engine_name})",
    )

# ------------------------------------------------------------ voices


async def openai_voice(state: ServiceState, requested: str | None) -> str | None:
    """The voice an OpenAI-style `voice` field means here (see OPENAI_VOICE_NAMES)."""
    if requested in (None, "", "default"):
        return state.settings.voice
    if requested in OPENAI_VOICE_NAMES:
        try:
            if state.voice_library is not None:
                await state.voice_library.get(requested)
                return requested
        except UnknownVoiceError:
            pass
        return state.settings.voice
    return requested

