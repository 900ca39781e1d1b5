"""XTTS prompts: the voice's part of the KV cache computed once per voice, and prompts of
several streams in one trunk pass (engines/xtts_decode.py, engines/xtts_stream.py), on the
tiny random-weight model in fp32."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("TTS")

from livekit.plugins.localtts.engines.base import SynthesisParams  # noqa: E402
from livekit.plugins.localtts.engines.xtts import XTTSEngine  # noqa: E402
from livekit.plugins.localtts.engines.xtts_decode import KVSlot, trunk_forward  # noqa: E402

from tests.tiny_xtts import make_test_clip, make_tiny_xtts_engine  # noqa: E402


@pytest.fixture(scope="module")
def engine() -> XTTSEngine:
    return make_tiny_xtts_engine(max_tokens=12)


def _x(t: int, seed: int, d: int) -> Any:
    return torch.randn(1, t, d, generator=torch.Generator().manual_seed(seed))


def test_positions_after_a_cached_prefix_are_the_one_pass_result(engine: XTTSEngine) -> None:
    """A prompt run after a copy of its first positions' keys and values gives what one pass
    over the whole prompt gives: the new positions see the cache and, causally, each other."""
    trunk = engine._model.gpt.gpt
    layers, d = len(trunk.h), engine._model.gpt.model_dim
    x = _x(40, 1, d)
    with torch.inference_mode():
        whole = trunk_forward(trunk, x, [KVSlot(layers)])
        prefix = KVSlot(layers)
        trunk_forward(trunk, x[:, :32], [prefix])
        prefix.commit(32)
        kept = prefix.copy(grow=False)
        rest = [trunk_forward(trunk, x[:, 32:], [kept.copy()]) for _ in range(2)]
        # one more position after both parts: the cache holds all 40 in order
        slot = kept.copy()
        trunk_forward(trunk, x[:, 32:], [slot])
        slot.commit(8)
        step = trunk_forward(trunk, _x(1, 2, d), [slot])
        slot_whole = KVSlot(layers)
        trunk_forward(trunk, x, [slot_whole])
        slot_whole.commit(40)
        step_whole = trunk_forward(trunk, _x(1, 2, d), [slot_whole])
    assert kept.length == 32
    for r in rest:  # the kept prefix is copied, never written into
        torch.testing.assert_close(r, whole[:, 32:], rtol=0, atol=1e-5)
    torch.testing.assert_close(step, step_whole, rtol=0, atol=1e-5)


def test_prompts_end_to_end_are_each_prompt_alone(engine: XTTSEngine) -> None:
    """Prompts of 5 and 9 positions after caches of 32 and 0 positions, in one pass: each
    stream's result is the one it gets alone."""
    trunk = engine._model.gpt.gpt
    layers, d = len(trunk.h), engine._model.gpt.model_dim
    a, b = _x(5, 3, d), _x(9, 4, d)
    with torch.inference_mode():
        cached = KVSlot(layers)
        trunk_forward(trunk, _x(32, 5, d), [cached])
        cached.commit(32)
        alone_a = trunk_forward(trunk, a, [cached.copy()])
        alone_b = trunk_forward(trunk, b, [KVSlot(layers)])
        both = trunk_forward(trunk, torch.cat([a, b], dim=1), [cached.copy(), KVSlot(layers)],
                             lengths=[5, 9])
    assert both.shape == (1, 14, d)
    torch.testing.assert_close(both[:, :5], alone_a, rtol=0, atol=1e-5)
    torch.testing.assert_close(both[:, 5:], alone_b, rtol=0, atol=1e-5)


def test_a_voice_runs_its_latents_through_the_gpt_once(engine: XTTSEngine) -> None:
    """Each piece's prefill runs its text and the start token only; the voice's 32 latents
    go through the GPT on the voice's first piece, not again."""
    passes: list[int] = []
    handle = engine._model.gpt.gpt.ln_f.register_forward_pre_hook(
        lambda _m, args: passes.append(args[0].shape[1]) if args[0].shape[1] > 1 else None
    )
    voice = engine.condition(make_test_clip("prefix-once"))
    text = "Hello there."
    n = len(engine._model.tokenizer.encode(text.lower(), lang="en"))
    try:
        first = list(engine.stream(text, voice, SynthesisParams(seed=3), threading.Event()))
        after_first = list(passes)
        second = list(engine.stream(text, voice, SynthesisParams(seed=3), threading.Event()))
    finally:
        handle.remove()
    latents = voice.data.gpt_cond_latent.shape[1]
    # start/stop text tokens and the start audio token around the text
    assert after_first == [latents, n + 3]
    assert passes[len(after_first) :] == [n + 3]
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(second))
