"""One thread per engine runs all of its model work; concurrent streams share it by batching.

Why one thread: torch's CPU kernels run on an OpenMP team per calling thread, and once a
second thread has computed, every later run is slower from any thread (XTTS first chunk
350 ms -> 550 ms on 2 cores); Piper called from many threads grows its memory for good
(0.3 -> 3 GB). So an engine's load, warmup, conditioning and every stream's steps run on
its `EngineScheduler` thread, and nowhere else.

Why batching: decoding one token for one stream leaves the hardware mostly idle (it waits
for the weights to stream in), so the decode steps of every active stream run as one batch
(continuous batching, as LLM servers do): streams join and leave at step boundaries.

Each engine describes one stream as a `StreamWork` (its own cache slot, sampling state,
seed) with four kinds of step: `prefill` (the prompt), `decode` (one token, batched across
streams by the engine's `decode_batch`), `emit` (turn tokens into the next audio chunk:
vocoding, per stream) and, for engines without a decoder (Piper), only `emit`. The
scheduler picks the next step:

1. A stream that has not produced audio yet goes first (first audio is the product), in
   arrival order: its prefill and first chunk go ahead of every later chunk of others. A
   later piece of a reply already playing is not a first chunk (`stream_context`).
2. Then earliest deadline first: a playing stream's deadline is when its listener runs out
   of audio (first audio time + audio delivered), so the stream closest to a gap is served
   next and none starves.
3. A decode step takes every stream that wants tokens (up to `max_batch`), not just the
   one chosen: one batched step costs little more than one stream's. For a first chunk,
   newcomers prefill first so that all first chunks decode together, and playing streams
   ride along only when their listener is about to run dry (each row makes a step dearer).

A cancelled (or abandoned) stream leaves at the next step boundary and frees its slot. An
error in one stream's step fails that stream alone; a failed batched step is retried one
stream at a time so that only the stream at fault fails.

Admission: `capacity` is how many streams the engine keeps at real time (measured at warmup
or configured). Callers that speak for a while (a reply of several pieces) hold a `Lease`, so
the engine knows how many streams it serves (the worker's load: past capacity, new rooms go
elsewhere). Callers that ask for the limit (the service) wait past capacity in a bounded line
for at most `wait_s`, then get `EngineBusyError` (503 with Retry-After).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import numpy as np

from .base import EngineError

if TYPE_CHECKING:
    from ..settings import EngineSettings

logger = logging.getLogger("livekit.plugins.localtts.scheduler")

T = TypeVar("T")
Step = Literal["prefill", "decode", "emit", "wait", "done"]

DEFAULT_MAX_BATCH = 16
DEFAULT_WAIT_S = 5.0
_CANCEL_POLL_S = 0.05
# a playing stream joins a first chunk's decode steps only when its audio runs out this soon
_JOIN_FIRST_CHUNK_WITHIN_S = 1.0


def capacity_probes(max_batch: int) -> list[int]:
    """Batch sizes a warmup times to find the capacity (stopping at the first too slow)."""
    return [b for b in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32) if b <= max_batch]


class EngineBusyError(EngineError):
    """The engine is at capacity and its waiting line is full (or the wait timed out): try
    again after `retry_after_s`. Retryable, never the caller's fault."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class StreamWork(Protocol):
    """One stream's state and steps, as an engine implements them. Every method runs on the
    scheduler thread; `next_step` and `wants_decode` are cheap (no model work)."""

    sample_rate: int

    def next_step(self) -> Step:
        """What the stream needs next; "wait": nothing it can do yet (no free cache slot)."""
        ...

    def wants_decode(self) -> bool:
        """True when the stream may join a decode batch now, even if its own next step is
        not a decode (it decodes ahead while its chunk waits to be vocoded)."""
        ...

    def prefill(self) -> None: ...

    def emit(self) -> np.ndarray | None:
        """The next audio chunk (None: this step made none)."""
        ...

    def close(self) -> None:
        """Free the stream's slot and buffers (idempotent)."""
        ...


DecodeBatch = Callable[[list[Any]], dict[int, BaseException]]
"""One decode step (or one prefill) for every given work (same engine); returns the failures
by list index (a failure of the shared part raises instead, having kept nothing)."""


class _End:
    pass


_END = _End()


@dataclass
class _Failed:
    error: BaseException


@dataclass
class StreamTimes:
    """When a stream waited and spoke (monotonic seconds), for metrics and benches."""

    submitted: float
    started: float | None = None  # the scheduler's first step for it
    first_audio: float | None = None
    audio_s: float = 0.0

    @property
    def waited_s(self) -> float:
        """Time between asking and the engine's first step for this stream."""
        return (self.started if self.started is not None else time.monotonic()) - self.submitted


_context = threading.local()


@contextlib.contextmanager
def stream_context(
    sink: list[StreamTimes], *, continues_at: float | None = None
) -> Iterator[list[StreamTimes]]:
    """What streams started by this thread inside the block are part of.

    They append their `StreamTimes` to `sink` (how the plugin learns how long a piece waited
    for the engine, whatever the engine). `continues_at` marks them as a later piece of a
    reply already playing, whose listener runs out of audio at that time.monotonic() instant:
    they are scheduled by that deadline, not ahead of everyone as a first chunk is.
    """
    previous = getattr(_context, "value", None)
    _context.value = (sink, continues_at)
    try:
        yield sink
    finally:
        _context.value = previous


def reply_continues_at() -> float | None:
    """When the listener of a stream this thread starts now runs out of audio, if it is a
    later piece of a reply already playing (`stream_context(continues_at=)`), else None: an
    engine may make its first chunk as large as the audio ahead of the listener allows."""
    value = getattr(_context, "value", None)
    return None if value is None else value[1]


class _Stream:
    _ids = itertools.count()

    def __init__(
        self,
        make_work: Callable[[], StreamWork],
        cancel: threading.Event,
        continues_at: float | None,
        now: float,
    ) -> None:
        self.id = next(self._ids)
        self.continues_at = continues_at
        self.make_work = make_work
        self.work: StreamWork | None = None
        self.cancel = cancel
        self.abandoned = False  # the consumer closed its generator
        self.times = StreamTimes(submitted=now)
        self.out: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.next: Step = "prefill"

    @property
    def stopped(self) -> bool:
        return self.abandoned or self.cancel.is_set()

    @property
    def first_chunk(self) -> bool:
        """Still working towards its first audio (and not a later piece of a reply)."""
        return self.continues_at is None and self.times.first_audio is None

    def priority(self) -> tuple[int, float, int]:
        """First chunks first (in arrival order), then earliest deadline: when the
        listener runs out of audio."""
        t = self.times
        if self.continues_at is not None:
            return (1, self.continues_at + t.audio_s, self.id)
        if t.first_audio is None:
            return (0, t.submitted, self.id)
        return (1, t.first_audio + t.audio_s, self.id)


class Lease:
    """A caller's admission to the engine (release it, or use it as a context manager)."""

    def __init__(self, admission: Admission, waited_s: float) -> None:
        self._admission = admission
        self.waited_s = waited_s
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._admission._release()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *_: Any) -> None:
        self.release()


class Admission:
    """At most `capacity` leases at once; past it a bounded FIFO line waits up to `wait_s`."""

    def __init__(self, capacity: int | None, *, max_waiting: int | None, wait_s: float) -> None:
        self._cond = threading.Condition()
        self._capacity = capacity
        self._max_waiting = max_waiting
        self.wait_s = wait_s
        self.active = 0
        self._line: collections.deque[object] = collections.deque()
        self.rejected = 0

    @property
    def capacity(self) -> int | None:
        return self._capacity

    @capacity.setter
    def capacity(self, value: int | None) -> None:
        with self._cond:
            self._capacity = value
            self._cond.notify_all()

    @property
    def waiting(self) -> int:
        return len(self._line)

    def _max_line(self) -> int:
        if self._max_waiting is not None:
            return self._max_waiting
        return self._capacity or 0  # default: as many waiting as can run

    def acquire(
        self,
        timeout: float | None = None,
        *,
        limit: bool = True,
        cancel: threading.Event | None = None,
    ) -> Lease:
        """A lease, waiting in line when the engine is full; EngineBusyError when the line
        is full or `timeout` (default `wait_s`) passes first (or `cancel` is set).
        `limit=False`: counted, never refused (a room already dispatched here is served)."""
        timeout = self.wait_s if timeout is None else timeout
        started = time.monotonic()
        with self._cond:
            if not limit or self._capacity is None or (
                self.active < self._capacity and not self._line
            ):
                self.active += 1
                return Lease(self, 0.0)
            # full: capacity running and the line waiting (a line that is about to move up
            # into a freed place still counts as the line, never as a reason to refuse)
            if self.active + len(self._line) >= self._capacity + self._max_line():
                self.rejected += 1
                raise self._busy(f"{self.waiting} streams already wait")
            ticket = object()
            self._line.append(ticket)
            try:
                deadline = started + timeout
                while not (self._line[0] is ticket and self.active < (self._capacity or 1 << 30)):
                    left = deadline - time.monotonic()
                    if left <= 0 or (cancel is not None and cancel.is_set()):
                        self.rejected += 1
                        raise self._busy(f"no stream finished within {timeout:.1f} s")
                    self._cond.wait(min(left, 0.1))
                self.active += 1
                return Lease(self, time.monotonic() - started)
            finally:
                self._line.remove(ticket)
                self._cond.notify_all()

    def _busy(self, why: str) -> EngineBusyError:
        return EngineBusyError(
            f"the engine is busy: {self.active} streams speak (capacity {self._capacity}) and "
            f"{why}; retry shortly",
            retry_after_s=float(max(1, round(self.wait_s))),
        )

    def _release(self) -> None:
        with self._cond:
            self.active -= 1
            self._cond.notify_all()


class EngineScheduler:
    """The thread that runs an engine's model work, and the policy that shares it.

    `call(fn)` runs a function there (load, warmup, conditioning) and waits for it;
    `stream(make_work, cancel)` is the engine's `stream()` facade: it hands a new stream to
    the thread and yields its chunks as they come. Both run inline when called from the
    scheduler thread itself (an engine's warmup speaking through its own stream code).
    """

    def __init__(
        self,
        name: str,
        *,
        decode_batch: DecodeBatch | None = None,
        prefill_batch: DecodeBatch | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        batching: bool = True,
        capacity: int | None = None,
        max_waiting: int | None = None,
        wait_s: float = DEFAULT_WAIT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.name = name
        # what deadlines are reckoned in: the plugin's `continues_at` is time.monotonic()
        self.clock = clock
        self.decode_batch = decode_batch
        # None: each stream's `prefill` alone
        self.prefill_batch = prefill_batch
        self.max_batch = max_batch if batching else 1
        self.batching = batching
        self.configured_capacity = capacity
        self.admission = Admission(capacity, max_waiting=max_waiting, wait_s=wait_s)
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._active: list[_Stream] = []
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        # counters for info() and benches
        self.decode_rows = 0
        self.largest_batch = 0
        # steps by kind, each counted as it starts, and the thread's time in them: benches
        # split a run's wall time with it. Every kind is a key from the start, so that other
        # threads can read them while the scheduler counts
        kinds: tuple[Step, ...] = ("prefill", "decode", "emit")
        self.step_counts: collections.Counter[str] = collections.Counter(dict.fromkeys(kinds, 0))
        self.step_seconds: collections.Counter[str] = collections.Counter(
            dict.fromkeys(kinds, 0.0))

    @classmethod
    def from_settings(cls, name: str, settings: EngineSettings, **kwargs: Any) -> EngineScheduler:
        return cls(
            name,
            batching=settings.batching,
            capacity=settings.engine_capacity,
            max_waiting=settings.engine_max_waiting,
            wait_s=settings.engine_wait_s,
            **kwargs,
        )

    # -- the thread ---------------------------------------------------------------------

    @property
    def thread_ident(self) -> int | None:
        return self._thread.ident if self._thread is not None else None

    def on_thread(self) -> bool:
        return self._thread is not None and threading.get_ident() == self._thread.ident

    def _ensure_thread(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                thread = threading.Thread(
                    target=self._run, name=f"localtts-{self.name}", daemon=True
                )
                thread.start()
                self._thread = thread

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn` on the scheduler thread between two steps and return what it returns."""
        if self.on_thread():
            return fn(*args, **kwargs)
        self._ensure_thread()
        future: Future[T] = Future()
        self._inbox.put((future, fn, args, kwargs))
        return future.result()

    # -- streams --------------------------------------------------------------------------

    @property
    def steps(self) -> int:
        """Steps run (or running) so far, of every kind."""
        return sum(self.step_counts.values())

    @property
    def active_streams(self) -> int:
        return len(self._active)

    @property
    def capacity(self) -> int | None:
        return self.admission.capacity

    def set_measured_capacity(self, streams: int) -> None:
        """The capacity measured at warmup, unless one was configured."""
        if self.configured_capacity is None:
            self.admission.capacity = max(1, streams)

    def stream(
        self, make_work: Callable[[], StreamWork], cancel: threading.Event
    ) -> Iterator[np.ndarray]:
        """Yield the stream's chunks as the scheduler makes them; `make_work` runs on the
        scheduler thread (see `stream_context` for what the caller can say about it)."""
        if self.on_thread():
            yield from self._inline(make_work, cancel)
            return
        self._ensure_thread()
        sink, continues_at = getattr(_context, "value", None) or (None, None)
        record = _Stream(make_work, cancel, continues_at, self.clock())
        if sink is not None:
            sink.append(record.times)
        self._inbox.put(record)
        try:
            while not cancel.is_set():  # chunks made before a cancel are not handed out
                try:  # the caller is let go at a cancel, even mid-step (the step ends alone)
                    item = record.out.get(timeout=_CANCEL_POLL_S)
                except queue.Empty:
                    continue
                if item is _END:
                    return
                if isinstance(item, _Failed):
                    raise item.error
                if cancel.is_set():
                    return
                yield item
        finally:
            record.abandoned = True  # closed early: the scheduler drops it at its next step

    def _inline(self, make_work: Callable[[], StreamWork], cancel: threading.Event
                ) -> Iterator[np.ndarray]:
        work = make_work()
        try:
            while not cancel.is_set():
                step = work.next_step()
                if step == "done":
                    return
                if step == "wait":
                    raise EngineBusyError("no free slot for the engine's own stream",
                                          retry_after_s=1.0)
                if step == "prefill":
                    work.prefill()
                elif step == "decode":
                    assert self.decode_batch is not None
                    failures = self.decode_batch([work])
                    if failures:
                        raise failures[0]
                else:
                    chunk = work.emit()
                    if chunk is not None and chunk.size:
                        yield chunk
        finally:
            work.close()

    # -- the loop ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                self._take_inbox(block=not self._active)
                self._reap()
                if self._active:
                    self._step()
            except BaseException:  # a bug here must not kill the engine's only thread
                logger.exception("%s scheduler: unexpected error; failing its streams",
                                 self.name)
                for s in list(self._active):
                    self._fail(s, EngineError(f"{self.name} scheduler failed"))

    def _take_inbox(self, *, block: bool, timeout: float | None = None) -> None:
        while True:
            try:
                item = self._inbox.get(block=block, timeout=timeout if block else None)
            except queue.Empty:
                return
            block = False
            if isinstance(item, _Stream):
                self._active.append(item)
            else:
                future, fn, args, kwargs = item
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args, **kwargs))
                    except BaseException as e:
                        future.set_exception(e)

    def _reap(self) -> None:
        for s in list(self._active):
            if s.stopped:
                self._finish(s)

    def _finish(self, s: _Stream) -> None:
        self._active.remove(s)
        if s.work is not None:
            with contextlib.suppress(Exception):
                s.work.close()
        s.out.put(_END)

    def _fail(self, s: _Stream, error: BaseException) -> None:
        if s in self._active:
            self._active.remove(s)
        if s.work is not None:
            with contextlib.suppress(Exception):
                s.work.close()
        s.out.put(_Failed(error))
        s.out.put(_END)

    def _step(self) -> None:
        for s in list(self._active):
            try:
                if s.work is None:
                    s.times.started = self.clock()
                    s.work = s.make_work()
                s.next = s.work.next_step()
            except Exception as e:
                self._fail(s, e)
                continue
            if s.next == "done":
                self._finish(s)
        runnable = [s for s in self._active if s.next != "wait"]
        if not runnable:  # every stream waits for a slot that a leaving stream frees
            self._take_inbox(block=True, timeout=0.05)
            return
        chosen = min(runnable, key=_Stream.priority)
        if chosen.first_chunk and chosen.next == "decode" and self.max_batch > 1:
            # newcomers prefill first, so that every first chunk decodes in one batch
            newcomers = [s for s in runnable if s.first_chunk and s.next == "prefill"]
            chosen = min(newcomers, key=_Stream.priority, default=chosen)
        kind = chosen.next
        self.step_counts[kind] += 1
        started = time.perf_counter()
        try:
            self._run_step(chosen, runnable)
        finally:
            self.step_seconds[kind] += time.perf_counter() - started

    def _run_step(self, chosen: _Stream, runnable: list[_Stream]) -> None:
        if chosen.next == "decode":
            self._decode(chosen)
            return
        if chosen.next == "prefill" and self.prefill_batch is not None:
            # every stream waiting for its prefill joins: one pass reads the weights once
            others = sorted((s for s in runnable if s is not chosen and s.next == "prefill"),
                            key=_Stream.priority)
            self._run_batch(self.prefill_batch, [chosen, *others[: self.max_batch - 1]])
            return
        try:
            if chosen.next == "prefill":
                chosen.work.prefill()  # type: ignore[union-attr]
            else:
                chunk = chosen.work.emit()  # type: ignore[union-attr]
                if chunk is not None and chunk.size:
                    self._deliver(chosen, chunk)
        except Exception as e:
            self._fail(chosen, e)

    def _deliver(self, s: _Stream, chunk: np.ndarray) -> None:
        t = s.times
        if t.first_audio is None:
            t.first_audio = self.clock()
        t.audio_s += chunk.size / s.work.sample_rate  # type: ignore[union-attr]
        s.out.put(chunk)

    def _decode(self, chosen: _Stream) -> None:
        batch = [chosen]
        if self.max_batch > 1:
            # a first chunk's steps carry the other first chunks, and playing streams only if
            # their listener is about to run dry: each row makes the step dearer
            soon = self.clock() + _JOIN_FIRST_CHUNK_WITHIN_S
            others = sorted(
                (s for s in self._active
                 if s is not chosen and (s.next == "decode" or self._wants_decode(s))
                 and s.next != "wait"
                 and (not chosen.first_chunk or s.first_chunk or s.priority()[1] <= soon)),
                key=_Stream.priority,
            )
            batch += others[: self.max_batch - 1]
        assert self.decode_batch is not None
        self._run_batch(self.decode_batch, batch)
        self.decode_rows += len(batch)
        self.largest_batch = max(self.largest_batch, len(batch))

    def _run_batch(self, step: DecodeBatch, batch: list[_Stream]) -> None:
        """One batched step; a stream that fails it fails alone."""
        works = [s.work for s in batch]
        try:
            failures = step(works)
        except Exception as e:
            if len(batch) == 1:
                failures = {0: e}
            else:  # find the stream at fault: each alone (a step writes nothing it keeps)
                failures = {}
                for i, w in enumerate(works):
                    try:
                        alone = step([w])
                    except Exception as e:
                        alone = {0: e}
                    if alone:
                        failures[i] = alone[0]
        for i, error in failures.items():
            self._fail(batch[i], error)

    def _wants_decode(self, s: _Stream) -> bool:
        try:
            return s.work is not None and s.next not in ("prefill", "wait") and \
                s.work.wants_decode()
        except Exception:
            return False

    # -- reporting -----------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return {
            "scheduler": "batched" if self.batching else "one stream per step",
            "max_batch": self.max_batch,
            "capacity": self.capacity,
            "capacity_source": "configured" if self.configured_capacity is not None
            else ("measured" if self.capacity is not None else None),
            "active_streams": self.active_streams,
            "leases": self.admission.active,
            "waiting": self.admission.waiting,
            "rejected": self.admission.rejected,
        }

