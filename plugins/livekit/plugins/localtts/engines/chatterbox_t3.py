"""Chatterbox T3 (text -> speech tokens) decoding with a static KV cache.

Why not `T3.inference`: the stock loop grows the KV cache with `torch.cat`, asks for attentions
and hidden states every step, syncs the GPU for the EOS check every token and cannot be
captured as a CUDA graph. Here the decode step is one fixed-shape function of preallocated
buffers (token, positions, KV cache, "seen" mask, sampling knobs): forward + classifier-free
guidance + sampling + state update, with no host sync. On CUDA it is compiled and/or captured
as a CUDA graph once and replayed per token; the host reads the sampled tokens (and checks the
stop token) every `stop_check_interval` steps. On CPU the very same step runs eagerly in fp32.

The math mirrors chatterbox-tts 0.1.7 `T3.inference` exactly (same prefill sequence including
its doubled start-of-speech token, same position embeddings, CFG batch of two, HF repetition
penalty / temperature / min-p / top-p semantics); tests check the tokens match it.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .base import InvalidRequestError, KVCacheOverflowError

if TYPE_CHECKING:
    from .chatterbox_options import StreamStats

CFG_BATCH = 2  # row 0: conditional, row 1: unconditional (zeroed text embedding)
# (layer, head) of T3's Llama whose attention follows the text being spoken: upstream's
# AlignmentStreamAnalyzer (chatterbox-tts 0.1.7, LLAMA_ALIGNED_HEADS) reads the same three
ALIGNED_HEADS: tuple[tuple[int, int], ...] = ((12, 15), (13, 11), (9, 2))


@dataclass(frozen=True)
class SamplingParams:
    """T3's sampling knobs; out of range is the request's fault (InvalidRequestError)."""

    temperature: float = 0.8
    min_p: float = 0.05
    top_p: float = 1.0
    repetition_penalty: float = 1.2
    cfg_weight: float = 0.5

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise InvalidRequestError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.min_p <= 1.0:
            raise InvalidRequestError(f"min_p must be within [0, 1], got {self.min_p}")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidRequestError(f"top_p must be within (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise InvalidRequestError(
                f"repetition_penalty must be > 0, got {self.repetition_penalty}"
            )
        if self.cfg_weight < 0:
            raise InvalidRequestError(f"cfg_weight must be >= 0, got {self.cfg_weight}")


def filter_logits(
    logits: torch.Tensor,
    seen: torch.Tensor,
    *,
    cfg_weight: torch.Tensor,
    repetition_penalty: torch.Tensor,
    temperature: torch.Tensor,
    min_p: torch.Tensor,
    top_p: torch.Tensor,
) -> torch.Tensor:
    """CFG-combined, penalized, filtered float32 logits (1, V); -inf marks removed tokens.

    Same results as chatterbox's HF processors (RepetitionPenalty, temperature, MinP, TopP) but
    with every knob a tensor, so one captured graph serves every request.
    """
    logits = logits.float()
    cond, uncond = logits[0:1], logits[1:2]
    x = cond + cfg_weight * (cond - uncond)
    penalized = torch.where(x < 0, x * repetition_penalty, x / repetition_penalty)
    x = torch.where(seen, penalized, x)
    x = x / temperature
    probs = torch.softmax(x, dim=-1)
    x = x.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), float("-inf"))
    sorted_x, sorted_idx = torch.sort(x, dim=-1, descending=False)
    cumulative = torch.softmax(sorted_x, dim=-1).cumsum(dim=-1)
    sorted_remove = cumulative <= (1 - top_p)
    sorted_remove[..., -1:] = False  # always keep the most likely token
    remove = sorted_remove.scatter(-1, sorted_idx, sorted_remove)
    return x.masked_fill(remove, float("-inf"))


def _rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Llama RoPE (rotate-half form, as transformers' apply_rotary_pos_emb), x: (B, H, T, d),
    cos/sin: (1, T, d). Local so torch.compile never meets the hub-kernel decorator."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1)


class T3Decoder:
    """Single-stream decoding state shared by both cache kinds: positions, the sampled-token
    buffer, the "seen" mask for the repetition penalty, the sampling knobs, the generator.

    Not thread-safe: the engine serializes generation (one utterance at a time).
    """

    static_cache = False

    def __init__(self, t3: Any, *, max_cache_len: int, stop_check_interval: int = 8) -> None:
        if getattr(t3, "is_gpt", False):
            raise ValueError("only Llama-based T3 models are supported")
        self.t3 = t3
        self.hp = t3.hp
        param = t3.speech_head.weight
        self.device = param.device
        self.dtype = param.dtype
        self.max_cache_len = max_cache_len
        self.stop_check_interval = max(1, stop_check_interval)
        self.vocab = self.hp.speech_tokens_dict_size
        dev = self.device
        # per-utterance state, updated in place by the step (a CUDA graph replays on these)
        self._token = torch.zeros(1, dtype=torch.long, device=dev)
        self._cache_pos = torch.zeros(1, dtype=torch.long, device=dev)
        self._speech_pos = torch.zeros(1, dtype=torch.long, device=dev)
        self._n = torch.zeros(1, dtype=torch.long, device=dev)
        self._seen = torch.zeros(1, self.vocab, dtype=torch.bool, device=dev)
        self._out = torch.zeros(self.hp.max_speech_tokens, dtype=torch.long, device=dev)
        self._knobs = {
            name: torch.zeros((), dtype=torch.float32, device=dev)
            for name in ("cfg_weight", "repetition_penalty", "temperature", "min_p", "top_p")
        }
        # a private generator keeps seeded requests reproducible whatever else uses torch's RNG
        self._generator = torch.Generator(device=dev)
        self._graph_uses_generator = True
        self._graph: Any = None
        self.length = 0  # tokens sampled in the current utterance
        self.prefill_len = 0
        # the text position (cache index) each token was sampled at, where the decoder reads
        # the aligned heads (-1: not read)
        self.aligned_heads: tuple[tuple[int, int], ...] = ()
        self._text_pos = torch.full((self.hp.max_speech_tokens,), -1, dtype=torch.long, device=dev)

    # -- subclasses: the transformer with its cache --------------------------------------------

    def _prefill_logits(self, embeds: torch.Tensor) -> torch.Tensor:
        """(2, L, D) prompt -> (2, V) logits of its last position; fills the cache."""
        raise NotImplementedError

    def _decode_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(2, 1, D) at position `_cache_pos` -> (2, V) logits; appends to the cache."""
        raise NotImplementedError

    # -- shared step ------------------------------------------------------------------------------

    def _sample_and_advance(self, logits: torch.Tensor) -> None:
        filtered = filter_logits(logits, self._seen, **self._knobs)
        probs = torch.softmax(filtered, dim=-1)
        # exponential race (Gumbel-max): same distribution as multinomial, graph-capturable
        race = torch.empty_like(probs).exponential_(
            1.0, generator=self._generator if self._graph_uses_generator else None
        ).clamp_min_(1e-10)  # a zero draw would make 0/0 = NaN win the argmax
        token = (probs / race).argmax(dim=-1)  # (1,)
        self._token.copy_(token)
        self._seen.index_fill_(1, token, True)
        self._out.index_copy_(0, self._n, token)
        self._n.add_(1)

    def _decode_step(self) -> None:
        t3 = self.t3
        emb = t3.speech_emb(self._token) + t3.speech_pos_emb.emb(self._speech_pos)  # (1, D)
        x = emb.view(1, 1, -1).expand(CFG_BATCH, 1, -1)
        self._sample_and_advance(self._decode_logits(x))
        self._cache_pos.add_(1)
        self._speech_pos.add_(1)

    # -- public API -------------------------------------------------------------------------------

    def capacity_for(self, prefill_len: int) -> int:
        """How many tokens fit after a prefill of this length."""
        return min(self.max_cache_len - prefill_len, self.hp.max_speech_tokens)

    @torch.inference_mode()
    def start(
        self,
        embeds: torch.Tensor,
        sampling: SamplingParams,
        seed: int,
        text_span: tuple[int, int] | None = None,
    ) -> None:
        """Prefill with the (2, L, D) prompt embeddings and sample the first token.
        `text_span`: where the text tokens are in the prompt (for `text_positions`)."""
        if embeds.shape[0] != CFG_BATCH:
            raise ValueError("embeds must hold the conditional and unconditional rows")
        length = embeds.shape[1]
        if self.capacity_for(length) < 1:
            raise KVCacheOverflowError(f"prompt of {length} positions exceeds the KV cache")
        self._seed(seed)
        knobs = {
            "cfg_weight": sampling.cfg_weight,
            "repetition_penalty": sampling.repetition_penalty,
            "temperature": sampling.temperature,
            "min_p": sampling.min_p,
            "top_p": sampling.top_p,
        }
        for name, value in knobs.items():
            self._knobs[name].fill_(value)
        self._seen.zero_()
        self._seen[0, self.hp.start_speech_token] = True  # the stock loop's history starts at BOS
        self._text_pos.fill_(-1)
        self._set_text_span(text_span)
        self._n.zero_()
        self._cache_pos.fill_(0)
        self._sample_and_advance(self._prefill_logits(embeds.to(self.dtype)))
        self._cache_pos.fill_(length)
        self._speech_pos.fill_(1)
        self.prefill_len = length
        self.length = 1

    def _seed(self, seed: int) -> None:
        if self._graph_uses_generator:
            self._generator.manual_seed(seed)
        else:  # graph captured on the default CUDA generator (torch without generator registry)
            torch.cuda.manual_seed(seed)

    @torch.inference_mode()
    def step(self, n: int = 1) -> None:
        """Decode n more tokens without syncing with the device."""
        for _ in range(n):
            if self._graph is not None:
                self._graph.replay()
            else:
                self._decode_step()
        self.length += n

    def tokens(self, start: int, end: int) -> list[int]:
        """Sampled tokens [start, end) (a host sync)."""
        return self._out[start:end].tolist()

    def text_positions(self, start: int, end: int) -> list[int]:
        """For tokens [start, end): the prompt position the aligned heads attended to most
        among the text's when each was sampled (-1: not read; a host sync)."""
        return self._text_pos[start:end].tolist()

    def _set_text_span(self, span: tuple[int, int] | None) -> None:
        """Only a decoder that reads attention (the static one) keeps a text span."""

    def capture(self, warm_embeds: torch.Tensor) -> None:
        """Compile/capture the decode step (no-op here)."""

    @property
    def graph_captured(self) -> bool:
        return self._graph is not None

    @property
    def compiled(self) -> bool:
        return False


class T3DynamicDecoder(T3Decoder):
    """transformers' growing DynamicCache: the `static_cache=False` baseline (no graphs, no
    compile), kept to measure against and to fall back on."""

    def __init__(self, t3: Any, *, max_cache_len: int, stop_check_interval: int = 8) -> None:
        super().__init__(t3, max_cache_len=max_cache_len, stop_check_interval=stop_check_interval)
        self._past: Any = None

    def _run(self, embeds: torch.Tensor) -> torch.Tensor:
        out = self.t3.tfmr(inputs_embeds=embeds, past_key_values=self._past, use_cache=True)
        return self.t3.speech_head(out.last_hidden_state[:, -1])  # HF applied the final norm

    def _prefill_logits(self, embeds: torch.Tensor) -> torch.Tensor:
        from transformers import DynamicCache

        self._past = DynamicCache()
        return self._run(embeds)

    def _decode_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)


class T3StaticDecoder(T3Decoder):
    """Preallocated KV cache and a fixed-shape decode step that can be compiled and captured."""

    static_cache = True

    def __init__(
        self,
        t3: Any,
        *,
        max_cache_len: int,
        compile_step: bool = False,
        cuda_graph: bool = False,
        stop_check_interval: int = 8,
        aligned_heads: tuple[tuple[int, int], ...] | None = None,
    ) -> None:
        super().__init__(t3, max_cache_len=max_cache_len, stop_check_interval=stop_check_interval)
        tfmr = t3.tfmr
        cfg = tfmr.config
        if aligned_heads is None:  # upstream's heads, where the model has them (full size)
            fits = all(
                layer < cfg.num_hidden_layers and head < cfg.num_attention_heads
                for layer, head in ALIGNED_HEADS
            )
            aligned_heads = ALIGNED_HEADS if fits else ()
        self.aligned_heads = tuple(aligned_heads)
        self.cuda_graph = bool(cuda_graph and self.device.type == "cuda")
        self.compile_step = bool(compile_step)
        self.n_layers = cfg.num_hidden_layers
        self.n_heads = cfg.num_attention_heads
        self.n_kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        dev, dt = self.device, self.dtype
        kv_shape = (CFG_BATCH, self.n_kv_heads, max_cache_len, self.head_dim)
        self._k = [torch.zeros(kv_shape, device=dev, dtype=dt) for _ in range(self.n_layers)]
        self._v = [torch.zeros(kv_shape, device=dev, dtype=dt) for _ in range(self.n_layers)]
        # RoPE table for every cache position, computed once by the model's own rotary module
        positions = torch.arange(max_cache_len, device=dev)[None]
        probe = torch.zeros(1, device=dev, dtype=torch.float32)
        cos, sin = tfmr.rotary_emb(probe, positions)  # (1, M, head_dim)
        self._cos, self._sin = cos.to(dt), sin.to(dt)
        self._cache_positions = torch.arange(max_cache_len, device=dev)
        # attention of the aligned heads, summed, and which cache positions hold the text
        self._attention_sum = torch.zeros(max_cache_len, dtype=torch.float32, device=dev)
        self._text_mask = torch.zeros(max_cache_len, dtype=torch.bool, device=dev)
        self._forward_step: Callable[[torch.Tensor], torch.Tensor] = self._forward_decode
        if self.compile_step:
            # fullgraph: a graph break would silently bring back per-op launches
            self._forward_step = torch.compile(self._forward_decode, fullgraph=True, dynamic=False)

    def _layer(
        self, i: int, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
        attn_mask: torch.Tensor | None, prefill_len: int | None,
    ) -> torch.Tensor:
        layer = self.t3.tfmr.layers[i]
        attn = layer.self_attn
        b, t, _ = x.shape
        h = layer.input_layernorm(x)
        q = attn.q_proj(h).view(b, t, -1, self.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(b, t, -1, self.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(b, t, -1, self.head_dim).transpose(1, 2)
        q, k = _rotary(q, cos, sin), _rotary(k, cos, sin)
        k_cache, v_cache = self._k[i], self._v[i]
        if prefill_len is not None:
            k_cache[:, :, :prefill_len] = k
            v_cache[:, :, :prefill_len] = v
            keys, values, causal = k, v, True
        else:
            k_cache.index_copy_(2, self._cache_pos, k)
            v_cache.index_copy_(2, self._cache_pos, v)
            keys, values, causal = k_cache, v_cache, False
        groups = self.n_heads // self.n_kv_heads
        if groups > 1:
            keys = keys.repeat_interleave(groups, dim=1)
            values = values.repeat_interleave(groups, dim=1)
        if prefill_len is None:
            for layer_index, head in self.aligned_heads:
                if layer_index == i:  # the conditional row's query over the whole cache
                    scores = (q[0, head] @ keys[0, head].transpose(0, 1)).float() * attn.scaling
                    assert attn_mask is not None
                    scores = scores.masked_fill(~attn_mask.view(1, -1), float("-inf"))
                    self._attention_sum.add_(torch.softmax(scores, dim=-1).view(-1))
        o = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=attn_mask, is_causal=causal, scale=attn.scaling
        )
        x = x + attn.o_proj(o.transpose(1, 2).reshape(b, t, -1))
        return x + layer.mlp(layer.post_attention_layernorm(x))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.t3.speech_head(self.t3.tfmr.norm(x[:, -1]))  # (2, V)

    def _prefill_logits(self, embeds: torch.Tensor) -> torch.Tensor:
        length = embeds.shape[1]
        cos, sin = self._cos[:, :length], self._sin[:, :length]
        x = embeds
        for i in range(self.n_layers):
            x = self._layer(i, x, cos, sin, None, length)
        return self._logits(x)

    def _forward_decode(self, x: torch.Tensor) -> torch.Tensor:
        cos = self._cos.index_select(1, self._cache_pos)
        sin = self._sin.index_select(1, self._cache_pos)
        # attend to every written position, nothing beyond: the cache has a fixed length
        attn_mask = (self._cache_positions <= self._cache_pos).view(1, 1, 1, -1)
        if self.aligned_heads:
            self._attention_sum.zero_()
        for i in range(self.n_layers):
            x = self._layer(i, x, cos, sin, attn_mask, None)
        if self.aligned_heads:  # the text position of the token sampled now (index _n)
            focus = self._attention_sum.masked_fill(~self._text_mask, -1.0).argmax().view(1)
            self._text_pos.index_copy_(0, self._n, focus)
        return self._logits(x)

    def _set_text_span(self, span: tuple[int, int] | None) -> None:
        self._text_mask.zero_()
        if span is not None:
            self._text_mask[span[0] : span[1]] = True

    def _decode_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_step(x)

    @torch.inference_mode()
    def capture(self, warm_embeds: torch.Tensor) -> None:
        """Compile and/or capture the decode step on a prefilled warmup prompt."""
        if not (self.cuda_graph or self.compile_step):
            return
        self.start(warm_embeds, SamplingParams(), seed=0)
        if not self.cuda_graph:
            self.step(3)  # triggers compilation now, not in the first request
            return
        graph = torch.cuda.CUDAGraph()
        if hasattr(graph, "register_generator_state"):
            graph.register_generator_state(self._generator)
        else:
            self._graph_uses_generator = False
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # compile and warm the allocator outside the capture
                self._decode_step()
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph):
            self._decode_step()
        torch.cuda.synchronize()
        self._graph = graph
        self.length = 0  # the warmup state is garbage now; `start` resets everything

    @property
    def compiled(self) -> bool:
        return self.compile_step


# -- the decode loop: host reads of the tokens, in this thread or a thread of its own ----


def decode_speech(
    decoder: T3Decoder, limit: int, tokens_wanted: Callable[[], int], stop: Callable[[], bool],
    stats: StreamStats,
) -> Iterator[tuple[list[int], bool]]:
    """(new speech tokens, finished) at every host read of the started decoder.

    A read comes every `stop_check_interval` steps, or exactly when the streamer has the
    tokens for its next chunk (`tokens_wanted()`, a running total of speech tokens).
    """
    hp = decoder.hp
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

def speech_batches(
    decoder: T3Decoder, limit: int, tokens_wanted: Callable[[], int], cancel: threading.Event,
    stats: StreamStats, *, pipeline: bool,
) -> Iterator[tuple[list[int], bool]]:
    """`decode_speech` in this thread, or (`pipeline`) in a thread of its own, on a CUDA
    stream of its own, so T3 decodes while S3Gen renders the previous chunk."""
    if not pipeline:
        yield from decode_speech(decoder, limit, tokens_wanted, cancel.is_set, stats)
        return
    device = decoder.device
    t3_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
    if t3_stream is not None:
        t3_stream.wait_stream(torch.cuda.current_stream(device))  # after the prefill
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
                for batch in decode_speech(decoder, limit, tokens_wanted, stop, stats):
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
            torch.cuda.current_stream(device).wait_stream(t3_stream)


def enable_compile_cache(cache_dir: Path) -> Path:
    """Persist inductor's compiled kernels/graphs so restarts skip most compilation.

    Returns the directory in effect: a TORCHINDUCTOR_CACHE_DIR already set (by the user, or by
    inductor itself after an earlier compile in this process) is kept.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    effective = Path(os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir)))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    try:
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = True
    except Exception:  # pragma: no cover - inductor missing in a stripped torch build
        pass
    return effective

