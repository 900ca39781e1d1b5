"""Run callables at once, each in a thread of its own (as rooms call an engine)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
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
