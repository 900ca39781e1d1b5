"""Chatterbox T3 (text -> speech tokens): every active stream's decode step as one batch.

Why not `T3.inference`: the stock loop grows the KV cache with `torch.cat`, asks for attentions
and hidden states every step, syncs the GPU for the EOS check every token, decodes one stream
at a time and cannot be captured as a CUDA graph. Here the KV cache holds static slots, one per
stream (its two classifier-free-guidance rows); one decode step advances the streams in slots
[0, b) for a bucket b (1, 2, 4, 8, 16...): forward + CFG + sampling + state update over
preallocated buffers (tokens, positions, KV cache, "seen" masks, per-stream sampling knobs and
seeds), with no host sync. On CUDA the step is compiled and captured as one CUDA graph per
bucket and replayed per token; the host reads the sampled tokens every few steps. On the CPU
the very same step runs eagerly (fp32 in the tests).

Streams join (`start`: prefill into a free slot) and leave (`release`: the last slot moves into
the hole, so live slots stay packed at the front) between steps. A slot that is not advancing
this step (finished, or waiting for its vocoder) still rides along in the bucket: its row
computes, but none of its state moves (its KV write lands on the position its next real step
overwrites).

Sampling noise is a counter-based hash of (stream seed, token index, vocabulary id): a seeded
stream draws the same numbers alone or in any batch, so it samples the same tokens. The math
otherwise mirrors chatterbox-tts 0.1.7 `T3.inference` (same prefill sequence including its
doubled start-of-speech token, same position embeddings, CFG, HF repetition penalty /
temperature / min-p / top-p semantics); tests check the tokens match it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .base import InvalidRequestError, KVCacheOverflowError

CFG_BATCH = 2  # per stream: row 0 conditional, row 1 unconditional (zeroed text embedding)
# (layer, head) of T3's Llama whose attention follows the text being spoken: upstream's
# AlignmentStreamAnalyzer (chatterbox-tts 0.1.7, LLAMA_ALIGNED_HEADS) reads the same three
ALIGNED_HEADS: tuple[tuple[int, int], ...] = ((12, 15), (13, 11), (9, 2))
BUCKETS = (1, 2, 4, 8, 16, 32, 64)
_M32 = 0xFFFFFFFF


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


_KNOBS = ("cfg_weight", "repetition_penalty", "temperature", "min_p", "top_p")


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
    """CFG-combined, penalized, filtered float32 logits (b, V) for b streams; -inf marks
    removed tokens. `logits` (2b, V) hold each stream's conditional then unconditional row;
    the knobs are tensors (scalars, or (b, 1) per stream) so one captured graph serves every
    request.

    Same results as chatterbox's HF processors (RepetitionPenalty, temperature, MinP, TopP).
    """
    logits = logits.float()
    cond, uncond = logits[0::2], logits[1::2]
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


def _pcg(x: torch.Tensor) -> torch.Tensor:
    """PCG's output hash of 32-bit values held in int64 (no product exceeds 2**62)."""
    state = (x * 747796405 + 2891336453) & _M32
    word = ((torch.bitwise_right_shift(state, (state >> 28) + 4) ^ state) * 277803737) & _M32
    return (word >> 22) ^ word


def exponential_noise(seed: torch.Tensor, index: torch.Tensor, vocab: torch.Tensor) -> torch.Tensor:
    """Exp(1) draws (b, V) that depend only on each stream's 32-bit seed (b,), its token
    index (b,) and the vocabulary id (V,): the same for a stream alone or in any batch."""
    h = _pcg((_pcg(seed) + index) & _M32)
    h = _pcg((h[:, None] + vocab[None, :]) & _M32)
    uniform = ((h >> 8).float() + 0.5) * (1.0 / (1 << 24))  # in (0, 1)
    return -torch.log(uniform)


def _rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Llama RoPE (rotate-half form, as transformers' apply_rotary_pos_emb), x: (B, H, T, d),
    cos/sin: (1, T, d). Local so torch.compile never meets the hub-kernel decorator."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1)


def bucket_for(streams: int, slots: int) -> int:
    """The smallest captured batch size holding `streams` streams."""
    for b in BUCKETS:
        if b >= streams and b <= slots:
            return b
    return slots


class T3BatchDecoder:
    """Static KV cache slots for up to `slots` streams and the batched decode step over them.

    Not thread-safe: the engine's scheduler thread is its only user.
    """

    def __init__(
        self,
        t3: Any,
        *,
        slots: int,
        max_cache_len: int,
        compile_step: bool = False,
        cuda_graph: bool = False,
        stop_check_interval: int = 8,
        aligned_heads: tuple[tuple[int, int], ...] | None = None,
    ) -> None:
        if getattr(t3, "is_gpt", False):
            raise ValueError("only Llama-based T3 models are supported")
        if slots < 1:
            raise ValueError("slots must be >= 1")
        self.t3 = t3
        self.hp = t3.hp
        param = t3.speech_head.weight
        self.device = dev = param.device
        self.dtype = dt = param.dtype
        self.slots = slots
        self.max_cache_len = max_cache_len
        self.stop_check_interval = max(1, stop_check_interval)
        self.vocab = self.hp.speech_tokens_dict_size
        self.cuda_graph = bool(cuda_graph and dev.type == "cuda")
        self.compile_step = bool(compile_step)
        tfmr = t3.tfmr
        cfg = tfmr.config
        self.n_layers = cfg.num_hidden_layers
        self.n_heads = cfg.num_attention_heads
        self.n_kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        if aligned_heads is None:  # upstream's heads, where the model has them (full size)
            fits = all(
                layer < self.n_layers and head < self.n_heads for layer, head in ALIGNED_HEADS
            )
            aligned_heads = ALIGNED_HEADS if fits else ()
        # read in every step: the text position each stream's token is sampled at (word times)
        self.aligned_heads = tuple(aligned_heads)
        rows = CFG_BATCH * slots
        kv_shape = (rows, self.n_kv_heads, max_cache_len, self.head_dim)
        self._k = [torch.zeros(kv_shape, device=dev, dtype=dt) for _ in range(self.n_layers)]
        self._v = [torch.zeros(kv_shape, device=dev, dtype=dt) for _ in range(self.n_layers)]
        # RoPE table for every cache position, computed once by the model's own rotary module
        positions = torch.arange(max_cache_len, device=dev)[None]
        probe = torch.zeros(1, device=dev, dtype=torch.float32)
        cos, sin = tfmr.rotary_emb(probe, positions)  # (1, M, head_dim)
        self._cos, self._sin = cos[0].to(dt), sin[0].to(dt)  # (M, head_dim)
        self._cache_positions = torch.arange(max_cache_len, device=dev)
        self._rows = torch.arange(rows, device=dev)
        self._vocab_ids = torch.arange(self.vocab, device=dev)
        self._max_speech_pos = t3.speech_pos_emb.emb.num_embeddings - 1
        # per-slot state, updated in place by the step (CUDA graphs replay on these)
        self._token = torch.zeros(slots, dtype=torch.long, device=dev)
        self._cache_pos = torch.zeros(slots, dtype=torch.long, device=dev)
        self._speech_pos = torch.zeros(slots, dtype=torch.long, device=dev)
        self._n = torch.zeros(slots, dtype=torch.long, device=dev)
        self._live = torch.zeros(slots, dtype=torch.bool, device=dev)
        self._seed = torch.zeros(slots, dtype=torch.long, device=dev)
        self._seen = torch.zeros(slots, self.vocab, dtype=torch.bool, device=dev)
        self._out = torch.zeros(slots, self.hp.max_speech_tokens, dtype=torch.long, device=dev)
        # the prompt position the aligned heads looked at most, among the slot's text
        # positions [text_lo, text_hi), when each token was sampled (-1: not read)
        self._text_pos = torch.full_like(self._out, -1)
        self._text_lo = torch.zeros(slots, 1, dtype=torch.long, device=dev)
        self._text_hi = torch.zeros(slots, 1, dtype=torch.long, device=dev)
        self._knobs = {
            name: torch.zeros(slots, 1, dtype=torch.float32, device=dev) for name in _KNOBS
        }
        self._state = [self._token, self._cache_pos, self._speech_pos, self._n, self._live,
                       self._seed, self._seen, self._out, self._text_pos, self._text_lo,
                       self._text_hi, *self._knobs.values()]
        self._graphs: dict[int, Any] = {}
        self._forward_step: Callable[[int], None] = self._decode_step
        if self.compile_step:
            # fullgraph: a graph break would silently bring back per-op launches; one
            # specialization per bucket (b is a Python int)
            self._forward_step = torch.compile(self._decode_step, fullgraph=True, dynamic=False)
        # host side
        self.owners: list[Any] = []  # owners[i]: who holds slot i (packed at the front)
        self.length = [0] * slots  # tokens sampled per slot
        self.prefill_len = [0] * slots
        self.steps = 0

    # -- slots ---------------------------------------------------------------------------------

    @property
    def free_slots(self) -> int:
        return self.slots - len(self.owners)

    def capacity_for(self, prefill_len: int) -> int:
        """How many tokens fit after a prefill of this length."""
        return min(self.max_cache_len - prefill_len, self.hp.max_speech_tokens)

    def release(self, owner: Any) -> None:
        """Free `owner`'s slot; the last slot's stream moves into it (packed slots)."""
        slot = self.owners.index(owner)
        last = len(self.owners) - 1
        if slot != last:
            self._move(last, slot)
            self.owners[slot] = self.owners[last]
            self.owners[slot].slot = slot
        self.owners.pop()
        self._live[last] = False

    @torch.inference_mode()
    def _move(self, src: int, dst: int) -> None:
        rs, rd = slice(CFG_BATCH * src, CFG_BATCH * (src + 1)), slice(CFG_BATCH * dst,
                                                                      CFG_BATCH * (dst + 1))
        length = int(self.prefill_len[src] + self.length[src])
        for cache in (*self._k, *self._v):
            cache[rd, :, :length] = cache[rs, :, :length]
        for tensor in self._state:
            tensor[dst] = tensor[src]
        self.length[dst], self.prefill_len[dst] = self.length[src], self.prefill_len[src]

    # -- joining: prefill ----------------------------------------------------------------------

    @torch.inference_mode()
    def start(
        self, owner: Any, embeds: torch.Tensor, sampling: SamplingParams, seed: int,
        text_span: tuple[int, int] | None = None,
    ) -> int:  # fmt: skip
        """Take a free slot for `owner`, prefill it with the (2, L, D) prompt embeddings and
        sample the first token; returns the slot (`owner.slot` follows later moves).
        `text_span`: the prompt positions of the text (for `read`'s text positions)."""
        if embeds.shape[0] != CFG_BATCH:
            raise ValueError("embeds must hold the conditional and unconditional rows")
        length = embeds.shape[1]
        if self.capacity_for(length) < 1:
            raise KVCacheOverflowError(f"prompt of {length} positions exceeds the KV cache")
        if not self.free_slots:
            raise RuntimeError("no free KV cache slot")  # the engine asks free_slots first
        slot = len(self.owners)
        for name in _KNOBS:
            self._knobs[name][slot] = getattr(sampling, name)
        self._seed[slot] = seed & _M32
        self._seen[slot] = False
        self._seen[slot, self.hp.start_speech_token] = True  # the stock history starts at BOS
        self._n[slot] = 0
        self._text_pos[slot] = -1
        self._text_lo[slot], self._text_hi[slot] = text_span or (0, 0)
        self._live[slot] = True
        logits = self._prefill_logits(slot, embeds.to(self.dtype))
        self._sample(logits, slice(slot, slot + 1))
        self._live[slot] = False
        self._cache_pos[slot] = length
        self._speech_pos[slot] = 1
        self.owners.append(owner)
        owner.slot = slot
        self.prefill_len[slot] = length
        self.length[slot] = 1
        return slot

    def _prefill_logits(self, slot: int, embeds: torch.Tensor) -> torch.Tensor:
        """(2, L, D) prompt -> (2, V) logits of its last position; fills the slot's cache."""
        length = embeds.shape[1]
        cos, sin = self._cos[None, :length], self._sin[None, :length]
        rows = slice(CFG_BATCH * slot, CFG_BATCH * (slot + 1))
        x = embeds
        for i in range(self.n_layers):
            q, k, v, layer = self._qkv(i, x, cos, sin)
            self._k[i][rows, :, :length] = k
            self._v[i][rows, :, :length] = v
            x = self._attend(layer, x, q, k, v, None, causal=True)
        return self._logits(x)

    # -- the step --------------------------------------------------------------------------------

    def _qkv(self, i: int, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
        layer = self.t3.tfmr.layers[i]
        attn = layer.self_attn
        b, t, _ = x.shape
        h = layer.input_layernorm(x)
        q = attn.q_proj(h).view(b, t, -1, self.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(b, t, -1, self.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(b, t, -1, self.head_dim).transpose(1, 2)
        return _rotary(q, cos, sin), _rotary(k, cos, sin), v, layer

    def _attend(self, layer: Any, x: torch.Tensor, q: torch.Tensor, keys: torch.Tensor,
                values: torch.Tensor, mask: torch.Tensor | None, *, causal: bool) -> torch.Tensor:
        groups = self.n_heads // self.n_kv_heads
        if groups > 1:
            keys = keys.repeat_interleave(groups, dim=1)
            values = values.repeat_interleave(groups, dim=1)
        o = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, is_causal=causal, scale=layer.self_attn.scaling
        )
        b, t, _ = x.shape
        x = x + layer.self_attn.o_proj(o.transpose(1, 2).reshape(b, t, -1))
        return x + layer.mlp(layer.post_attention_layernorm(x))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.t3.speech_head(self.t3.tfmr.norm(x[:, -1]))  # (rows, V)

    def _decode_logits(self, b: int, x: torch.Tensor) -> torch.Tensor:
        """(2b, 1, D) inputs of slots [0, b) at their cache positions -> (2b, V) logits."""
        rows = CFG_BATCH * b
        pos = self._cache_pos[:b].clamp(max=self.max_cache_len - 1).repeat_interleave(CFG_BATCH)
        cos = self._cos.index_select(0, pos)[:, None]  # (2b, 1, head_dim)
        sin = self._sin.index_select(0, pos)[:, None]
        # each row attends to its own written positions, nothing beyond
        mask = (self._cache_positions[None, :] <= pos[:, None]).view(rows, 1, 1, -1)
        row_ids = self._rows[:rows]
        attention: torch.Tensor | None = None  # the aligned heads' attention, summed
        for i in range(self.n_layers):
            q, k, v, layer = self._qkv(i, x, cos, sin)
            self._k[i][row_ids, :, pos] = k[:, :, 0]
            self._v[i][row_ids, :, pos] = v[:, :, 0]
            for layer_index, head in self.aligned_heads:
                if layer_index == i:
                    read = self._head_attention(i, q, head, mask)
                    attention = read if attention is None else attention + read
            x = self._attend(layer, x, q, self._k[i][:rows], self._v[i][:rows], mask,
                             causal=False)
        if attention is not None:
            self._record_text_position(b, attention)
        return self._logits(x)

    def _head_attention(self, i: int, q: torch.Tensor, head: int, mask: torch.Tensor
                        ) -> torch.Tensor:  # fmt: skip
        """(b, M) attention of `head` of layer i, conditional rows: where it reads now."""
        rows = q.shape[0]
        kv_head = head // (self.n_heads // self.n_kv_heads)
        keys = self._k[i][0:rows:CFG_BATCH, kv_head]  # (b, M, head_dim)
        scores = (keys @ q[0::CFG_BATCH, head, 0, :, None])[..., 0].float()
        scores = scores * self.t3.tfmr.layers[i].self_attn.scaling
        scores = scores.masked_fill(~mask[0::CFG_BATCH, 0, 0], float("-inf"))
        return torch.softmax(scores, dim=-1)

    def _record_text_position(self, b: int, attention: torch.Tensor) -> None:
        """The text position each live slot's token (sampled next, index n) is read at."""
        positions = self._cache_positions[None]
        text = (positions >= self._text_lo[:b]) & (positions < self._text_hi[:b])
        focus = attention.masked_fill(~text, -1.0).argmax(dim=-1)  # (b,)
        index = self._n[:b].clamp(max=self.hp.max_speech_tokens - 1)[:, None]
        recorded = self._text_pos[:b]
        keep = recorded.gather(1, index)[:, 0]
        recorded.scatter_(1, index, torch.where(self._live[:b], focus, keep)[:, None])

    def _sample(self, logits: torch.Tensor, sl: slice) -> None:
        """Sample the next token of the slots in `sl` (those live) and record it."""
        live = self._live[sl]
        knobs = {name: t[sl] for name, t in self._knobs.items()}
        filtered = filter_logits(logits, self._seen[sl], **knobs)
        probs = torch.softmax(filtered, dim=-1)
        n = self._n[sl]
        # exponential race (Gumbel-max): same distribution as multinomial, graph-capturable
        race = exponential_noise(self._seed[sl], n, self._vocab_ids).clamp_min(1e-10)
        token = (probs / race).argmax(dim=-1)  # (b,)
        self._token[sl] = torch.where(live, token, self._token[sl])
        index = n.clamp(max=self.hp.max_speech_tokens - 1)[:, None]
        out = self._out[sl]
        out.scatter_(1, index, torch.where(live, token, out.gather(1, index)[:, 0])[:, None])
        seen = self._seen[sl]
        seen.scatter_(1, token[:, None], seen.gather(1, token[:, None]) | live[:, None])
        self._n[sl] = n + live.long()

    def _decode_step(self, b: int) -> None:
        t3 = self.t3
        token = self._token[:b]
        speech_pos = self._speech_pos[:b].clamp(max=self._max_speech_pos)
        emb = t3.speech_emb(token) + t3.speech_pos_emb.emb(speech_pos)  # (b, D)
        x = emb.repeat_interleave(CFG_BATCH, dim=0)[:, None]  # (2b, 1, D)
        self._sample(self._decode_logits(b, x), slice(0, b))
        live = self._live[:b].long()
        self._cache_pos[:b] += live
        self._speech_pos[:b] += live

    @torch.inference_mode()
    def step(self, owners: list[Any], n: int = 1) -> None:
        """Decode n tokens for each of `owners` (every other slot stays put), no host sync."""
        live = [o.slot for o in owners]
        self._live.zero_()
        self._live[live] = True
        b = bucket_for(len(self.owners), self.slots)
        graph = self._graphs.get(b)
        for _ in range(n):
            if graph is not None:
                graph.replay()
            else:
                self._forward_step(b)
        for slot in live:
            self.length[slot] += n
        self.steps += n

    def tokens(self, ranges: list[tuple[int, int, int]]) -> list[list[int]]:
        """Sampled tokens [start, end) of each (slot, start, end): one host sync for all."""
        return [tokens for tokens, _ in self.read(ranges)]

    def read(self, ranges: list[tuple[int, int, int]]) -> list[tuple[list[int], list[int]]]:
        """(tokens, text positions) [start, end) of each (slot, start, end), in one host
        sync; a position is -1 where none was read (no aligned heads, the prefill's token)."""
        if not ranges:
            return []
        parts = [t[slot, a:e] for slot, a, e in ranges for t in (self._out, self._text_pos)]
        flat = torch.cat(parts).tolist()
        out, at = [], 0
        for _, a, e in ranges:
            n = e - a
            out.append((flat[at : at + n], flat[at + n : at + 2 * n]))
            at += 2 * n
        return out

    # -- compile / capture ----------------------------------------------------------------------

    @torch.inference_mode()
    def capture(self, buckets: tuple[int, ...] | None = None) -> None:
        """Compile and/or capture the step for each bucket (on free slots, state untouched:
        no slot is live while capturing)."""
        if not (self.cuda_graph or self.compile_step):
            return
        if self.owners:
            raise RuntimeError("capture before any stream starts")
        sizes = buckets or tuple(b for b in BUCKETS if b <= self.slots) or (self.slots,)
        self._live.zero_()
        for b in sizes:
            if not self.cuda_graph:
                self._forward_step(b)  # compiles now, not in the first request
                continue
            graph = torch.cuda.CUDAGraph()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):  # compile and warm the allocator outside the capture
                    self._forward_step(b)
            torch.cuda.current_stream().wait_stream(side)
            with torch.cuda.graph(graph):
                self._forward_step(b)
            torch.cuda.synchronize()
            self._graphs[b] = graph

    @property
    def graph_captured(self) -> bool:
        return bool(self._graphs)

    @property
    def captured_buckets(self) -> list[int]:
        return sorted(self._graphs)

    @property
    def compiled(self) -> bool:
        return self.compile_step


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

