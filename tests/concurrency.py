"""Run callables at once, each in a thread of its own (as rooms call an engine)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any


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
    chunks: Iterator[Any], cancel: threading.Event, steps: Callable[[], int]
) -> None:
    """After its first chunk, cancelling `chunks` lets its caller go at once, and the engine
    (whose model steps `steps()` counts) stops within the step in flight."""
    next(chunks)
    cancel.set()
    at_cancel = steps()  # the scheduler may be inside one more step right now
    assert list(chunks) == []  # let go at once, even mid-step
    time.sleep(0.3)
    assert steps() <= at_cancel + 1  # at most the step in flight ended
    stopped = steps()
    time.sleep(0.3)
    assert steps() == stopped  # and nothing after it: the stream left at the step boundary
