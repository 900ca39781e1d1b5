"""Run callables at once, each in a thread of its own (as rooms call an engine)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from livekit.plugins.localtts.engines.scheduler import EngineScheduler


def together(jobs: dict[int, Callable[[], Any]], *, stagger_s: float = 0.0) -> dict[int, Any]:
    """Each job's result (or the exception it raised), by key; `stagger_s` between starts."""
    results: dict[int, Any] = {}

    def run(key: int, job: Callable[[], Any]) -> None:
        try:
            results[key] = job()
        except Exception as e:
            results[key] = e

    threads = []
    for key, job in jobs.items():
        thread = threading.Thread(target=run, args=(key, job))
        thread.start()
        threads.append(thread)
        time.sleep(stagger_s)
    for thread in threads:
        thread.join(timeout=300)
    return results


def assert_cancel_stops_within_a_step(
    chunks: Iterator[Any], cancel: threading.Event, steps: Callable[[], int],
    scheduler: EngineScheduler,
) -> None:
    """After its first chunk, cancelling `chunks` lets its caller go at once, and the engine
    (whose model steps `steps()` counts) stops within the step in flight."""
    next(chunks)
    cancel.set()
    at_cancel = steps()  # the scheduler may be inside (or about to start) one more step
    assert list(chunks) == []  # let go at once, even mid-step
    # the scheduler drops the stream at its next step boundary; waiting for that (not a
    # fixed sleep) keeps a slow, loaded machine from finishing the step in flight later
    deadline = time.monotonic() + 10
    while scheduler.active_streams and time.monotonic() < deadline:
        time.sleep(0.01)
    assert scheduler.active_streams == 0
    assert steps() <= at_cancel + 1  # at most the step in flight ended
    stopped = steps()
    time.sleep(0.2)
    assert steps() == stopped  # and nothing after it
