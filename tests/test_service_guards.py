"""The service's guards at their exact edges: the bearer token (service/auth.py) and the body
size limits (service/middleware.py), on the real app over the real Piper voice.

No request here synthesizes: each is answered by a guard or by validation, so the edges
(one byte over, one character off) cost nothing to check.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from livekit.plugins import localtts
from livekit.plugins.localtts.voices.audio import CLIP_RULES

from localtts_agent.service.app import create_app
from localtts_agent.service.middleware import BodyLimits
from localtts_agent.service.models import MAX_JSON_BODY_BYTES, MAX_UPLOAD_BYTES, body_limit
from localtts_agent.settings import ServiceSettings

from .service_fixtures import running_app

TOKEN = "s3cret-token"
UNAUTHORIZED = {
    "error": {
        "message": "missing or wrong bearer token: send 'Authorization: Bearer <LOCALTTS_API_KEY>'",
        "type": "invalid_request_error",
        "code": "unauthorized",
    }
}


@pytest.fixture
async def guarded(
    piper_settings: localtts.Settings, piper_tts: localtts.TTS
) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    service_settings = ServiceSettings(_env_file=None, api_key=TOKEN)  # type: ignore[call-arg]
    async with running_app(
        piper_settings, piper_tts, None, service_settings=service_settings
    ) as app_client:
        yield app_client


async def test_only_the_exact_token_passes(guarded: tuple[Any, httpx.AsyncClient]) -> None:
    _, client = guarded
    empty = {"model": "tts-1", "input": ""}  # valid token: validation answers 422, no speech
    for given in ("", "Bearer", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}",
                  f"Bearer {TOKEN.upper()}", TOKEN):  # fmt: skip
        response = await client.post(
            "/v1/audio/speech", json=empty, headers={"Authorization": given} if given else {}
        )
        assert response.status_code == 401, given
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json() == UNAUTHORIZED
    for scheme in ("Bearer", "bearer"):  # the scheme is case-insensitive (RFC 7235)
        response = await client.post(
            "/v1/audio/speech", json=empty, headers={"Authorization": f"{scheme} {TOKEN}"}
        )
        assert response.status_code == 422, scheme


@pytest.mark.parametrize("api_key", [None, ""], ids=["unset", "empty"])
async def test_without_a_key_the_service_is_open(
    piper_settings: localtts.Settings, piper_tts: localtts.TTS, api_key: str | None
) -> None:
    """LOCALTTS_API_KEY unset or set to nothing (`LOCALTTS_API_KEY=` in a .env): no token."""
    service_settings = ServiceSettings(_env_file=None, api_key=api_key)  # type: ignore[call-arg]
    async with running_app(piper_settings, piper_tts, None, service_settings=service_settings) as (
        _,
        client,
    ):
        response = await client.post("/v1/audio/speech", json={"model": "tts-1", "input": ""})
        assert response.status_code == 422


def _json_body(size: int) -> bytes:
    """A speech request of exactly `size` bytes (its text far over the text limit: a body
    the size guard lets through is rejected by validation instead, 422)."""
    head, tail = b'{"model": "tts-1", "input": "', b'"}'
    return head + b"a" * (size - len(head) - len(tail)) + tail


async def test_json_bodies_up_to_the_limit_pass_one_byte_more_does_not(
    guarded: tuple[Any, httpx.AsyncClient],
) -> None:
    _, client = guarded
    auth = {"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    limit, message = body_limit("/v1/audio/speech")
    assert limit == MAX_JSON_BODY_BYTES == 256 * 1024
    assert message == "request body exceeds 256 KiB"
    too_large = {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "code": "payload_too_large",
        }
    }

    async def chunked(body: bytes) -> AsyncIterator[bytes]:  # no Content-Length
        for i in range(0, len(body), 10_000):
            yield body[i : i + 10_000]

    for send in (lambda b: b, chunked):  # declared up front, or counted as it arrives
        at_limit = await client.post("/v1/audio/speech", content=send(_json_body(limit)),
                                     headers=auth)  # fmt: skip
        assert at_limit.status_code == 422, at_limit.text[:200]
        over = await client.post("/v1/audio/speech", content=send(_json_body(limit + 1)),
                                 headers=auth)  # fmt: skip
        assert over.status_code == 413 and over.json() == too_large


async def test_a_false_content_length_is_still_counted(
    guarded: tuple[Any, httpx.AsyncClient],
) -> None:
    """A client that declares a small (or unreadable) length and sends more is cut off by the
    count, not trusted: the ASGI app is called directly to send what no httpx would."""
    app, _ = guarded
    limit, _message = body_limit("/v1/audio/speech")
    body = _json_body(limit + 1)
    for declared in (b"10", b"not-a-number"):
        sent: list[dict[str, Any]] = []
        chunks = [body[: limit // 2], body[limit // 2 :]]

        async def receive(chunks: list[bytes] = chunks) -> dict[str, Any]:
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

        async def send(message: dict[str, Any], sent: list[dict[str, Any]] = sent) -> None:
            sent.append(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": "/v1/audio/speech",
            "raw_path": b"/v1/audio/speech", "root_path": "", "query_string": b"",
            "headers": [(b"host", b"service"), (b"content-type", b"application/json"),
                        (b"content-length", declared),
                        (b"authorization", f"Bearer {TOKEN}".encode())],
            "client": ("127.0.0.1", 1), "server": ("service", 80), "state": {},
        }  # fmt: skip
        await app(scope, receive, send)
        assert sent[0]["type"] == "http.response.start"
        assert sent[0]["status"] == 413, declared


async def test_voice_uploads_have_their_own_larger_limit(
    guarded: tuple[Any, httpx.AsyncClient],
) -> None:
    _, client = guarded
    voices, message = body_limit("/api/voices")
    assert (voices, message) == body_limit("/api/voices/")
    assert voices == MAX_UPLOAD_BYTES + 64 * 1024
    assert message == f"the upload is over the 20 MiB limit. {CLIP_RULES}"
    assert voices > MAX_JSON_BODY_BYTES
    auth = {"Authorization": f"Bearer {TOKEN}", "content-type": "application/octet-stream"}
    # the size guard answers before the token is even looked at, and before anything is read
    over = await client.post("/api/voices", content=b"\0" * (voices + 1), headers=auth)
    assert over.status_code == 413
    assert over.json()["error"]["message"] == message
    # a body that large is no problem for the voices path, only for the JSON ones
    at_limit = await client.post("/api/voices", content=b"\0" * voices, headers=auth)
    assert at_limit.status_code == 422  # not a form: validation, not the size guard
    json_over = await client.post("/v1/audio/speech", content=b"\0" * voices, headers=auth)
    assert json_over.status_code == 413


async def test_lifespan_events_pass_through_the_size_guard(
    piper_settings: localtts.Settings, piper_tts: localtts.TTS
) -> None:
    """The guard bounds HTTP bodies only: a server's lifespan messages (uvicorn's start and
    stop) reach the app as they are, through the ASGI interface a server uses."""
    app = create_app(
        piper_settings,
        service_settings=ServiceSettings(_env_file=None, api_key=None),  # type: ignore[call-arg]
        tts=piper_tts,
    )
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])

    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    await app(scope, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


@pytest.mark.parametrize(
    "last_body_message",
    [
        {"type": "http.request", "body": b"{}", "more_body": False},
        {"type": "http.request", "body": b"{}"},  # ASGI: more_body absent means False
    ],
    ids=["more_body_false", "more_body_absent"],
)
async def test_after_the_whole_body_the_app_waits_for_the_disconnect_without_a_timeout(
    last_body_message: dict[str, Any],
) -> None:
    """The read timeout bounds a stalled body only. Once the body is whole, the app's next
    `receive` waits for the client to go (a streamed reply listens for that while it plays,
    for as long as it plays), through the ASGI interface a server uses."""
    disconnect = {"type": "http.disconnect"}
    incoming = [last_body_message, disconnect]
    seen: list[dict[str, Any]] = []
    refused: list[str] = []

    async def receive() -> dict[str, Any]:
        if not seen:
            return incoming.pop(0)
        await asyncio.sleep(0.3)  # the client listens for 6x the read timeout, then leaves
        return incoming.pop(0)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(await receive())
        seen.append(await receive())

    guard = BodyLimits(
        app, limit_for=lambda path: (100, "too large"), read_timeout_s=0.05,
        on_refused=refused.append,
    )
    scope = {"type": "http", "path": "/v1/audio/speech", "headers": [(b"content-length", b"2")]}
    await guard(scope, receive, lambda message: asyncio.sleep(0))
    assert seen == [last_body_message, disconnect] and refused == []
