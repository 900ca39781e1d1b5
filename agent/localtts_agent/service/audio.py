"""The plugin's audio as the routes send it: frames as synthesis makes them, resampled
when asked, a WAV header for a stream of unknown length, a response that stops synthesis
when it ends."""

from __future__ import annotations

import struct
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse
from livekit import rtc
from livekit.agents import APIConnectOptions
from livekit.plugins import localtts
from starlette.types import Receive, Scope, Send

# a busy engine is the client's to retry (503 + Retry-After), not the plugin's: LiveKit's
# default retries would hold the request for several of the engine's waits first
_NO_RETRY = APIConnectOptions(max_retry=0)


async def synthesis_frames(tts: localtts.TTS, text: str) -> AsyncGenerator[rtc.AudioFrame, None]:
    """The plugin's audio for `text`, frame by frame, as the engine produces it."""
    try:
        async with tts.synthesize(text, conn_options=_NO_RETRY) as stream:
            async for event in stream:
                yield event.frame
    finally:
        await tts.aclose()


def resampled(
    frames: AsyncIterator[rtc.AudioFrame], input_rate: int, output_rate: int
) -> AsyncIterator[rtc.AudioFrame]:
    if input_rate == output_rate:
        return frames

    async def resample() -> AsyncIterator[rtc.AudioFrame]:
        resampler = rtc.AudioResampler(
            input_rate, output_rate, quality=rtc.AudioResamplerQuality.MEDIUM
        )
        try:
            async for frame in frames:
                for out in resampler.push(frame):
                    yield out
            for out in resampler.flush():
                yield out
        finally:
            await frames.aclose()  # type: ignore[attr-defined]

    return resample()


def streaming_wav_header(sample_rate: int, *, channels: int = 1, bits: int = 16) -> bytes:
    """A WAV header whose sizes say "unknown" (0xFFFFFFFF): the length of a streamed
    reply is not known when its first bytes leave; players read until the stream ends."""
    unknown = 0xFFFFFFFF
    block_align = channels * bits // 8
    return (
        b"RIFF"
        + struct.pack("<I", unknown)
        + b"WAVEfmt "
        + struct.pack(
            "<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * block_align, block_align, bits
        )
        + b"data"
        + struct.pack("<I", unknown)
    )


class AudioStreamResponse(StreamingResponse):
    """Closes its body and the synthesis behind it when the response ends however it ends
    (client gone included, even before the first byte), so the engine is told to stop at
    once instead of when a generator is garbage-collected."""

    def __init__(
        self, content: AsyncIterator[bytes], *, close: Callable[[], Any], **kwargs: Any
    ) -> None:
        super().__init__(content, **kwargs)
        self._close = close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]
            await self._close()

