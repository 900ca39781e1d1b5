"""GET /health and GET /metrics: open to probes, never behind the API key."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..state import State

router = APIRouter(tags=["service"])


@router.get("/health")
async def health(state: State) -> JSONResponse:
    """ready / warming / degraded, the engine and what it runs with, voices, database."""
    body = await state.health()
    usable = body["status"] != "warming" and state.engine_error is None
    return JSONResponse(body, status_code=200 if usable else 503)


@router.get("/metrics", response_class=Response)
async def metrics(state: State) -> Response:
    """Prometheus text format."""
    return Response(state.metrics.render(), media_type=METRICS_CONTENT_TYPE)
