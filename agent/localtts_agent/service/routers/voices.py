"""/api/voices: list, add (multipart upload of a reference clip), get and remove voices."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from contextlib import aclosing
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, File, Form, HTTPException, Request, Response, UploadFile
from fastapi.routing import APIRoute
from livekit.plugins.localtts.engines import VoiceError
from livekit.plugins.localtts.voices.audio import oversize
from livekit.plugins.localtts.voices.errors import DatabaseUnavailableError
from starlette.formparsers import MultiPartException, MultiPartParser

from ..auth import PROTECTED
from ..errors import ServiceError, voice_error
from ..models import LANGUAGE_PATTERN, MAX_UPLOAD_BYTES, VOICES_PATH
from ..state import ServiceState, State

if TYPE_CHECKING:
    from livekit.plugins.localtts.voices import VoiceLibrary


class _Utf8MultiPartParser(MultiPartParser):
    """Starlette's multipart parser, strict about text fields: one that is not UTF-8 is
    refused, where Starlette would decode it as Latin-1 and a name would be stored garbled."""

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None:
            try:
                part.data.decode("utf-8")
            except UnicodeDecodeError:
                raise MultiPartException(
                    f"form field {part.field_name[:40]!r} is not valid UTF-8"
                ) from None
        super().on_part_end()


class _Utf8FormRoute(APIRoute):
    """Parses a multipart body with `_Utf8MultiPartParser` before FastAPI reads the form
    (FastAPI then takes the form the request already holds)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def parse_then_handle(request: Request) -> Response:
            if request.headers.get("content-type", "").startswith("multipart/form-data"):
                try:
                    async with aclosing(request.stream()) as stream:
                        form = await _Utf8MultiPartParser(request.headers, stream).parse()
                except MultiPartException as e:
                    raise HTTPException(400, e.message) from e
                request._form = form  # what Request.form() returns from now on
            return await handle(request)

        return parse_then_handle


router = APIRouter(tags=["voices"], dependencies=PROTECTED, route_class=_Utf8FormRoute)


@router.get(VOICES_PATH)
async def list_voices(state: State) -> dict[str, Any]:
    """Every voice (database and directory)."""
    library = _library(state)
    return {"voices": [v.to_dict() for v in await library.list()]}


@router.post(VOICES_PATH, status_code=201)
async def add_voice(
    state: State,
    voice_id: Annotated[str, Form(min_length=1, max_length=128)],
    file: Annotated[UploadFile, File(description="reference clip: wav, flac, ogg, mp3")],
    name: Annotated[str | None, Form(max_length=200)] = None,
    language: Annotated[str | None, Form(pattern=LANGUAGE_PATTERN, max_length=32)] = None,
    replace: Annotated[bool, Form()] = False,
) -> dict[str, Any]:
    """Upload a reference clip (multipart) as voice `voice_id`."""
    library = _library(state)
    data = await file.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise ServiceError(413, "payload_too_large", oversize(len(data)))
    if not data:
        raise ServiceError(400, "invalid_voice", "the uploaded clip is empty")
    try:
        info = await library.add(
            voice_id, data, name=name or None, language=language or None, replace=replace
        )
    except (VoiceError, DatabaseUnavailableError) as e:
        raise voice_error(e) from e
    return info.to_dict()


# `:path`: ids with "/" stored before the id rules can still be read and removed
@router.get(VOICES_PATH + "/{voice_id:path}")
async def get_voice(voice_id: str, state: State) -> dict[str, Any]:
    library = _library(state)
    try:
        return (await library.get(voice_id)).to_dict()
    except (VoiceError, DatabaseUnavailableError) as e:
        raise voice_error(e) from e


@router.delete(VOICES_PATH + "/{voice_id:path}", status_code=204)
async def delete_voice(voice_id: str, state: State) -> Response:
    library = _library(state)
    try:
        await library.remove(voice_id)
    except (VoiceError, DatabaseUnavailableError) as e:
        raise voice_error(e) from e
    return Response(status_code=204)


def _library(state: ServiceState) -> VoiceLibrary:
    if state.voice_library is None:
        raise ServiceError(503, "warming_up", "the voice library is not started yet")
    return state.voice_library
