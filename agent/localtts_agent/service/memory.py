"""Handing memory freed after a burst of requests back to the system.

glibc's malloc keeps what a burst freed in its heaps (a burst of 20 replies left ~0.2 GB
more held than a trim does, measured with Piper): the process would stay at its peak for
good. When no stream has run for a while, `malloc_trim(0)` returns the free pages. Other
C libraries (macOS, musl) have no such call: there this does nothing."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable

logger = logging.getLogger("localtts.service")

IDLE_CHECK_S = 5.0
_GROWTH_WORTH_TRIMMING = 16 * 2**20  # bytes of RSS over the last trim's


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def resident_bytes() -> int | None:
    """This process's RSS (Linux), None where /proc is missing."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


async def trim_when_idle(idle: Callable[[], bool], *, check_s: float = IDLE_CHECK_S) -> None:
    """Until cancelled: every `check_s`, when `idle()` and the RSS grew since the last trim,
    trim (in a thread: it walks the heaps)."""
    trim = _malloc_trim()
    if trim is None or resident_bytes() is None:
        return
    floor = 0
    while True:
        await asyncio.sleep(check_s)
        rss = resident_bytes() or 0
        if idle() and rss > floor + _GROWTH_WORTH_TRIMMING:
            await asyncio.to_thread(trim, 0)
            floor = resident_bytes() or 0
            logger.debug("idle: RSS %.0f -> %.0f MiB", rss / 2**20, floor / 2**20)
