"""The synthesis service speaking into real rooms on a real LiveKit server.

`POST /api/tts/synthesize` over the real app, the real Piper voice and the service's own
`LiveKitConnector`; listeners of the tests' own (`livekit.rtc`) record what they hear.
The evidence is that recording compared with what the engine produced for the request
(`RecordingEngine(keep_audio=True)`: Piper samples noise, so a second synthesis of the same
text is different audio): `match_heard` finds it whole, once and in order.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
from livekit import rtc
from livekit.plugins import localtts
from livekit.plugins.localtts.voices import VoiceLibrary

from localtts_agent.service.room_publisher import SOURCE_QUEUE_MS, LiveKitConnector, RoomPublishers
from localtts_agent.settings import ServiceSettings

from .livekit_helpers import (
    HeardMatch,
    HeardTrack,
    RoomListener,
    match_heard,
    resample,
)
from .livekit_server import LiveKitServer
from .recording_engine import RecordingEngine
from .service_fixtures import running_app

pytestmark = pytest.mark.livekit

SOURCE_QUEUE_S = SOURCE_QUEUE_MS / 1000  # what the publisher's rtc.AudioSource holds

RATE = 24_000  # what the listeners hear at
SPOKEN = {
    "weather": (
        "The weather today is sunny with a light breeze from the west. "
        "Tomorrow brings clouds, and perhaps some rain in the afternoon."
    ),
    "train": "Your train to Lisbon leaves from platform nine at a quarter past four.",
    "numbers": "Please remember the numbers seven, thirteen and forty two.",
    "shop": "The bakery on the corner sells fresh bread every morning.",
    "story": (
        "Once upon a time a small boat sailed across a quiet lake. "
        "The fisherman hummed a song while the sun went down behind the hills. "
        "Birds flew home over the water, and the evening grew cool."
    ),
    # short sentences: pieces of about a second and a half, so read-ahead is fine-grained
    "bells": (
        "The first bell rang at noon. The second bell rang at one. "
        "Then the town was quiet again. Children walked home from school. "
        "The baker closed his shop early. Night came down over the hills."
    ),
}


@dataclass
class RoomService:
    app: Any
    client: httpx.AsyncClient
    engine: RecordingEngine
    server: LiveKitServer
    sample_rate: int

    def listener(self, room: str, identity: str = "listener") -> RoomListener:
        return rooms_listener(self.server, room, identity)

    async def speak(self, room: str, text: str) -> dict[str, Any]:
        response = await self.client.post(
            "/api/tts/synthesize", json={"text": text, "room_name": room}
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def produced(self, text: str) -> np.ndarray:
        """What the engine produced for `text`, at the listeners' rate."""
        return resample(self.engine.produced(text), self.sample_rate, RATE)


def rooms_listener(server: LiveKitServer, room: str, identity: str = "listener") -> RoomListener:
    return RoomListener(server.url, server.token(identity, room), sample_rate=RATE, name=identity)


@asynccontextmanager
async def room_service(
    settings: localtts.Settings,
    piper_tts: localtts.TTS,
    library: VoiceLibrary,
    server: LiveKitServer,
) -> AsyncIterator[RoomService]:
    """The app with LIVEKIT_* pointing at `server`: it joins rooms with its own connector."""
    service_settings = ServiceSettings(  # type: ignore[call-arg]
        _env_file=None,
        livekit_url=server.url,
        livekit_api_key=server.api_key,
        livekit_api_secret=server.api_secret,
    )
    engine = RecordingEngine(piper_tts.engine, keep_audio=True)
    tts = localtts.TTS(engine=engine, settings=settings)  # type: ignore[arg-type]
    async with running_app(settings, tts, library, service_settings=service_settings) as (
        app,
        client,
    ):
        assert (await client.get("/health")).json()["livekit_configured"]
        engine.calls.clear()  # warmup's
        yield RoomService(app, client, engine, server, piper_tts.sample_rate)


@pytest.fixture
async def rooms(
    piper_settings: localtts.Settings,
    piper_tts: localtts.TTS,
    library: VoiceLibrary,
    livekit_server: LiveKitServer,
) -> AsyncIterator[RoomService]:
    async with room_service(piper_settings, piper_tts, library, livekit_server) as service:
        yield service


async def hear_out(listener: RoomListener, seconds: float, *, after: float) -> HeardTrack:
    """The one track `listener` hears, once it holds `seconds` of audio (and half a second
    of what follows) from the first speech after `after` on."""

    def heard_out(lst: RoomListener) -> bool:
        if len(lst.tracks) != 1 or (first := lst.tracks[0].first_speech(after=after)) is None:
            return False
        return lst.tracks[0].seconds(after=first) >= seconds + 0.5

    await listener.wait_for(heard_out, timeout=seconds + 20, what=f"{seconds:.1f} s of speech")
    return listener.tracks[0]


def assert_heard(track: HeardTrack, reference: np.ndarray, *, after_s: float = 0.0) -> HeardMatch:
    """`reference` is in `track` whole, once, in order (from `after_s` s into it on)."""
    match = match_heard(track.samples(), reference, RATE, after_s=after_s)
    assert not match.problems(), (match.problems(), match)
    return match


def sent_all(body: dict[str, Any], produced: np.ndarray) -> bool:
    """The service reports sending what the engine produced: less the leading silence the
    plugin skips (under 60 ms) and the silence it shortens where the first piece was cut at
    a word (the engine leaves 120-260 ms there, 60 ms are kept), plus LiveKit's padding of
    the last frame (under 20 ms)."""
    return -0.27 <= body["audio_duration_seconds"] - produced.size / RATE <= 0.02


async def queue_is(client: httpx.AsyncClient, room: str, depth: int) -> bool:
    """Whether the room's queue holds `depth` utterances, as /metrics reports it."""
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith(f'localtts_room_queue_depth{{room="{room}"}}'):
            return float(line.split()[-1]) == depth
    return depth == 0


async def until(condition: Callable[[], Awaitable[bool]], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------------------- tests


async def test_the_listener_hears_what_the_engine_produced(rooms: RoomService) -> None:
    text = SPOKEN["weather"]
    async with rooms.listener("hears") as listener:
        started = time.monotonic()
        body = await rooms.speak("hears", text)
        produced = rooms.produced(text)
        await hear_out(listener, produced.size / RATE, after=started)
    assert sent_all(body, produced)
    (track,) = listener.tracks
    assert_heard(track, produced)


async def test_a_new_rooms_first_audio_is_not_cut(livekit_server: LiveKitServer) -> None:
    """The publisher joins a room on its first utterance; audio sent before a listener
    already there has subscribed never reaches it. Piper's first piece takes long enough
    to hide that, a small first chunk (XTTS, Chatterbox) does not: a tone ready at once
    stands for it."""
    seconds, rate = 1.0, 24_000

    async def tone() -> AsyncGenerator[rtc.AudioFrame, None]:
        per_frame = rate // 50
        for i in range(round(seconds * 50)):
            t = (np.arange(per_frame) + i * per_frame) / rate
            pcm = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
            yield rtc.AudioFrame(pcm.tobytes(), rate, 1, per_frame)

    connector = LiveKitConnector(
        url=livekit_server.url,
        api_key=livekit_server.api_key,
        api_secret=livekit_server.api_secret,
    )
    publishers = RoomPublishers(connector=connector, sample_rate=rate)
    try:
        async with rooms_listener(livekit_server, "fresh") as listener:
            started = time.monotonic()
            await publishers.speak("fresh", tone)
            track = await hear_out(listener, seconds, after=started)
    finally:
        await publishers.aclose()
    loud = sum(f.size for f, level in zip(track.frames, track.levels, strict=True) if level > 0.1)
    # Opus smears the edges by a few ms outwards; a late subscription cut 20-90 ms here
    assert loud / RATE >= seconds - 0.005, loud / RATE


async def test_two_rooms_at_once_each_hear_their_own(rooms: RoomService) -> None:
    texts = {"north": SPOKEN["train"], "south": SPOKEN["numbers"]}
    async with rooms.listener("north") as north, rooms.listener("south") as south:
        started = time.monotonic()
        await asyncio.gather(*(rooms.speak(room, text) for room, text in texts.items()))
        produced = {room: rooms.produced(text) for room, text in texts.items()}
        for room, listener in (("north", north), ("south", south)):
            await hear_out(listener, produced[room].size / RATE, after=started)
    spans = {}
    for (room, listener), other in zip(
        (("north", north), ("south", south)), ("south", "north"), strict=True
    ):
        (track,) = listener.tracks
        match = assert_heard(track, produced[room])
        spans[room] = (track.arrival_at(match.offset_s), track.arrival_at(match.end_s))
        assert match_heard(track.samples(), produced[other], RATE).problems(), (
            f"{room} heard {other}'s text"
        )
    # in parallel, not one room after the other
    assert spans["north"][0] < spans["south"][1] and spans["south"][0] < spans["north"][1]


async def test_utterances_in_one_room_play_in_order(rooms: RoomService) -> None:
    order = ["train", "numbers", "shop"]
    async with rooms.listener("order") as listener:
        started = time.monotonic()
        requests = [asyncio.create_task(rooms.speak("order", SPOKEN[order[0]]))]
        await listener.wait_for_speech(after=started)  # the first is playing
        for queued, name in enumerate(order[1:], start=1):
            requests.append(asyncio.create_task(rooms.speak("order", SPOKEN[name])))
            await until(
                lambda n=queued: queue_is(rooms.client, "order", n),
                timeout=10,
                what=f"{queued} queued",
            )
        await asyncio.gather(*requests)
        produced = [rooms.produced(SPOKEN[name]) for name in order]
        total = sum(p.size for p in produced) / RATE
        await hear_out(listener, total + 0.4 * len(order), after=started)
    (track,) = listener.tracks
    matches = [assert_heard(track, audio) for audio in produced]
    for before, after in itertools.pairwise(matches):
        assert before.end_s <= after.offset_s + 0.05, (before, after)  # no overlap either


async def test_a_listener_leaves_and_rejoins_mid_utterance(rooms: RoomService) -> None:
    text = SPOKEN["story"]
    first = rooms.listener("rejoin")
    await first.join()
    started = time.monotonic()
    request = asyncio.create_task(rooms.speak("rejoin", text))
    try:
        onset = await first.wait_for_speech(after=started)
        await first.wait_for(
            lambda lst: lst.tracks[0].seconds(after=onset) >= 2.0, timeout=10, what="2 s"
        )
    finally:
        await first.leave()
    left = time.monotonic()
    await asyncio.sleep(0.3)
    async with rooms.listener("rejoin") as second:  # the same identity, back again
        body = await request  # the publisher played on to the end
        produced = rooms.produced(text)
        pieces = [c.text for c in rooms.engine.calls_for(text)]
        assert sent_all(body, produced), (body, produced.size / RATE, pieces)
        (heard_first,) = first.tracks
        start = match_heard(heard_first.samples(), produced, RATE)
        spoken_from = heard_first.arrival_at(start.offset_s)  # the utterance's first frame
        rest = produced.size / RATE - (left - spoken_from)
        await hear_out(second, rest - 0.5, after=left)
        (heard_second,) = second.tracks
        # from half a second after the second listener's first frame on, all of the rest
        joined_at = (heard_second.arrivals[0] - spoken_from) + 0.5
        tail = produced[round(joined_at * RATE) :]
        assert tail.size > RATE, "the utterance ended before the listener was back"
        resumed = assert_heard(heard_second, tail)

        # and the room takes the next utterance as usual
        started = time.monotonic()
        await rooms.speak("rejoin", SPOKEN["train"])
        after = rooms.produced(SPOKEN["train"])
        await hear_out(second, after.size / RATE, after=started)
    assert_heard(second.tracks[0], after, after_s=resumed.end_s)


async def test_synthesis_keeps_within_the_read_ahead_of_the_room(
    piper_settings: localtts.Settings,
    piper_tts: localtts.TTS,
    library: VoiceLibrary,
    livekit_server: LiveKitServer,
) -> None:
    """The publisher holds no audio of its own: synthesis runs at most the plugin's
    read-ahead (+ the piece in flight + the source's queue) ahead of what the room plays."""
    read_ahead = 1.0
    settings = piper_settings.model_copy(update={"read_ahead_s": read_ahead})
    text = SPOKEN["bells"]
    async with (
        room_service(settings, piper_tts, library, livekit_server) as service,
        service.listener("paced") as listener,
    ):
        started = time.monotonic()
        await service.speak("paced", text)
        produced = service.produced(text)
        track = await hear_out(listener, produced.size / RATE, after=started)
    assert_heard(track, produced)
    playing_from = track.first_speech(after=started)
    assert playing_from is not None
    rate, made, ahead = service.sample_rate, 0, []
    calls = sorted(service.engine.calls_for(text), key=lambda c: c.started)
    for call in calls:
        for at, samples in zip(call.chunk_times, call.chunk_samples, strict=True):
            made += samples
            ahead.append(made / rate - max(0.0, at - playing_from))
    longest_piece = max(sum(c.chunk_samples) for c in calls) / rate
    bound = read_ahead + longest_piece + SOURCE_QUEUE_S + 0.5  # (transport and jitter)
    # unbounded, Piper would have made all of it (8+ s) within the first second
    assert produced.size / RATE > bound + 3
    assert max(ahead) <= bound, (max(ahead), bound, [round(a, 2) for a in ahead])
