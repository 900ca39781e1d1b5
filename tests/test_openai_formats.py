"""OpenAI conventions of POST /v1/audio/speech (issue 13, finding 13 and part of 8): every
OpenAI format (mp3 by default), encoded as the audio streams and decodable by FFmpeg
(PyAV), soundfile and Python's `wave`; X-Request-Id; unknown models refused; the official
`openai` SDK and LiveKit's `openai.TTS` at their defaults against a real running service."""

from __future__ import annotations

import io
import wave
from typing import Any

import av
import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
from livekit.plugins import localtts
from livekit.plugins.localtts.voices import VoiceLibrary

from localtts_agent.service.app import create_app
from localtts_agent.service.routers.speech import OPENAI_SAMPLE_RATE

from .livekit_helpers import frames_to_float, rms
from .test_service import pcm_audio, stream_long_speech, uvicorn_server

TEXT = "Hello there. How are you today?"


def decoded(data: bytes) -> tuple[np.ndarray, int]:
    """What FFmpeg makes of the bytes: float32 mono and its rate."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono")
        parts = [
            out.to_ndarray().reshape(-1)
            for frame in container.decode(stream)
            for out in resampler.resample(frame)
        ]
        return np.concatenate(parts), stream.rate


@pytest.fixture
async def service_url(
    piper_settings: localtts.Settings, piper_tts: localtts.TTS, library: VoiceLibrary
) -> Any:
    app = create_app(piper_settings, tts=piper_tts, voice_library=library)
    async with uvicorn_server(app) as url:
        await app.state.service.wait_started()
        yield url


@pytest.mark.parametrize(
    ("response_format", "media_type", "container"),
    [
        (None, "audio/mpeg", "mp3"),  # OpenAI's default when a request names none
        ("mp3", "audio/mpeg", "mp3"),
        ("opus", "audio/opus", "ogg"),
        ("aac", "audio/aac", "aac"),
        ("flac", "audio/flac", "flac"),
        ("wav", "audio/wav", "wav"),
    ],
)
async def test_every_openai_format_decodes_to_the_speech(
    service_url: str, response_format: str | None, media_type: str, container: str
) -> None:
    body: dict[str, Any] = {"model": "tts-1", "input": TEXT}
    if response_format is not None:
        body["response_format"] = response_format
    async with httpx.AsyncClient(base_url=service_url, timeout=60) as client:
        response = await client.post("/v1/audio/speech", json=body)
        reference = await client.post("/v1/audio/speech", json={**body, "response_format": "pcm"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == media_type
    with av.open(io.BytesIO(response.content)) as probe:
        assert container in probe.format.name.split(",")
    audio, rate = decoded(response.content)
    # opus decodes at 48 kHz by design; everything else at the rate /health names
    assert rate == (48_000 if response_format == "opus" else OPENAI_SAMPLE_RATE)
    expected_s = len(pcm_audio(reference.content)) / OPENAI_SAMPLE_RATE
    assert expected_s > 1.0
    # the same text, spoken twice (Piper samples noise): the same length within codec padding
    assert abs(len(audio) / rate - expected_s) < 0.25, (len(audio) / rate, expected_s)
    assert rms(audio) > 0.02


async def test_streamed_wav_reads_the_same_in_soundfile_ffmpeg_and_wave(
    service_url: str,
) -> None:
    async with httpx.AsyncClient(base_url=service_url, timeout=60) as client:
        response = await client.post(
            "/v1/audio/speech", json={"model": "tts-1", "input": TEXT, "response_format": "wav"}
        )
        health = (await client.get("/health")).json()
    data = response.content
    assert data[36:40] == b"data"  # the canonical 44-byte header, samples right after
    samples = pcm_audio(data[44:])
    from_sf, sf_rate = sf.read(io.BytesIO(data), dtype="float32")
    from_av, av_rate = decoded(data)
    with wave.open(io.BytesIO(data)) as w:
        wave_rate = w.getframerate()
        from_wave = pcm_audio(w.readframes(w.getnframes()))  # "unknown length": up to the end
    assert sf_rate == av_rate == wave_rate == OPENAI_SAMPLE_RATE
    assert len(from_sf) == len(from_av) == len(from_wave) == len(samples) > OPENAI_SAMPLE_RATE
    assert np.array_equal(from_wave, samples) and np.allclose(from_sf, samples, atol=1e-4)
    # /health names the rate this endpoint answers at, next to the engine's own
    assert health["speech_sample_rate"] == OPENAI_SAMPLE_RATE
    assert health["sample_rate"] == 22_050


@pytest.mark.parametrize("response_format", ["mp3", "opus"])
async def test_encoded_formats_stream_while_the_text_is_still_being_spoken(
    piper_settings: localtts.Settings,
    piper_tts: localtts.TTS,
    library: VoiceLibrary,
    response_format: str,
) -> None:
    speech = await stream_long_speech(piper_settings, piper_tts, library, response_format)
    # what had arrived before the last sentence began already decodes to seconds of speech
    audio, rate = decoded(speech.before_last_piece())
    assert len(audio) / rate > 1.0, len(audio) / rate
    whole, rate = decoded(speech.whole())
    assert len(whole) / rate > 8.0


async def test_request_id_and_unknown_model(service_url: str) -> None:
    async with httpx.AsyncClient(base_url=service_url, timeout=60) as client:
        ok = await client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hi."})
        mine = await client.get("/health", headers={"X-Request-Id": "trace-42"})
        odd = await client.get("/health", headers={"X-Request-Id": "a b\tc"})
        bad = await client.post("/v1/audio/speech", json={"model": "gpt-9", "input": "Hi."})
    assert ok.headers["x-request-id"].startswith("req_")
    assert mine.headers["x-request-id"] == "trace-42"  # a caller's own id is kept
    assert odd.headers["x-request-id"].startswith("req_")  # not a plain token: a new one
    assert bad.status_code == 400 and bad.headers["x-request-id"].startswith("req_")
    error = bad.json()["error"]
    assert error["code"] == "unknown_model"
    assert error["message"] == (
        "unknown model 'gpt-9': use tts-1, tts-1-hd, gpt-4o-mini-tts or 'piper' "
        "(each means the loaded engine, piper)"
    )


async def test_the_official_openai_sdk_at_its_defaults(service_url: str) -> None:
    client = openai.AsyncOpenAI(base_url=f"{service_url}/v1", api_key="unused", max_retries=0)
    async with client:
        response = await client.audio.speech.create(
            model="gpt-4o-mini-tts", voice="alloy", input=TEXT
        )
        assert response.response.headers["content-type"] == "audio/mpeg"
        assert response.response.headers["x-request-id"]
        audio, rate = decoded(response.content)
        assert rate == OPENAI_SAMPLE_RATE and len(audio) / rate > 1.0 and rms(audio) > 0.02
        with pytest.raises(openai.BadRequestError) as refused:
            await client.audio.speech.create(model="gpt-9", voice="alloy", input=TEXT)
    assert "unknown model 'gpt-9'" in refused.value.message


async def test_livekit_openai_tts_at_its_defaults(service_url: str) -> None:
    """LiveKit's OpenAI plugin with nothing but base_url and a key: gpt-4o-mini-tts, voice
    "ash", mp3 decoded by LiveKit itself; every utterance carries the service's request id."""
    from livekit.plugins import openai as lk_openai

    tts = lk_openai.TTS(base_url=f"{service_url}/v1", api_key="unused")
    events = []
    try:
        async with tts.synthesize("Hello from an OpenAI client.") as stream:
            async for event in stream:
                events.append(event)
    finally:
        await tts.aclose()
    frames = [e.frame for e in events]
    assert frames and all(f.sample_rate == OPENAI_SAMPLE_RATE for f in frames)
    assert {e.request_id for e in events} != {""}
    assert all(e.request_id.startswith("req_") for e in events)
    audio = frames_to_float(frames)
    assert len(audio) / OPENAI_SAMPLE_RATE > 1.0 and rms(audio) > 0.02
