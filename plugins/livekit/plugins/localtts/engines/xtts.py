"""XTTS-v2 (coqui-tts) on the CPU: cached voice latents, a small first chunk, int8 option.

Why not coqui's `inference_stream`: it waits for 20 tokens before any audio and re-decodes
every latent so far through HiFiGAN for each chunk (quadratic). This engine runs its own
decoding loop over the GPT-2 trunk (KV cache per stream, cancellation between tokens;
`xtts_decode`), emits a first chunk after `first_chunk_tokens`, and vocodes each chunk over a
sliding window (`xtts_vocoder`). All model work runs on the engine's scheduler thread, which
decodes every active stream's next token in one batched step (`scheduler`, `xtts_stream`).

The device is the one the host selection gave (host.py: the CPU on every non-CUDA host,
never MPS). Text arrives split by the plugin to `max_piece_chars`; a piece is cut here only
when a direct caller hands more than the model takes. Default voice: the first speaker of
coqui's `speakers_xtts.pth` when the checkpoint ships one (or `default_speaker`), else
whatever `set_default_voice` was given; without either, `voice=None` is a `VoiceError` (XTTS
always needs a reference voice).
"""

from __future__ import annotations

import copy
import importlib.util
import io
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..host import concrete_settings
from ..settings import EngineSettings
from ..textcut import cut_long
from .base import (
    EngineInfo,
    EngineUnavailableError,
    InvalidRequestError,
    SynthesisParams,
    VoiceClip,
    VoiceConditioning,
    VoiceError,
    reference_audio,
)
from .scheduler import EngineScheduler, capacity_probes
from .weights import (
    DIGEST_CACHE_FILE,
    WeightsSpec,
    local_checkpoint,
    missing_files,
    resolve_weights,
    weights_problem,
    weights_revision,
)
from .xtts_decode import Sampling, quantize_gpt_int8
from .xtts_stream import VoicePrefixes, XTTSStreamWork, decode_batch, prefill_batch
from .xtts_vocoder import (
    channels_last_2d,
    cpu_has_fast_bf16,
    cpu_is_x86,
    fold_weight_norm,
    window_lengths,
)

logger = logging.getLogger("livekit.plugins.localtts.xtts")

SPEAKERS_FILE = "speakers_xtts.pth"
WEIGHTS = WeightsSpec(
    label="XTTS",
    env_var="LOCALTTS_XTTS_MODEL",
    required=("config.json", "model.pth", "vocab.json"),
    optional=(SPEAKERS_FILE,),
)
COQUI_MODEL_NAME = "tts_models--multilingual--multi-dataset--xtts_v2"
_COQUI_ALIASES = {"coqui/xtts-v2", "tts_models/multilingual/multi-dataset/xtts_v2", "xtts_v2"}
_CONDITIONING_FORMAT = 1
_MIN_REFERENCE_SECONDS = 0.5
_DEFAULT_CHAR_LIMIT = 250  # coqui's VoiceBpeTokenizer, for a language it has no limit for
TOKENS_PER_SECOND = 21.5  # GPT tokens per second of audio (real time)


@dataclass(frozen=True)
class XTTSLatents:
    """A voice for XTTS: GPT conditioning latents [1, 32, d] and speaker embedding [1, 512, 1]."""

    gpt_cond_latent: Any
    speaker_embedding: Any


def _coqui_download(model: str) -> Path | None:
    """Where coqui's `TTS` downloader put XTTS-v2 (TTS_HOME / XDG_DATA_HOME aware), when
    `model` names it and the files are there."""
    if model.lower() not in _COQUI_ALIASES:
        return None
    from trainer.io import get_user_data_dir

    directory = Path(get_user_data_dir("tts")) / COQUI_MODEL_NAME
    complete = directory.is_dir() and not missing_files(directory, WEIGHTS.required)
    return directory if complete else None


def resolve_checkpoint_dir(model: str, *, allow_download: bool = False) -> Path:
    """A directory holding config.json, model.pth and vocab.json for `model` (a local
    directory or a Hugging Face repo id; coqui's own download for its XTTS-v2 names); looks
    only in local caches unless allowed to download. EngineUnavailableError names what is
    missing."""
    return _coqui_download(model) or resolve_weights(
        WEIGHTS, model, allow_download=allow_download
    )


def _base_language(language: str | None) -> str:
    """"pt-BR" -> "pt": XTTS's languages and limits are per base language."""
    return (language or "en").strip().lower().replace("_", "-").split("-")[0]


def fit_text(
    text: str, *, max_chars: int, token_count: Callable[[str], int], max_tokens: int
) -> list[str]:
    """`text` cut to at most `max_chars` (clause ends, else spaces), then any piece of
    `max_tokens` tokens or more halved until it fits; text within both limits stays whole."""
    out: list[str] = []
    stack = list(reversed(cut_long(text.strip(), max(20, max_chars))))
    while stack:
        piece = stack.pop()
        if len(piece) < 2 or token_count(piece) < max_tokens:
            out.append(piece)
            continue
        mid = len(piece) // 2
        cut = piece.rfind(" ", 0, mid + 1)
        cut = cut if cut > 0 else mid
        stack += [piece[cut:].strip(), piece[:cut].strip()]
    return [p for p in out if p]


class XTTSEngine:
    name = "xtts"
    sample_rate = 24000
    supports_cloning = True

    def __init__(
        self,
        *,
        checkpoint_dir: Path | None = None,
        model: Any = None,
        device: str = "cpu",
        int8: bool | None = False,
        vocoder_bf16: bool | None = False,
        vocoder_channels_last: bool | None = False,
        first_chunk_tokens: int = 4,
        chunk_tokens: int = 24,
        chunk_growth: float = 1.5,
        context_frames: int = 16,
        lookahead_frames: int = 6,
        crossfade_frames: int = 3,
        vocoder_window_step: int = 16,
        max_tokens: int | None = None,
        default_speaker: str | None = None,
        model_revision: str | None = None,
        digest_cache: Path | None = None,
        scheduler: EngineScheduler | None = None,
    ) -> None:
        """`device` is taken as given ("cpu", "cuda"): choosing it is the host selection's
        job (host.py). `digest_cache`: where the weights' content digests are remembered
        (engines/weights.py). `scheduler`: how streams share the model (default: batched,
        capacity measured at warmup)."""
        if (checkpoint_dir is None) == (model is None):
            raise ValueError("give exactly one of checkpoint_dir or model")
        if checkpoint_dir is not None:
            checkpoint_dir = local_checkpoint(WEIGHTS, Path(checkpoint_dir))
        if device == "auto":
            raise ValueError('device "auto" is decided by the host selection: pass cpu or cuda')
        if first_chunk_tokens < 1 or chunk_tokens < first_chunk_tokens or chunk_growth < 1.0:
            raise ValueError("need 1 <= first_chunk_tokens <= chunk_tokens and chunk_growth >= 1")
        if not 0 <= crossfade_frames <= lookahead_frames:
            raise ValueError("need 0 <= crossfade_frames <= lookahead_frames")
        self.checkpoint_dir = checkpoint_dir
        self._model: Any = model
        self.device = device
        # None = decided at load for the device (see load)
        self.int8 = int8
        self.vocoder_bf16 = vocoder_bf16
        self.vocoder_channels_last = vocoder_channels_last
        self.first_chunk_tokens = first_chunk_tokens
        self.chunk_tokens = chunk_tokens
        self.chunk_growth = chunk_growth
        self.context_frames = context_frames
        self.lookahead_frames = lookahead_frames
        self.crossfade_frames = crossfade_frames
        self.vocoder_window_step = vocoder_window_step
        self.max_tokens = max_tokens
        self.default_speaker = default_speaker
        self._revision = model_revision
        self._digest_cache = digest_cache
        self.default_voice: VoiceConditioning | None = None
        self._loaded = False
        self._warmed = False
        self._optimizations: list[str] = []
        # One engine serves every stream of the process, all of its model work on this
        # scheduler's thread (loading and conditioning too): streams share it by batching
        self.scheduler = scheduler or EngineScheduler(self.name)
        self.scheduler.decode_batch = lambda works: decode_batch(self, works)
        self.scheduler.prefill_batch = lambda works: prefill_batch(self, works)
        self.voice_prefixes = VoicePrefixes(self)
        self._warm_voice: XTTSLatents | None = None
        self._vocoder_decoder: Any = None  # see waveform_decoder

    # -- construction ------------------------------------------------------------------

    @classmethod
    def from_model(cls, model: Any, **kwargs: Any) -> XTTSEngine:
        """An engine over an already built `Xtts` (tests and benches inject tiny ones)."""
        return cls(model=model, **kwargs)

    @classmethod
    def from_settings(cls, settings: EngineSettings) -> XTTSEngine:
        settings = concrete_settings("xtts", settings)
        directory = resolve_checkpoint_dir(
            settings.xtts_model, allow_download=settings.allow_download
        )
        return cls(
            checkpoint_dir=directory,
            device=settings.device,
            int8=settings.xtts_int8,
            vocoder_bf16=settings.xtts_vocoder_bf16,
            vocoder_channels_last=settings.xtts_vocoder_channels_last,
            digest_cache=settings.data_dir / DIGEST_CACHE_FILE,
            scheduler=EngineScheduler.from_settings("xtts", settings),
            **(
                {"first_chunk_tokens": settings.first_chunk_tokens}
                if settings.first_chunk_tokens is not None
                else {}
            ),
        )

    @staticmethod
    def availability(settings: EngineSettings) -> str | None:
        for module, package in (("TTS", "coqui-tts"), ("torch", "torch")):
            if importlib.util.find_spec(module) is None:
                return f"{package} is not installed: pip install 'localtts[xtts]'"
        model = settings.xtts_model
        if _coqui_download(model) is not None:
            return None
        return weights_problem(WEIGHTS, model, allow_download=settings.allow_download)

    @property
    def model_revision(self) -> str:
        if self._revision is None:
            if self.checkpoint_dir is not None:
                self._revision = weights_revision(
                    WEIGHTS, self.checkpoint_dir, digest_cache=self._digest_cache
                )
            else:
                self._revision = f"injected-{id(self._model):x}"
        return self._revision

    # -- limits --------------------------------------------------------------------------

    min_reference_seconds = _MIN_REFERENCE_SECONDS

    @property
    def max_reference_seconds(self) -> float | None:
        """coqui's `max_ref_len`: `condition` reads no more (unknown before the model is)."""
        return float(self._model.config.max_ref_len) if self._model is not None else None

    def max_piece_chars(self, language: str | None) -> int | None:
        """coqui's character limit for the language (unknown before the model is loaded)."""
        if self._model is None:
            return None
        limits = self._model.tokenizer.char_limits
        return int(limits.get(_base_language(language), _DEFAULT_CHAR_LIMIT))

    # -- loading -----------------------------------------------------------------------

    def load(self) -> None:
        """Load, then warm up: the first request pays neither."""
        self.warmup()

    def _load(self) -> None:
        if self._model is None:
            self._model = self._load_checkpoint()
        model = self._model.to(self.device)
        model.eval()  # Xtts.eval() returns None
        optimizations = ["own decode loop (KV cache)", "sliding-window HiFiGAN", "inference_mode",
                         "voice latents' KV cached per voice", "prompts prefilled together"]
        if fold_weight_norm(model.hifigan_decoder.waveform_decoder):
            optimizations.append("HiFiGAN weight_norm folded")
        if self.int8 is None:  # auto: the trunk is bandwidth-bound at batch 1 on a CPU
            self.int8 = self.device == "cpu"
        if self.vocoder_bf16 is None:  # auto: where the CPU has native bf16 (AMX/AVX512)
            self.vocoder_bf16 = self.device == "cpu" and cpu_has_fast_bf16()
        if self.vocoder_bf16:
            if self.device != "cpu":
                raise EngineUnavailableError("the bf16 vocoder is a CPU option")
            optimizations.append("bf16 HiFiGAN (a bf16 copy)")
        if self.vocoder_channels_last is None:  # auto: where it was measured to pay
            self.vocoder_channels_last = self.device == "cpu" and cpu_is_x86()
        if self.vocoder_channels_last:
            optimizations.append("HiFiGAN as channels-last 2-D convolutions")
        if self.int8:
            if self.device != "cpu":
                raise EngineUnavailableError("int8 XTTS is a CPU option; use fp32 on CUDA")
            quantize_gpt_int8(model)
            optimizations.append("int8 dynamic GPT")
        self._optimizations = optimizations
        self._load_default_speaker()

    def _load_checkpoint(self) -> Any:
        assert self.checkpoint_dir is not None
        try:
            from TTS.tts.configs.xtts_config import XttsConfig
            from TTS.tts.models.xtts import Xtts
        except ImportError as e:
            raise EngineUnavailableError(
                f"coqui-tts is not importable: pip install 'localtts[xtts]' ({e})"
            ) from e
        config = XttsConfig()
        try:
            config.load_json(str(self.checkpoint_dir / "config.json"))
            model = Xtts(config)
            model.load_checkpoint(config, checkpoint_dir=str(self.checkpoint_dir), eval=True)
        except Exception as e:
            raise EngineUnavailableError(
                f"could not load XTTS from {self.checkpoint_dir}: {type(e).__name__}: {e}"
            ) from e
        return model

    def _load_default_speaker(self) -> None:
        manager = getattr(self._model, "speaker_manager", None)
        speakers = getattr(manager, "speakers", None) or {}
        if not speakers:
            if self.default_speaker:
                raise EngineUnavailableError(
                    f"default speaker {self.default_speaker!r} asked for, but the checkpoint "
                    f"has no {SPEAKERS_FILE}"
                )
            return
        name = self.default_speaker or next(iter(speakers))
        if name not in speakers:
            raise EngineUnavailableError(f"speaker {name!r} is not in {SPEAKERS_FILE}")
        entry = speakers[name]
        latents = XTTSLatents(
            entry["gpt_cond_latent"].to(self.device), entry["speaker_embedding"].to(self.device)
        )
        self.default_voice = VoiceConditioning(name, self.name, self.model_revision, latents)

    def set_default_voice(self, voice: VoiceConditioning | None) -> None:
        """The voice spoken when a request names none (overrides a built-in speaker)."""
        if voice is not None:
            self._check_voice(voice)
        self.default_voice = voice

    def warmup(self) -> None:
        """Load if needed, then a few GPT steps and vocoder windows so the first request pays
        no setup, and measure how many streams keep real time. Once: a warmup that failed is
        run again by the next call. Runs on the scheduler thread, like all model work; once
        done, returns at once (every `stream` calls it: a call through the scheduler would
        wait for the batched step in progress before the stream is even queued)."""
        if not (self._loaded and self._warmed):
            self.scheduler.call(self._load_and_warm)

    def _load_and_warm(self) -> None:
        if not self._loaded:
            self._load()
            self._loaded = True
        if not self._warmed:
            self._warm()
            self._warmed = True

    def _warm_latents(self) -> XTTSLatents:
        import torch

        if self.default_voice is not None:
            return self.default_voice.data
        if self._warm_voice is None:  # one object: its cached prompt part is reused
            gen = torch.Generator().manual_seed(0)
            g = torch.randn(1, 512, 1, generator=gen)
            self._warm_voice = XTTSLatents(
                torch.zeros(1, 32, self._model.gpt.model_dim), g / g.norm()
            )
        return self._warm_voice

    def _warm_work(self, tokens: int, seed: int = 0) -> XTTSStreamWork:
        sampling = self._sampling(SynthesisParams(seed=seed))
        return XTTSStreamWork(
            self, ["hello there."], "en", self._warm_latents(), sampling, 1.0, max_tokens=tokens
        )

    def _warm(self) -> None:
        cap = self.first_chunk_tokens + int(self.first_chunk_tokens * self.chunk_growth) + 1
        for _ in self.scheduler.stream(lambda: self._warm_work(cap), threading.Event()):
            pass
        self._warm_vocoder_windows()
        self.scheduler.set_measured_capacity(self._measure_capacity())

    def _warm_vocoder_windows(self) -> None:
        """HiFiGAN once over every window length a stream at speed 1 runs after its first
        windows (their kernels are built per length: xtts_vocoder)."""
        import torch

        if self.vocoder_window_step <= 1:
            return
        decoder = self.waveform_decoder()
        dtype = next(decoder.parameters()).dtype
        g = self._warm_latents().speaker_embedding.to(self.device, dtype)
        # no chunk is longer than the engine's token cap
        longest_chunk = min(self.chunk_tokens, self.max_tokens or self.chunk_tokens)
        lengths = window_lengths(
            chunk_tokens=longest_chunk, context=self.context_frames,
            lookahead=self.lookahead_frames, step=self.vocoder_window_step,
        )
        with torch.inference_mode():
            for n in lengths:
                decoder(torch.zeros(1, decoder.conv_pre.in_channels, n, dtype=dtype,
                                    device=self.device), g=g)

    def _measure_capacity(self) -> int:
        """Streams kept at real time: the largest batch B whose decode step plus B streams'
        vocoding per token fits in one token's audio (46.5 ms), with a 10% margin."""
        budget = 0.9 / TOKENS_PER_SECOND
        vocoder_s = self._vocoder_seconds_per_token()
        capacity = 0
        for batch in capacity_probes(self.scheduler.max_batch):
            if self._decode_step_seconds(batch) + batch * vocoder_s > budget:
                break
            capacity = batch
        logger.info("xtts: %d stream(s) at real time (vocoder %.1f ms/token)", capacity,
                    1000 * vocoder_s)
        return capacity

    def _decode_step_seconds(self, batch: int, steps: int = 3) -> float:
        """One batched GPT step for `batch` streams (scheduler thread only)."""
        works = [self._warm_work(self.first_chunk_tokens + steps + 8, seed=i)
                 for i in range(batch)]
        prefill_batch(self, works)
        decode_batch(self, works)  # once untimed: first-call costs of this batch size
        started = time.perf_counter()
        for _ in range(steps):
            decode_batch(self, works)
        step_s = (time.perf_counter() - started) / steps
        for w in works:
            w.close()
        return step_s

    def cost_model(self, batches: list[int]) -> dict[str, Any]:
        """What a token costs on this machine now: the batched decode step for each batch
        size and the vocoder per token and stream (measured on the scheduler thread; for
        benches, which explain their tokens/s with it)."""
        def measure() -> dict[str, Any]:
            return {"decode_step_s": {b: self._decode_step_seconds(b, steps=8) for b in batches},
                    "vocoder_s_per_token": self._vocoder_seconds_per_token()}

        self.warmup()
        return self.scheduler.call(measure)

    def _vocoder_seconds_per_token(self) -> float:
        """Vocoding time per token of the chunks after the first (context included)."""
        work = self._warm_work(4 * self.chunk_tokens)
        work.prefill()
        seconds, tokens = 0.0, 0
        for chunk in range(3):  # a short cap (max_tokens) may end the piece sooner
            while work.next_step() == "decode":
                decode_batch(self, [work])
            if work.next_step() != "emit":
                break
            piece = work.piece
            before = piece.emitted
            started = time.perf_counter()
            work.emit()
            if chunk or work._piece is None:  # the first chunk is small: context dominates
                seconds += time.perf_counter() - started
                tokens += piece.emitted - before
        work.close()
        return seconds / max(1, tokens)

    def waveform_decoder(self) -> Any:
        """HiFiGAN's waveform decoder as the vocoder runs it, made once: a channels-last 2-D
        copy (`channels_last_2d`) and/or a bf16 copy (the same audio as autocast, which casts
        every weight again for every window: ~10 ms a window on 2 cores), else the model's
        own."""
        decoder = self._model.hifigan_decoder.waveform_decoder
        if not (self.vocoder_bf16 or self.vocoder_channels_last):
            return decoder
        if self._vocoder_decoder is None:
            import torch

            run = (channels_last_2d(decoder) if self.vocoder_channels_last
                   else copy.deepcopy(decoder))
            self._vocoder_decoder = run.to(torch.bfloat16) if self.vocoder_bf16 else run
        return self._vocoder_decoder

    # -- voices ------------------------------------------------------------------------

    def condition(self, clip: VoiceClip) -> VoiceConditioning:
        self.load()
        return self.scheduler.call(self._condition, clip)

    def _condition(self, clip: VoiceClip) -> VoiceConditioning:
        import torch
        import torchaudio.functional as AF

        audio = reference_audio(clip, min_seconds=self.min_reference_seconds, engine="XTTS")
        config = self._model.config
        with torch.inference_mode():
            wav = torch.from_numpy(np.clip(audio, -1.0, 1.0))[None]
            if clip.sample_rate != 22050:
                wav = AF.resample(wav, clip.sample_rate, 22050)
            wav = wav[:, : 22050 * int(config.max_ref_len)].to(self.device)
            if config.sound_norm_refs:
                wav = wav / wav.abs().max() * 0.75
            try:
                speaker = self._model.get_speaker_embedding(wav, 22050)
                gpt = self._model.get_gpt_cond_latents(
                    wav, 22050, length=int(config.gpt_cond_len),
                    chunk_length=int(config.gpt_cond_chunk_len),
                )
            except RuntimeError as e:
                raise VoiceError(f"voice {clip.voice_id!r}: {e}") from e
        latents = XTTSLatents(gpt.clone(), speaker.clone())
        return VoiceConditioning(clip.voice_id, self.name, self.model_revision, latents)

    def dump_conditioning(self, conditioning: VoiceConditioning) -> bytes:
        latents = conditioning.data
        if not isinstance(latents, XTTSLatents):
            raise VoiceError(f"voice {conditioning.voice_id!r} is not an XTTS conditioning")
        buf = io.BytesIO()
        np.savez(
            buf,
            format=np.array(_CONDITIONING_FORMAT),
            gpt_cond_latent=latents.gpt_cond_latent.detach().float().cpu().numpy(),
            speaker_embedding=latents.speaker_embedding.detach().float().cpu().numpy(),
        )
        return buf.getvalue()

    def load_conditioning(self, voice_id: str, data: bytes) -> VoiceConditioning:
        import torch

        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                version = int(npz["format"])
                gpt = np.array(npz["gpt_cond_latent"], dtype=np.float32)
                speaker = np.array(npz["speaker_embedding"], dtype=np.float32)
        except Exception as e:
            raise VoiceError(f"voice {voice_id!r}: unreadable XTTS conditioning ({e})") from e
        if version != _CONDITIONING_FORMAT:
            raise VoiceError(f"voice {voice_id!r}: XTTS conditioning format {version} unknown")
        d = self._model.gpt.model_dim if self._model is not None else gpt.shape[-1]
        if gpt.ndim != 3 or gpt.shape[0] != 1 or gpt.shape[2] != d or speaker.shape != (1, 512, 1):
            raise VoiceError(
                f"voice {voice_id!r}: XTTS conditioning shapes {gpt.shape}/{speaker.shape} do "
                f"not fit this model (expected [1, 32, {d}] and [1, 512, 1])"
            )
        latents = XTTSLatents(
            torch.from_numpy(gpt).to(self.device), torch.from_numpy(speaker).to(self.device)
        )
        return VoiceConditioning(voice_id, self.name, self.model_revision, latents)

    def _check_voice(self, voice: VoiceConditioning) -> None:
        if voice.engine != self.name or not isinstance(voice.data, XTTSLatents):
            raise VoiceError(f"voice {voice.voice_id!r} was conditioned for {voice.engine!r}")

    # -- synthesis ---------------------------------------------------------------------

    def _sampling(self, params: SynthesisParams) -> Sampling:
        config = self._model.config

        def pick(value: Any, default: Any) -> Any:
            return default if value is None else value

        return Sampling(
            temperature=float(pick(params.temperature, config.temperature)),
            top_k=int(pick(params.top_k, config.top_k)),
            top_p=float(pick(params.top_p, config.top_p)),
            min_p=params.min_p,
            repetition_penalty=float(pick(params.repetition_penalty, config.repetition_penalty)),
            seed=params.seed,
        )

    def _language(self, language: str | None) -> str:
        base = _base_language(language)
        supported = {code.split("-")[0] for code in self._model.config.languages}
        if base not in supported:
            raise InvalidRequestError(
                f"XTTS does not speak {language!r}; supported: {', '.join(sorted(supported))}"
            )
        return base

    def _pieces(self, text: str, lang: str) -> list[str]:
        """`text` as one run, unless it exceeds what the model takes: the plugin hands pieces
        within `max_piece_chars`; a direct caller may not."""
        tokenizer = self._model.tokenizer
        # the text position table holds gpt_max_text_tokens + 2 entries (start/stop added)
        return fit_text(
            text, max_chars=self.max_piece_chars(lang) or _DEFAULT_CHAR_LIMIT,
            token_count=lambda piece: len(tokenizer.encode(piece.strip().lower(), lang=lang)),
            max_tokens=int(self._model.args.gpt_max_text_tokens),
        )

    def stream(
        self,
        text: str,
        voice: VoiceConditioning | None,
        params: SynthesisParams,
        cancel: threading.Event,
    ) -> Iterator[np.ndarray]:
        """Yield 24 kHz chunks; the scheduler thread computes them (batched with every other
        active stream)."""
        self.load()
        voice = voice if voice is not None else self.default_voice
        if voice is None:
            raise VoiceError(
                "XTTS needs a reference voice: pass a cloned voice, set a default voice "
                "(LOCALTTS_VOICE) or use a checkpoint with speakers_xtts.pth"
            )
        self._check_voice(voice)
        lang = self._language(params.language)
        sampling = self._sampling(params)
        length_scale = 1.0 / max(params.speed, 0.05)
        latents = voice.data

        def work() -> XTTSStreamWork:
            return XTTSStreamWork(
                self, self._pieces(text, lang), lang, latents, sampling, length_scale
            )

        yield from self.scheduler.stream(work, cancel)

    # -- health ------------------------------------------------------------------------

    def info(self) -> EngineInfo:
        import torch

        return EngineInfo(
            engine=self.name,
            sample_rate=self.sample_rate,
            device=self.device,
            dtype=("int8 GPT" if self.int8 else "float32 GPT")
            + (" / bf16 HiFiGAN" if self.vocoder_bf16 else " / float32 HiFiGAN"),
            model=str(self.checkpoint_dir) if self.checkpoint_dir else "injected",
            model_revision=self.model_revision,
            loaded=self._loaded,
            default_voice=self.default_voice.voice_id if self.default_voice else None,
            optimizations=tuple(self._optimizations),
            capacity=self.scheduler.capacity,
            details={
                **self.scheduler.info(),
                "int8": self.int8,
                "vocoder_bf16": self.vocoder_bf16,
                "vocoder_channels_last": self.vocoder_channels_last,
                "threads": torch.get_num_threads(),
                "first_chunk_tokens": self.first_chunk_tokens,
                "chunk_tokens": self.chunk_tokens,
                "chunk_growth": self.chunk_growth,
                "context_frames": self.context_frames,
                "lookahead_frames": self.lookahead_frames,
                "crossfade_frames": self.crossfade_frames,
                "vocoder_window_step": self.vocoder_window_step,
            },
        )
