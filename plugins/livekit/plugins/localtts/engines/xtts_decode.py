"""XTTS's GPT-2 trunk: sampling like coqui's generator, a KV cache that does not copy
itself every token, and int8 dynamic quantization for the CPU."""

from __future__ import annotations

import functools
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


def preallocated_kv_cache() -> Any:
    from transformers.cache_utils import Cache

    return Cache(layer_class_to_replicate=_preallocated_layer_class())


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
