"""Input that is not what it claims to be, at the service's boundary: unpaired surrogates
and control characters in text, NUL in ids and names, multipart fields that are not UTF-8,
a body that is not JSON, a WAV of random samples. Each gets a clear 4xx (or is cleaned), is
never echoed whole, changes nothing, and the next request works."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from livekit.plugins import localtts
from livekit.plugins.localtts.voices import VoiceLibrary

from .service_fixtures import running_app
from .test_voices import Speech

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def clip() -> bytes:
    return Speech().clip()


@pytest.fixture
async def client(
    piper_settings: localtts.Settings, piper_tts: localtts.TTS, library: VoiceLibrary
) -> Any:
    async with running_app(piper_settings, piper_tts, library) as (_, client):
        yield client


def pcm_seconds(data: bytes) -> float:
    return len(data) / 2 / 24_000


async def test_surrogates_and_controls_in_text_are_dropped_before_the_engine(client: Any) -> None:
    # JSON escapes that decode to lone surrogates: what a buggy client's encoder sends
    for raw in [
        b'{"input": "Hello \\ud800 world, and welcome.", "response_format": "pcm"}',
        b'{"input": "Hello world, and welcome. \\udfff", "response_format": "pcm"}',
        b'{"input": "Hello\\u0000 world,\\u001b and\\u0085 welcome.", "response_format": "pcm"}',
    ]:
        response = await client.post("/v1/audio/speech", content=raw, headers=JSON)
        assert response.status_code == 200, response.text[:500]
        assert pcm_seconds(response.content) > 1.0  # the words around them are spoken
    only = await client.post(
        "/v1/audio/speech", content=b'{"input": "\\ud800\\u0007"}', headers=JSON
    )
    assert only.status_code == 422 and "nothing to speak" in only.text
    # in names and ids (never cleaned, they must match exactly) they are refused
    for path, raw in [
        ("/v1/audio/speech", b'{"input": "Hi there.", "voice": "a\\ud800"}'),
        ("/api/tts/synthesize", b'{"text": "Hi there.", "room_name": "r\\ud800"}'),
        ("/api/tts/synthesize", b'{"text": "Hi there.", "room_name": "r", "voice_id": "\\udc00"}'),
    ]:
        response = await client.post(path, content=raw, headers=JSON)
        assert response.status_code == 422, (path, response.text[:500])
        assert "valid string" in response.json()["error"]["message"]


async def test_nul_in_voice_ids_and_names_is_a_400_that_changes_nothing(
    client: Any, clip: bytes
) -> None:
    for path in ["/api/voices/%00", "/api/voices/a%00b"]:
        response = await client.delete(path)
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error"]["code"] == "invalid_voice"
    named = await client.post(
        "/api/voices", data={"voice_id": "v", "name": "Ann\x00"}, files={"file": ("v.wav", clip)}
    )
    assert named.status_code == 400, named.text
    assert "cannot store" in named.json()["error"]["message"]
    assert (await client.get("/api/voices")).json() == {"voices": []}
    fine = await client.post(
        "/api/voices", data={"voice_id": "v", "name": "Ann"}, files={"file": ("v.wav", clip)}
    )
    assert fine.status_code == 201, fine.text


def multipart(fields: dict[str, bytes], clip: bytes) -> tuple[bytes, dict[str, str]]:
    """A multipart body with raw bytes as field values (httpx would encode str as UTF-8)."""
    boundary = b"----localtts-test-boundary"
    parts = [
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="' + name.encode()
        + b'"\r\n\r\n' + value + b"\r\n"
        for name, value in fields.items()
    ]  # fmt: skip
    parts.append(
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="c.wav"'
        b"\r\nContent-Type: audio/wav\r\n\r\n" + clip + b"\r\n"
    )
    body = b"".join(parts) + b"--" + boundary + b"--\r\n"
    return body, {"content-type": "multipart/form-data; boundary=" + boundary.decode()}


async def test_multipart_text_fields_must_be_utf8(client: Any, clip: bytes) -> None:
    body, headers = multipart({"voice_id": b"cafe", "name": "Café".encode("latin-1")}, clip)
    latin1 = await client.post("/api/voices", content=body, headers=headers)
    assert latin1.status_code == 400, latin1.text
    assert "'name' is not valid UTF-8" in latin1.json()["error"]["message"]
    assert (await client.get("/api/voices")).json() == {"voices": []}

    body, headers = multipart({"voice_id": "café".encode(), "name": "Café".encode()}, clip)
    utf8 = await client.post("/api/voices", content=body, headers=headers)
    assert utf8.status_code == 201, utf8.text
    stored = (await client.get("/api/voices/café")).json()
    assert stored["voice_id"] == "café" and stored["name"] == "Café"


async def test_a_body_that_is_not_json_is_told_to_be_json(client: Any) -> None:
    plain = await client.post(
        "/v1/audio/speech", content=b"Hello there", headers={"content-type": "text/plain"}
    )
    assert plain.status_code == 415, plain.text
    message = plain.json()["error"]["message"]
    assert "application/json" in message and "dictionary" not in message
    array = await client.post("/v1/audio/speech", content=b"[1, 2]", headers=JSON)
    assert array.status_code == 422
    assert "must be a JSON object" in array.json()["error"]["message"]
    metrics = (await client.get("/metrics")).text
    assert 'localtts_errors_total{kind="unsupported_media_type"} 1.0' in metrics


def wav(audio: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


async def test_random_samples_are_not_called_clipped_and_clipped_speech_still_is(
    client: Any,
) -> None:
    rng = np.random.default_rng(7)
    random_pcm = np.frombuffer(rng.bytes(2 * 16_000 * 6), "<i2").astype(np.float32) / 32768
    loud_noise = rng.standard_normal(16_000 * 6) * 0.5  # 4.6% of its samples at full scale
    for label, noise in [("random", random_pcm), ("gaussian", loud_noise)]:
        response = await client.post(
            "/api/voices", data={"voice_id": label}, files={"file": ("n.wav", wav(noise, 16_000))}
        )
        # (what noise is called instead is the clip rules' business: voices/audio.py)
        assert "clipped" not in response.text, (label, response.text)

    speech = Speech()
    loud = np.clip(speech.audio * 20, -1.0, 1.0)  # a recording made with far too much gain
    clipped = await client.post(
        "/api/voices",
        data={"voice_id": "loud"},
        files={"file": ("l.wav", wav(loud, speech.rate))},
    )
    assert clipped.status_code == 400 and "clipped" in clipped.json()["error"]["message"]
