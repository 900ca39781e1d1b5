"""A real engine with a log of what it was asked and what it produced, when.

`RecordingEngine(inner)` passes every call through to `inner` (the real Piper engine in
these tests) and notes each `stream` call as a `Call`: its text, when it started and
finished, every chunk's time and length, and the word timings an engine gave with its
chunks; with `keep_audio=True` also the chunks themselves, which is exactly what the engine
produced for a request (Piper's VITS samples noise, so a second synthesis of the same text
is not the same audio).

All times are `time.monotonic()`, the clock `RoomListener` stamps arrivals with.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from livekit.plugins.localtts.engines import (
    Engine,
    SynthesisParams,
    VoiceConditioning,
    WordTiming,
)


@dataclass(eq=False)
class Call:
    text: str
    started: float
    finished: float | None = None
    cancelled: bool = False
    chunk_times: list[float] = field(default_factory=list)  # when each chunk was yielded
    chunk_samples: list[int] = field(default_factory=list)
    audio: list[np.ndarray] = field(default_factory=list)  # with keep_audio only
    words: list[WordTiming] = field(default_factory=list)  # the engine's word timings, if any

    def samples(self) -> np.ndarray:
        """The audio this call produced (keep_audio), float32 at the engine's rate."""
        if not self.audio:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(self.audio)


@dataclass(eq=False)  # hashed by identity, as engines are
class RecordingEngine:
    """The real engine, with a log of each piece it spoke (see the module docstring)."""

    inner: Engine
    keep_audio: bool = False
    calls: list[Call] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def stream(
        self,
        text: str,
        voice: VoiceConditioning | None,
        params: SynthesisParams,
        cancel: threading.Event,
    ) -> Iterator[np.ndarray]:
        call = Call(text=text, started=time.monotonic())
        self.calls.append(call)
        try:
            for chunk in self.inner.stream(text, voice, params, cancel):
                call.chunk_times.append(time.monotonic())
                call.chunk_samples.append(int(chunk.size))
                if self.keep_audio:
                    call.audio.append(chunk.copy())
                call.words += getattr(chunk, "words", ())  # a TimedChunk's
                yield chunk
        finally:
            call.finished = time.monotonic()
            call.cancelled = cancel.is_set()

    def calls_for(self, text: str) -> list[Call]:
        """The calls that spoke pieces of `text` (the plugin splits a text into pieces)."""
        return [c for c in self.calls if c.text.strip() and c.text.strip() in text]

    def produced(self, text: str) -> np.ndarray:
        """Everything the engine produced for `text`, in order (keep_audio)."""
        calls = sorted(self.calls_for(text), key=lambda c: c.started)
        parts = [c.samples() for c in calls]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
