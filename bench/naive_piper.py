"""The naive Piper plugin people write first (about 30 lines): a non-streaming LiveKit TTS
around `PiperVoice.synthesize`, streamed through LiveKit's `StreamAdapter`, which speaks
sentence by sentence (blingfire). The reference the first-audio bench compares with."""

from __future__ import annotations

import asyncio
from pathlib import Path

from livekit.agents import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions, tts, utils


class NaivePiperTTS(tts.TTS):
    def __init__(self, model_path: Path, config_path: Path) -> None:
        from piper import PiperVoice

        self.voice = PiperVoice.load(model_path, config_path)
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False),
            sample_rate=self.voice.config.sample_rate,
            num_channels=1,
        )

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return _NaiveChunkedStream(tts=self, input_text=text, conn_options=conn_options)


class _NaiveChunkedStream(tts.ChunkedStream):
    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        voice, loop = self._tts.voice, asyncio.get_running_loop()  # type: ignore[attr-defined]
        output_emitter.initialize(
            request_id=utils.shortuuid(), sample_rate=voice.config.sample_rate,
            num_channels=1, mime_type="audio/pcm",
        )  # fmt: skip
        audio: asyncio.Queue[bytes | None] = asyncio.Queue()

        def work() -> None:  # Piper yields one chunk per sentence, pushed as it comes
            for chunk in voice.synthesize(self._input_text):
                loop.call_soon_threadsafe(audio.put_nowait, chunk.audio_int16_bytes)
            loop.call_soon_threadsafe(audio.put_nowait, None)

        done = loop.run_in_executor(None, work)
        while (data := await audio.get()) is not None:
            output_emitter.push(data)
        await done
        output_emitter.flush()


def naive_stream_adapter(model_path: Path, config_path: Path) -> tts.StreamAdapter:
    return tts.StreamAdapter(tts=NaivePiperTTS(model_path, config_path))
