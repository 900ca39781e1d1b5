"""The plugin's calls into an engine from the event loop: the load and warmup (once per
engine, however many TTS objects share it), the admission lease, and the engine's chunks.

The engine computes on its own scheduler thread; the threads here only wait (for its chunks,
for a lease, for a load to finish) so the event loop never does. Nothing here knows about
LiveKit or tensors.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import numpy as np

from .engines import Engine, SynthesisParams, VoiceConditioning
from .engines.scheduler import Lease, StreamTimes, stream_context

# Threads here only wait: for an engine's chunks (its scheduler thread computes them), for an
# admission lease, for a load or warmup to finish.
_waiters = ThreadPoolExecutor(max_workers=32, thread_name_prefix="localtts-engine")


# one warmup per engine instance, however many TTS objects (rooms) prewarm it
_warmups: dict[int, tuple[Engine, Future[None]]] = {}  # id(engine) -> (engine, warmup)
_warmups_lock = threading.Lock()


def warm_engine(engine: Engine) -> Future[None]:
    def load_and_warm() -> None:
        engine.load()
        engine.warmup()

    with _warmups_lock:
        _, future = _warmups.get(id(engine), (engine, None))
        failed = future is not None and future.done() and (
            future.cancelled() or future.exception() is not None
        )
        if future is None or failed:
            future = _waiters.submit(load_and_warm)  # a failed warmup is tried again
            _warmups[id(engine)] = (engine, future)
        return future


async def admitted(engine: Engine, *, limit: bool) -> Lease:
    """The engine's admission lease (see `TTS(limit_to_capacity=)`), waited for in a worker
    thread; a caller that gives up (cancellation) leaves no lease behind."""
    admission = engine.scheduler.admission
    if not limit:
        return admission.acquire(limit=False)  # counted only: never waits
    cancel = threading.Event()
    future = asyncio.get_running_loop().run_in_executor(
        _waiters, lambda: admission.acquire(cancel=cancel)
    )
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        cancel.set()

        def release(done: asyncio.Future[Lease]) -> None:
            if not done.cancelled() and done.exception() is None:
                done.result().release()

        future.add_done_callback(release)
        raise


class _Done:
    pass


@dataclass
class _Failed:
    error: BaseException


async def engine_chunks(
    engine: Engine,
    text: str,
    voice: VoiceConditioning | None,
    params: SynthesisParams,
    times: list[StreamTimes] | None = None,
    *,
    continues_at: float | None = None,
) -> AsyncIterator[np.ndarray]:
    """Consume `engine.stream` in a worker thread; yield its chunks on the event loop.

    Closing the iterator (cancellation, aclose) sets the engine's cancel event, so the
    model stops at its next step and is free for the next request. `times` receives the
    stream's `StreamTimes` (how long it waited for the engine); `continues_at`: see
    `engines.scheduler.stream_context`.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    cancel = threading.Event()

    def deliver(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is gone: nobody is listening any more
            cancel.set()

    def work() -> None:
        try:
            # closed here, not left to the garbage collector: the engine's generator holds
            # its stream (cache slot, buffers) until it is closed
            context = stream_context([] if times is None else times, continues_at=continues_at)
            with context, closing(
                engine.stream(text, voice, params, cancel)
            ) as chunks:
                for chunk in chunks:
                    if cancel.is_set():
                        break
                    deliver(chunk)
        except BaseException as e:  # handed to the loop, re-raised there
            deliver(_Failed(e))
        finally:
            deliver(_Done())

    loop.run_in_executor(_waiters, work)
    try:
        while True:
            item = await queue.get()
            if isinstance(item, _Done):
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        cancel.set()
