"""Chatterbox engine options and what one utterance did (no torch import here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

DTypeName = Literal["auto", "float32", "bfloat16", "float16"]
SAMPLE_RATE = 24_000  # chatterbox S3GEN_SR; known without importing torch


@dataclass(frozen=True)
class ChatterboxOptions:
    """Engine options. The device is taken as given (the host selection chooses it, host.py);
    "auto" / `None` elsewhere mean "what the host table gives this device" (see `info()`)."""

    device: str = "cpu"  # "cuda" | "cuda:N" | "cpu"
    t3_dtype: DTypeName = "auto"  # auto: bf16 on CUDA (fp16 without bf16), fp32 on CPU
    flow_dtype: DTypeName = "float32"  # S3Gen flow; HiFT always fp32 (reduced precision drifts)
    compile: bool | None = None  # torch.compile the decode step; default: on CUDA
    cuda_graph: bool | None = None  # capture the decode step; default: on CUDA
    warmup: bool = True  # compile/capture and run one utterance at load
    compile_cache_dir: Path | None = None  # default: <data_dir>/torch-compile-cache
    stop_check_interval: int = 8  # steps between host reads (stop token, streaming)
    # streams decoding at once (KV cache slots; None: 16 on CUDA, 4 on the CPU); more wait
    max_streams: int | None = None
    max_new_tokens: int = 1000  # upstream's cap (40 s of speech)
    max_text_tokens: int = 400
    watermark: bool = True  # Perth watermark on every chunk but the first
    first_chunk_tokens: int = 12
    lookahead_tokens: int = 3
    chunk_growth: float = 2.0
    max_chunk_tokens: int = 100
    context_tokens: int = 25
    n_cfm_timesteps: int = 10

    def __post_init__(self) -> None:
        if self.device == "auto":
            raise ValueError('device "auto" is decided by the host selection: pass cpu or cuda')

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
