"""LiveKit test helpers: a capturing audio output for a real AgentSession without a server."""

from __future__ import annotations

import asyncio

import numpy as np
from livekit import rtc
from livekit.agents.voice import io


class CapturingAudioOutput(io.AudioOutput):
    """An AgentSession audio sink that keeps every frame it is given (faster than real time)."""

    def __init__(self, *, sample_rate: int | None = None) -> None:
        super().__init__(
            label="capture",
            capabilities=io.AudioOutputCapabilities(pause=False),
            sample_rate=sample_rate,
        )
        self.frames: list[rtc.AudioFrame] = []
        self.segments = 0
        self._pushed = 0.0
        self.first_frame = asyncio.Event()

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        self.frames.append(frame)
        self._pushed += frame.duration
        self.first_frame.set()

    def flush(self) -> None:
        super().flush()
        self.segments += 1
        self.on_playback_finished(playback_position=self._pushed, interrupted=False)
        self._pushed = 0.0

    def clear_buffer(self) -> None:
        self.on_playback_finished(playback_position=self._pushed, interrupted=True)
        self._pushed = 0.0

    def samples(self) -> np.ndarray:
        """All captured audio as float32 mono in [-1, 1]."""
        return frames_to_float(self.frames)


def frames_to_float(frames: list[rtc.AudioFrame]) -> np.ndarray:
    if not frames:
        return np.zeros(0, dtype=np.float32)
    pcm = np.concatenate([np.frombuffer(bytes(f.data), dtype=np.int16) for f in frames])
    return pcm.astype(np.float32) / 32768.0


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
