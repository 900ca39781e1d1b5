"""The plugin's calls into an engine (engine_calls.py) on the real Piper voice: one warmup
per engine however many callers, the admission lease a caller who gives up never keeps, and
the engine's chunks handed to the event loop unchanged, its errors re-raised there, its
cancel set when the consumer stops.

Fast tests of those three functions alone: `bash tests/mutation.sh engine_calls` runs them
against every mutant.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest
from livekit.plugins.localtts.engine_calls import admitted, engine_chunks, warm_engine
from livekit.plugins.localtts.engines import EngineScheduler, SynthesisParams, VoiceConditioning
from livekit.plugins.localtts.engines.base import UnsupportedVoiceError
from livekit.plugins.localtts.engines.piper import PiperEngine
from livekit.plugins.localtts.engines.scheduler import EngineBusyError, Lease, StreamTimes

from .recording_engine import RecordingEngine

# Piper speaks a sentence per chunk: far more than can be made before the consumer stops
SENTENCES = 24
LONG = " ".join(f"This is sentence number {n} of a long reply." for n in range(SENTENCES))


class CountingLoads:
    """A real engine (the session's warm Piper: its load and warmup are quick once done),
    counting `load` and `warmup` calls; the first `fail_loads` loads raise (weights still
    being copied into place, say). A new one is a new engine to `warm_engine`."""

    def __init__(self, inner: PiperEngine, fail_loads: int = 0) -> None:
        self.inner = inner
        self.loads = 0
        self.warmups = 0
        self._fail_loads = fail_loads

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def load(self) -> None:
        self.loads += 1
        if self.loads <= self._fail_loads:
            raise OSError("weights not there yet")
        self.inner.load()

    def warmup(self) -> None:
        self.warmups += 1
        self.inner.warmup()


async def test_one_warmup_per_engine_however_many_callers(piper_engine: PiperEngine) -> None:
    engine = CountingLoads(piper_engine)
    futures = [warm_engine(engine) for _ in range(5)]  # type: ignore[arg-type]
    assert all(f is futures[0] for f in futures)  # one warmup, shared
    await asyncio.wrap_future(futures[0])
    assert warm_engine(engine) is futures[0]  # done: nothing to do again  # type: ignore[arg-type]
    assert (engine.loads, engine.warmups) == (1, 1)
    other = CountingLoads(piper_engine)  # another engine has its own
    await asyncio.wrap_future(warm_engine(other))  # type: ignore[arg-type]
    assert (other.loads, other.warmups, engine.loads) == (1, 1, 1)


async def test_a_failed_warmup_is_tried_again(piper_engine: PiperEngine) -> None:
    engine = CountingLoads(piper_engine, fail_loads=1)
    failed = warm_engine(engine)  # type: ignore[arg-type]
    with pytest.raises(OSError, match="weights not there yet"):
        await asyncio.wrap_future(failed)
    retried = warm_engine(engine)  # type: ignore[arg-type]
    assert retried is not failed
    await asyncio.wrap_future(retried)
    assert (engine.loads, engine.warmups) == (2, 1)
    assert warm_engine(engine) is retried  # type: ignore[arg-type]


@pytest.fixture
def one_place() -> PiperEngine:
    """An engine with room for one stream and two waiting (no model needed to lease)."""
    return PiperEngine(scheduler=EngineScheduler("piper", capacity=1, max_waiting=2, wait_s=30))


async def _until(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_unlimited_callers_are_counted_never_held(one_place: PiperEngine) -> None:
    admission = one_place.scheduler.admission
    holder = await admitted(one_place, limit=True)
    extra = await asyncio.wait_for(admitted(one_place, limit=False), 1.0)  # at once
    assert (admission.active, admission.waiting) == (2, 0)
    extra.release()
    holder.release()
    assert admission.active == 0


async def _held_and_waiting(engine: PiperEngine) -> tuple[Any, Lease, asyncio.Task[Lease]]:
    """(admission, the lease of the one place, a caller waiting in line for it)."""
    admission = engine.scheduler.admission
    holder = await admitted(engine, limit=True)
    waiter = asyncio.create_task(admitted(engine, limit=True))
    await _until(lambda: admission.waiting == 1)
    return admission, holder, waiter


async def test_a_caller_who_gives_up_waiting_leaves_no_lease(one_place: PiperEngine) -> None:
    errors: list[dict[str, Any]] = []  # what the loop would log: nothing may fail unseen
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: errors.append(context))
    admission, holder, waiter = await _held_and_waiting(one_place)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await _until(lambda: admission.waiting == 0)  # the worker thread stopped waiting
    holder.release()
    await asyncio.sleep(0.2)
    assert admission.active == 0  # nobody took the freed place
    assert errors == []  # the line's "busy" answer to the caller who left is not an error


async def test_a_lease_granted_as_its_caller_gives_up_is_released(one_place: PiperEngine) -> None:
    admission, holder, waiter = await _held_and_waiting(one_place)
    holder.release()
    # the event loop stands still (no await) while the worker thread takes the lease
    deadline = time.monotonic() + 5
    while admission.waiting and time.monotonic() < deadline:
        time.sleep(0.01)  # noqa: ASYNC251
    assert (admission.active, admission.waiting) == (1, 0)
    waiter.cancel()  # before the loop hears of the lease
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await _until(lambda: admission.active == 0)  # handed back for the caller who left


async def test_a_full_line_is_busy_at_once(one_place: PiperEngine) -> None:
    holder = await admitted(one_place, limit=True)
    waiters = [asyncio.create_task(admitted(one_place, limit=True)) for _ in range(2)]
    await _until(lambda: one_place.scheduler.admission.waiting == 2)
    with pytest.raises(EngineBusyError, match="2 streams already wait"):
        await asyncio.wait_for(admitted(one_place, limit=True), 1.0)
    holder.release()
    for waiter in waiters:
        (await waiter).release()


class ThreadNoting(RecordingEngine):
    """Notes which thread consumes the engine's stream."""

    thread = ""

    def stream(self, *args: Any) -> Any:
        self.thread = threading.current_thread().name
        yield from super().stream(*args)


async def test_chunks_arrive_unchanged_with_the_streams_times(piper_engine: PiperEngine) -> None:
    recording = ThreadNoting(piper_engine, keep_audio=True)
    times: list[StreamTimes] = []
    text = "One sentence here. And a second one after it."
    got = [c async for c in engine_chunks(recording, text, None, SynthesisParams(), times)]  # type: ignore[arg-type]
    (call,) = recording.calls
    assert len(got) == len(call.audio) >= 2 and not call.cancelled
    for ours, engines in zip(got, call.audio, strict=True):
        np.testing.assert_array_equal(ours, engines)
    # waited for in the plugin's own pool: the loop's default executor (cores + 4 threads)
    # stays free for the voice library's and everyone else's `to_thread` calls
    assert recording.thread.startswith("localtts-engine")
    (stream_times,) = times  # the engine's stream reported into the caller's list
    assert stream_times.audio_s == pytest.approx(sum(c.size for c in got) / 22_050, abs=1e-3)


async def test_the_engines_error_is_raised_on_the_loop(piper_engine: PiperEngine) -> None:
    voice = VoiceConditioning("narrator", "xtts", "r1", object())
    with pytest.raises(UnsupportedVoiceError, match="cannot speak with cloned voice 'narrator'"):
        async for _chunk in engine_chunks(piper_engine, "Hello.", voice, SynthesisParams()):
            pass
    # and the next request works
    assert [c async for c in engine_chunks(piper_engine, "Hello.", None, SynthesisParams())]


async def test_stopping_early_cancels_the_engine(piper_engine: PiperEngine) -> None:
    recording = RecordingEngine(piper_engine)
    chunks = engine_chunks(recording, LONG, None, SynthesisParams())
    await chunks.__anext__()
    await chunks.aclose()
    await _until(lambda: recording.calls[0].finished is not None)
    assert recording.calls[0].cancelled
    assert len(recording.calls[0].chunk_samples) < SENTENCES  # stopped before the last one


async def test_a_closed_loop_cancels_the_engine(piper_engine: PiperEngine) -> None:
    """The consumer's loop ended without closing the iterator: the worker, unable to hand
    a chunk over, tells the engine to stop."""
    recording = RecordingEngine(piper_engine)
    started = threading.Event()

    def consume_one_chunk_then_drop_the_loop() -> None:
        async def first() -> None:
            chunks = engine_chunks(recording, LONG, None, SynthesisParams())
            await chunks.__anext__()
            started.set()

        loop = asyncio.new_event_loop()
        loop.run_until_complete(first())
        loop.close()

    thread = threading.Thread(target=consume_one_chunk_then_drop_the_loop)
    thread.start()
    thread.join(30)
    assert started.is_set()
    await _until(lambda: recording.calls[0].finished is not None, timeout=30)
    assert recording.calls[0].cancelled
    assert len(recording.calls[0].chunk_samples) < SENTENCES
