"""The real-room harness itself: a tone published by one participant reaches a listener
through the test's livekit-server, whole and in time, and the server stays on loopback."""

from __future__ import annotations

import asyncio
import subprocess

import numpy as np
import pytest
from livekit import rtc

from .livekit_helpers import RoomListener, rms
from .livekit_server import LiveKitServer

pytestmark = pytest.mark.livekit


async def test_a_published_tone_is_heard_whole(livekit_server: LiveKitServer) -> None:
    room_name, rate = "harness", 24_000
    publisher = rtc.Room()
    listener = RoomListener(livekit_server.url, livekit_server.token("listener", room_name))
    async with listener:
        await publisher.connect(livekit_server.url, livekit_server.token("tone", room_name))
        try:
            source = rtc.AudioSource(rate, 1)
            track = rtc.LocalAudioTrack.create_audio_track("tone", source)
            await publisher.local_participant.publish_track(track)
            await listener.wait_for(lambda heard: bool(heard.tracks), timeout=10, what="track")
            t = np.arange(rate * 2) / rate  # 2 s of 440 Hz at half scale
            tone = (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
            for start in range(0, tone.size, rate // 50):
                chunk = tone[start : start + rate // 50]
                await source.capture_frame(rtc.AudioFrame(chunk.tobytes(), rate, 1, chunk.size))
            await source.wait_for_playout()
            await asyncio.sleep(0.3)  # the jitter buffer's tail
        finally:
            await publisher.disconnect()
    (heard,) = listener.heard_from("tone")
    frames = [f.astype(np.float32) / 32768.0 for f in heard.frames]
    loud = [f for f in frames if rms(f) > 0.1]
    # all 2 s of it, at its level: 0.5 peak -> RMS 0.354 (Opus keeps a tone within 1 dB)
    assert 1.95 < sum(f.size for f in loud) / rate < 2.05
    assert 0.315 < rms(np.concatenate(loud)) < 0.397


def test_the_server_listens_on_loopback_only(livekit_server: LiveKitServer) -> None:
    ports = subprocess.run(
        ["ss", "-H", "-lntup"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    mine = [line for line in ports if "livekit-server" in line]
    assert mine, "the server's sockets were not found"
    for line in mine:
        local = line.split()[4]
        assert local.startswith("127.0.0.1:"), line
