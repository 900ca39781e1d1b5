"""XTTS's GPT-2 trunk: sampling like coqui's generator, a ragged batched forward over per-stream
KV caches that do not copy themselves every token, and int8 dynamic quantization for the CPU."""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from typing import Any

from .base import InvalidRequestError


@dataclass(frozen=True)
class Sampling:
    """A request's sampling knobs with the checkpoint's defaults filled in."""

    temperature: float
    top_k: int
    top_p: float
    min_p: float | None
    repetition_penalty: float
    seed: int | None


def logits_processors(sampling: Sampling) -> Any:
    """transformers' processors for these knobs; a knob out of range (top_p 1.5) is the
    request's fault: InvalidRequestError."""
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
    try:
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
    except ValueError as e:
        raise InvalidRequestError(f"XTTS sampling: {e}") from e
    return processors


class KVSlot:
    """One stream's keys and values for every layer of the GPT-2 trunk: buffers that double
    when full (never re-concatenated per token), written at `length` and committed only
    once a whole forward pass succeeded, so a failed step can be run again."""

    def __init__(self, layers: int) -> None:
        self._k: list[Any] = [None] * layers
        self._v: list[Any] = [None] * layers
        self.length = 0

    def write(self, layer: int, k: Any, v: Any) -> tuple[Any, Any]:
        """Store k, v [H, T, hd] after the committed positions; the keys/values to attend."""
        import torch

        end = self.length + k.shape[1]
        buf_k = self._k[layer]
        if buf_k is None or end > buf_k.shape[1]:
            shape = (k.shape[0], max(256, 2 * end), k.shape[2])
            new_k = torch.empty(shape, dtype=k.dtype, device=k.device)
            new_v = torch.empty(shape, dtype=v.dtype, device=v.device)
            if buf_k is not None and self.length:
                new_k[:, : self.length] = buf_k[:, : self.length]
                new_v[:, : self.length] = self._v[layer][:, : self.length]
            self._k[layer], self._v[layer] = new_k, new_v
        self._k[layer][:, self.length : end] = k
        self._v[layer][:, self.length : end] = v
        return self._k[layer][:, :end], self._v[layer][:, :end]

    def commit(self, positions: int) -> None:
        self.length += positions

    def copy(self, *, grow: bool = True) -> KVSlot:
        """A new slot holding a copy of the committed keys and values (a cached prompt
        prefix); `grow`: with room for more positions (a stream's slot), else exactly as long
        (one kept only to be copied)."""
        slot = KVSlot(len(self._k))
        for layer, (k, v) in enumerate(zip(self._k, self._v, strict=True)):
            if grow:
                slot.write(layer, k[:, : self.length], v[:, : self.length])
            else:
                slot._k[layer] = k[:, : self.length].clone()
                slot._v[layer] = v[:, : self.length].clone()
        slot.commit(self.length)
        return slot


def trunk_forward(trunk: Any, x: Any, slots: list[KVSlot], lengths: list[int] | None = None
                  ) -> Any:
    """HF GPT-2 blocks over `x`, each stream attending to its own `slots[i]` after what that
    slot holds (cache lengths may differ: ragged batch); returns ln_f's output, shaped as `x`.

    `x` is [B, T, d], row b for `slots[b]`; or, with `lengths`, [1, sum(lengths), d]: the
    streams' positions one after another (prompts of different lengths in one pass). The
    weight-heavy projections run once over everything; attention runs per stream over its own
    cache (causal within the new positions), so a stream's result never depends on the
    others' lengths.

    Same blocks as `GPT2Model.forward` (coqui's trunk has null position embeddings and no
    token embeddings, dropout is off in eval), without its cache and mask machinery."""
    import torch
    import torch.nn.functional as F

    b, t, d = x.shape
    if lengths is None:
        segments = [(row, 0, t) for row in range(b)]
    else:
        assert b == 1 and sum(lengths) == t and len(lengths) == len(slots)
        ends = list(itertools.accumulate(lengths))
        segments = [(0, end - n, end) for n, end in zip(lengths, ends, strict=True)]
    for layer, block in enumerate(trunk.h):
        attn = block.attn
        heads = attn.num_heads
        q, k, v = attn.c_attn(block.ln_1(x)).split(attn.split_size, dim=2)
        rows = []
        for (row, start, end), slot in zip(segments, slots, strict=True):
            n = end - start
            # [n, d] -> [H, n, hd]
            qi, ki, vi = (z[row, start:end].view(n, heads, -1).transpose(0, 1) for z in (q, k, v))
            cached = slot.length
            keys, values = slot.write(layer, ki, vi)
            mask = None  # one new position sees everything before it
            if n > 1 and cached:  # new positions see the cache and the new ones before them
                mask = torch.ones(n, cached + n, dtype=torch.bool, device=x.device).tril(cached)
            out = F.scaled_dot_product_attention(
                qi[None], keys[None], values[None], attn_mask=mask,
                is_causal=n > 1 and not cached, scale=attn.scaling,
            )
            rows.append(out[0].transpose(0, 1).reshape(n, d))
        o = torch.cat(rows).view(b, t, d)
        x = x + attn.c_proj(o)
        x = x + block.mlp(block.ln_2(x))
    return trunk.ln_f(x)


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
