"""What the service's endpoints take and answer, with the bounds on each request."""

from __future__ import annotations

import re
from typing import Annotated

from livekit.plugins.localtts.text import is_speakable, normalize
from livekit.plugins.localtts.voices.audio import CLIP_RULES, MAX_AUDIO_BYTES, format_size
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .encoding import DEFAULT_SPEECH_FORMAT, SPEECH_FORMATS

MAX_TEXT_CHARS = 10_000  # ~10 minutes of speech; longer texts belong in several requests
MAX_JSON_BODY_BYTES = 256 * 1024  # a maximal text, escaped, fits several times over
MAX_UPLOAD_BYTES = MAX_AUDIO_BYTES  # the voice library's own bound on a reference clip
_MULTIPART_OVERHEAD = 64 * 1024  # form fields and boundaries around the clip
VOICES_PATH = "/api/voices"

LANGUAGE_PATTERN = r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$"
_NO_CONTROL_PATTERN = r"^[^\x00-\x1f\x7f]+$"


def body_limit(path: str) -> tuple[int, str]:
    """The largest body a request to `path` may send, and what to say beyond it (checked by
    `BodyLimits`); an upload's limit is stated as the clip's, from `CLIP_RULES`."""
    if path.rstrip("/") == VOICES_PATH:
        return MAX_UPLOAD_BYTES + _MULTIPART_OVERHEAD, (
            f"the upload is over the {format_size(MAX_UPLOAD_BYTES)} limit. {CLIP_RULES}"
        )
    return MAX_JSON_BODY_BYTES, f"request body exceeds {MAX_JSON_BODY_BYTES // 1024} KiB"


class _Synthesis(BaseModel):
    """Knobs shared by the room and HTTP endpoints; engines ignore the ones they lack."""

    language: Annotated[str | None, Field(pattern=LANGUAGE_PATTERN, max_length=32)] = None
    speed: Annotated[float, Field(ge=0.25, le=4.0)] = 1.0


# not text: unpaired UTF-16 surrogates (a JSON "\ud800" decodes to one, no encoder takes it)
# and control characters other than tab and line breaks
_NOT_TEXT = re.compile(r"[\ud800-\udfff\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _check_text(text: str) -> str:
    """The text to speak, without what is not text (dropped here, at the boundary: the
    engines, their tokenizers and error messages only ever see clean text)."""
    text = _NOT_TEXT.sub("", text)
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(
            f"text is {len(text)} characters long; at most {MAX_TEXT_CHARS} are allowed "
            "per request (split longer texts)"
        )
    if not is_speakable(normalize(text)):
        raise ValueError(
            "text has nothing to speak (empty, or only punctuation, symbols or control characters)"
        )
    return text


class RoomSpeechRequest(_Synthesis):
    """POST /api/tts/synthesize: speak `text` into LiveKit room `room_name`."""

    model_config = ConfigDict(extra="forbid")  # a misspelt knob is an error, not ignored

    text: str
    room_name: Annotated[str, Field(min_length=1, max_length=128, pattern=_NO_CONTROL_PATTERN)]
    voice_id: Annotated[str | None, Field(min_length=1, max_length=128)] = None
    exaggeration: Annotated[float | None, Field(ge=0.0, le=2.0)] = None
    cfg_weight: Annotated[float | None, Field(ge=0.0, le=1.0)] = None
    temperature: Annotated[float | None, Field(gt=0.0, le=5.0)] = None

    @field_validator("text")
    @classmethod
    def _speakable_text(cls, value: str) -> str:
        return _check_text(value)


class SpeechRequest(_Synthesis):
    """POST /v1/audio/speech, as OpenAI's: unknown fields (instructions, stream_format)
    are accepted and ignored so OpenAI clients work unchanged."""

    model_config = ConfigDict(extra="ignore")

    # OpenAI requires it; here the host's engine answers whatever it says
    model: Annotated[str, Field(min_length=1, max_length=128)] = "localtts"
    input: str
    voice: Annotated[str | None, Field(max_length=128)] = None
    response_format: str = DEFAULT_SPEECH_FORMAT
    language: Annotated[str | None, Field(pattern=LANGUAGE_PATTERN, max_length=32)] = None

    @field_validator("input")
    @classmethod
    def _speakable_input(cls, value: str) -> str:
        return _check_text(value)

    @field_validator("response_format")
    @classmethod
    def _format(cls, value: str) -> str:
        if value not in SPEECH_FORMATS:
            raise ValueError(
                f"response_format {value!r} is not supported: use one of "
                f"{', '.join(SPEECH_FORMATS)} (default {DEFAULT_SPEECH_FORMAT})"
            )
        return value


class RoomSpeechResponse(BaseModel):
    room_name: str
    engine: str
    voice_id: str | None
    first_chunk_ms: float | None
    total_time_ms: float
    queued_ms: float
    audio_duration_seconds: float
    real_time_factor: float | None
    optimizations: list[str]
