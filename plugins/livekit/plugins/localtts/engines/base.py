"""The contract every speech engine fulfils, and that of whatever supplies its voices.

An engine knows nothing of LiveKit: it turns text into float32 mono audio chunks at its
native sample rate, in a worker thread, and stops when asked. The plugin (`tts.py`)
bridges those chunks onto the event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from ..settings import EngineSettings
    from .scheduler import EngineScheduler


class EngineError(Exception):
    """Base class of every error an engine raises on purpose."""


class EngineUnavailableError(EngineError):
    """The engine cannot run here: weights, a package or a device is missing.

    The message says what is missing and how to provide it.
    """


class InvalidRequestError(EngineError, ValueError):
    """The request cannot be served as asked (an unsupported language, a text piece too
    long for the model): the caller's input is wrong, not the engine."""


class KVCacheOverflowError(EngineError):
    """A decoding cache was too small for a request the engine accepted: the engine's fault
    (its limits are declared so this never happens), not the caller's."""


class VoiceError(EngineError):
    """A reference clip or voice cannot be used (corrupt, silent, too short, unknown...)."""


class UnknownVoiceError(VoiceError):
    """No voice with this id exists."""


class UnsupportedVoiceError(VoiceError):
    """The engine cannot speak with this voice (e.g. a cloned voice asked of Piper)."""


@dataclass(frozen=True)
class VoiceClip:
    """A validated reference recording: float32 mono in [-1, 1]."""

    voice_id: str
    audio: np.ndarray
    sample_rate: int
    language: str | None = None

    @property
    def duration(self) -> float:
        return len(self.audio) / float(self.sample_rate)


def reference_audio(clip: VoiceClip, *, min_seconds: float, engine: str) -> np.ndarray:
    """The clip's samples as float32 mono, after the checks every cloning engine needs
    (the voice library validates more: speech length, clipping, trimming)."""
    audio = np.asarray(clip.audio, dtype=np.float32).reshape(-1)
    if audio.size == 0 or not np.all(np.isfinite(audio)):
        raise VoiceError(f"voice {clip.voice_id!r}: reference audio is empty or has NaN/inf")
    if clip.duration < min_seconds:
        raise VoiceError(
            f"voice {clip.voice_id!r}: reference clip is {clip.duration:.2f} s; {engine} "
            f"needs at least {min_seconds} s"
        )
    if float(np.max(np.abs(audio))) < 1e-4:
        raise VoiceError(f"voice {clip.voice_id!r}: reference clip is silent")
    return audio


@dataclass(frozen=True)
class VoiceConditioning:
    """What an engine computed from a voice clip, ready to speak with.

    `data` is the engine's in-memory object (Chatterbox `Conditionals`, XTTS latents...);
    `Engine.dump_conditioning` / `Engine.load_conditioning` turn it into bytes and back so
    the voice library can persist it.
    """

    voice_id: str
    engine: str
    model_revision: str
    data: Any = field(repr=False, compare=False)


@dataclass(frozen=True)
class WordTiming:
    """When a word of the text an engine was given is spoken."""

    word: int  # index into `textcut.word_spans(text)`
    start_s: float  # seconds from the start of the audio `Engine.stream` yields for the text
    end_s: float


class TimedChunk(np.ndarray):
    """An audio chunk that also says which words start in it: what an engine that knows its
    word timings yields instead of a plain array. The samples are the same float32 array,
    so callers that ignore timings see no difference; arrays derived from a chunk (slices,
    arithmetic) carry no words. Every word of the text is in exactly one chunk, the one its
    audio starts in (or an earlier one)."""

    words: tuple[WordTiming, ...]

    @classmethod
    def of(cls, audio: np.ndarray, words: Sequence[WordTiming]) -> TimedChunk:
        chunk = np.asarray(audio, dtype=np.float32).view(cls)
        chunk.words = tuple(words)
        return chunk

    def __array_finalize__(self, obj: Any) -> None:
        self.words = ()


@dataclass(frozen=True)
class SynthesisParams:
    """Per-request knobs. `None` means "the engine's default"; engines ignore knobs
    they do not have (Piper has no temperature, XTTS no exaggeration)."""

    language: str | None = None
    speed: float = 1.0
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    exaggeration: float | None = None
    cfg_weight: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0.25 <= self.speed <= 4.0:
            raise ValueError(f"speed must be within [0.25, 4.0], got {self.speed}")


@dataclass(frozen=True)
class EngineInfo:
    """What an engine reports about itself (for /health, `localtts doctor`, benches).

    The fields every engine has are typed; `details` holds what only one engine knows
    (Chatterbox's compiled step, XTTS's int8 trunk...)."""

    engine: str
    sample_rate: int
    device: str
    dtype: str | None  # None: decided at load, not loaded yet
    model: str  # a directory, a repo id, a file name, or "injected"
    model_revision: str | None  # None: not known before load
    loaded: bool
    default_voice: str | None = None  # the voice spoken when a request names none
    optimizations: tuple[str, ...] = ()
    capacity: int | None = None  # streams kept at real time (None: not measured yet)
    details: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A flat JSON-ready dict: the common fields, then the engine's details."""
        common = {
            "engine": self.engine,
            "sample_rate": self.sample_rate,
            "device": self.device,
            "dtype": self.dtype,
            "model": self.model,
            "model_revision": self.model_revision,
            "loaded": self.loaded,
            "default_voice": self.default_voice,
            "optimizations": list(self.optimizations),
            "capacity": self.capacity,
        }
        return {**common, **self.details}


@runtime_checkable
class Engine(Protocol):
    """A loaded (or loadable) TTS model. One instance per process serves every stream.

    `stream` may be called from many threads at once; every model computation (load,
    warmup, conditioning, each stream's steps) runs on the engine's `scheduler` thread,
    which batches concurrent streams. `stream` returns promptly after `cancel` is set: at
    the latest one decoding step / one sentence later. Closing the generator `stream`
    returned releases whatever it holds at once.
    """

    name: str
    sample_rate: int
    supports_cloning: bool
    scheduler: EngineScheduler  # its thread, its batching, its capacity and admission

    @classmethod
    def from_settings(cls, settings: EngineSettings) -> Engine:
        """A new, not yet loaded engine as the settings say (device, dtype and threads as the
        host selection decided them, see `host.py`)."""
        ...

    @staticmethod
    def availability(settings: EngineSettings) -> str | None:
        """None when the engine can run with these settings, else why not (cheap: no load)."""
        ...

    @property
    def model_revision(self) -> str:
        """Identifies the weights; conditioning cached for another revision is stale."""
        ...

    @property
    def min_reference_seconds(self) -> float | None:
        """The shortest reference clip `condition` accepts (None: the engine cannot clone)."""
        ...

    @property
    def max_reference_seconds(self) -> float | None:
        """How much of a reference clip `condition` reads; the voice library hands it no
        more (None: all of it, or the engine cannot clone)."""
        ...

    def max_piece_chars(self, language: str | None) -> int | None:
        """The longest text the engine speaks as one run in `language` (None: no limit). The
        plugin's splitter cuts pieces to it, so the engine never has to split text itself."""
        ...

    def load(self) -> None:
        """Load weights, choose dtype, compile. Idempotent and thread-safe."""
        ...

    def warmup(self) -> None:
        """Run a short synthesis so no request pays compilation or cache setup. A warmup that
        failed is tried again by the next call."""
        ...

    def set_default_voice(self, voice: VoiceConditioning | None) -> None:
        """The voice spoken when `stream` gets voice=None (None: no default voice)."""
        ...

    def condition(self, clip: VoiceClip) -> VoiceConditioning:
        """Compute the voice conditioning for a reference clip (cloning engines only)."""
        ...

    def dump_conditioning(self, conditioning: VoiceConditioning) -> bytes: ...

    def load_conditioning(self, voice_id: str, data: bytes) -> VoiceConditioning: ...

    def stream(
        self,
        text: str,
        voice: VoiceConditioning | None,
        params: SynthesisParams,
        cancel: threading.Event,
    ) -> Iterator[np.ndarray]:
        """Yield float32 mono chunks at `sample_rate` as soon as each exists.

        `voice=None` speaks with the engine's default voice. An engine that knows when each
        word of `text` is spoken yields `TimedChunk`s (the plugin turns them into aligned
        transcripts); one that does not, plain arrays (the plugin estimates the times).
        """
        ...

    def info(self) -> EngineInfo:
        """Device, dtype, optimizations active, model revision: for /health and doctor."""
        ...


class VoiceSource(Protocol):
    """Whatever hands the plugin a voice's conditioning: `voices.VoiceLibrary`, or a proxy
    of one running on another event loop (the agent worker's)."""

    async def conditioning(self, voice_id: str, engine: Engine) -> VoiceConditioning:
        """The conditioning of `voice_id` for `engine`; UnknownVoiceError when there is none,
        UnsupportedVoiceError when the engine cannot speak it."""
        ...
