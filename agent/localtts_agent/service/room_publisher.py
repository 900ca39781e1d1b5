"""Speaking into LiveKit rooms by name: one publisher per room, utterances in order.

A `RoomPublisher` owns one `rtc.AudioSource` and its `LocalAudioTrack`, joins its room on
the first utterance, plays utterances one after another from a queue, and leaves after
`idle_timeout` seconds without work. `RoomPublishers` hands out one publisher per room
name, so different rooms play in parallel while one room never talks over itself.

Joining is a `RoomConnector`: `LiveKitConnector` connects to a server with a token minted
from the API key and secret; tests pass their own connector and read the published track
through `rtc.AudioStream`, with no server.

Memory: a publisher holds no audio of its own. It hands each frame to the room as the
utterance's stream yields it; `capture_frame` blocks once the source holds
`SOURCE_QUEUE_MS`, which paces the reader to real time, and the plugin's stream keeps
synthesis within `LOCALTTS_READ_AHEAD_S` of that reader. A 10,000-character text is never
held whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from livekit import api, rtc

from .metrics import ServiceMetrics

logger = logging.getLogger("localtts.rooms")

# where a publisher's audio waits before the room takes it: capture_frame blocks beyond this,
# which paces a fast engine to real time without holding a whole reply in the source
SOURCE_QUEUE_MS = 1000
_JOIN_TIMEOUT_S = 15.0
# a listener already in the room subscribes to a new track within ~100 ms on a LAN; audio
# sent before that never reaches it (the first syllable of a room's first utterance)
_SUBSCRIBE_WAIT_S = 3.0

AudioFactory = Callable[[], AsyncGenerator[rtc.AudioFrame, None]]
"""Starts one utterance's synthesis when its turn comes; yields frames as they exist."""


class RoomLink(Protocol):
    """A joined room with the publisher's track published in it."""

    @property
    def connected(self) -> bool: ...

    async def aclose(self) -> None: ...


class RoomConnector(Protocol):
    async def join(self, room_name: str, track: rtc.LocalAudioTrack) -> RoomLink:
        """Join `room_name` and publish `track` there."""
        ...


class RoomJoinError(Exception):
    """The room could not be joined (server unreachable, token refused...)."""


class RoomClosedError(Exception):
    """The publisher left its room before this utterance's turn."""


@dataclass(frozen=True)
class PlaybackReport:
    """How one utterance went into its room. How long synthesis took is the stream's to
    say (the plugin's `TTSMetrics`): frames reach the room paced to real time."""

    room_name: str
    queued_s: float  # waiting for earlier utterances in the same room
    first_audio_s: float | None  # from this utterance's turn to its first frame in the room
    audio_s: float
    started_at: float  # time.monotonic() when its turn came
    finished_at: float  # time.monotonic() when its last frame was in the room


class LiveKitConnector:
    """Joins rooms on a LiveKit server as a publish-only participant."""

    def __init__(
        self,
        *,
        url: str,
        api_key: str,
        api_secret: str,
        identity: str | None = None,
        name: str = "localtts",
    ) -> None:
        self._url = url
        self._api_key = api_key
        self._api_secret = api_secret
        # unique per process: LiveKit disconnects an older participant with the same identity
        self._identity = identity or f"localtts-{uuid.uuid4().hex[:8]}"
        self._name = name

    @property
    def identity(self) -> str:
        return self._identity

    def token(self, room_name: str) -> str:
        grants = api.VideoGrants(
            room_join=True,
            room=room_name,
            can_publish=True,
            can_subscribe=False,
            can_publish_data=False,
        )
        return (
            api.AccessToken(self._api_key, self._api_secret)
            .with_identity(self._identity)
            .with_name(self._name)
            .with_kind("agent")
            .with_grants(grants)
            .with_ttl(timedelta(hours=1))  # used once, at join
            .to_jwt()
        )

    async def join(self, room_name: str, track: rtc.LocalAudioTrack) -> RoomLink:
        room = rtc.Room()
        try:
            await room.connect(
                self._url, self.token(room_name), options=rtc.RoomOptions(auto_subscribe=False)
            )
            publication = await room.local_participant.publish_track(
                track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
            )
            if any(p.permissions.can_subscribe for p in room.remote_participants.values()):
                # someone is there to hear it: speak once the track reaches them
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(
                        publication.wait_for_subscription(), _SUBSCRIBE_WAIT_S
                    )
        except BaseException:
            with contextlib.suppress(Exception):
                await room.disconnect()
            raise
        return _LiveKitLink(room)


class _LiveKitLink:
    def __init__(self, room: rtc.Room) -> None:
        self._room = room

    @property
    def connected(self) -> bool:
        return self._room.isconnected()

    async def aclose(self) -> None:
        await self._room.disconnect()


@dataclass
class _Utterance:
    audio: AudioFactory
    future: asyncio.Future[PlaybackReport]
    submitted_at: float


class RoomPublisher:
    """Speaks utterances into one room, in the order they were submitted."""

    def __init__(
        self,
        *,
        room_name: str,
        sample_rate: int,
        connector: RoomConnector,
        idle_timeout: float,
        on_closed: Callable[[RoomPublisher], None],
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.room_name = room_name
        self._sample_rate = sample_rate
        self._connector = connector
        self._idle_timeout = idle_timeout
        self._on_closed = on_closed
        self._metrics = metrics
        self._queue: asyncio.Queue[_Utterance] = asyncio.Queue()
        self._source: rtc.AudioSource | None = None
        self._track: rtc.LocalAudioTrack | None = None
        self._link: RoomLink | None = None
        self._closed = False
        self._task = asyncio.create_task(self._run(), name=f"localtts-room-{room_name}")

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def submit(self, audio: AudioFactory) -> asyncio.Future[PlaybackReport]:
        """Queue an utterance; the future resolves when its last frame is in the room."""
        if self._closed:
            raise RoomClosedError(f"the publisher of room {self.room_name!r} has left")
        future: asyncio.Future[PlaybackReport] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Utterance(audio, future, time.monotonic()))
        self._report_depth()
        return future

    async def wait_for_playout(self) -> None:
        """Until the audio already handed to the room has played."""
        if self._source is not None:
            await self._source.wait_for_playout()

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def _report_depth(self) -> None:
        if self._metrics is not None:
            self._metrics.set_queue_depth(self.room_name, self._queue.qsize())

    async def _run(self) -> None:
        closing_reason: Exception = RoomClosedError(
            f"the publisher of room {self.room_name!r} has left"
        )
        try:
            while True:
                try:
                    utterance = await asyncio.wait_for(self._queue.get(), self._idle_timeout)
                except asyncio.TimeoutError:  # not the builtin TimeoutError before 3.11
                    if self._queue.empty():
                        await self.wait_for_playout()  # never cut the last words off
                    if self._queue.empty():
                        logger.info("leaving idle room %r", self.room_name)
                        return
                    continue
                self._report_depth()
                if utterance.future.done():  # its caller gave up before its turn
                    continue
                try:
                    await self._ensure_joined()
                except Exception as e:
                    utterance.future.set_exception(e)
                    closing_reason = e
                    return  # the next request starts a fresh publisher and retries the join
                try:
                    report = await self._play(utterance)
                except asyncio.CancelledError:
                    utterance.future.cancel()
                    raise
                except Exception as e:
                    if not utterance.future.done():
                        utterance.future.set_exception(e)
                else:
                    if not utterance.future.done():
                        utterance.future.set_result(report)
        finally:
            await self._close(closing_reason)

    async def _ensure_joined(self) -> None:
        if self._link is not None and self._link.connected:
            return
        if self._link is not None:  # dropped by the server: rejoin with a fresh link
            with contextlib.suppress(Exception):
                await self._link.aclose()
            self._link = None
            self._set_joined(False)
        if self._source is None:
            self._source = rtc.AudioSource(self._sample_rate, 1, queue_size_ms=SOURCE_QUEUE_MS)
            self._track = rtc.LocalAudioTrack.create_audio_track(
                f"localtts-{self.room_name}", self._source
            )
        assert self._track is not None
        try:
            self._link = await asyncio.wait_for(
                self._connector.join(self.room_name, self._track), _JOIN_TIMEOUT_S
            )
        except Exception as e:
            raise RoomJoinError(
                f"could not join LiveKit room {self.room_name!r}: {type(e).__name__}: {e}"
            ) from e
        self._set_joined(True)
        logger.info("joined room %r", self.room_name)

    def _set_joined(self, joined: bool) -> None:
        if self._metrics is None:
            return
        if joined:
            self._metrics.rooms_joined.inc()
        else:
            self._metrics.rooms_joined.dec()

    async def _play(self, utterance: _Utterance) -> PlaybackReport:
        """Each frame goes to the room as the stream yields it (see the module's Memory)."""
        assert self._source is not None
        started = time.monotonic()
        first: float | None = None
        samples = 0
        async with contextlib.aclosing(utterance.audio()) as frames:  # closing stops synthesis
            async for frame in frames:
                if first is None:
                    first = time.monotonic() - started
                samples += frame.samples_per_channel
                await self._source.capture_frame(frame)
        return PlaybackReport(
            room_name=self.room_name,
            queued_s=started - utterance.submitted_at,
            first_audio_s=first,
            audio_s=samples / self._sample_rate,
            started_at=started,
            finished_at=time.monotonic(),
        )

    async def _close(self, reason: Exception) -> None:
        self._closed = True  # set before any await: submit() now creates a new publisher
        self._on_closed(self)
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(reason)
        if self._metrics is not None:
            self._metrics.forget_room(self.room_name)
        if self._link is not None:
            with contextlib.suppress(Exception):
                await self._link.aclose()
            self._set_joined(False)
            self._link = None
        if self._source is not None:
            await self._source.aclose()
            self._source = None


class RoomPublishers:
    """One `RoomPublisher` per room name, created on first use and dropped when idle."""

    def __init__(
        self,
        *,
        connector: RoomConnector,
        sample_rate: int,
        idle_timeout: float = 60.0,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self._connector = connector
        self._sample_rate = sample_rate
        self._idle_timeout = idle_timeout
        self._metrics = metrics
        self._publishers: dict[str, RoomPublisher] = {}

    @property
    def rooms(self) -> list[str]:
        return sorted(self._publishers)

    def publisher(self, room_name: str) -> RoomPublisher | None:
        return self._publishers.get(room_name)

    async def speak(self, room_name: str, audio: AudioFactory) -> PlaybackReport:
        """Play one utterance in `room_name` after the ones already queued there.

        The caller being cancelled does not cut the utterance: it has been promised to
        the room and plays to the end.
        """
        publisher = self._publishers.get(room_name)
        if publisher is None or publisher.closed:
            publisher = self._publishers[room_name] = RoomPublisher(
                room_name=room_name,
                sample_rate=self._sample_rate,
                connector=self._connector,
                idle_timeout=self._idle_timeout,
                on_closed=self._forget,
                metrics=self._metrics,
            )
        return await asyncio.shield(publisher.submit(audio))

    def _forget(self, publisher: RoomPublisher) -> None:
        if self._publishers.get(publisher.room_name) is publisher:
            del self._publishers[publisher.room_name]

    async def aclose(self) -> None:
        publishers = list(self._publishers.values())
        await asyncio.gather(*(p.aclose() for p in publishers), return_exceptions=True)
        self._publishers.clear()
