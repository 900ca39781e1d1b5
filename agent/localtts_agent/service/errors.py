"""The service's errors: one JSON shape (OpenAI's) for every failure, the mapping from
the plugin's and the voice library's errors to statuses, and the app's exception handlers."""

from __future__ import annotations

import logging
import math
import unicodedata
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from livekit.agents import APIError, APIStatusError
from livekit.plugins.localtts.engines import (
    EngineUnavailableError,
    UnknownVoiceError,
    UnsupportedVoiceError,
    VoiceError,
)
from livekit.plugins.localtts.voices.errors import DatabaseUnavailableError, VoiceExistsError
from starlette.exceptions import HTTPException

from .metrics import ServiceMetrics

logger = logging.getLogger("localtts.service")

_DATABASE_RETRY_AFTER_S = "5"


class ServiceError(Exception):
    """An error meant for the client: status, a stable code and a readable message."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_body(status: int, code: str, message: str) -> dict[str, Any]:
    # OpenAI's error shape: its clients (and ours) read error.message
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "code": code}}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(status, code, message), status_code=status, headers=headers)


def voice_error(e: Exception) -> ServiceError:
    """Map a voice library / engine voice error to what the client should see."""
    if isinstance(e, UnknownVoiceError):
        return ServiceError(404, "unknown_voice", str(e))
    if isinstance(e, VoiceExistsError):
        return ServiceError(409, "voice_exists", f"{e}: send the form field replace=true")
    if isinstance(e, UnsupportedVoiceError):
        return ServiceError(400, "unsupported_voice", str(e))
    if isinstance(e, VoiceError):
        return ServiceError(400, "invalid_voice", str(e))
    if isinstance(e, DatabaseUnavailableError):
        # the watch notices a dead database within seconds and restarts an embedded one
        return ServiceError(
            503, "database_unavailable", str(e), headers={"Retry-After": _DATABASE_RETRY_AFTER_S}
        )
    raise e


def synthesis_error(e: Exception, engine_name: str) -> ServiceError:
    """Map an error raised while synthesizing (the plugin's APIError or a voice error)."""
    if isinstance(e, (VoiceError, DatabaseUnavailableError)):
        return voice_error(e)
    if isinstance(e, APIStatusError) and e.status_code == 404:
        return ServiceError(404, "unknown_voice", e.message)
    if isinstance(e, APIStatusError) and e.status_code == 503:  # the engine at capacity
        retry_after = (e.body or {}).get("retry_after_s", 1.0)
        return ServiceError(503, "engine_busy", e.message,
                            headers={"Retry-After": str(math.ceil(retry_after))})
    if isinstance(e, APIStatusError) and 400 <= e.status_code < 500:
        return ServiceError(400, "invalid_request", e.message)
    if isinstance(e, APIError):
        return ServiceError(
            500, "engine_error", f"the {engine_name} engine failed: {_bounded(e.message)}"
        )
    if isinstance(e, EngineUnavailableError):
        return ServiceError(503, "engine_unavailable", str(e))
    return ServiceError(500, "engine_error", f"the {engine_name} engine failed: {type(e).__name__}")


def install_error_handlers(app: FastAPI, metrics: ServiceMetrics) -> None:
    """Every error leaves as `error_response` JSON and is counted in `metrics`."""

    async def service_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        metrics.error(exc.code)
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    async def http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 400:  # FastAPI could not parse the body at all (not UTF-8...)
            metrics.error("malformed_body")
            return error_response(
                400,
                "malformed_body",
                f"the request body could not be parsed ({exc.detail}): send UTF-8 JSON, or "
                "multipart/form-data for uploads",
            )
        code = {
            404: "not_found",
            405: "method_not_allowed",
            408: "request_timeout",
            413: "payload_too_large",
        }.get(exc.status_code, "bad_request" if exc.status_code < 500 else "server_error")
        metrics.error(code)
        return error_response(exc.status_code, code, str(exc.detail), exc.headers)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        if any(_whole_body_not_an_object(error) for error in errors):
            content_type = request.headers.get("content-type", "none")
            if "json" not in content_type and "form" not in content_type:
                metrics.error("unsupported_media_type")
                return error_response(
                    415,
                    "unsupported_media_type",
                    f"the request body is {content_type[:60]}: send a JSON object with "
                    'Content-Type: application/json, e.g. {"input": "Hello"}',
                )
            metrics.error("invalid_request")
            return error_response(
                422,
                "invalid_request",
                'the request body must be a JSON object, e.g. {"input": "Hello"}',
            )
        for error in errors:
            if error.get("type") == "json_invalid":
                metrics.error("malformed_json")
                why = (error.get("ctx") or {}).get("error") or error.get("msg")
                return error_response(
                    400, "malformed_json", f"the request body is not valid JSON: {why}"
                )
        metrics.error("invalid_request")
        # the offending input is not echoed back: it may be 10,000 characters long
        return error_response(422, "invalid_request", _describe(errors))

    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        metrics.error("internal")
        logger.error("unhandled error", exc_info=exc)
        return error_response(500, "internal_error", "internal error (details in the log)")

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)


def _whole_body_not_an_object(error: Any) -> bool:
    return tuple(error.get("loc", ())) == ("body",) and error.get("type") in (
        "model_attributes_type",
        "dict_type",
    )


def _bounded(message: str, limit: int = 300) -> str:
    """A message that may quote the request's input (an engine's error), cut to `limit`."""
    return message if len(message) <= limit else message[:limit] + "... (cut)"


def _describe(errors: Any) -> str:
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        message = "".join(ch for ch in message if unicodedata.category(ch) != "Cc")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts) or "invalid request"
