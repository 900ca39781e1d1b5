"""First audio heard in a real LiveKit room, beside the plugin's own first audio, in one run.

    .venv/bin/python bench/bench_room.py --engine piper --runs 20
    .venv/bin/python bench/bench_room.py --engine xtts --runs 20    # real-size, random weights

Starts its own livekit-server on 127.0.0.1 (`bash tests/livekit-server.sh` builds it) and
the synthesis service in-process (the real app, its own LiveKit connector and room
publisher). A listener participant (`livekit.rtc`, as a bot or a Python client would hear
it) sits in the room, in a process of its own like any client. Each run alternates:

- plugin: `TTS.synthesize(text)` until its first audio frame (what an agent gets);
- room: `POST /api/tts/synthesize` until the listener receives its first frame with audio
  energy (RMS above -60 dBFS; silence between utterances arrives as zeros), after the
  previous utterance has played out.

Room cost = heard - the first audio the service's synthesis produced for that same request
(its `first_chunk_ms`): the room publisher, WebRTC (Opus, the SFU, the jitter buffer) and
the silence before speech in the audio, which playback passes before speech can be heard
(the "onset" row). "Room alone" hands the service's publisher audio that is ready at once
(a tone): WebRTC's own floor, without synthesis. Heard - plugin is printed too; it pairs
different utterances, so on a busy machine synthesis noise swamps it. The first request to
a room also joins it (and waits for the listener to subscribe): reported on its own, not
in the percentiles. XTTS
runs the real v2 shapes (GPT-2 30x1024, HiFiGAN) with random weights and the CPU defaults
(int8 GPT, bf16 HiFiGAN where the CPU has it natively), capped at --xtts-tokens per
piece (random weights never stop).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "agent"), str(ROOT), str(ROOT / "bench")]

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from livekit import rtc  # noqa: E402
from livekit.plugins import localtts  # noqa: E402
from livekit.plugins.localtts.engines import EngineInfo  # noqa: E402
from livekit.plugins.localtts.voices import VoiceLibrary  # noqa: E402
from texts import SENTENCE  # noqa: E402

from localtts_agent.service.app import create_app  # noqa: E402
from localtts_agent.service.room_publisher import RoomPublishers  # noqa: E402
from localtts_agent.settings import ServiceSettings  # noqa: E402
from tests.livekit_helpers import RoomListener, frames_to_float  # noqa: E402
from tests.livekit_server import LiveKitServer, run_livekit_server, server_binary  # noqa: E402

ROOM = "bench"
QUIET_S = 0.8  # silence that ends an utterance (longer than the pauses between sentences)
# audio energy: a 10 ms frame above -60 dBFS. Between utterances a listener hears digital
# silence; random-weight XTTS speaks noise at -40 dBFS, which Opus hands over at -53 dBFS
HEARD_RMS = 10 ** (-60 / 20)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


@dataclass
class Runs:
    plugin: list[float] = field(default_factory=list)  # s to the plugin's first frame
    heard: list[float] = field(default_factory=list)  # s to the first speech heard
    service: list[float] = field(default_factory=list)  # the service's own first_chunk_ms
    onset: list[float] = field(default_factory=list)  # leading silence of the audio
    tone: list[float] = field(default_factory=list)  # ready audio through the publisher
    cold: float | None = None  # the first request: join + subscribe + synthesis


def speech_onset(frames: list, rate: int) -> float:
    """Seconds of near-silence before the first 10 ms with speech energy."""
    audio = frames_to_float(frames)
    n = rate // 100
    for i in range(0, audio.size - n, n):
        if np.sqrt(np.mean(np.square(audio[i : i + n], dtype=np.float64))) > HEARD_RMS:
            return i / rate
    return audio.size / rate


async def plugin_first_audio(tts: localtts.TTS, text: str) -> tuple[float, float]:
    """(s to the first frame, leading silence): the stream is closed after its first
    frames, which stops the engine."""
    started = time.perf_counter()
    first = None
    frames = []
    async with tts.synthesize(text) as stream:
        async for event in stream:
            if first is None:
                first = time.perf_counter() - started
            frames.append(event.frame)
            if sum(f.duration for f in frames) >= 0.4:
                break
    assert first is not None
    return first, speech_onset(frames, tts.sample_rate)


async def engine_idle(tts: localtts.TTS) -> None:
    """Until the engine has left the plugin run's stream: that run stops at its first frames,
    and the step in flight then (a sentence, or a decoder window) still runs; a request
    arriving meanwhile would wait for it, which is not the room's cost."""
    scheduler = tts.engine.scheduler
    for _ in range(1000):  # (the scheduler has no event for it; 5 s at most)
        if not scheduler.active_streams:
            return
        await asyncio.sleep(0.005)


async def listen(url: str, token: str) -> None:
    """The listener process: joins, then prints `speech <t>` when speech starts and `quiet
    <t>` after QUIET_S of silence (t: time.monotonic() of the frame's arrival, a clock
    every process on the machine shares)."""
    async with RoomListener(url, token) as listener:
        print("ready", flush=True)
        seen, speaking, last_loud = 0, False, 0.0
        while True:
            await asyncio.sleep(0.01)  # arrivals are stamped on receipt: polling adds nothing
            if not listener.tracks:
                continue
            track = listener.tracks[0]
            for arrival, level in zip(track.arrivals[seen:], track.levels[seen:], strict=True):
                if level > HEARD_RMS:
                    if not speaking:
                        print(f"speech {arrival}", flush=True)
                    speaking, last_loud = True, arrival
                elif speaking and arrival - last_loud >= QUIET_S:
                    print(f"quiet {arrival}", flush=True)
                    speaking = False
            seen = len(track.arrivals)


class Listener:
    """A listener in a process of its own, as a user's client is (in the service's process
    the engine's threads and the GIL would delay what it hears): this script's `--listen`
    mode (livekit.rtc), or with `browser` Debian's headless Chromium running livekit-client
    (bench/browser/). Both print `ready`, `speech <t>`, `quiet <t>`."""

    def __init__(self, process: asyncio.subprocess.Process, clock_offset: float) -> None:
        self._process = process
        self._clock_offset = clock_offset  # reported time - time.monotonic()

    @classmethod
    async def start(cls, server: LiveKitServer, *, browser: bool) -> Listener:
        token = server.token("listener", ROOM)
        if browser:
            script = Path(__file__).parent / "browser" / "listen.mjs"
            command = ["node", str(script), server.url, token, str(HEARD_RMS)]
            command.append(str(round(QUIET_S * 1000)))
            offset = time.time() - time.monotonic()  # the page reports wall-clock seconds
        else:
            command = [sys.executable, __file__, "--listen", server.url, token]
            offset = 0.0
        process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
        listener = cls(process, offset)
        await listener._next("ready")
        return listener

    async def _next(self, kind: str) -> float:
        assert self._process.stdout is not None
        while True:
            line = await asyncio.wait_for(self._process.stdout.readline(), 60)
            if not line:
                raise RuntimeError("the listener process ended")
            word, *rest = line.decode().split()
            if word == "failed":
                raise RuntimeError(f"the listener failed: {line.decode().strip()}")
            if word == kind:
                return float(rest[0]) - self._clock_offset if rest else 0.0

    async def speech_after(self, started: float) -> float:
        while (heard := await self._next("speech")) < started:
            pass
        return heard

    async def quiet_after(self, moment: float) -> None:
        while await self._next("quiet") < moment:
            pass

    async def aclose(self) -> None:
        self._process.terminate()
        await self._process.wait()


async def room_first_audio(
    client: httpx.AsyncClient, listener: Listener, text: str
) -> tuple[float, float]:
    """(s from the request to the first speech heard, the service's first_chunk_ms / 1000)."""
    started = time.monotonic()
    request = asyncio.create_task(
        client.post("/api/tts/synthesize", json={"text": text, "room_name": ROOM})
    )
    speech = asyncio.create_task(listener.speech_after(started))
    await asyncio.wait({request, speech}, return_when=asyncio.FIRST_COMPLETED)
    if request.done() and request.result().status_code != 200:  # no speech will come
        speech.cancel()
        sys.exit(f"the service failed: {request.result().text}")
    heard = await speech
    response = await request
    # the reply comes with the last frame handed to the room: up to a second still to play
    await listener.quiet_after(time.monotonic())
    return heard - started, response.json()["first_chunk_ms"] / 1000


async def tone_heard(rooms: RoomPublishers, listener: Listener, rate: int) -> float:
    """s from handing the service's room publisher audio that is ready at once (a 440 Hz
    tone, 0.4 s) to the listener hearing it: the room alone, without synthesis."""

    async def tone() -> AsyncGenerator[rtc.AudioFrame, None]:
        t = np.arange(round(0.4 * rate)) / rate
        pcm = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
        yield rtc.AudioFrame(pcm.tobytes(), rate, 1, pcm.size)

    started = time.monotonic()
    playing = asyncio.create_task(rooms.speak(ROOM, tone))
    heard = await listener.speech_after(started)
    await playing
    await listener.quiet_after(time.monotonic())
    return heard - started


def build_tts(engine: str, xtts_tokens: int) -> localtts.TTS:
    if engine == "piper":
        return localtts.TTS(engine="piper", settings=localtts.Settings(engine="piper"))
    from livekit.plugins.localtts.engines.xtts import XTTSEngine

    from tests.tiny_xtts import build_xtts, make_test_clip

    # the CPU defaults: int8 GPT, bf16 HiFiGAN where native, threads = performance cores
    xtts = XTTSEngine.from_model(
        build_xtts("real"), int8=None, vocoder_bf16=None, vocoder_channels_last=None,
        max_tokens=xtts_tokens,
    )
    xtts.load()
    xtts.set_default_voice(xtts.condition(make_test_clip("bench", seconds=6.0)))
    return localtts.TTS(engine=xtts)


async def bench_engine(
    engine: str, server: LiveKitServer, args: argparse.Namespace
) -> tuple[Runs, EngineInfo]:
    runs, text = args.runs, args.text
    tts = build_tts(engine, args.xtts_tokens)
    await tts.warmup()
    settings = localtts.Settings(engine=tts.engine.name)
    service_settings = ServiceSettings(
        livekit_url=server.url,
        livekit_api_key=server.api_key,
        livekit_api_secret=server.api_secret,
    )
    library = VoiceLibrary(use_database=False)
    await library.start()
    app = create_app(
        settings, service_settings=service_settings, tts=tts, voice_library=library
    )
    result = Runs()
    async with app.router.lifespan_context(app):
        await app.state.service.wait_started()
        transport = httpx.ASGITransport(app=app)
        listener = await Listener.start(server, browser=args.browser)
        try:
            async with httpx.AsyncClient(
                transport=transport, base_url="http://service", timeout=120
            ) as c:
                result.cold, _ = await room_first_audio(c, listener, text)
                await plugin_first_audio(tts, text)  # the plugin path's own first call
                for i in range(runs):
                    first, onset = await plugin_first_audio(tts, text)
                    await engine_idle(tts)
                    heard, service = await room_first_audio(c, listener, text)
                    result.plugin.append(first)
                    result.onset.append(onset)
                    result.heard.append(heard)
                    result.service.append(service)
                    print(
                        f"  {engine} run {i + 1}/{runs}: plugin {first * 1000:.0f} ms, "
                        f"heard {heard * 1000:.0f} ms",
                        file=sys.stderr,
                        flush=True,
                    )
                rooms = app.state.service.rooms
                for _ in range(runs):
                    result.tone.append(await tone_heard(rooms, listener, tts.sample_rate))
        finally:
            await listener.aclose()
    info = tts.engine.info()
    await tts.aclose()
    await library.aclose()
    return result, info


def summary(engine: str, r: Runs, info: EngineInfo) -> list[dict]:
    def row(path: str, values: list[float]) -> dict:
        return {
            "engine": engine,
            "path": path,
            "p50_ms": statistics.median(values) * 1000,
            "p95_ms": pct(values, 0.95) * 1000,
            "runs": len(values),
        }

    rows = [
        row("plugin: `TTS.synthesize` -> first frame", r.plugin),
        row("room: request -> first speech heard by a listener", r.heard),
        row(
            "room cost: heard - first audio synthesized for that request",
            [h - s for h, s in zip(r.heard, r.service, strict=True)],
        ),
        row("  of which silence before speech in the audio (onset)", r.onset),
        row("room alone: ready audio (a tone) handed to the publisher -> heard", r.tone),
        row(
            "heard - plugin (different utterances, paired by run)",
            [h - p for h, p in zip(r.heard, r.plugin, strict=True)],
        ),
    ]
    if r.cold is not None:
        rows.append(
            {
                "engine": engine,
                "path": "room, first request (join, wait for the listener to subscribe)",
                "p50_ms": r.cold * 1000,
                "p95_ms": None,
                "runs": 1,
            }
        )
    rows[0]["optimizations"] = list(info.optimizations)
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", nargs="+", default=["piper"], choices=["piper", "xtts"])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--text", default=SENTENCE)
    parser.add_argument("--xtts-tokens", type=int, default=43, help="per piece (~2 s)")
    parser.add_argument(
        "--browser",
        action="store_true",
        help="listen in headless Chromium with livekit-client (apt-get install chromium; "
        "npm ci --prefix bench/browser)",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    parser.add_argument("--listen", nargs=2, metavar=("URL", "TOKEN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.listen:  # the listener process (see Listener)
        await listen(*args.listen)
        return
    binary = server_binary()
    if binary is None:
        sys.exit("livekit-server is missing: run `bash tests/livekit-server.sh`")

    load_before = os.getloadavg()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp, run_livekit_server(binary, Path(tmp)) as server:
        for engine in args.engine:
            result, info = await bench_engine(engine, server, args)
            rows.extend(summary(engine, result, info))
    load_after = os.getloadavg()

    listener = "headless Chromium, livekit-client" if args.browser else "livekit.rtc (Python)"
    print(
        f"\ntext: {args.text!r} ({len(args.text)} ch); runs={args.runs}; listener: {listener}; "
        f"python={platform.python_version()} machine={platform.machine()} "
        f"cpus={os.cpu_count()}; load average before {load_before[0]:.2f}, "
        f"after {load_after[0]:.2f}"
    )
    print("| engine | path | p50 (ms) | p95 (ms) | runs |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        p95 = f"{r['p95_ms']:.0f}" if r["p95_ms"] is not None else ""
        print(f"| {r['engine']} | {r['path']} | {r['p50_ms']:.0f} | {p95} | {r['runs']} |")
    if args.json:
        args.json.write_text(json.dumps({"text": args.text, "rows": rows}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
