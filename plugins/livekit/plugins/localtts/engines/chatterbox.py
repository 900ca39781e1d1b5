"""Chatterbox (Resemble AI, chatterbox-tts): the CUDA engine, streaming inside the sentence.

T3 (Llama, text -> 25 Hz speech tokens) decodes with a static KV cache and a compiled /
CUDA-graph-captured step (`chatterbox_t3`); S3Gen (flow + HiFT, tokens -> 24 kHz audio)
renders chunks while T3 continues (`chatterbox_s3gen`). On CPU the same decode loop runs
eagerly in fp32 without graphs, which is what the tests exercise.

Weights come from a local directory or the Hugging Face cache (`ResembleAI/chatterbox`); the
hub is only contacted when `allow_download` is set.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..host import performance_cores
from ..settings import Settings
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

logger = logging.getLogger("livekit.plugins.localtts.chatterbox")

SAMPLE_RATE = 24_000  # chatterbox S3GEN_SR; known without importing torch
REQUIRED_FILES = ("ve.safetensors", "t3_cfg.safetensors", "s3gen.safetensors", "tokenizer.json")
DEFAULT_VOICE_FILE = "conds.pt"
# optional: a non-standard T3 size ({"llama": LlamaConfig kwargs, "use_perceiver_resampler": b})
T3_CONFIG_FILE = "t3_config.json"
_ENC_COND_SECONDS = 6  # T3 speech prompt (upstream ChatterboxTTS.ENC_COND_LEN)
_DEC_COND_SECONDS = 10  # S3Gen reference (upstream DEC_COND_LEN)
_MIN_CLIP_SECONDS = 1.0
_CONDITIONING_FORMAT = 1

DTypeName = Literal["auto", "float32", "bfloat16", "float16"]


@dataclass(frozen=True)
class ChatterboxOptions:
    """Engine options; `None` means "the right choice for the device" (see `info()`)."""

    device: str = "auto"  # "auto" | "cuda" | "cuda:N" | "cpu"
    t3_dtype: DTypeName = "auto"  # auto: bf16 on CUDA (fp16 without bf16), fp32 on CPU
    flow_dtype: DTypeName = "float32"  # S3Gen flow; HiFT always fp32 (reduced precision drifts)
    static_cache: bool = True
    compile: bool | None = None  # torch.compile the decode step; default: on CUDA
    cuda_graph: bool | None = None  # capture the decode step; default: on CUDA
    warmup: bool = True  # compile/capture and run one utterance at load
    compile_cache_dir: Path | None = None  # default: <data_dir>/torch-compile-cache
    threads: int | None = None  # torch CPU threads; None: the host's performance cores
    stop_check_interval: int = 8  # steps between host reads (stop token, streaming)
    # T3 decodes in a thread of its own (own CUDA stream) while S3Gen renders: overlaps the
    # two on a GPU; off until measured there (GIL and stream contention), pointless on 2 cores
    pipeline: bool = False
    max_new_tokens: int = 1000  # upstream's cap (40 s of speech)
    max_text_tokens: int = 400
    watermark: bool = True  # Perth watermark on every chunk but the first
    first_chunk_tokens: int = 12
    lookahead_tokens: int = 3
    chunk_growth: float = 2.0
    max_chunk_tokens: int = 100
    context_tokens: int = 25
    n_cfm_timesteps: int = 10

    def streaming_config(self) -> Any:
        from .chatterbox_s3gen import StreamingConfig

        names = {f.name for f in fields(StreamingConfig)}
        return StreamingConfig(**{k: v for k, v in asdict(self).items() if k in names})


@dataclass
class StreamStats:
    """What the last utterance did (for benches and tests)."""

    tokens: int = 0  # tokens sampled (incl. a stop token and non-speech ids)
    tokens_at_first_chunk: int | None = None  # speech tokens known when chunk 1 was vocoded
    sampled_at_first_chunk: int | None = None
    first_chunk_s: float | None = None  # from stream() call to the first chunk ready
    total_s: float = 0.0
    t3_s: float = 0.0
    prefill_s: float = 0.0
    vocoder_s: float = 0.0
    audio_s: float = 0.0
    chunk_tokens: list[int] = field(default_factory=list)
    speech_tokens: list[int] = field(default_factory=list)  # what S3Gen was given
    stopped: bool = False  # the model emitted its stop token
    cancelled: bool = False

    @property
    def t3_tokens_per_s(self) -> float:
        decode = self.t3_s - self.prefill_s
        return (self.tokens - 1) / decode if decode > 0 and self.tokens > 1 else 0.0


def _dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or "\\" in model or model.count("/") > 1


def _missing_message(where: str, missing: list[str]) -> str:
    return (
        f"Chatterbox weights not found: {', '.join(missing)} missing from {where}. "
        "Set LOCALTTS_CHATTERBOX_MODEL to a directory holding "
        f"{', '.join(REQUIRED_FILES)} (and optionally {DEFAULT_VOICE_FILE}), or put "
        "ResembleAI/chatterbox in the Hugging Face cache "
        "(`huggingface-cli download ResembleAI/chatterbox`), or set "
        "LOCALTTS_ALLOW_DOWNLOAD=1 to let the engine download it"
    )


def resolve_checkpoint(model: str, *, allow_download: bool) -> Path:
    """The directory holding the checkpoint files; EngineUnavailableError naming what is
    missing. Without `allow_download` only the local Hugging Face cache is read (no network)."""
    path = Path(model).expanduser()
    if path.is_dir():
        missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
        if missing:
            raise EngineUnavailableError(_missing_message(f"directory {path}", missing))
        return path
    if _looks_like_path(model):
        raise EngineUnavailableError(
            f"Chatterbox model directory {path} does not exist; "
            + _missing_message(f"{path}", list(REQUIRED_FILES))
        )
    directory, missing = hub_snapshot(
        model, REQUIRED_FILES, (DEFAULT_VOICE_FILE,), allow_download=allow_download
    )
    if directory is None:
        raise EngineUnavailableError(
            _missing_message(f"the Hugging Face cache for {model}", missing)
        )
    return directory


def checkpoint_revision(directory: Path) -> str:
    """The HF snapshot hash when the directory is one, else a digest of the files' sizes."""
    if (snapshot := snapshot_revision(directory)) is not None:
        return snapshot
    digest = hashlib.sha1()
    for name in (*REQUIRED_FILES, T3_CONFIG_FILE):
        f = directory / name
        if f.is_file():
            digest.update(f"{name}:{f.stat().st_size}".encode())
    return f"dir-{digest.hexdigest()[:10]}"


def _load_parts(directory: Path) -> dict[str, Any]:
    """(t3, s3gen, ve, tokenizer, conds) on CPU, like ChatterboxTTS.from_local, plus the
    optional T3 size file."""
    import torch
    from chatterbox.models.s3gen import S3Gen
    from chatterbox.models.t3 import T3
    from chatterbox.models.t3.llama_configs import LLAMA_CONFIGS
    from chatterbox.models.t3.modules.t3_config import T3Config
    from chatterbox.models.tokenizers import EnTokenizer
    from chatterbox.models.voice_encoder import VoiceEncoder
    from chatterbox.tts import Conditionals
    from safetensors.torch import load_file

    hp = T3Config.english_only()
    config_file = directory / T3_CONFIG_FILE
    if config_file.is_file():
        custom = json.loads(config_file.read_text(encoding="utf-8"))
        name = "localtts_" + hashlib.sha1(config_file.read_bytes()).hexdigest()[:8]
        LLAMA_CONFIGS.setdefault(name, custom["llama"])
        hp.llama_config_name = name
        hp.use_perceiver_resampler = bool(custom.get("use_perceiver_resampler", True))
    t3_state = load_file(str(directory / "t3_cfg.safetensors"))
    if "model" in t3_state:
        t3_state = t3_state["model"][0]
    text_vocab = t3_state["text_emb.weight"].shape[0]
    if text_vocab != hp.text_tokens_dict_size:
        raise EngineUnavailableError(
            f"{directory} holds a T3 with {text_vocab} text tokens (the multilingual model?); "
            "this engine runs the English Chatterbox (704 text tokens)"
        )
    t3 = T3(hp)
    t3.load_state_dict(t3_state)
    ve = VoiceEncoder()
    ve.load_state_dict(load_file(str(directory / "ve.safetensors")))
    s3gen = S3Gen()
    s3gen.load_state_dict(load_file(str(directory / "s3gen.safetensors")), strict=False)
    tokenizer = EnTokenizer(str(directory / "tokenizer.json"))
    conds = None
    if (directory / DEFAULT_VOICE_FILE).is_file():
        conds = Conditionals.load(directory / DEFAULT_VOICE_FILE, map_location=torch.device("cpu"))
    return {"t3": t3, "s3gen": s3gen, "ve": ve, "tokenizer": tokenizer, "conds": conds}


class ChatterboxEngine:
    name = "chatterbox"
    sample_rate = SAMPLE_RATE
    supports_cloning = True

    def __init__(
        self,
        *,
        model: str | Path | None = None,
        allow_download: bool = False,
        options: ChatterboxOptions | None = None,
        tts: Any = None,
        t3: Any = None,
        s3gen: Any = None,
        ve: Any = None,
        tokenizer: Any = None,
        conds: Any = None,
        revision: str | None = None,
    ) -> None:
        """Either `model` (a checkpoint directory or Hugging Face repo id), or a built
        `ChatterboxTTS` (`tts`), or its parts (`t3`, `s3gen`, `ve`, `tokenizer`, optional
        default-voice `conds`): tests and benches inject random-weight models this way."""
        if tts is not None:
            t3, s3gen, ve, tokenizer = tts.t3, tts.s3gen, tts.ve, tts.tokenizer
            conds = conds if conds is not None else tts.conds
        given = [p is not None for p in (t3, s3gen, ve, tokenizer)]
        if any(given) and not all(given):
            raise ValueError("pass all of t3, s3gen, ve and tokenizer (or a ChatterboxTTS)")
        if all(given) == (model is not None):
            raise ValueError("pass either a model (directory / repo id) or built model parts")
        self.options = options or ChatterboxOptions()
        self.model = str(model) if model is not None else None
        self.allow_download = allow_download
        self._parts: dict[str, Any] | None = (
            {"t3": t3, "s3gen": s3gen, "ve": ve, "tokenizer": tokenizer, "conds": conds}
            if all(given) else None
        )
        self._revision = revision
        self._load_lock = threading.Lock()
        # The static KV cache, the captured CUDA graph and the decode buffers are ONE stream's
        # state: an utterance holds this lock from prefill to its last chunk, so concurrent
        # streams (rooms) sharing the engine take turns, whole utterances at a time.
        self._generate_lock = threading.Lock()
        self._loaded = False
        self._device: Any = None
        self._t3: Any = None
        self._s3gen: Any = None
        self._ve: Any = None
        self._tokenizer: Any = None
        self._decoder: Any = None
        self._streamer: Any = None
        self._watermarker: Any = None
        self._default: Any = None
        self._compile_cache_dir: Path | None = self.options.compile_cache_dir
        self._load_s: float | None = None
        self._warmup_s: float | None = None
        self.last_stats: StreamStats | None = None

    # -- construction from settings --------------------------------------------------------------

    @classmethod
    def from_settings(cls, settings: Settings) -> ChatterboxEngine:
        options = ChatterboxOptions(
            device=settings.device,
            t3_dtype=settings.dtype,
            compile=settings.compile,
            threads=settings.threads,
            n_cfm_timesteps=settings.chatterbox_cfm_steps,
            watermark=settings.chatterbox_watermark,
            pipeline=settings.chatterbox_pipeline,
            compile_cache_dir=Path(settings.data_dir) / "torch-compile-cache",
            **(
                {"first_chunk_tokens": settings.first_chunk_tokens}
                if settings.first_chunk_tokens is not None
                else {}
            ),
        )
        return cls(
            model=settings.chatterbox_model,
            allow_download=settings.allow_download,
            options=options,
        )

    @staticmethod
    def availability(settings: Settings) -> str | None:
        """Cheap: packages importable (without importing torch) and weights reachable."""
        import importlib.util

        for module, package in (("torch", "torch"), ("chatterbox", "chatterbox-tts")):
            if importlib.util.find_spec(module) is None:
                return f"{package} is not installed: pip install 'localtts[chatterbox]'"
        model = settings.chatterbox_model
        if settings.allow_download and not Path(model).expanduser().exists():
            return None  # fetched at load; failures then raise EngineUnavailableError
        try:
            resolve_checkpoint(model, allow_download=False)
        except EngineUnavailableError as e:
            return str(e)
        return None

    # -- loading ---------------------------------------------------------------------------------

    @property
    def model_revision(self) -> str:
        if self._revision is None:
            if self.model is None:
                return "custom"
            directory = resolve_checkpoint(self.model, allow_download=self.allow_download)
            self._revision = checkpoint_revision(directory)
        return self._revision

    def _resolve_device(self) -> Any:
        import torch

        want = self.options.device
        if want == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(want)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise EngineUnavailableError(
                f"device {want!r} requested but torch sees no CUDA GPU "
                f"(torch {torch.__version__}); use LOCALTTS_DEVICE=cpu or auto"
            )
        return device

    def _t3_dtype(self) -> Any:
        import torch

        if self.options.t3_dtype != "auto":  # honoured on CPU too (slower; tests use it)
            return _dtype(self.options.t3_dtype)
        if self._device.type != "cuda":
            return torch.float32  # reduced precision on CPU is slower, not faster
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def load(self) -> None:
        with self._load_lock:
            if self._loaded:
                return
            started = time.perf_counter()
            try:
                import torch  # a clear error when torch is missing

                from .chatterbox_s3gen import S3GenStreamer
                from .chatterbox_t3 import T3DynamicDecoder, T3StaticDecoder, enable_compile_cache
            except ImportError as e:
                raise EngineUnavailableError(
                    f"the chatterbox engine needs torch and chatterbox-tts: "
                    f"pip install 'localtts[chatterbox]' ({e})"
                ) from e
            self._device = self._resolve_device()
            if self._device.type == "cpu":
                torch.set_num_threads(self.options.threads or performance_cores())
            parts = self._parts
            if parts is None:
                assert self.model is not None
                directory = resolve_checkpoint(self.model, allow_download=self.allow_download)
                if self._revision is None:
                    self._revision = checkpoint_revision(directory)
                parts = _load_parts(directory)
            dev, opts = self._device, self.options
            on_cuda = dev.type == "cuda"
            self._t3 = parts["t3"].to(device=dev, dtype=self._t3_dtype()).eval()
            self._s3gen = parts["s3gen"].to(dev).eval()
            if opts.flow_dtype not in ("auto", "float32"):  # HiFT stays fp32 (see options)
                self._s3gen.flow.to(_dtype(opts.flow_dtype))
            self._ve = parts["ve"].to(dev).eval()
            self._tokenizer = parts["tokenizer"]
            if parts.get("conds") is not None:
                self._default = self._to_device(parts["conds"])

            use_compile = on_cuda if opts.compile is None else bool(opts.compile)
            use_graph = on_cuda if opts.cuda_graph is None else bool(opts.cuda_graph) and on_cuda
            if not opts.static_cache:
                use_compile = use_graph = False
            if use_compile:
                if self._compile_cache_dir is not None:
                    effective = enable_compile_cache(self._compile_cache_dir)
                    if effective.resolve() != self._compile_cache_dir.resolve():
                        logger.info("torch compile cache: %s (TORCHINDUCTOR_CACHE_DIR)", effective)
            cache_len = self._cache_len()
            if opts.static_cache:
                self._decoder = T3StaticDecoder(
                    self._t3, max_cache_len=cache_len, compile_step=use_compile,
                    cuda_graph=use_graph, stop_check_interval=opts.stop_check_interval,
                )
            else:
                self._decoder = T3DynamicDecoder(
                    self._t3, max_cache_len=cache_len,
                    stop_check_interval=opts.stop_check_interval,
                )
            self._streamer = S3GenStreamer(self._s3gen, config=opts.streaming_config())
            if opts.watermark:
                try:
                    import perth

                    self._watermarker = perth.PerthImplicitWatermarker(device=str(dev))
                except Exception as e:
                    raise EngineUnavailableError(
                        f"the Perth watermarker (resemble-perth) failed to load: {e}; "
                        "install it or turn the watermark off"
                    ) from e
            warm_embeds = self._prompt_embeds(
                "Warming up the decoder.", self._warmup_conditionals(), 0.5
            )
            try:
                self._decoder.capture(warm_embeds)
            except Exception:
                if not use_compile:
                    raise
                # an inductor/dynamo failure must not take the engine down: keep the graph
                logger.exception("compiling the T3 decode step failed; continuing without it")
                self._decoder = T3StaticDecoder(
                    self._t3, max_cache_len=cache_len, compile_step=False,
                    cuda_graph=use_graph, stop_check_interval=opts.stop_check_interval,
                )
                self._decoder.capture(warm_embeds)
            self._parts = None  # the engine owns the (moved) modules now
            self._loaded = True
            self._load_s = time.perf_counter() - started
        if opts.warmup:
            self.warmup()

    def _cache_len(self) -> int:
        hp = self._t3.hp
        cond_len = 1 + (32 if hp.use_perceiver_resampler else hp.speech_cond_prompt_len) + 1
        need = cond_len + self.options.max_text_tokens + 2 + 1 + self.options.max_new_tokens
        return int(np.ceil(need / 64) * 64)

    def warmup(self) -> None:
        """One short utterance through both models: allocator, kernels, first-call costs.
        Once per engine (load() runs it when `options.warmup`)."""
        self.load()
        if self._warmup_s is not None:
            return
        started = time.perf_counter()
        cancel = threading.Event()
        chunks = 0
        for _ in self._stream(
            "Warming up.", self._warmup_conditionals(), SynthesisParams(seed=0), cancel,
            max_new_tokens=self.options.first_chunk_tokens + 2 * self.options.lookahead_tokens,
        ):
            chunks += 1
        self._warmup_s = time.perf_counter() - started
        logger.info("chatterbox warmup: %d chunks in %.2fs", chunks, self._warmup_s)

    def _warmup_conditionals(self) -> Any:
        if self._default is not None:
            return self._default
        import torch
        from chatterbox.models.t3.modules.cond_enc import T3Cond
        from chatterbox.tts import Conditionals

        plen = self._t3.hp.speech_cond_prompt_len or 1
        t3_cond = T3Cond(
            speaker_emb=torch.zeros(1, self._t3.hp.speaker_embed_size),
            cond_prompt_speech_tokens=torch.zeros(1, plen, dtype=torch.long),
            emotion_adv=0.5 * torch.ones(1, 1, 1),
        )
        gen = {
            "prompt_token": torch.zeros(1, 25, dtype=torch.long),
            "prompt_token_len": torch.tensor([25]),
            "prompt_feat": torch.zeros(1, 50, 80),
            "prompt_feat_len": None,
            "embedding": torch.zeros(1, 192),
        }
        return self._to_device(Conditionals(t3_cond, gen))

    # -- voices ----------------------------------------------------------------------------------

    def _to_device(self, conds: Any) -> Any:
        """A copy of `conds` on the engine's device (the caller's object is left alone)."""
        import torch
        from chatterbox.models.t3.modules.cond_enc import T3Cond
        from chatterbox.tts import Conditionals

        def move(v: Any) -> Any:
            return v.to(self._device) if torch.is_tensor(v) else v

        t3 = T3Cond(**{k: move(v) for k, v in conds.t3.__dict__.items()})
        return Conditionals(t3, {k: move(v) for k, v in conds.gen.items()})

    def set_default_voice(self, conds: Any) -> None:
        """Use these Conditionals when `stream` gets voice=None."""
        self.load()
        self._default = self._to_device(conds)

    @property
    def default_conditionals(self) -> Any:
        return self._default

    def condition(self, clip: VoiceClip) -> VoiceConditioning:
        self.load()
        import librosa
        import torch
        from chatterbox.models.s3tokenizer import S3_SR
        from chatterbox.models.t3.modules.cond_enc import T3Cond
        from chatterbox.tts import Conditionals

        audio = reference_audio(clip, min_seconds=_MIN_CLIP_SECONDS, engine="Chatterbox")
        # same steps as ChatterboxTTS.prepare_conditionals, from memory instead of a file
        wav24 = audio
        if clip.sample_rate != SAMPLE_RATE:
            wav24 = librosa.resample(audio, orig_sr=clip.sample_rate, target_sr=SAMPLE_RATE)
        wav16 = librosa.resample(wav24, orig_sr=SAMPLE_RATE, target_sr=S3_SR)
        with torch.inference_mode():
            gen = self._s3gen.embed_ref(
                wav24[: _DEC_COND_SECONDS * SAMPLE_RATE], SAMPLE_RATE, device=self._device
            )
            prompt_tokens = None
            if plen := self._t3.hp.speech_cond_prompt_len:
                prompt_tokens, _ = self._s3gen.tokenizer.forward(
                    [wav16[: _ENC_COND_SECONDS * S3_SR]], max_len=plen
                )
                prompt_tokens = torch.atleast_2d(prompt_tokens).to(self._device)
            speaker = self._ve.embeds_from_wavs([wav16], sample_rate=S3_SR)
            speaker = torch.from_numpy(speaker).mean(dim=0, keepdim=True).to(self._device)
        t3_cond = T3Cond(
            speaker_emb=speaker,
            cond_prompt_speech_tokens=prompt_tokens,
            emotion_adv=0.5 * torch.ones(1, 1, 1, device=self._device),
        )
        return VoiceConditioning(
            voice_id=clip.voice_id, engine=self.name, model_revision=self.model_revision,
            data=Conditionals(t3_cond, gen),
        )

    def dump_conditioning(self, conditioning: VoiceConditioning) -> bytes:
        import torch

        conds = conditioning.data

        def cpu(v: Any) -> Any:
            return v.detach().cpu() if torch.is_tensor(v) else v

        buffer = io.BytesIO()
        torch.save(
            {
                "format": _CONDITIONING_FORMAT,
                "t3": {k: cpu(v) for k, v in conds.t3.__dict__.items()},
                "gen": {k: cpu(v) for k, v in conds.gen.items()},
            },
            buffer,
        )
        return buffer.getvalue()

    def load_conditioning(self, voice_id: str, data: bytes) -> VoiceConditioning:
        import torch
        from chatterbox.models.t3.modules.cond_enc import T3Cond
        from chatterbox.tts import Conditionals

        try:
            saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            if saved.get("format") != _CONDITIONING_FORMAT:
                raise ValueError(f"unknown format {saved.get('format')!r}")
            conds = Conditionals(T3Cond(**saved["t3"]), dict(saved["gen"]))
            for key in ("prompt_token", "prompt_feat", "embedding"):
                if not torch.is_tensor(conds.gen.get(key)):
                    raise ValueError(f"missing {key}")
        except Exception as e:
            raise VoiceError(f"voice {voice_id!r}: unreadable Chatterbox conditioning ({e})") from e
        if self._loaded:
            conds = self._to_device(conds)
        return VoiceConditioning(
            voice_id=voice_id, engine=self.name, model_revision=self.model_revision, data=conds
        )

    # -- synthesis -------------------------------------------------------------------------------

    def _prompt_embeds(self, text: str, conds: Any, exaggeration: float) -> Any:
        """(2, L, D) prefill embeddings exactly as T3.inference builds them for CFG."""
        import torch
        import torch.nn.functional as F
        from chatterbox.models.t3.modules.cond_enc import T3Cond
        from chatterbox.tts import punc_norm

        t3, dev = self._t3, self._device
        dtype = t3.speech_head.weight.dtype
        tokens = self._tokenizer.text_to_tokens(punc_norm(text)).to(dev)
        if tokens.shape[1] > self.options.max_text_tokens:
            raise InvalidRequestError(
                f"text of {tokens.shape[1]} tokens is longer than max_text_tokens="
                f"{self.options.max_text_tokens}: split it into sentences"
            )
        tokens = torch.cat([tokens, tokens], dim=0)
        tokens = F.pad(tokens, (1, 0), value=t3.hp.start_text_token)
        tokens = F.pad(tokens, (0, 1), value=t3.hp.stop_text_token)
        src = conds.t3
        t3_cond = T3Cond(
            speaker_emb=src.speaker_emb.to(dev, dtype),
            cond_prompt_speech_tokens=src.cond_prompt_speech_tokens,
            emotion_adv=(exaggeration * torch.ones(1, 1, 1)).to(dev, dtype),
        )
        start = t3.hp.start_speech_token * torch.ones_like(tokens[:, :1])
        with torch.inference_mode():
            # cfg_weight=1 zeroes the unconditional row's text; the real weight is a knob
            embeds, _ = t3.prepare_input_embeds(
                t3_cond=t3_cond, text_tokens=tokens, speech_tokens=start, cfg_weight=1.0
            )
            # upstream appends a second start-of-speech token after the one above
            bos = t3.speech_emb(start[:1]) + t3.speech_pos_emb.get_fixed_embedding(0)
            return torch.cat([embeds, bos.expand(2, -1, -1)], dim=1)

    def _resolve_voice(self, voice: VoiceConditioning | None) -> Any:
        if voice is None:
            if self._default is None:
                raise VoiceError(
                    "Chatterbox has no default voice: the checkpoint has no conds.pt; "
                    "pass a cloned voice (reference clip) or set a default voice"
                )
            return self._default
        if voice.engine != self.name:
            raise VoiceError(
                f"voice {voice.voice_id!r} was conditioned for {voice.engine}, not chatterbox"
            )
        if voice.data.t3.speaker_emb.device != self._device:  # loaded before the engine
            return self._to_device(voice.data)
        return voice.data

    def stream(
        self,
        text: str,
        voice: VoiceConditioning | None,
        params: SynthesisParams,
        cancel: threading.Event,
    ) -> Iterator[np.ndarray]:
        """Yield float32 24 kHz chunks. Consume it to the end or `close()` it: the utterance
        holds the engine's generation lock until then."""
        self.load()
        conds = self._resolve_voice(voice)
        if voice is not None and voice.model_revision != self.model_revision:
            logger.warning("voice %s was conditioned for another model revision", voice.voice_id)
        if not text.strip():
            return
        yield from self._stream(text, conds, params, cancel)

    def _stream(
        self, text: str, conds: Any, params: SynthesisParams, cancel: threading.Event,
        *, max_new_tokens: int | None = None,
    ) -> Iterator[np.ndarray]:
        import torch

        from .chatterbox_t3 import SamplingParams

        # the request's knobs where given, SamplingParams' own (upstream's) defaults elsewhere
        knobs = {f.name: getattr(params, f.name) for f in fields(SamplingParams)}
        sampling = SamplingParams(**{k: v for k, v in knobs.items() if v is not None})
        exaggeration = 0.5 if params.exaggeration is None else params.exaggeration
        seed = params.seed if params.seed is not None else secrets.randbits(62)
        started = time.perf_counter()
        stats = StreamStats()
        # wait for the engine, but give up as soon as the caller cancels
        while not self._generate_lock.acquire(timeout=0.05):
            if cancel.is_set():
                return
        try:
            with torch.inference_mode():
                embeds = self._prompt_embeds(text, conds, exaggeration)
                voice = self._streamer.prepare(conds.gen)
                decoder = self._decoder
                t0 = time.perf_counter()
                decoder.start(embeds, sampling, seed)
                cap = decoder.capacity_for(embeds.shape[1])
                limit = min(cap, max_new_tokens or self.options.max_new_tokens)
                stream = self._streamer.open(voice, seed=seed)
                stats.prefill_s = time.perf_counter() - t0
                batches = self._speech_batches(
                    limit, stream.tokens_needed_for_next_chunk, cancel, stats
                )
                try:
                    for new, finished in batches:
                        stream.add(new)
                        t2 = time.perf_counter()
                        chunks = stream.finish_chunks() if finished else stream.ready_chunks()
                        stats.vocoder_s += time.perf_counter() - t2
                        for chunk in chunks:
                            if cancel.is_set():
                                stats.cancelled = True
                                return
                            stats.chunk_tokens = list(stream.chunk_tokens)
                            stats.speech_tokens = list(stream.tokens)
                            if stats.first_chunk_s is None:
                                stats.first_chunk_s = time.perf_counter() - started
                                stats.tokens_at_first_chunk = len(stream.tokens)
                                stats.sampled_at_first_chunk = decoder.length
                            elif self._watermarker is not None:
                                chunk = self._watermark(chunk)
                            stats.audio_s += len(chunk) / SAMPLE_RATE
                            yield np.clip(chunk, -1.0, 1.0).astype(np.float32, copy=False)
                finally:
                    batches.close()  # a pipelined decoder thread is stopped and joined here
                stats.cancelled = stats.cancelled or cancel.is_set()
                stats.tokens = decoder.length
        finally:
            stats.tokens = stats.tokens or (self._decoder.length if self._decoder else 0)
            stats.total_s = time.perf_counter() - started
            self.last_stats = stats
            self._generate_lock.release()

    def _decode_speech(
        self, limit: int, tokens_wanted: Callable[[], int], stop: Callable[[], bool],
        stats: StreamStats,
    ) -> Iterator[tuple[list[int], bool]]:
        """(new speech tokens, finished) at every host read of the started decoder.

        A read comes every `stop_check_interval` steps, or exactly when the streamer has the
        tokens for its next chunk (`tokens_wanted()`, a running total of speech tokens).
        """
        decoder = self._decoder
        hp = self._t3.hp
        interval = decoder.stop_check_interval
        read = produced = 0
        while True:
            want = tokens_wanted() - produced
            # a pipelined streamer may lag behind: then read at the interval
            steps = interval if want <= 0 else min(interval, want)
            target = min(limit, decoder.length + steps)
            t1 = time.perf_counter()
            while decoder.length < target:
                if stop():
                    stats.t3_s += time.perf_counter() - t1
                    return
                decoder.step()
            new = decoder.tokens(read, decoder.length)  # the only host sync
            stats.t3_s += time.perf_counter() - t1
            read = decoder.length
            if hp.stop_speech_token in new:
                new = new[: new.index(hp.stop_speech_token)]
                stats.stopped = True
            speech = [t for t in new if t < hp.start_speech_token]  # ids >= 6561 aren't speech
            produced += len(speech)
            finished = stats.stopped or decoder.length >= limit
            yield speech, finished
            if finished:
                return

    def _speech_batches(
        self, limit: int, tokens_wanted: Callable[[], int], cancel: threading.Event,
        stats: StreamStats,
    ) -> Iterator[tuple[list[int], bool]]:
        """`_decode_speech` in this thread, or (`options.pipeline`) in a thread of its own, on
        a CUDA stream of its own, so T3 decodes while S3Gen renders the previous chunk."""
        if not self.options.pipeline:
            yield from self._decode_speech(limit, tokens_wanted, cancel.is_set, stats)
            return
        import torch

        on_cuda = self._device.type == "cuda"
        t3_stream = torch.cuda.Stream(self._device) if on_cuda else None
        if t3_stream is not None:
            t3_stream.wait_stream(torch.cuda.current_stream(self._device))  # after the prefill
        handoff: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        halt = threading.Event()

        def stop() -> bool:
            return halt.is_set() or cancel.is_set()

        def decode() -> None:
            try:
                with contextlib.ExitStack() as scope:
                    scope.enter_context(torch.inference_mode())
                    if t3_stream is not None:
                        scope.enter_context(torch.cuda.stream(t3_stream))
                    for batch in self._decode_speech(limit, tokens_wanted, stop, stats):
                        handoff.put(("batch", batch))
            except BaseException as e:  # handed to the consumer, raised there
                handoff.put(("error", e))
            finally:
                handoff.put(("end", None))

        worker = threading.Thread(target=decode, name="localtts-chatterbox-t3", daemon=True)
        worker.start()
        try:
            while True:
                kind, item = handoff.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise item
                yield item
        finally:
            halt.set()
            worker.join()  # the decoder is this utterance's until its thread is gone
            if t3_stream is not None:
                torch.cuda.current_stream(self._device).wait_stream(t3_stream)

    def _watermark(self, chunk: np.ndarray) -> np.ndarray:
        marked = self._watermarker.apply_watermark(chunk, sample_rate=SAMPLE_RATE)
        return np.asarray(marked, dtype=np.float32).reshape(-1)[: len(chunk)]

    # -- health ----------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        opts = self.options
        info: dict[str, Any] = {
            "engine": self.name,
            "sample_rate": self.sample_rate,
            "model": self.model or "custom",
            "loaded": self._loaded,
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        }
        if not self._loaded:
            return info
        decoder = self._decoder
        info.update(
            device=str(self._device),
            model_revision=self.model_revision,
            dtype=str(self._t3.speech_head.weight.dtype).replace("torch.", ""),
            flow_dtype=str(next(self._s3gen.flow.parameters()).dtype).replace("torch.", ""),
            vocoder_dtype=str(next(self._s3gen.mel2wav.parameters()).dtype).replace("torch.", ""),
            static_kv_cache=decoder.static_cache,
            kv_cache_len=decoder.max_cache_len,
            compiled=decoder.compiled,
            cuda_graph=decoder.graph_captured,
            # where inductor really caches: a directory set before ours (by the user, or by
            # an earlier compile in this process) wins over the option
            compile_cache_dir=(
                os.environ.get("TORCHINDUCTOR_CACHE_DIR") if decoder.compiled else None
            ),
            stop_check_interval=decoder.stop_check_interval,
            pipeline=opts.pipeline,
            watermark=self._watermarker is not None,
            default_voice=self._default is not None,
            load_s=self._load_s,
            warmup_s=self._warmup_s,
        )
        optimizations = ["streaming-chunks"]
        if decoder.static_cache:
            optimizations.append("static-kv-cache")
        if info["dtype"] != "float32":
            optimizations.append(f"t3-{info['dtype']}")
        if decoder.compiled:
            optimizations.append("torch-compile")
        if decoder.graph_captured:
            optimizations.append("cuda-graph")
        if opts.pipeline:
            optimizations.append("t3-s3gen-pipeline")
        info["optimizations"] = optimizations
        return info

