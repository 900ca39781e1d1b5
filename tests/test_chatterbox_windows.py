"""Chatterbox's S3Gen run chunk by chunk (engines/chatterbox_s3gen.py `VocoderStream`) on the
tiny random-weight S3Gen, without the engine: the chunk schedule the first-audio time rests
on, that nothing is dropped or doubled, and that the joined chunks are the one-pass audio.

No engine and no scheduler thread: `bash tests/mutation.sh chatterbox_windows` forks a test
run per mutant from the process that built S3Gen once.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("chatterbox")

from livekit.plugins.localtts.engines.chatterbox_s3gen import (  # noqa: E402
    SAMPLES_PER_TOKEN,
    S3GenStreamer,
    StreamingConfig,
)
from livekit.plugins.localtts.host import set_torch_threads  # noqa: E402

from tests.tiny_chatterbox import N_CFM_STEPS, synthetic_voice, tiny_parts  # noqa: E402

TOKENS = 30  # 1.2 s of speech: chunks of 3, 6, 12 tokens, then the 9 left
CONFIG = StreamingConfig(first_chunk_tokens=6, lookahead_tokens=3, n_cfm_timesteps=N_CFM_STEPS)


@functools.cache
def _streamer_and_voice() -> tuple[S3GenStreamer, Any]:
    """Built once per process (a fork per mutant shares it)."""
    set_torch_threads(1)
    s3gen = tiny_parts()["s3gen"]
    streamer = S3GenStreamer(s3gen, config=CONFIG)
    with torch.inference_mode():
        ref = s3gen.embed_ref(synthetic_voice(1.0), 24_000, device="cpu")
    return streamer, streamer.prepare(ref)


@pytest.fixture(scope="module")
def tokens() -> list[int]:
    return torch.randint(0, 6561, (TOKENS,), generator=torch.Generator().manual_seed(4)).tolist()


def _snr_db(ref: np.ndarray, test: np.ndarray) -> float:
    assert len(ref) == len(test)
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum((ref - test) ** 2), 1e-20)))


def _streamed(tokens: list[int], step: int = 1) -> tuple[list[np.ndarray], Any]:
    """Tokens arrive `step` at a time, as the decoder hands them over; each chunk is
    rendered as soon as it is ready, the rest at the end."""
    streamer, voice = _streamer_and_voice()
    stream = streamer.open(voice, seed=7)
    chunks: list[np.ndarray] = []
    for i in range(0, len(tokens), step):
        stream.add(tokens[i : i + step])
        while stream.chunk_ready():
            chunks.append(stream.render_next())
    last = stream.finish()
    assert last is not None
    chunks.append(last)
    assert stream.finish() is None  # nothing left: no audio doubled
    return chunks, stream


@pytest.fixture(scope="module")
def streamed(tokens: list[int]) -> tuple[list[np.ndarray], Any]:
    """The tokens streamed one at a time (two tests read it; a fixture, not a cache, so a
    mutant's test run renders it again)."""
    return _streamed(tokens)


def test_chunk_schedule(tokens: list[int], streamed: tuple[list[np.ndarray], Any]) -> None:
    """The first chunk is the first 6 tokens less the 3 of look-ahead; each later one twice
    the previous (at least one more); the last takes every token left."""
    streamer, voice = _streamer_and_voice()
    stream = streamer.open(voice, seed=7)
    assert stream.tokens_needed_for_next_chunk() == 6
    stream.add(tokens[:5])
    assert not stream.chunk_ready()
    stream.add(tokens[5:6])
    assert stream.chunk_ready()
    assert stream.render_next().size == 3 * SAMPLES_PER_TOKEN
    assert (stream.committed, stream.tokens_needed_for_next_chunk()) == (3, 3 + 6 + 3)
    chunks, stream = streamed
    assert stream.chunk_tokens == [3, 6, 12, TOKENS - 21]
    assert [c.size for c in chunks] == [n * SAMPLES_PER_TOKEN for n in stream.chunk_tokens]
    assert all(c.dtype == np.float32 for c in chunks)


def test_chunks_grow_to_at_most_the_cap() -> None:
    streamer, voice = _streamer_and_voice()
    config = StreamingConfig(
        first_chunk_tokens=4, lookahead_tokens=3, chunk_growth=1.0, max_chunk_tokens=3,
        n_cfm_timesteps=N_CFM_STEPS,
    )
    stream = S3GenStreamer(streamer.s3gen, config=config).open(voice, seed=7)
    stream.add(list(range(100, 111)))
    while stream.chunk_ready():
        stream.render_next()
    # 1 token, then growth 1.0 still adds one at a time (2, 3), up to the cap of 3; the 5
    # tokens left are not a chunk with its 3 of look-ahead yet
    assert stream.chunk_tokens == [1, 2, 3]


def test_streamed_audio_is_the_one_pass_audio(
    tokens: list[int], streamed: tuple[list[np.ndarray], Any]
) -> None:
    """Whatever the chunking, the same tokens give (close to) the same audio: the joined
    chunks against the utterance rendered in one window."""
    streamer, voice = _streamer_and_voice()
    one = streamer.open(voice, seed=7)
    one.add(tokens)
    reference = one.finish()
    assert reference is not None and reference.size == TOKENS * SAMPLES_PER_TOKEN
    chunks, _ = streamed
    audio = np.concatenate(chunks)
    assert np.sqrt(np.mean(reference**2)) > 1e-3
    assert _snr_db(reference, audio) >= 20.0
    # the tokens' arrival does not change the audio: handed over 5 at a time
    np.testing.assert_array_equal(np.concatenate(_streamed(tokens, step=5)[0]), audio)
    # upstream's 20 ms of silence, then a fade-in, at the utterance start only
    assert np.all(audio[: SAMPLES_PER_TOKEN // 2] == 0)
    assert np.any(chunks[1][: SAMPLES_PER_TOKEN // 2] != 0)
