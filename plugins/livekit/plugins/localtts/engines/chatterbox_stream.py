"""One Chatterbox stream as the scheduler steps it (`scheduler.StreamWork`), and the batched
T3 step that advances many streams at once (`chatterbox_t3`); S3Gen renders each stream's
chunks between steps (`chatterbox_s3gen`)."""

from __future__ import annotations

import secrets
import time
from dataclasses import fields
from typing import TYPE_CHECKING, Any

import numpy as np

from .base import SynthesisParams, TimedChunk
from .chatterbox_options import SAMPLE_RATE, StreamStats
from .chatterbox_words import SpeechWordClock, utterance_words
from .scheduler import Step

if TYPE_CHECKING:
    from .chatterbox import ChatterboxEngine


def sampling_params(params: SynthesisParams) -> Any:
    """The request's knobs where given, SamplingParams' own (upstream's) defaults elsewhere."""
    from .chatterbox_t3 import SamplingParams

    knobs = {f.name: getattr(params, f.name) for f in fields(SamplingParams)}
    return SamplingParams(**{k: v for k, v in knobs.items() if v is not None})


class SlotProbe:
    """A slot holder while the warmup times the step."""

    slot: int = -1


class ChatterboxStreamWork:
    """One Chatterbox stream for the scheduler: `prefill` takes a KV cache slot, `decode`
    (batched) samples tokens, `emit` renders the next chunk through S3Gen.

    Chunk boundaries depend on the speech tokens alone (the streamer's schedule), never on
    when the scheduler read them, so a stream's audio is the same alone and in any batch.
    """

    sample_rate = SAMPLE_RATE

    def __init__(
        self, engine: ChatterboxEngine, text: str, conds: Any, params: SynthesisParams,
        max_new_tokens: int | None = None,
    ) -> None:
        import torch

        self._engine = engine
        self._decoder = engine._decoder
        self.sampling = sampling_params(params)
        exaggeration = 0.5 if params.exaggeration is None else params.exaggeration
        self.seed = params.seed if params.seed is not None else secrets.randbits(62)
        self.stats = StreamStats()
        self._started = time.perf_counter()
        with torch.inference_mode():
            self._embeds, text_ids = engine._prompt_embeds(text, conds, exaggeration)
            voice = engine._streamer.prepare(conds.gen)
        # word times from where T3 reads the text, where the decoder reads its aligned heads
        self.words: SpeechWordClock | None = None
        if self._decoder.aligned_heads:
            from .chatterbox_s3gen import SAMPLES_PER_TOKEN

            self.words = utterance_words(
                engine._tokenizer, text, text_ids, self._embeds.shape[1],
                SAMPLES_PER_TOKEN / SAMPLE_RATE,
            )
        self.stream = engine._streamer.open(voice, seed=self.seed)
        self._max_new = max_new_tokens or engine.options.max_new_tokens
        self.slot = -1
        self.joined = False  # prefilled into a slot
        self.holds_slot = False
        self.read = 0  # tokens of the slot already read by the host
        self.limit = 0
        self.finished = False

    def next_step(self) -> Step:
        if not self.joined:
            return "prefill" if self._decoder.free_slots else "wait"
        stream = self.stream
        if stream.chunk_ready() or (self.finished and len(stream.tokens) > stream.committed):
            return "emit"
        return "done" if self.finished else "decode"

    def wants_decode(self) -> bool:
        """Decode ahead of the vocoder by up to one host read."""
        if not self.holds_slot or self.finished:
            return False
        ahead = self.stream.tokens_needed_for_next_chunk() + self._decoder.stop_check_interval
        return len(self.stream.tokens) < ahead

    def prefill(self) -> None:
        started = time.perf_counter()
        decoder = self._decoder
        span = self.words.text_span if self.words is not None else None
        decoder.start(self, self._embeds, self.sampling, self.seed, text_span=span)
        self.joined = self.holds_slot = True
        self.limit = min(decoder.capacity_for(self._embeds.shape[1]), self._max_new)
        self._embeds = None
        self.stats.prefill_s = time.perf_counter() - started
        if self.limit <= 1:  # nothing more to decode: read the one token now
            self.take(*decoder.read([(self.slot, 0, 1)])[0], 0.0)
            self.leave()

    def steps_wanted(self) -> int:
        """Steps until this stream's next host read: exactly when its next chunk's tokens are
        there, else every `stop_check_interval` steps; never past its limit."""
        interval = self._decoder.stop_check_interval
        want = self.stream.tokens_needed_for_next_chunk() - len(self.stream.tokens)
        steps = interval if want <= 0 else min(interval, want)
        return max(1, min(steps, self.limit - self._decoder.length[self.slot]))

    def take(self, new: list[int], positions: list[int], seconds: float) -> None:
        """Tokens (and the text positions they were sampled at) read from the slot since
        the last read."""
        hp = self._decoder.hp
        self.stats.t3_s += seconds
        self.read = length = self._decoder.length[self.slot]
        if hp.stop_speech_token in new:
            cut = new.index(hp.stop_speech_token)
            new, positions = new[:cut], positions[:cut]
            self.stats.stopped = True
        speech = [i for i, t in enumerate(new) if t < hp.start_speech_token]  # >= 6561: none
        self.stream.add([new[i] for i in speech])
        if self.words is not None:
            self.words.add([positions[i] for i in speech])
        if self.stats.stopped or length >= self.limit:
            self.finished = True
            self.stats.tokens = length

    def leave(self) -> None:
        if self.holds_slot:
            self.holds_slot = False
            self._decoder.release(self)

    def emit(self) -> np.ndarray | None:
        stream, stats = self.stream, self.stats
        started = time.perf_counter()
        chunk = stream.render_next() if stream.chunk_ready() else stream.finish()
        stats.vocoder_s += time.perf_counter() - started
        if chunk is None:
            return None
        stats.chunk_tokens = list(stream.chunk_tokens)
        stats.speech_tokens = list(stream.tokens)
        if stats.first_chunk_s is None:
            stats.first_chunk_s = time.perf_counter() - self._started
            stats.tokens_at_first_chunk = len(stream.tokens)
            stats.sampled_at_first_chunk = self.read
        elif self._engine._watermarker is not None:
            chunk = self._engine._watermark(chunk)
        stats.audio_s += len(chunk) / SAMPLE_RATE
        audio = np.clip(chunk, -1.0, 1.0).astype(np.float32, copy=False)
        if self.words is None:
            return audio
        # the words whose first speech token is in audio emitted so far
        final = self.finished and len(stream.tokens) <= stream.committed
        return TimedChunk.of(audio, self.words.words_until(stream.committed, final=final))

    def close(self) -> None:
        stats = self.stats
        if self.holds_slot:
            stats.tokens = self._decoder.length[self.slot]
        self.leave()
        done = self.finished and len(self.stream.tokens) <= self.stream.committed
        stats.cancelled = not done
        stats.total_s = time.perf_counter() - self._started
        self._engine.last_stats = stats


def decode_batch(
    engine: ChatterboxEngine, works: list[ChatterboxStreamWork]
) -> dict[int, BaseException]:
    """T3 steps for every stream in `works` at once, then one host read of their tokens.
    The step mutates the device state of every row in place, so it cannot be retried
    one stream at a time: if it fails, it fails the streams it ran."""
    decoder = engine._decoder
    steps = min(w.steps_wanted() for w in works)
    started = time.perf_counter()
    try:
        decoder.step(works, steps)
        new = decoder.read([(w.slot, w.read, decoder.length[w.slot]) for w in works])
    except Exception as e:
        return dict.fromkeys(range(len(works)), e)
    seconds = time.perf_counter() - started
    failures: dict[int, BaseException] = {}
    for i, (work, (tokens, positions)) in enumerate(zip(works, new, strict=True)):
        try:
            work.take(tokens, positions, seconds)
        except Exception as e:
            failures[i] = e
    for work in works:
        if work.finished:
            work.leave()  # the slot is free for the next stream at once
    return failures
