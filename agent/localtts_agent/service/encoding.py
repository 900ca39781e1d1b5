"""OpenAI's speech formats (mp3, opus, aac, flac, wav, pcm), encoded as the audio streams.

Every format but raw `pcm` goes through PyAV (FFmpeg's encoders and muxers): each block of
16-bit PCM is encoded and whatever the muxer releases leaves at once, so the first bytes of
any format follow the first audio by one codec frame (mp3 ~60 ms, aac ~85 ms, opus 20 ms).
The muxer writes to a sink that cannot seek, as an HTTP body cannot: a `wav` header then
says "length unknown" (0xFFFFFFFF) and readers take the samples up to the end of the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import av
import numpy as np


@dataclass(frozen=True)
class SpeechFormat:
    """One `response_format`: what the client is told it gets and how it is made."""

    name: str
    media_type: str
    container: str | None = None  # None: raw samples, no container
    codec: str | None = None
    bit_rate: int | None = None
    muxer_options: dict[str, str] = field(default_factory=dict)


SPEECH_FORMATS: dict[str, SpeechFormat] = {
    f.name: f
    for f in (
        SpeechFormat("mp3", "audio/mpeg", "mp3", "libmp3lame", 64_000),
        # Ogg pages flushed every 20 ms: the muxer's default (1 s) would hold the stream back
        SpeechFormat("opus", "audio/opus", "ogg", "libopus", 32_000, {"page_duration": "20000"}),
        SpeechFormat("aac", "audio/aac", "adts", "aac", 64_000),
        SpeechFormat("flac", "audio/flac", "flac", "flac"),
        # bitexact: the canonical 44-byte header, without FFmpeg's LIST/INFO chunk
        SpeechFormat("wav", "audio/wav", "wav", "pcm_s16le", None, {"fflags": "+bitexact"}),
        SpeechFormat("pcm", "audio/pcm"),
    )
}
DEFAULT_SPEECH_FORMAT = "mp3"  # what OpenAI answers when a request names no format
OPENAI_SAMPLE_RATE = 24_000  # OpenAI's speech is 24 kHz mono (its pcm: s16le); clients assume it


class _Sink:
    """Where the muxer writes; `take` hands over what it wrote so far. No `seek`: FFmpeg
    then treats it as the stream it is and never goes back to patch a header."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        self._buffer.extend(data)
        return len(data)

    def take(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


class StreamEncoder:
    """16-bit mono PCM in, `fmt`'s bytes out as the encoder releases them; `finish` flushes
    the encoder and the container's trailer. Cheap enough to run on the event loop: a
    20-200 ms frame of 24 kHz mono encodes in well under a millisecond."""

    def __init__(self, fmt: SpeechFormat, sample_rate: int) -> None:
        self.format = fmt
        self._sample_rate = sample_rate
        self._samples = 0
        self._sink = _Sink()
        self._container: av.container.OutputContainer | None = None
        if fmt.container is None:
            return
        self._container = av.open(
            self._sink, mode="w", format=fmt.container, options=dict(fmt.muxer_options)
        )
        self._stream = self._container.add_stream(fmt.codec, rate=sample_rate, layout="mono")
        if fmt.bit_rate is not None:
            self._stream.bit_rate = fmt.bit_rate

    def encode(self, pcm: bytes) -> bytes:
        if self._container is None:
            return pcm
        samples = np.frombuffer(pcm, dtype="<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = self._sample_rate
        frame.pts = self._samples
        self._samples += samples.shape[1]
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        return self._sink.take()

    def finish(self) -> bytes:
        if self._container is None:
            return b""
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self.close()
        return self._sink.take()

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
