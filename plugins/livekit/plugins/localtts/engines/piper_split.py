"""Piper's VITS graph split at its decoder, so that a sentence's audio comes in windows.

A Piper voice is one ONNX graph. Its front (text encoder, duration predictor, flow) turns a
sentence's phoneme ids into the latent `z` [1, C, frames] and the phoneme durations; its
decoder (HiFiGAN) turns `z` into audio, `hop` samples per frame, and costs most of the call
(bundled voice, 97-character sentence: 237 of 317 ms). The decoder is a stack of
convolutions: each sample depends on the frames within its receptive field only, so frames
[a, b) decoded with that many frames of context on each side give the one-pass audio of
those frames. First audio is then the front plus one small window, not the whole sentence.

The split is found by the graph's structure, not a tensor name: the decoder's input is the
input of the first convolution through which every path from the model's inputs to its
audio passes (its dominator; in piper's export `/dec/conv_pre/Conv`, fed `z * y_mask`). A
graph without such a point (a multi-speaker voice, whose decoder also takes the speaker)
is not split. The context is measured at load (`exact_context`), not assumed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# The largest receptive field (frames, each side) probed; a decoder needing more is not split
_MAX_CONTEXT = 48
# Windowed audio counts as the one-pass audio when it differs by no more than this relative
# to the audio's peak (80 dB). Bundled voice, random latent: 9e-4 with 9 frames of context,
# 1.1e-5 with 10, float rounding (6e-7) from 11; on real speech 10 frames give 126 dB
_EXACT = 1e-4


@dataclass(frozen=True)
class SplitVoice:
    """The two halves of a voice as onnxruntime sessions (CPU arena off, see `session`)."""

    front: Any  # the model's inputs -> (latent, durations); Piper's session is replaced by it
    decoder: Any  # latent frames -> audio
    latent: str  # the decoder's input name
    channels: int  # C of the latent [1, C, frames]
    hop: int  # audio samples per latent frame
    context: int  # frames of context each side that make a window exact

    def decode(self, z: np.ndarray, start: int, end: int) -> np.ndarray:
        """The audio of frames [start, end) of latent `z` [1, C, frames], decoded with
        `context` frames on each side (fewer at the sentence's edges, as one pass has)."""
        lo, hi = max(0, start - self.context), min(z.shape[2], end + self.context)
        audio = self.decoder.run(None, {self.latent: z[:, :, lo:hi]})[0].reshape(-1)
        return audio[(start - lo) * self.hop : (end - lo) * self.hop]


def session(model: Any) -> Any:
    """An onnxruntime CPU session without the CPU memory arena, which keeps the largest
    call's buffers for good (issue 12: 861 MiB held vs 562 after a 300-character piece),
    and whose threads do not spin when idle: the front's and the decoder's thread pools
    take turns, and one spinning while the other works took a core from it (two sentences,
    load 6-7: 1.59 s CPU and 2.48 s wall spinning, 0.98 s and 1.58 s not, the unsplit
    model 1.25 s and 1.90 s)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.enable_cpu_mem_arena = False
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(
        model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )


def decoder_input(graph: Any) -> tuple[str, int] | None:
    """The input of the first Conv that dominates the audio output (every path from the
    graph's inputs to it passes there) and its channels (the Conv's weight's), or None.
    Tensors computed from constants alone are no paths. Dominators of a DAG come in one
    pass over its nodes in topological order (ONNX's node order): a node's outputs are
    dominated by the nearest common dominator of its inputs (Cooper, Harvey and Kennedy's
    intersection, by topological position)."""
    source = ""  # stands for every graph input
    constant = {t.name for t in graph.initializer}
    idom: dict[str, str] = {x.name: source for x in graph.input if x.name not in constant}
    order: dict[str, int] = dict.fromkeys(idom, 0)
    order[source] = -1

    def common(a: str, b: str) -> str:
        while a != b:
            if order[a] > order[b]:
                a = idom[a]
            else:
                b = idom[b]
        return a

    for position, node in enumerate(graph.node, start=1):
        inputs = [x for x in node.input if x and x not in constant]
        if not inputs:
            constant.update(node.output)
            continue
        if any(x not in idom for x in inputs):
            return None  # not in topological order, or a tensor from nowhere
        dominator = inputs[0]  # a tensor dominates itself
        for x in inputs[1:]:
            dominator = common(dominator, x)
        for out in node.output:
            if out:
                idom[out], order[out] = dominator, position
    audio = graph.output[0].name
    if audio not in idom:
        return None
    chain = set()
    tensor = audio
    while tensor != source:
        tensor = idom[tensor]
        chain.add(tensor)
    weights = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Conv" and node.input[0] in chain:
            weight = weights.get(node.input[1])
            return None if weight is None else (str(node.input[0]), int(weight.dims[1]))
    return None


def _durations(model: Any) -> str | None:
    """The tensor of phoneme durations (frames per phoneme id), as piper's alignment patch
    finds it (the graph's one Ceil), or None."""
    outputs = [out for node in model.graph.node if node.op_type == "Ceil" for out in node.output]
    return outputs[0] if len(outputs) == 1 else None


def split_voice(model_path: Path, *, hop: int) -> SplitVoice | None:
    """The voice at `model_path` as front and decoder sessions, or None when it does not
    split (no onnx package, no dominating decoder input, a decoder that does not make `hop`
    samples per frame or needs more than `_MAX_CONTEXT` frames of context)."""
    try:
        import onnx
        import onnx.utils
    except ImportError:
        return None
    model = onnx.load(str(model_path))
    graph = model.graph
    found = decoder_input(graph)
    if found is None:
        return None
    latent, channels = found
    durations = _durations(model)
    known = {v.name for v in (*graph.value_info, *graph.input, *graph.output)}
    for name in (latent, durations):
        if name is not None and name not in known:  # the extractor needs their types
            graph.value_info.append(onnx.helper.make_tensor_value_info(
                name, onnx.TensorProto.FLOAT, None))
    extractor = onnx.utils.Extractor(model)
    inputs = [x.name for x in graph.input]
    front_outputs = [latent] if durations is None else [latent, durations]
    front = session(extractor.extract_model(inputs, front_outputs))
    decoder = session(extractor.extract_model([latent], [graph.output[0].name]))
    probe = np.zeros((1, channels, 4), dtype=np.float32)
    if decoder.run(None, {latent: probe})[0].size != 4 * hop:
        return None  # not hop samples per frame: windows would not join sample-exactly
    context = exact_context(decoder, latent, channels, hop)
    if context is None:
        return None
    return SplitVoice(front, decoder, latent, channels, hop, context)


def exact_context(decoder: Any, latent: str, channels: int, hop: int,
                  candidates: Sequence[int] = (4, 6, 8, 9, 10, 11, 12, 16, 24, 32, _MAX_CONTEXT),
                  ) -> int | None:
    """The fewest frames of context (of `candidates`) with which a window of the decoder's
    audio is its one-pass audio (within `_EXACT` of the peak), on a random latent: the
    receptive field is the network's, whatever the input."""
    window = 8
    size = 2 * (max(candidates) + 1) + window  # no candidate's window is the whole latent
    z = np.random.default_rng(0).standard_normal((1, channels, size)).astype(np.float32)
    whole = decoder.run(None, {latent: z})[0].reshape(-1)
    start = (size - window) // 2
    reference = whole[start * hop : (start + window) * hop]
    scale = float(np.max(np.abs(whole))) or 1.0
    for context in candidates:
        lo, hi = start - context, start + window + context
        audio = decoder.run(None, {latent: z[:, :, lo:hi]})[0].reshape(-1)
        part = audio[context * hop : (context + window) * hop]
        if float(np.max(np.abs(part - reference))) <= _EXACT * scale:
            return context
    return None
