"""Keeping the catalog in step with the database while running: PostgreSQL LISTEN/NOTIFY.

Notices are applied in order, one at a time, so a later notice always wins over an earlier
one; each re-reads the row, so missed details cannot go stale. A lost listener reconnects and
resyncs everything (notices sent while it was away are lost)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg

from ..log import logger
from .catalog import VoiceCatalog, db_entry
from .connection import CONNECT_ERRORS
from .errors import brief_error
from .store import VoiceStore

Spawn = Callable[[Coroutine[Any, Any, Any]], None]  # run in the background, owned by the caller


class ChangeFeed:
    """Applies the database's change notices to `catalog`."""

    def __init__(
        self, store: VoiceStore, catalog: VoiceCatalog, *, backoff: float, spawn: Spawn
    ) -> None:
        self._store: VoiceStore | None = store
        self._catalog = catalog
        self._backoff = backoff
        self._spawn = spawn
        self._changes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.listener: asyncpg.Connection | None = None
        self._retry_now = asyncio.Event()

    async def listen(self) -> None:
        """LISTEN on a connection of its own (raises what connecting raises)."""
        assert self._store is not None
        self.listener = await self._store.listen(self._on_change, self._on_listener_lost)

    def start(self) -> None:
        """Apply notices from now on, in the background."""
        self._spawn(self._apply_changes())

    async def close(self) -> None:
        self._store = None  # a reconnect in progress gives up
        if self.listener is not None:
            listener, self.listener = self.listener, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listener.close(), timeout=5)

    def reconnect_now(self) -> None:
        """The database is back: a lost listener retries now, not after its backoff."""
        self._retry_now.set()

    def _on_change(self, message: dict[str, Any]) -> None:
        self._changes.put_nowait(message)

    def _on_listener_lost(self) -> None:
        if self.listener is None:
            return  # closing
        logger.warning("voice change listener lost its connection; reconnecting")
        self.listener = None
        self._spawn(self._relisten())

    async def _apply_changes(self) -> None:
        while True:
            message = await self._changes.get()
            for attempt in range(4):  # this loop must outlive any error: it is the live feed
                try:
                    await self._apply_change(message)
                    break
                except Exception as e:
                    if attempt == 3:  # the listener resyncs everything when it reconnects
                        logger.warning(
                            "could not apply voice change %s: %s", message, brief_error(e)
                        )
                    else:
                        await asyncio.sleep(0.2 * 2**attempt)

    async def _apply_change(self, message: dict[str, Any]) -> None:
        store = self._store
        if store is None:
            return
        if message.get("op") == "resync":
            await self.resync()
            return
        voice_id = message.get("voice_id")
        if not isinstance(voice_id, str):
            return
        row = await store.voice(voice_id)
        if row is None:
            if voice_id in self._catalog.db:
                logger.info("voice %r was removed elsewhere", voice_id)
            self._catalog.drop_db_voice(voice_id)
        else:
            if self._catalog.db.get(voice_id) != db_entry(row):
                logger.info("voice %r was added or changed elsewhere", voice_id)
            self._catalog.set_db_voice(db_entry(row))

    async def resync(self) -> None:
        """The catalog's database voices become exactly the database's."""
        assert self._store is not None
        rows = await self._store.voices()
        self._catalog.replace_db_voices({row.voice_id: db_entry(row) for row in rows})

    async def _relisten(self) -> None:
        delay = self._backoff
        while self._store is not None:
            try:
                await self.listen()
                await self.resync()  # notices sent while we were away are lost
                logger.info("voice change listener reconnected")
                return
            except CONNECT_ERRORS as e:
                logger.warning(
                    "voice change listener: %s; retrying in %.1f s", brief_error(e), delay
                )
                self._retry_now.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._retry_now.wait(), delay)
                delay = min(delay * 2, 30.0)
