"""XTTS-v2 (coqui-tts) on the CPU: cached voice latents, a small first chunk, int8 option.

Why not coqui's `inference_stream`: it waits for 20 tokens before any audio and re-decodes
every latent so far through HiFiGAN for each chunk (quadratic). This engine runs its own
decoding loop over the GPT-2 trunk (KV cache, cancellation between tokens), emits a first
chunk after `first_chunk_tokens`, and vocodes each chunk over a sliding window: the new
frames plus `context_frames` of left context, holding back `lookahead_frames` (whose input
still changes when the next token arrives) and crossfading them into the next chunk.

On every non-CUDA host the device is the CPU, never MPS (slower than the CPU for XTTS and
known to hang). Default voice: the first speaker of coqui's `speakers_xtts.pth` when the
checkpoint ships one (or `default_speaker`), else whatever `set_default_voice` was given;
without either, `voice=None` is a `VoiceError` (XTTS always needs a reference voice).
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import math
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..host import performance_cores
from ..settings import Settings
from ..text import split_text
from .base import (
    EngineUnavailableError,
    InvalidRequestError,
    SynthesisParams,
    VoiceClip,
    VoiceConditioning,
    VoiceError,
    reference_audio,
)
from .weights import hub_snapshot, snapshot_revision

logger = logging.getLogger("livekit.plugins.localtts.xtts")

REQUIRED_FILES = ("config.json", "model.pth", "vocab.json")
SPEAKERS_FILE = "speakers_xtts.pth"
COQUI_MODEL_NAME = "tts_models--multilingual--multi-dataset--xtts_v2"
_COQUI_ALIASES = {"coqui/xtts-v2", "tts_models/multilingual/multi-dataset/xtts_v2", "xtts_v2"}
_CONDITIONING_FORMAT = 1
_MIN_REFERENCE_SECONDS = 0.5
# HiFiGAN works on 22,050 Hz mel frames (hop 256) upsampled to 24 kHz: one GPT token is
# 1024 input samples = 4 mel frames, stretched by 24000/22050 before vocoding
_HOP = 256


@dataclass(frozen=True)
class XTTSLatents:
    """A voice for XTTS: GPT conditioning latents [1, 32, d] and speaker embedding [1, 512, 1]."""

    gpt_cond_latent: Any
    speaker_embedding: Any


@dataclass(frozen=True)
class _Sampling:
    temperature: float
    top_k: int
    top_p: float
    min_p: float | None
    repetition_penalty: float
    seed: int | None


# ---------------------------------------------------------------------------------------
# host: device and threads


def choose_device(requested: str = "auto") -> str:
    """"cuda" only when asked for (or "auto") and present; otherwise the CPU, never MPS."""
    import torch

    if requested not in ("auto", "cpu", "cuda"):
        raise EngineUnavailableError(f"unknown device {requested!r}: use auto, cpu or cuda")
    if requested == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if requested == "cuda":
        raise EngineUnavailableError("LOCALTTS_DEVICE=cuda but no CUDA device is available")
    return "cpu"


# ---------------------------------------------------------------------------------------
# weights


def _coqui_cache_dir() -> Path:
    """Where coqui's `TTS` downloader puts XTTS-v2 (TTS_HOME / XDG_DATA_HOME aware)."""
    from trainer.io import get_user_data_dir

    return Path(get_user_data_dir("tts")) / COQUI_MODEL_NAME


def _missing(directory: Path) -> list[str]:
    return [name for name in REQUIRED_FILES if not (directory / name).is_file()]


def resolve_checkpoint_dir(model: str, *, allow_download: bool = False) -> Path:
    """A directory holding config.json, model.pth and vocab.json for `model` (a local
    directory or a Hugging Face repo id); looks only in local caches unless allowed to
    download. Raises EngineUnavailableError naming what is missing."""
    path = Path(model).expanduser()
    looks_like_path = path.is_absolute() or model.startswith((".", "~")) or path.exists()
    if looks_like_path:
        if not path.is_dir():
            raise EngineUnavailableError(
                f"XTTS checkpoint directory not found: {path} (set LOCALTTS_XTTS_MODEL to a "
                f"directory holding {', '.join(REQUIRED_FILES)})"
            )
        if missing := _missing(path):
            raise EngineUnavailableError(
                f"XTTS checkpoint directory {path} lacks {', '.join(missing)}"
            )
        return path
    if model.lower() in _COQUI_ALIASES:
        coqui = _coqui_cache_dir()
        if coqui.is_dir() and not _missing(coqui):
            return coqui
    return _hub_checkpoint_dir(model, allow_download=allow_download)


def _hub_checkpoint_dir(repo_id: str, *, allow_download: bool) -> Path:
    directory, missing = hub_snapshot(
        repo_id, REQUIRED_FILES, (SPEAKERS_FILE,), allow_download=allow_download
    )
    if directory is None:
        raise EngineUnavailableError(
            f"XTTS weights {repo_id!r} are not in the local Hugging Face cache (missing "
            f"{', '.join(missing)}); download them once (huggingface-cli download {repo_id}), "
            "point LOCALTTS_XTTS_MODEL at a local directory, or set LOCALTTS_ALLOW_DOWNLOAD=1"
        )
    return directory


def _directory_revision(directory: Path) -> str:
    """Hub snapshots carry their commit in the path; local weights: size and mtime."""
    if (snapshot := snapshot_revision(directory)) is not None:
        return f"xtts-{snapshot}"
    stat = (directory / "model.pth").stat()
    digest = hashlib.sha1(f"{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return f"xtts-local-{digest}"


# ---------------------------------------------------------------------------------------
# int8


def cpu_has_fast_bf16() -> bool:
    """oneDNN runs bf16 natively here (AMX or AVX512-BF16): HiFiGAN's convolutions then
    take about half the time of fp32 at ~40 dB SNR. Elsewhere bf16 is emulated (slower)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def quantize_gpt_int8(model: Any) -> int:
    """Dynamic int8 quantization of the GPT-2 trunk; returns how many layers it converted.

    HF GPT-2 uses `transformers.pytorch_utils.Conv1D` (weight [in, out]), which
    `quantize_dynamic({nn.Linear})` does not touch: each Conv1D becomes an `nn.Linear`
    (weight transposed) first. Per-channel weight scales keep the logits close to fp32.
    """
    import torch
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    trunk = model.gpt.gpt
    converted = 0
    for parent in list(trunk.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                linear = nn.Linear(child.weight.shape[0], child.weight.shape[1])
                linear.weight.data = child.weight.data.t().contiguous()
                linear.bias.data = child.bias.data
                setattr(parent, name, linear)
                converted += 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices; the API works
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        quantize_dynamic(
            trunk, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True
        )
    return converted


def _fold_weight_norm(module: Any) -> int:
    """Bake weight_norm parametrizations into plain weights (coqui leaves them on at
    inference, recomputing every weight on every call); returns how many it folded."""
    from torch.nn.utils import parametrize

    folded = 0
    for sub in module.modules():
        if parametrize.is_parametrized(sub, "weight"):
            parametrize.remove_parametrizations(sub, "weight", leave_parametrized=True)
            folded += 1
    return folded


# ---------------------------------------------------------------------------------------
# text


def split_for_xtts(text: str, language: str, *, char_limit: int, first_clause_chars: int = 16,
                   token_count: Any = None, max_tokens: int = 0) -> list[str]:
    """Pieces under XTTS's per-language character limit (the first one a short clause);
    with `token_count`, pieces whose token count reaches `max_tokens` are halved again."""
    pieces = split_text(text, first_clause_min_chars=first_clause_chars,
                        max_piece_chars=max(20, char_limit))
    if token_count is None:
        return pieces
    out: list[str] = []
    stack = list(reversed(pieces))
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


# ---------------------------------------------------------------------------------------
# vocoding over a sliding window


def frames_for_tokens(tokens: int, speed: float = 1.0) -> int:
    """HiFiGAN input frames (256 output samples each) for `tokens` GPT latents, exactly as
    coqui's decoder interpolates them (speed scaling, x4 to mel frames, 22.05 -> 24 kHz)."""
    n = tokens
    if speed != 1.0:
        n = math.floor(n * (1.0 / max(speed, 0.05)))
    return math.floor(math.floor(n * 4.0) * (24000 / 22050))


@functools.lru_cache(maxsize=1)
def _preallocated_layer_class() -> type:
    """A transformers cache layer writing keys/values into buffers that double when full and
    handing attention views of them: DynamicCache re-concatenates every layer's whole cache
    on every token (30 layers x 2 copies, growing with the utterance)."""
    import torch
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        def lazy_initialization(self, key_states: Any, value_states: Any) -> None:
            super().lazy_initialization(key_states, value_states)
            self._k_buffer: Any = None
            self._v_buffer: Any = None
            self._length = 0

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> Any:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self._length + key_states.shape[-2]
            if self._k_buffer is None or end > self._k_buffer.shape[-2]:
                shape = (*key_states.shape[:-2], max(256, 2 * end), key_states.shape[-1])
                k = torch.empty(shape, dtype=key_states.dtype, device=key_states.device)
                v = torch.empty(shape, dtype=value_states.dtype, device=value_states.device)
                if self._length:
                    k[..., : self._length, :] = self.keys
                    v[..., : self._length, :] = self.values
                self._k_buffer, self._v_buffer = k, v
            self._k_buffer[..., self._length : end, :] = key_states
            self._v_buffer[..., self._length : end, :] = value_states
            self._length = end
            self.keys = self._k_buffer[..., :end, :]
            self.values = self._v_buffer[..., :end, :]
            return self.keys, self.values

    return PreallocatedLayer


def _preallocated_kv_cache() -> Any:
    from transformers.cache_utils import Cache

    return Cache(layer_class_to_replicate=_preallocated_layer_class())


class _WindowVocoder:
    """Turns a growing list of GPT latents into audio, one chunk at a time.

    All latents so far are interpolated to frames (cheap), but HiFiGAN only runs over the
    frames not yet emitted plus `context` frames of left context. The last `lookahead`
    frames are held back (their interpolation and receptive field still depend on tokens
    to come) and the first `crossfade` of them are kept as a tail to crossfade with the
    next chunk's better-informed version of the same samples.
    """

    def __init__(self, model: Any, speaker_embedding: Any, *, length_scale: float,
                 context: int, lookahead: int, crossfade: int, bf16: bool = False) -> None:
        self._model = model
        self._bf16 = bf16
        self._g = speaker_embedding
        self._length_scale = length_scale
        self._context = context
        self._lookahead = lookahead
        self._crossfade = min(crossfade, lookahead)
        self._emitted = 0  # frames already returned
        self._tail: Any = None  # samples of frames [emitted, emitted + crossfade) to fade out

    def _frames(self, latents: Any) -> Any:
        import torch.nn.functional as F

        x = latents.transpose(1, 2)  # [1, d, T]
        if self._length_scale != 1.0:
            x = F.interpolate(x, scale_factor=self._length_scale, mode="linear")
        decoder = self._model.hifigan_decoder
        x = F.interpolate(
            x, scale_factor=[decoder.ar_mel_length_compression / decoder.output_hop_length],
            mode="linear",
        )
        if decoder.output_sample_rate != decoder.input_sample_rate:
            x = F.interpolate(
                x, scale_factor=[decoder.output_sample_rate / decoder.input_sample_rate],
                mode="linear",
            )
        return x

    def push(self, latents: Any, *, final: bool) -> np.ndarray:
        """Audio for the frames that became final with `latents` [1, T, d] (all so far)."""
        import torch

        frames = self._frames(latents)
        total = frames.shape[-1]
        end = total if final else total - self._lookahead
        if end <= self._emitted:
            return np.zeros(0, dtype=np.float32)
        start = max(0, self._emitted - self._context)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self._bf16):
            wav = self._model.hifigan_decoder.waveform_decoder(frames[..., start:total], g=self._g)
        wav = wav.float().reshape(-1)
        seg = wav[(self._emitted - start) * _HOP : (end - start) * _HOP].clone()
        if self._tail is not None:
            n = min(len(self._tail), len(seg))
            ramp = torch.linspace(0.0, 1.0, n + 2, dtype=seg.dtype)[1:-1]
            seg[:n] = self._tail[:n] * (1.0 - ramp) + seg[:n] * ramp
        if not final and self._crossfade > 0:
            self._tail = wav[(end - start) * _HOP : (end - start + self._crossfade) * _HOP].clone()
        self._emitted = end
        return seg.float().cpu().numpy()


# ---------------------------------------------------------------------------------------
# the engine


class XTTSEngine:
    name = "xtts"
    sample_rate = 24000
    supports_cloning = True

    def __init__(
        self,
        *,
        checkpoint_dir: Path | None = None,
        model: Any = None,
        device: str = "auto",
        int8: bool | None = False,
        vocoder_bf16: bool | None = False,
        threads: int | None = None,
        first_chunk_tokens: int = 6,
        chunk_tokens: int = 24,
        chunk_growth: float = 1.5,
        context_frames: int = 16,
        lookahead_frames: int = 6,
        crossfade_frames: int = 3,
        max_tokens: int | None = None,
        default_speaker: str | None = None,
        model_revision: str | None = None,
    ) -> None:
        if (checkpoint_dir is None) == (model is None):
            raise ValueError("give exactly one of checkpoint_dir or model")
        if checkpoint_dir is not None:
            checkpoint_dir = Path(checkpoint_dir)
            if missing := _missing(checkpoint_dir):
                raise EngineUnavailableError(
                    f"XTTS checkpoint directory {checkpoint_dir} lacks {', '.join(missing)}"
                )
        if first_chunk_tokens < 1 or chunk_tokens < first_chunk_tokens or chunk_growth < 1.0:
            raise ValueError("need 1 <= first_chunk_tokens <= chunk_tokens and chunk_growth >= 1")
        if not 0 <= crossfade_frames <= lookahead_frames:
            raise ValueError("need 0 <= crossfade_frames <= lookahead_frames")
        self.checkpoint_dir = checkpoint_dir
        self._model: Any = model
        self._requested_device = device
        # None = decided at load for the device (see load)
        self.int8 = int8
        self.vocoder_bf16 = vocoder_bf16
        self.threads = threads
        self.first_chunk_tokens = first_chunk_tokens
        self.chunk_tokens = chunk_tokens
        self.chunk_growth = chunk_growth
        self.context_frames = context_frames
        self.lookahead_frames = lookahead_frames
        self.crossfade_frames = crossfade_frames
        self.max_tokens = max_tokens
        self.default_speaker = default_speaker
        self._revision = model_revision
        self.device: str | None = None
        self.default_voice: VoiceConditioning | None = None
        self._loaded = False
        self._optimizations: list[str] = []
        self._load_lock = threading.Lock()
        # One engine serves every stream of the process. Model work is serialized per
        # chunk (the GPT steps of one chunk plus its vocoding): a CPU gains nothing from
        # running two streams' matmuls at once (they would fight over the same cores),
        # a chunk is short enough that a newly arrived stream starts within one chunk of
        # another, and each stream keeps its own KV cache so interleaving is safe. Audio
        # is yielded outside the lock so a slow consumer never blocks other streams.
        self._model_lock = threading.Lock()

    # -- construction ------------------------------------------------------------------

    @classmethod
    def from_model(cls, model: Any, **kwargs: Any) -> XTTSEngine:
        """An engine over an already built `Xtts` (tests and benches inject tiny ones)."""
        return cls(model=model, **kwargs)

    @classmethod
    def from_settings(cls, settings: Settings) -> XTTSEngine:
        directory = resolve_checkpoint_dir(
            settings.xtts_model, allow_download=settings.allow_download
        )
        return cls(
            checkpoint_dir=directory,
            device=settings.device,
            int8=settings.xtts_int8,
            vocoder_bf16=settings.xtts_vocoder_bf16,
            threads=settings.threads,
            **(
                {"first_chunk_tokens": settings.first_chunk_tokens}
                if settings.first_chunk_tokens is not None
                else {}
            ),
        )

    @staticmethod
    def availability(settings: Settings) -> str | None:
        import importlib.util

        for module, package in (("TTS", "coqui-tts"), ("torch", "torch")):
            if importlib.util.find_spec(module) is None:
                return f"{package} is not installed: pip install 'localtts[xtts]'"
        try:
            if settings.device == "cuda":
                choose_device("cuda")
            resolve_checkpoint_dir(settings.xtts_model, allow_download=False)
        except EngineUnavailableError as e:
            if settings.allow_download and "local Hugging Face cache" in str(e):
                return None  # load() will fetch it
            return str(e)
        return None

    @property
    def model_revision(self) -> str:
        if self._revision is None:
            if self.checkpoint_dir is not None:
                self._revision = _directory_revision(self.checkpoint_dir)
            else:
                self._revision = f"xtts-injected-{id(self._model):x}"
        return self._revision

    # -- loading -----------------------------------------------------------------------

    def load(self) -> None:
        with self._load_lock:
            if self._loaded:
                return
            import torch

            self.device = choose_device(self._requested_device)
            if self.device == "cpu":
                torch.set_num_threads(self.threads or performance_cores())
            if self._model is None:
                self._model = self._load_checkpoint()
            model = self._model.to(self.device)
            model.eval()  # Xtts.eval() returns None
            optimizations = ["own decode loop (KV cache)", "sliding-window HiFiGAN",
                             "inference_mode"]
            if _fold_weight_norm(model.hifigan_decoder.waveform_decoder):
                optimizations.append("HiFiGAN weight_norm folded")
            if self.int8 is None:  # auto: the trunk is bandwidth-bound at batch 1 on a CPU
                self.int8 = self.device == "cpu"
            if self.vocoder_bf16 is None:  # auto: where the CPU has native bf16 (AMX/AVX512)
                self.vocoder_bf16 = self.device == "cpu" and cpu_has_fast_bf16()
            if self.vocoder_bf16:
                if self.device != "cpu":
                    raise EngineUnavailableError("the bf16 vocoder is a CPU option")
                optimizations.append("bf16 HiFiGAN (CPU autocast)")
            if self.int8:
                if self.device != "cpu":
                    raise EngineUnavailableError("int8 XTTS is a CPU option; use fp32 on CUDA")
                quantize_gpt_int8(model)
                optimizations.append("int8 dynamic GPT")
            self._optimizations = optimizations
            self._load_default_speaker()
            self._loaded = True
            self._warm()

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
        self.default_voice = voice

    def _warm(self) -> None:
        """A few GPT steps and vocoder windows so the first request pays no setup."""
        import torch

        model = self._model
        d = model.gpt.model_dim
        voice = self.default_voice
        if voice is None:
            gen = torch.Generator().manual_seed(0)
            g = torch.randn(1, 512, 1, generator=gen)
            latents = XTTSLatents(torch.zeros(1, 32, d), g / g.norm())
        else:
            latents = voice.data
        warm = VoiceConditioning("_warmup", self.name, self.model_revision, latents)
        cap = self.first_chunk_tokens + int(self.first_chunk_tokens * self.chunk_growth) + 1
        for _ in self._stream_piece("hello there.", "en", warm.data, self._sampling(
                SynthesisParams(seed=0)), 1.0, threading.Event(), max_tokens=cap):
            pass

    def warmup(self) -> None:
        self.load()  # load() warms once; a second warmup would only cost start-up time

    # -- voices ------------------------------------------------------------------------

    def condition(self, clip: VoiceClip) -> VoiceConditioning:
        self.load()
        import torch
        import torchaudio.functional as AF

        audio = reference_audio(clip, min_seconds=_MIN_REFERENCE_SECONDS, engine="XTTS")
        config = self._model.config
        with self._model_lock, torch.inference_mode():
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
        device = self.device or "cpu"
        latents = XTTSLatents(
            torch.from_numpy(gpt).to(device), torch.from_numpy(speaker).to(device)
        )
        return VoiceConditioning(voice_id, self.name, self.model_revision, latents)

    # -- synthesis ---------------------------------------------------------------------

    def _sampling(self, params: SynthesisParams) -> _Sampling:
        config = self._model.config

        def pick(value: Any, default: Any) -> Any:
            return default if value is None else value

        return _Sampling(
            temperature=float(pick(params.temperature, config.temperature)),
            top_k=int(pick(params.top_k, config.top_k)),
            top_p=float(pick(params.top_p, config.top_p)),
            min_p=params.min_p,
            repetition_penalty=float(pick(params.repetition_penalty, config.repetition_penalty)),
            seed=params.seed,
        )

    def _language(self, language: str | None) -> str:
        lang = (language or "en").strip().lower().replace("_", "-")
        base = lang.split("-")[0]
        supported = {code.split("-")[0] for code in self._model.config.languages}
        if base not in supported:
            raise InvalidRequestError(
                f"XTTS does not speak {language!r}; supported: {', '.join(sorted(supported))}"
            )
        return base

    def _pieces(self, text: str, lang: str) -> list[str]:
        tokenizer = self._model.tokenizer
        limit = tokenizer.char_limits.get(lang, 250)
        # the text position table holds gpt_max_text_tokens + 2 entries (start/stop added)
        max_text = int(self._model.args.gpt_max_text_tokens)
        return split_for_xtts(
            text, lang, char_limit=limit,
            token_count=lambda piece: len(tokenizer.encode(piece.strip().lower(), lang=lang)),
            max_tokens=max_text,
        )

    def stream(
        self,
        text: str,
        voice: VoiceConditioning | None,
        params: SynthesisParams,
        cancel: threading.Event,
    ) -> Iterator[np.ndarray]:
        self.load()
        voice = voice if voice is not None else self.default_voice
        if voice is None:
            raise VoiceError(
                "XTTS needs a reference voice: pass a cloned voice, set a default voice "
                "(LOCALTTS_VOICE) or use a checkpoint with speakers_xtts.pth"
            )
        if voice.engine != self.name or not isinstance(voice.data, XTTSLatents):
            raise VoiceError(f"voice {voice.voice_id!r} was conditioned for {voice.engine!r}")
        lang = self._language(params.language)
        sampling = self._sampling(params)
        length_scale = 1.0 / max(params.speed, 0.05)
        for piece in self._pieces(text, lang):
            if cancel.is_set():
                return
            yield from self._stream_piece(piece, lang, voice.data, sampling, length_scale, cancel)

    def _processors(self, sampling: _Sampling) -> Any:
        from transformers import (
            LogitsProcessorList,
            MinPLogitsWarper,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        # same processors, same order as transformers' generate(do_sample=True)
        processors = LogitsProcessorList()
        if sampling.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty))
        if sampling.temperature > 0 and sampling.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(sampling.temperature))
        if sampling.top_k > 0:
            processors.append(TopKLogitsWarper(sampling.top_k))
        if sampling.top_p < 1.0:
            processors.append(TopPLogitsWarper(sampling.top_p))
        if sampling.min_p is not None:
            processors.append(MinPLogitsWarper(sampling.min_p))
        return processors

    def _stream_piece(
        self,
        text: str,
        lang: str,
        latents: XTTSLatents,
        sampling: _Sampling,
        length_scale: float,
        cancel: threading.Event,
        *,
        max_tokens: int | None = None,
    ) -> Iterator[np.ndarray]:
        import torch

        model = self._model
        gpt = model.gpt
        device = self.device
        limit = min(x for x in (max_tokens, self.max_tokens, gpt.max_gen_mel_tokens) if x)
        with torch.inference_mode():
            ids = model.tokenizer.encode(text.strip().lower(), lang=lang)
            text_tokens = torch.tensor([ids], dtype=torch.long, device=device)
            text_tokens = torch.nn.functional.pad(text_tokens, (0, 1), value=gpt.stop_text_token)
            text_tokens = torch.nn.functional.pad(text_tokens, (1, 0), value=gpt.start_text_token)
            text_emb = gpt.text_embedding(text_tokens) + gpt.text_pos_embedding(text_tokens)
            prefix = torch.cat([latents.gpt_cond_latent.to(device), text_emb], dim=1)
            start = torch.full((1, 1), gpt.start_audio_token, dtype=torch.long, device=device)
            start_emb = gpt.mel_embedding(start) + gpt.mel_pos_embedding.get_fixed_embedding(
                0, device
            )
            next_emb = torch.cat([prefix, start_emb], dim=1)
        # coqui's generate() feeds placeholder ids (1 ... 1, start) for the prefix, so its
        # repetition penalty also covers ids 1 and start: keep that for identical sampling
        seen = torch.tensor([[1, gpt.start_audio_token]], dtype=torch.long, device=device)
        processors = self._processors(sampling)
        rng = None  # None: torch's global generator, as coqui's generate() uses
        if sampling.seed is not None:
            rng = torch.Generator(device=device).manual_seed(sampling.seed)
        cache = _preallocated_kv_cache()
        vocoder = _WindowVocoder(
            model, latents.speaker_embedding.to(device), length_scale=length_scale,
            context=self.context_frames, lookahead=self.lookahead_frames,
            crossfade=self.crossfade_frames, bf16=bool(self.vocoder_bf16),
        )
        all_latents: list[Any] = []
        chunk = self.first_chunk_tokens
        generated = 0
        finished = False
        while not finished:
            with self._model_lock, torch.inference_mode():
                for _ in range(chunk):
                    if cancel.is_set():
                        return
                    out = gpt.gpt(inputs_embeds=next_emb, past_key_values=cache, use_cache=True)
                    latent = gpt.final_norm(out.last_hidden_state[:, -1])
                    scores = processors(seen, gpt.mel_head(latent).float())
                    if sampling.temperature > 0:
                        probs = torch.softmax(scores, dim=-1)
                        token = torch.multinomial(probs, 1, generator=rng)
                    else:
                        token = scores.argmax(dim=-1, keepdim=True)
                    all_latents.append(latent)
                    generated += 1
                    if int(token) == gpt.stop_audio_token or generated >= limit:
                        finished = True
                        break
                    seen = torch.cat([seen, token], dim=1)
                    next_emb = gpt.mel_embedding(token) + gpt.mel_pos_embedding.get_fixed_embedding(
                        generated, device
                    )
                audio = vocoder.push(torch.stack(all_latents, dim=1), final=finished)
            if audio.size:
                yield audio
            chunk = min(self.chunk_tokens, math.ceil(chunk * self.chunk_growth))

    # -- health ------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        import torch

        return {
            "engine": self.name,
            "device": self.device or choose_device(self._requested_device),
            "dtype": ("int8 GPT" if self.int8 else "float32 GPT")
            + (" / bf16 HiFiGAN" if self.vocoder_bf16 else " / float32 HiFiGAN"),
            "int8": self.int8,
            "vocoder_bf16": self.vocoder_bf16,
            "threads": torch.get_num_threads(),
            "sample_rate": self.sample_rate,
            "model": str(self.checkpoint_dir) if self.checkpoint_dir else "injected",
            "model_revision": self.model_revision,
            "loaded": self._loaded,
            "default_voice": self.default_voice.voice_id if self.default_voice else None,
            "first_chunk_tokens": self.first_chunk_tokens,
            "chunk_tokens": self.chunk_tokens,
            "chunk_growth": self.chunk_growth,
            "context_frames": self.context_frames,
            "lookahead_frames": self.lookahead_frames,
            "crossfade_frames": self.crossfade_frames,
            "optimizations": list(self._optimizations),
        }
