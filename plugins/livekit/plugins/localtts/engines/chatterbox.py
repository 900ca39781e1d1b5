"""Chatterbox (Resemble AI, chatterbox-tts): the CUDA engine, streaming inside the sentence.

T3 (Llama, text -> 25 Hz speech tokens) decodes every active stream in one batched step over
static KV cache slots, compiled and captured as a CUDA graph per batch size
(`chatterbox_t3`); S3Gen (flow + HiFT, tokens -> 24 kHz audio) renders each stream's chunks
between those steps (`chatterbox_s3gen`); one stream's steps are `chatterbox_stream`'s. All
of it runs on the engine's scheduler thread, which puts new streams' first chunks first
(`scheduler`). On CPU the same step runs eagerly in fp32 without graphs, which is what the
tests exercise.

Weights come from a local directory or the Hugging Face cache (`ResembleAI/chatterbox`); the
hub is only contacted when `allow_download` is set.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..host import HostInfo, concrete_settings, default_precision
from ..settings import EngineSettings
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
from .chatterbox_checkpoint import DEFAULT_VOICE_FILE, WEIGHTS, load_parts
from .chatterbox_options import SAMPLE_RATE, ChatterboxOptions, StreamStats
from .chatterbox_stream import ChatterboxStreamWork, SlotProbe, decode_batch, sampling_params
from .scheduler import EngineScheduler, capacity_probes
from .weights import DIGEST_CACHE_FILE, resolve_weights, weights_problem, weights_revision

logger = logging.getLogger("livekit.plugins.localtts.chatterbox")

_TOKENS_PER_SECOND = 25  # speech tokens per second of audio (real time)
_ENC_COND_SECONDS = 6  # T3 speech prompt (upstream ChatterboxTTS.ENC_COND_LEN)
_DEC_COND_SECONDS = 10  # S3Gen reference (upstream DEC_COND_LEN)
_MIN_CLIP_SECONDS = 1.0
_CONDITIONING_FORMAT = 1
_INJECTED_VOICE = "default"  # the id of a default voice handed in as `conds`

__all__ = ["SAMPLE_RATE", "ChatterboxEngine", "ChatterboxOptions", "StreamStats"]


def _dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


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
        digest_cache: Path | None = None,
        scheduler: EngineScheduler | None = None,
    ) -> None:
        """Either `model` (a checkpoint directory or Hugging Face repo id), or a built
        `ChatterboxTTS` (`tts`), or its parts (`t3`, `s3gen`, `ve`, `tokenizer`, optional
        default-voice `conds`): tests and benches inject random-weight models this way.
        `digest_cache`: where the weights' content digests are remembered (weights.py).
        `scheduler`: how streams share the model (default: batched, capacity measured at
        warmup; its `max_batch` is capped by `options.max_streams`)."""
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
        self._digest_cache = digest_cache
        # every stream, the load and the conditioning run on this thread; T3 steps are batched
        self.scheduler = scheduler or EngineScheduler(self.name)
        self.scheduler.decode_batch = lambda works: decode_batch(self, works)
        self._loaded = False
        self._device: Any = None
        self._t3: Any = None
        self._s3gen: Any = None
        self._ve: Any = None
        self._tokenizer: Any = None
        self._decoder: Any = None
        self._streamer: Any = None
        self._watermarker: Any = None
        self.default_voice: VoiceConditioning | None = None
        self._compile_cache_dir: Path | None = self.options.compile_cache_dir
        self._load_s: float | None = None
        self._warmup_s: float | None = None
        self.last_stats: StreamStats | None = None

    # -- construction from settings --------------------------------------------------------------

    @classmethod
    def from_settings(cls, settings: EngineSettings) -> ChatterboxEngine:
        settings = concrete_settings("chatterbox", settings)
        options = ChatterboxOptions(
            device=settings.device,
            t3_dtype=settings.dtype,
            compile=settings.compile,
            n_cfm_timesteps=settings.chatterbox_cfm_steps,
            watermark=settings.chatterbox_watermark,
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
            digest_cache=settings.data_dir / DIGEST_CACHE_FILE,
            scheduler=EngineScheduler.from_settings("chatterbox", settings),
        )

    @staticmethod
    def availability(settings: EngineSettings) -> str | None:
        """Cheap: packages importable (without importing torch) and weights reachable."""
        for module, package in (("torch", "torch"), ("chatterbox", "chatterbox-tts")):
            if importlib.util.find_spec(module) is None:
                return f"{package} is not installed: pip install 'localtts[chatterbox]'"
        return weights_problem(
            WEIGHTS, settings.chatterbox_model, allow_download=settings.allow_download
        )

    @property
    def model_revision(self) -> str:
        if self._revision is None:
            if self.model is None:
                return "custom"
            self._revision = weights_revision(
                WEIGHTS, self._checkpoint(), digest_cache=self._digest_cache
            )
        return self._revision

    def _checkpoint(self) -> Path:
        assert self.model is not None
        return resolve_weights(WEIGHTS, self.model, allow_download=self.allow_download)

    # -- limits ----------------------------------------------------------------------------------

    min_reference_seconds = _MIN_CLIP_SECONDS
    # S3Gen reads the first 10 s and T3's speech prompt the first 6 s, but the voice encoder's
    # speaker embedding averages the whole clip (as upstream's prepare_conditionals does)
    max_reference_seconds = None

    def max_piece_chars(self, language: str | None) -> int | None:
        """T3 takes `max_text_tokens`; its tokenizer gives at most one token per character,
        and `punc_norm` may add one (a final period)."""
        return self.options.max_text_tokens - 1

    # -- loading ---------------------------------------------------------------------------------

    def _t3_dtype(self) -> Any:
        if self.options.t3_dtype != "auto":  # honoured on CPU too (slower; tests use it)
            return _dtype(self.options.t3_dtype)
        on_cuda = self._device.type == "cuda"
        bf16 = on_cuda and HostInfo.detect().bf16
        return _dtype(default_precision(self.name, use_cuda=on_cuda, bf16=bf16)[0])

    def load(self) -> None:
        """Load (and, with `options.warmup`, warm up) on the scheduler thread. Idempotent."""
        if not self._loaded or (self.options.warmup and self._warmup_s is None):
            self.scheduler.call(self._load_and_warm, self.options.warmup)

    def _load_and_warm(self, warm: bool) -> None:
        self._load()
        if warm:
            self._warm()

    def _load(self) -> None:
        if self._loaded:
            return
        started = time.perf_counter()
        try:
            import torch

            from .chatterbox_s3gen import S3GenStreamer
        except ImportError as e:
            raise EngineUnavailableError(
                f"the chatterbox engine needs torch and chatterbox-tts: "
                f"pip install 'localtts[chatterbox]' ({e})"
            ) from e
        self._device = torch.device(self.options.device)
        if self._device.type == "cuda" and not torch.cuda.is_available():
            raise EngineUnavailableError(
                f"device {self.options.device!r} given but torch sees no CUDA GPU "
                f"(torch {torch.__version__}); use LOCALTTS_DEVICE=cpu or auto"
            )
        parts = self._parts
        if parts is None:
            directory = self._checkpoint()
            if self._revision is None:
                self._revision = weights_revision(
                    WEIGHTS, directory, digest_cache=self._digest_cache
                )
            parts = load_parts(directory)
        self._place(parts)
        self._streamer = S3GenStreamer(self._s3gen, config=self.options.streaming_config())
        if self.options.watermark:
            try:
                import perth

                self._watermarker = perth.PerthImplicitWatermarker(device=str(self._device))
            except Exception as e:
                raise EngineUnavailableError(
                    f"the Perth watermarker (resemble-perth) failed to load: {e}; "
                    "install it or turn the watermark off"
                ) from e
        self._build_decoder()
        self._parts = None  # the engine owns the (moved) modules now
        self._loaded = True
        self._load_s = time.perf_counter() - started

    def _place(self, parts: dict[str, Any]) -> None:
        """The models on the engine's device, T3 in its dtype."""
        dev, opts = self._device, self.options
        self._t3 = parts["t3"].to(device=dev, dtype=self._t3_dtype()).eval()
        self._s3gen = parts["s3gen"].to(dev).eval()
        if opts.flow_dtype not in ("auto", "float32"):  # HiFT stays fp32 (see options)
            self._s3gen.flow.to(_dtype(opts.flow_dtype))
        self._ve = parts["ve"].to(dev).eval()
        self._tokenizer = parts["tokenizer"]
        if self.default_voice is not None:  # set before loading: now on the device
            self.default_voice = self._on_device(self.default_voice)
        elif parts.get("conds") is not None:
            voice_id = DEFAULT_VOICE_FILE if self.model is not None else _INJECTED_VOICE
            self.default_voice = VoiceConditioning(
                voice_id, self.name, self.model_revision, self._to_device(parts["conds"])
            )

    def _build_decoder(self) -> None:
        """The batched T3 decoder: a static KV cache slot per stream, the step compiled and/or
        graph-captured per batch size as the options (or the host table, for "auto") say;
        compiled and captured now, not at a request."""
        from .chatterbox_t3 import T3BatchDecoder, enable_compile_cache

        opts = self.options
        on_cuda = self._device.type == "cuda"
        default_compile = default_precision(self.name, use_cuda=on_cuda, bf16=False)[1]
        use_compile = default_compile if opts.compile is None else bool(opts.compile)
        use_graph = on_cuda if opts.cuda_graph is None else bool(opts.cuda_graph) and on_cuda
        if use_compile and self._compile_cache_dir is not None:
            effective = enable_compile_cache(self._compile_cache_dir)
            if effective.resolve() != self._compile_cache_dir.resolve():
                logger.info("torch compile cache: %s (TORCHINDUCTOR_CACHE_DIR)", effective)
        # every slot holds a whole utterance's keys and values: a real T3 slot is ~360 MB in
        # bf16, ~720 MB in fp32, so fewer of them on the CPU
        slots = opts.max_streams or (16 if on_cuda else 4)
        slots = min(slots, self.scheduler.max_batch)
        self.scheduler.max_batch = slots

        def build(compile_step: bool) -> T3BatchDecoder:
            return T3BatchDecoder(
                self._t3, slots=slots, max_cache_len=self._cache_len(),
                compile_step=compile_step, cuda_graph=use_graph,
                stop_check_interval=opts.stop_check_interval,
            )  # fmt: skip

        self._decoder = build(use_compile)
        # on the CPU the compiled step is specialized per batch size when first used (each
        # compile takes seconds); a GPU captures every size now
        buckets = None if on_cuda else (1,)
        try:
            self._decoder.capture(buckets)
        except Exception:
            if not use_compile:
                raise
            # an inductor/dynamo failure must not take the engine down: keep the graph
            logger.exception("compiling the T3 decode step failed; continuing without it")
            self._decoder = build(False)
            self._decoder.capture(buckets)

    def _cache_len(self) -> int:
        hp = self._t3.hp
        cond_len = 1 + (32 if hp.use_perceiver_resampler else hp.speech_cond_prompt_len) + 1
        need = cond_len + self.options.max_text_tokens + 2 + 1 + self.options.max_new_tokens
        return int(np.ceil(need / 64) * 64)

    def warmup(self) -> None:
        """One short utterance through both models (allocator, kernels, first-call costs),
        then the capacity: how many streams keep real time. Once per engine (load() runs it
        when `options.warmup`); on the scheduler thread."""
        self.scheduler.call(self._load_and_warm, True)

    def _warm(self) -> None:
        if self._warmup_s is not None:
            return
        started = time.perf_counter()
        chunks = 0
        params = SynthesisParams(seed=0)
        max_new = self.options.first_chunk_tokens + 2 * self.options.lookahead_tokens
        conds = self._warmup_conditionals()
        for _ in self.scheduler.stream(
            lambda: ChatterboxStreamWork(self, "Warming up.", conds, params, max_new),
            threading.Event(),
        ):
            chunks += 1
        self._warmup_s = time.perf_counter() - started
        stats = self.last_stats
        s3gen_per_token = stats.vocoder_s / max(1, sum(stats.chunk_tokens)) if stats else 0.0
        self.scheduler.set_measured_capacity(self._measure_capacity(s3gen_per_token))
        logger.info("chatterbox warmup: %d chunks in %.2fs; %s stream(s) at real time", chunks,
                    self._warmup_s, self.scheduler.capacity)

    def _measure_capacity(self, s3gen_per_token: float) -> int:
        """Streams kept at real time: the largest batch whose T3 step plus that many streams'
        S3Gen rendering per token fits in one token's audio (40 ms), with a 10% margin."""
        import torch

        decoder = self._decoder
        embeds, _ = self._prompt_embeds("Measuring.", self._warmup_conditionals(), 0.5)
        budget = 0.9 / _TOKENS_PER_SECOND
        capacity = 0
        for batch in capacity_probes(decoder.slots):
            if self._device.type == "cpu" and decoder.compiled and batch > 1:
                break  # each size compiles for seconds on the CPU: not at startup
            owners = [SlotProbe() for _ in range(batch)]
            for i, owner in enumerate(owners):
                decoder.start(owner, embeds, sampling_params(SynthesisParams()), i)
            decoder.step(owners, 1)  # first use of this size (compiles there)
            if self._device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            steps = 4
            decoder.step(owners, steps)
            decoder.tokens([(o.slot, 0, 1) for o in owners])  # waits for the device
            step_s = (time.perf_counter() - started) / steps
            for owner in owners:
                decoder.release(owner)
            if step_s + batch * s3gen_per_token > budget:
                break
            capacity = batch
        return capacity

    def _warmup_conditionals(self) -> Any:
        if self.default_voice is not None:
            return self.default_voice.data
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

    def _on_device(self, voice: VoiceConditioning) -> VoiceConditioning:
        if voice.data.t3.speaker_emb.device == self._device:
            return voice
        return VoiceConditioning(
            voice.voice_id, voice.engine, voice.model_revision, self._to_device(voice.data)
        )

    def set_default_voice(self, voice: VoiceConditioning | None) -> None:
        """The voice spoken when `stream` gets voice=None (replaces the checkpoint's conds.pt;
        None: no default voice)."""
        if voice is not None:
            self._check_voice(voice)
            if self._loaded:
                voice = self._on_device(voice)
        self.default_voice = voice

    def _check_voice(self, voice: VoiceConditioning) -> None:
        if voice.engine != self.name:
            raise VoiceError(
                f"voice {voice.voice_id!r} was conditioned for {voice.engine}, not chatterbox"
            )

    def condition(self, clip: VoiceClip) -> VoiceConditioning:
        self.load()
        return self.scheduler.call(self._condition, clip)

    def _condition(self, clip: VoiceClip) -> VoiceConditioning:
        import librosa
        import torch
        from chatterbox.models.s3tokenizer import S3_SR
        from chatterbox.models.t3.modules.cond_enc import T3Cond
        from chatterbox.tts import Conditionals

        audio = reference_audio(clip, min_seconds=self.min_reference_seconds, engine="Chatterbox")
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

    def _prompt_embeds(self, text: str, conds: Any, exaggeration: float) -> tuple[Any, list[int]]:
        """(2, L, D) prefill embeddings exactly as T3.inference builds them for CFG, and the
        text's token ids (without start/stop-of-text)."""
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
        ids = tokens[0].tolist()
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
            return torch.cat([embeds, bos.expand(2, -1, -1)], dim=1), ids

    def _resolve_voice(self, voice: VoiceConditioning | None) -> Any:
        if voice is None:
            if self.default_voice is None:
                raise VoiceError(
                    "Chatterbox has no default voice: the checkpoint has no conds.pt; "
                    "pass a cloned voice (reference clip) or set a default voice"
                )
            voice = self.default_voice
        self._check_voice(voice)
        return self._on_device(voice).data  # a voice loaded before the engine moves here

    def stream(
        self,
        text: str,
        voice: VoiceConditioning | None,
        params: SynthesisParams,
        cancel: threading.Event,
    ) -> Iterator[np.ndarray]:
        """Yield float32 24 kHz chunks, computed on the scheduler thread (T3 batched with
        every other active stream)."""
        self.load()
        conds = self._resolve_voice(voice)
        if voice is not None and voice.model_revision != self.model_revision:
            logger.warning("voice %s was conditioned for another model revision", voice.voice_id)
        if not text.strip():
            return
        yield from self.scheduler.stream(
            lambda: ChatterboxStreamWork(self, text, conds, params), cancel
        )

    def _watermark(self, chunk: np.ndarray) -> np.ndarray:
        marked = self._watermarker.apply_watermark(chunk, sample_rate=SAMPLE_RATE)
        return np.asarray(marked, dtype=np.float32).reshape(-1)[: len(chunk)]

    # -- health ----------------------------------------------------------------------------------

    def info(self) -> EngineInfo:
        opts = self.options
        options = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()}
        default_voice = self.default_voice.voice_id if self.default_voice else None
        if not self._loaded:
            return EngineInfo(
                engine=self.name, sample_rate=self.sample_rate, device=opts.device,
                dtype=None if opts.t3_dtype == "auto" else opts.t3_dtype,
                model=self.model or "custom", model_revision=None, loaded=False,
                default_voice=default_voice, details={"options": options},
            )  # fmt: skip
        decoder = self._decoder
        dtype = str(self._t3.speech_head.weight.dtype).replace("torch.", "")
        optimizations = ["streaming-chunks", "static-kv-cache", "batched-t3"]
        if dtype != "float32":
            optimizations.append(f"t3-{dtype}")
        if decoder.compiled:
            optimizations.append("torch-compile")
        if decoder.graph_captured:
            optimizations.append("cuda-graph")
        details = {
            "options": options,
            "flow_dtype": str(next(self._s3gen.flow.parameters()).dtype).replace("torch.", ""),
            "vocoder_dtype": str(next(self._s3gen.mel2wav.parameters()).dtype).replace(
                "torch.", ""
            ),
            "kv_cache_len": decoder.max_cache_len,
            "kv_cache_slots": decoder.slots,
            "compiled": decoder.compiled,
            "cuda_graph": decoder.graph_captured,
            "cuda_graph_batches": decoder.captured_buckets,
            # where inductor really caches: a directory set before ours (by the user, or by
            # an earlier compile in this process) wins over the option
            "compile_cache_dir": (
                os.environ.get("TORCHINDUCTOR_CACHE_DIR") if decoder.compiled else None
            ),
            "stop_check_interval": decoder.stop_check_interval,
            "watermark": self._watermarker is not None,
            "load_s": self._load_s,
            "warmup_s": self._warmup_s,
            **self.scheduler.info(),
        }
        return EngineInfo(
            engine=self.name, sample_rate=self.sample_rate, device=str(self._device),
            dtype=dtype, model=self.model or "custom", model_revision=self.model_revision,
            loaded=True, default_voice=default_voice, optimizations=tuple(optimizations),
            capacity=self.scheduler.capacity, details=details,
        )  # fmt: skip
