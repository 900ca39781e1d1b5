"""XTTS's HiFiGAN run over a sliding window, and what makes it cheaper on the CPU.

coqui's `inference_stream` re-decodes every latent so far through HiFiGAN for each chunk
(quadratic). `WindowVocoder` vocodes each chunk over the new frames plus `context` frames of
left context, holding back `lookahead` frames (whose input still changes when the next token
arrives) and crossfading them into the next chunk.

Window lengths come in steps of `window_step` frames, made up with more left context (never
less): oneDNN builds its convolution kernels per input shape, and HiFiGAN over a length it
has not run before took 3-4x as long as over a seen one (bf16, real size, 2 cores: 23 frames
346 vs 91 ms, 126 frames 1283 vs 336 ms). A piece's last window would otherwise be a new
length almost every time; the engine's warmup runs every step once.
"""

from __future__ import annotations

import copy
import math
import platform
from typing import Any

import numpy as np

# HiFiGAN works on 22,050 Hz mel frames (hop 256) upsampled to 24 kHz: one GPT token is
# 1024 input samples = 4 mel frames, stretched by 24000/22050 before vocoding
HOP = 256


def cpu_has_fast_bf16() -> bool:
    """oneDNN runs bf16 natively here (AMX or AVX512-BF16): HiFiGAN's convolutions then
    take about half the time of fp32 at ~40 dB SNR. Elsewhere bf16 is emulated (slower)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_is_x86() -> bool:
    """Where channels-last HiFiGAN (`channels_last_2d`) was measured to pay: x86's oneDNN,
    fp32 and bf16. Elsewhere (Apple Silicon, ARM) it is unmeasured."""
    return platform.machine().lower() in ("x86_64", "amd64")


def fold_weight_norm(module: Any) -> int:
    """Bake weight_norm parametrizations into plain weights (coqui leaves them on at
    inference, recomputing every weight on every call); returns how many it folded."""
    from torch.nn.utils import parametrize

    folded = 0
    for sub in module.modules():
        if parametrize.is_parametrized(sub, "weight"):
            parametrize.remove_parametrizations(sub, "weight", leave_parametrized=True)
            folded += 1
    return folded


def channels_last_2d(decoder: Any) -> Any:
    """A copy of HiFiGAN's generator that runs every 1-D convolution as a 1 x k 2-D one over
    channels-last tensors; called like the original (frames [B, C, T], `g` [B, C, 1]) and
    giving the same samples (fp32: 130 dB from the original, bf16: the same SNR to fp32).

    Why: oneDNN's fast convolutions on x86 want channels-last data. For 1-D convolutions
    PyTorch hands it plain-layout tensors, so every call reorders its input and output (28 %
    of HiFiGAN's time in `copy_`); channels-last 2-D convolutions skip that (real size,
    2 cores, 128 frames: bf16 332 -> 183 ms, fp32 654 -> 492 ms)."""
    import torch
    from torch import nn

    def as_2d(conv: nn.Conv1d | nn.ConvTranspose1d) -> nn.Module:
        if conv.padding_mode != "zeros":
            raise ValueError(f"{conv} pads with {conv.padding_mode!r}: only zeros is converted")
        common = {"kernel_size": (1, conv.kernel_size[0]), "stride": (1, conv.stride[0]),
                  "padding": (0, conv.padding[0]), "dilation": (1, conv.dilation[0]),
                  "groups": conv.groups, "bias": conv.bias is not None,
                  "device": conv.weight.device, "dtype": conv.weight.dtype}
        if isinstance(conv, nn.ConvTranspose1d):
            two_d: nn.Module = nn.ConvTranspose2d(conv.in_channels, conv.out_channels,
                                                  output_padding=(0, conv.output_padding[0]),
                                                  **common)
        else:
            two_d = nn.Conv2d(conv.in_channels, conv.out_channels, **common)
        with torch.no_grad():
            two_d.weight.copy_(conv.weight.unsqueeze(2))
            if conv.bias is not None:
                two_d.bias.copy_(conv.bias)
        return two_d

    def convert(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, (nn.Conv1d, nn.ConvTranspose1d)):
                setattr(parent, name, as_2d(child))
            else:
                convert(child)

    generator = copy.deepcopy(decoder)
    convert(generator)
    generator = generator.to(memory_format=torch.channels_last)

    # hooks, not a wrapper module, so the copy stays the generator callers know: the
    # generator's own forward is shape-agnostic (convolutions, leaky ReLU, sums, tanh)
    def to_4d(_: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        frames, *rest = args
        if kwargs.get("g") is not None:
            kwargs = {**kwargs, "g": kwargs["g"].unsqueeze(-1)}
        elif rest and rest[0] is not None:
            rest = [rest[0].unsqueeze(-1)]
        frames = frames.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        return (frames, *rest), kwargs

    generator.register_forward_pre_hook(to_4d, with_kwargs=True)
    generator.register_forward_hook(lambda _m, _a, wav: wav.squeeze(2))
    return generator


def frames_for_tokens(tokens: int, speed: float = 1.0) -> int:
    """HiFiGAN input frames (256 output samples each) for `tokens` GPT latents, exactly as
    coqui's decoder interpolates them (speed scaling, x4 to mel frames, 22.05 -> 24 kHz)."""
    n = tokens
    if speed != 1.0:
        n = math.floor(n * (1.0 / max(speed, 0.05)))
    return math.floor(math.floor(n * 4.0) * (24000 / 22050))


def window_lengths(*, chunk_tokens: int, context: int, lookahead: int, step: int) -> list[int]:
    """Every window length past a piece's start that `WindowVocoder` runs at speed 1, in
    steps of `step`: from the context and one new frame up to a chunk's frames, the
    held-back ones and the context."""
    shortest = context + 1
    longest = frames_for_tokens(chunk_tokens) + lookahead + context
    return list(range(-(-shortest // step) * step, -(-longest // step) * step + 1, step))


class WindowVocoder:
    """Turns a growing list of GPT latents into audio, one chunk at a time.

    All latents so far are interpolated to frames (cheap), but HiFiGAN only runs over the
    frames not yet emitted plus `context` frames of left context. The last `lookahead`
    frames are held back (their interpolation and receptive field still depend on tokens
    to come) and the first `crossfade` of them are kept as a tail to crossfade with the
    next chunk's better-informed version of the same samples.
    """

    def __init__(self, model: Any, speaker_embedding: Any, *, length_scale: float,
                 context: int, lookahead: int, crossfade: int, decoder: Any = None,
                 window_step: int = 1) -> None:
        """`decoder`: the waveform decoder to run (default: the model's own); frames and the
        speaker embedding go in at its weights' dtype (a bf16 copy: bf16 HiFiGAN).
        `window_step`: window lengths are multiples of it where the piece has the frames
        (a window from the piece's first frame keeps its own length)."""
        self._model = model
        self._decoder = decoder if decoder is not None else model.hifigan_decoder.waveform_decoder
        self._dtype = next(self._decoder.parameters()).dtype
        self._g = speaker_embedding.to(self._dtype)
        self._length_scale = length_scale
        self._context = context
        self._lookahead = lookahead
        self._crossfade = min(crossfade, lookahead)
        self._window_step = max(1, window_step)
        self._emitted = 0  # frames already returned
        self._tail: Any = None  # samples of frames [emitted, emitted + crossfade) to fade out

    def _frames(self, latents: Any) -> Any:
        import torch.nn.functional as F

        x = latents.transpose(1, 2)  # [1, d, T]
        if self._length_scale != 1.0:
            if math.floor(x.shape[-1] * self._length_scale) == 0:
                # a faster voice's first latent is no frame yet (coqui's floor, as in
                # `frames_for_tokens`); interpolate refuses an empty output
                return x[..., :0]
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
        short = -(total - start) % self._window_step  # frames short of the next step
        start = max(0, start - short)
        wav = self._decoder(frames[..., start:total].to(self._dtype), g=self._g)
        wav = wav.float().reshape(-1)
        seg = wav[(self._emitted - start) * HOP : (end - start) * HOP].clone()
        if self._tail is not None:
            n = min(len(self._tail), len(seg))
            ramp = torch.linspace(0.0, 1.0, n + 2, dtype=seg.dtype)[1:-1]
            seg[:n] = self._tail[:n] * (1.0 - ramp) + seg[:n] * ramp
        if not final and self._crossfade > 0:
            self._tail = wav[(end - start) * HOP : (end - start + self._crossfade) * HOP].clone()
        self._emitted = end
        return seg.float().cpu().numpy()
