"""Many streams on one engine: the scheduler thread, batched decoding, priorities, isolation.

The tiny random-weight XTTS (fp32) speaks; streams start from threads of their own, as
rooms do, and the scheduler batches their decode steps.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("TTS")

from livekit.plugins.localtts.engines.base import SynthesisParams  # noqa: E402
from livekit.plugins.localtts.engines.scheduler import (  # noqa: E402
    Admission,
    EngineBusyError,
    EngineScheduler,
)
from livekit.plugins.localtts.engines.xtts import XTTSEngine  # noqa: E402
from livekit.plugins.localtts.engines.xtts_stream import XTTSStreamWork  # noqa: E402

from tests.concurrency import together  # noqa: E402
from tests.tiny_xtts import build_xtts, make_test_clip, make_tiny_xtts_engine  # noqa: E402

MAX_TOKENS = 20
TEXTS = {1: "The first stream speaks.", 2: "A second one, longer.", 3: "And a third.",
         4: "A fourth."}


@pytest.fixture(scope="module")
def engine() -> XTTSEngine:
    return make_tiny_xtts_engine(max_tokens=MAX_TOKENS)


class Recorder:
    """What the scheduler thread did, step by step: (kind, seed, detail, thread id), with
    each stream told apart by its seed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, int, Any, int]] = []
        self.tokens: dict[int, list[int]] = {}
        self.batches: list[int] = []
        self.on_accept: Callable[[int, int], None] | None = None
        recorder = self
        start, accept, emit = XTTSStreamWork.start_piece, XTTSStreamWork.accept, XTTSStreamWork.emit

        def seed(work: XTTSStreamWork) -> int:
            return int(work._sampling.seed)  # type: ignore[arg-type]

        def rec_prefill(work: XTTSStreamWork, *args: Any) -> None:  # a prefill succeeded
            recorder.events.append(("prefill", seed(work), None, threading.get_ident()))
            start(work, *args)

        def rec_accept(work: XTTSStreamWork, latent: Any, logits: Any) -> None:
            n = len(recorder.tokens.setdefault(seed(work), []))
            if recorder.on_accept is not None:
                recorder.on_accept(seed(work), n)
            real = torch.multinomial

            def spy(*args: Any, **kwargs: Any) -> Any:
                out = real(*args, **kwargs)
                recorder.tokens[seed(work)].append(int(out))
                return out

            torch.multinomial = spy
            try:
                accept(work, latent, logits)
            finally:
                torch.multinomial = real

        def rec_emit(work: XTTSStreamWork) -> Any:
            chunk = emit(work)
            recorder.events.append(("emit", seed(work), chunk is not None, threading.get_ident()))
            return chunk

        monkeypatch.setattr(XTTSStreamWork, "start_piece", rec_prefill)
        monkeypatch.setattr(XTTSStreamWork, "accept", rec_accept)
        monkeypatch.setattr(XTTSStreamWork, "emit", rec_emit)

    def emits(self) -> list[int]:
        return [s for kind, s, made, _ in self.events if kind == "emit" and made]


def speak(engine: XTTSEngine, seed: int, cancel: threading.Event | None = None,
          text: str | None = None) -> np.ndarray:
    chunks = engine.stream(text or TEXTS[seed], None, SynthesisParams(seed=seed),
                           cancel or threading.Event())
    return np.concatenate(list(chunks) or [np.zeros(0, np.float32)])


def batch_sizes(engine: XTTSEngine) -> tuple[list[int], Any]:
    sizes: list[int] = []
    handle = engine._model.gpt.gpt.ln_f.register_forward_pre_hook(
        lambda _m, args: sizes.append(args[0].shape[0]) if args[0].shape[1] == 1 else None
    )
    return sizes, handle


@pytest.fixture(scope="module")
def alone(engine: XTTSEngine) -> dict[int, tuple[np.ndarray, list[int]]]:
    """Streams 1-3 each spoken alone, their audio and sampled tokens (seeded: the same
    whenever spoken): what every test of company compares with."""
    with pytest.MonkeyPatch.context() as patch:
        recorder = Recorder(patch)
        audio = {seed: speak(engine, seed) for seed in (1, 2, 3)}
    return {seed: (audio[seed], recorder.tokens[seed]) for seed in audio}


def test_seeded_streams_are_the_same_alone_and_in_a_batch(engine, alone, monkeypatch) -> None:
    recorder = Recorder(monkeypatch)
    sizes, handle = batch_sizes(engine)
    try:
        batched = together({seed: (lambda s=seed: speak(engine, s)) for seed in (1, 2, 3)})
    finally:
        handle.remove()
    assert max(sizes) == 3  # the three streams really decoded as one batch
    for seed in (1, 2, 3):
        assert recorder.tokens[seed] == alone[seed][1]
        assert len(alone[seed][1]) == MAX_TOKENS
        # fp32 matmuls of a batch round differently in the last bit than one row alone
        # (MKL's gemv vs gemm): same tokens, audio equal to float32 precision
        np.testing.assert_allclose(batched[seed], alone[seed][0], rtol=0, atol=1e-4)


def test_cancelling_one_stream_leaves_the_others_unchanged(engine, alone, monkeypatch) -> None:
    recorder = Recorder(monkeypatch)
    cancel = threading.Event()
    steps_after_cancel: list[int] = []

    def cancel_two(seed: int, n: int) -> None:
        if seed == 2 and n == 10:
            cancel.set()
        elif seed == 2 and cancel.is_set():
            steps_after_cancel.append(n)

    recorder.on_accept = cancel_two
    results = together({seed: (lambda s=seed: speak(engine, s, cancel if s == 2 else None))
                        for seed in (1, 2, 3)})
    assert len(recorder.tokens[2]) == 11 and not steps_after_cancel  # gone at the next step
    for seed in (1, 3):
        np.testing.assert_allclose(results[seed], alone[seed][0], rtol=0, atol=1e-4)
    assert len(results[2]) < len(alone[1][0])


def test_a_failure_in_one_stream_fails_only_that_stream(engine, alone, monkeypatch) -> None:
    recorder = Recorder(monkeypatch)

    def break_two(seed: int, n: int) -> None:
        if seed == 2 and n == 8:
            raise RuntimeError("stream two broke while sampling")

    recorder.on_accept = break_two
    results = together({seed: (lambda s=seed: speak(engine, s)) for seed in (1, 2, 3)})
    assert isinstance(results[2], RuntimeError) and "stream two broke" in str(results[2])
    for seed in (1, 3):
        np.testing.assert_allclose(results[seed], alone[seed][0], rtol=0, atol=1e-4)

    # a stream whose state breaks the shared part of the batched step: the step is run again
    # one stream at a time, and only the stream at fault fails
    recorder.on_accept = None
    accept = XTTSStreamWork.accept

    def accept_then_poison(self: XTTSStreamWork, latent: Any, logits: Any) -> None:
        accept(self, latent, logits)
        if int(self._sampling.seed) == 2 and len(self.piece.latents) == 8:
            self.piece.next_emb = torch.zeros(1, 1, 3)  # the wrong width for the trunk

    monkeypatch.setattr(XTTSStreamWork, "accept", accept_then_poison)
    results = together({seed: (lambda s=seed: speak(engine, s)) for seed in (1, 2, 3)})
    assert isinstance(results[2], RuntimeError)
    for seed in (1, 3):
        np.testing.assert_allclose(results[seed], alone[seed][0], rtol=0, atol=1e-4)
    assert len(speak(engine, 1)) == len(alone[1][0])  # and the engine goes on


def test_a_new_streams_first_chunk_goes_before_other_streams_later_chunks(
    engine, monkeypatch
) -> None:
    recorder = Recorder(monkeypatch)
    engine.max_tokens = 60  # a long first stream: many chunks
    try:
        long_text = "This first stream keeps talking for a good while longer."
        speaking = threading.Event()  # stream two starts once stream one is speaking

        def one() -> np.ndarray:
            chunks = []
            for chunk in engine.stream(long_text, None, SynthesisParams(seed=1),
                                       threading.Event()):
                chunks.append(chunk)
                speaking.set()
            return np.concatenate(chunks)

        def two() -> np.ndarray:
            assert speaking.wait(timeout=60)
            return speak(engine, 2)

        results = together({1: one, 2: two})
    finally:
        engine.max_tokens = MAX_TOKENS
    assert all(isinstance(r, np.ndarray) and r.size for r in results.values())
    kinds = [(kind, seed) for kind, seed, made, _ in recorder.events if kind == "prefill" or made]
    joined = kinds.index(("prefill", 2))
    first_of_two = kinds.index(("emit", 2))
    assert kinds.index(("emit", 1)) < joined  # stream one was already speaking
    # between stream two's arrival and its first chunk, stream one got no chunk
    assert ("emit", 1) not in kinds[joined:first_of_two]
    assert ("emit", 1) in kinds[first_of_two:]  # and went on afterwards


def arriving_together(engine: XTTSEngine, seeds: tuple[int, ...]) -> dict[int, Any]:
    """The streams' results when they all arrive while the engine is busy (so together)."""
    scheduler = engine.scheduler
    holding = threading.Event()

    def busy_until_all_arrived() -> None:  # runs on the scheduler thread: nothing else does
        holding.set()
        deadline = time.monotonic() + 60
        while scheduler._inbox.qsize() < len(seeds) and time.monotonic() < deadline:
            time.sleep(0.01)

    busy = threading.Thread(target=scheduler.call, args=(busy_until_all_arrived,))
    busy.start()
    # no stream may reach the inbox before this call: an idle scheduler would take it and
    # prefill it alone
    assert holding.wait(timeout=60)
    with pytest.MonkeyPatch.context() as patch:
        # `stream` asks the (loaded) engine to load, a call through the same inbox: three
        # such calls would pass for the three streams, whose own entries then race the step
        patch.setattr(engine, "load", lambda: None)
        try:
            return together({seed: (lambda s=seed: speak(engine, s)) for seed in seeds})
        finally:
            busy.join()


def prompt_length(engine: XTTSEngine, seed: int) -> int:
    """A piece's prompt after the voice's cached part: start and stop text tokens around
    the text, then the start audio token."""
    return len(engine._model.tokenizer.encode(TEXTS[seed].lower(), lang="en")) + 3


def test_first_chunks_of_streams_arriving_together_decode_as_one_batch(
    engine, alone, monkeypatch
) -> None:
    # (`alone` has spoken in the default voice: its part of the prompt is cached)
    recorder = Recorder(monkeypatch)
    handle = engine._model.gpt.gpt.ln_f.register_forward_pre_hook(
        lambda _m, args: recorder.events.append(
            ("decode", args[0].shape[0], None, 0) if args[0].shape[1] == 1
            else ("prompts", args[0].shape[1], None, 0)
        )
    )
    try:
        results = arriving_together(engine, (1, 2, 3))
    finally:
        handle.remove()
    kinds = [(kind, seed) for kind, seed, _, _ in recorder.events]
    first_emit = next(i for i, (kind, _) in enumerate(kinds) if kind == "emit")
    # the three prompts run as one pass, end to end; each stream then samples its first
    # token (in whatever order their threads arrived)
    assert kinds[0] == ("prompts", sum(prompt_length(engine, seed) for seed in (1, 2, 3)))
    assert sorted(kinds[1:4]) == [("prefill", 1), ("prefill", 2), ("prefill", 3)]
    # then every step up to the first chunks carries all three
    steps = [n for kind, n in kinds[4:first_emit]]
    assert steps == [3] * (engine.first_chunk_tokens - 1)  # the prefill sampled the first
    assert sorted(seed for kind, seed in kinds[first_emit : first_emit + 3]) == [1, 2, 3]
    for seed in (1, 2, 3):  # and in company each stream says what it says alone
        np.testing.assert_allclose(results[seed], alone[seed][0], rtol=0, atol=1e-4)


def test_a_prompt_that_breaks_the_shared_pass_fails_only_its_stream(
    engine, alone, monkeypatch
) -> None:
    next_prompt = XTTSStreamWork.next_prompt

    def poisoned(self: XTTSStreamWork) -> Any:
        prompt, piece = next_prompt(self)
        if int(self._sampling.seed) == 2:  # the wrong width: the pass over all prompts fails
            prompt = torch.zeros(1, prompt.shape[1], 3)
        return prompt, piece

    monkeypatch.setattr(XTTSStreamWork, "next_prompt", poisoned)
    passes: list[int] = []  # prompt passes that reached the trunk's first block
    hook = engine._model.gpt.gpt.h[0].ln_1.register_forward_pre_hook(
        lambda _m, args: passes.append(args[0].shape[1]) if args[0].shape[1] > 1 else None
    )
    try:
        results = arriving_together(engine, (1, 2, 3))
    finally:
        hook.remove()
    assert isinstance(results[2], RuntimeError)
    for seed in (1, 3):
        np.testing.assert_allclose(results[seed], alone[seed][0], rtol=0, atol=1e-4)
    # the pass over all three failed, then each prompt ran alone
    assert sorted(passes) == sorted(prompt_length(engine, seed) for seed in (1, 2, 3))
    assert len(speak(engine, 1)) == len(alone[1][0])  # and the engine goes on


def test_no_stream_starves(engine, monkeypatch) -> None:
    recorder = Recorder(monkeypatch)
    # deadlines reckoned on a clock where each step takes 20 ms (faster than real time for
    # four streams), not the wall clock: on a loaded machine every stream runs late, and
    # then earliest-deadline-first rightly serves the longest-starved listeners first
    scheduler = engine.scheduler
    monkeypatch.setattr(scheduler, "clock", lambda: scheduler.steps * 0.02)
    engine.max_tokens = 40
    try:
        results = together({seed: (lambda s=seed: speak(engine, s)) for seed in (1, 2, 3, 4)},
                           stagger_s=0.05)
    finally:
        engine.max_tokens = MAX_TOKENS
    assert all(isinstance(r, np.ndarray) and r.size for r in results.values())
    emits = recorder.emits()
    # every stream's first chunk before any stream's third
    thirds = [i for i, s in enumerate(emits) if emits[: i + 1].count(s) == 3]
    assert {s for s in emits[: thirds[0]]} == {1, 2, 3, 4}
    # while all four speak, no stream waits more than two rounds for its next chunk
    for seed in (1, 2, 3, 4):
        mine = [i for i, s in enumerate(emits) if s == seed]
        for a, b in itertools.pairwise(mine):
            others = set(emits[a + 1 : b])
            assert b - a - 1 <= 2 * len(others) + 1, (seed, emits)


def test_only_the_scheduler_thread_computes(monkeypatch) -> None:
    """Load, warmup, conditioning and every stream's steps: all on the engine's thread."""
    threads: set[int] = set()
    model = build_xtts("tiny")
    for module in (model.gpt.gpt.ln_f, model.hifigan_decoder.waveform_decoder,
                   model.hifigan_decoder.speaker_encoder):
        module.register_forward_pre_hook(lambda *_: threads.add(threading.get_ident()))
    engine = XTTSEngine.from_model(model, max_tokens=12)
    load = engine._load
    monkeypatch.setattr(engine, "_load", lambda: (threads.add(threading.get_ident()), load()))
    engine.load()
    voice = engine.condition(make_test_clip("c"))
    together({i: (lambda i=i: list(engine.stream("Hi there.", voice, SynthesisParams(seed=i),
                                                   threading.Event()))) for i in range(3)})
    assert threads == {engine.scheduler.thread_ident}
    assert engine.scheduler.thread_ident != threading.get_ident()
    assert engine.info().capacity is not None and engine.info().capacity >= 1


def test_the_scheduler_counts_its_time_by_kind_of_step(engine, monkeypatch) -> None:
    """Benches split a run's wall time by kind of step: each step is counted once, under
    the kind it was, and its time is within the stream's."""
    scheduler = engine.scheduler
    counts, seconds = dict(scheduler.step_counts), dict(scheduler.step_seconds)
    recorder = Recorder(monkeypatch)
    sizes, handle = batch_sizes(engine)
    started = time.perf_counter()
    try:
        speak(engine, 1)
    finally:
        handle.remove()
    wall = time.perf_counter() - started
    added = {k: scheduler.step_counts[k] - counts.get(k, 0) for k in scheduler.step_counts}
    spent = {k: scheduler.step_seconds[k] - seconds.get(k, 0.0) for k in scheduler.step_seconds}
    kinds = [kind for kind, *_ in recorder.events]
    assert added == {"prefill": kinds.count("prefill"), "decode": len(sizes),
                     "emit": kinds.count("emit")}
    assert all(spent[k] > 0 for k in added)
    assert sum(spent.values()) <= wall


def test_serialized_mode_decodes_one_stream_per_step(monkeypatch) -> None:
    engine = XTTSEngine.from_model(
        build_xtts("tiny"), max_tokens=20, scheduler=EngineScheduler("xtts", batching=False)
    )
    engine.load()
    voice = engine.condition(make_test_clip("c"))
    sizes, handle = batch_sizes(engine)
    try:
        together({i: (lambda i=i: list(engine.stream("Hi there.", voice, SynthesisParams(seed=i),
                                                       threading.Event()))) for i in range(3)})
    finally:
        handle.remove()
    assert sizes and set(sizes) == {1}
    assert engine.info().details["scheduler"] == "one stream per step"


# -- admission ------------------------------------------------------------------------------


def test_admission_waits_in_line_then_says_busy() -> None:
    admission = Admission(2, max_waiting=1, wait_s=0.3)
    a, b = admission.acquire(), admission.acquire()
    assert admission.active == 2
    started = time.monotonic()
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(admission.acquire(timeout=5)))
    waiter.start()
    time.sleep(0.1)
    assert admission.waiting == 1
    with pytest.raises(EngineBusyError, match="1 streams already wait") as full:
        admission.acquire()  # the line (1) is full: at once
    assert full.value.retry_after_s >= 1
    a.release()
    waiter.join(timeout=5)
    assert got and got[0].waited_s >= 0.09 and admission.active == 2
    with pytest.raises(EngineBusyError, match=r"within 0\.3 s"):
        admission.acquire()  # waits its 0.3 s, nobody leaves
    assert 0.3 <= time.monotonic() - started < 3
    b.release()
    got[0].release()
    got[0].release()  # twice is harmless
    assert admission.active == 0
    with admission.acquire():
        assert admission.active == 1
    assert admission.active == 0 and admission.rejected == 2


def test_admission_never_refuses_while_the_line_moves_up() -> None:
    """A place just freed, its waiter not yet moved up: a newcomer queues behind it (it is
    not refused because the line looks full)."""
    admission = Admission(1, max_waiting=1, wait_s=5)
    speaking = admission.acquire()
    waiter = threading.Thread(target=lambda: admission.acquire().release())
    waiter.start()
    while admission.waiting == 0:
        time.sleep(0.01)
    with admission._cond:  # holds the waiter back: one place free, one in line
        speaking.release()
        assert admission.active == 0 and admission.waiting == 1
        lease = admission.acquire()  # queues; the waiter moves up, speaks, leaves
    waiter.join(timeout=5)
    assert admission.active == 1 and admission.rejected == 0
    lease.release()
