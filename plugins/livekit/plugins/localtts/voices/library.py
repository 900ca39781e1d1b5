"""VoiceLibrary: every voice a worker can speak with, and each voice's conditioning.

Voices come from PostgreSQL (managed with add/remove, shared by all workers) and from a
directory of reference clips (`<voice_id>.wav` + optional `<voice_id>.json`); a database
voice overrides a directory voice of the same id. Conditioning (what an engine computes
from a clip) is computed once per (voice, engine, model revision, clip), kept in memory and
persisted in `tts_voice_conditioning`, so requests and later starts never recompute it.

This class is the front; the parts behind it:

    catalog.py       which voices exist (database over directory), VoiceInfo
    directory.py     scanning the voices directory
    connection.py    reaching the database: retries, the embedded PostgreSQL
    sync.py          LISTEN/NOTIFY: changes made by other workers
    conditioning.py  the conditioning cache, one computation per clip at a time
    preload.py       everything ready for an engine at start
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from ..engines.base import (
    Engine,
    UnknownVoiceError,
    UnsupportedVoiceError,
    VoiceConditioning,
    VoiceError,
)
from ..log import logger
from ..settings import VoiceLibrarySettings
from .audio import (
    LIBRARY_SAMPLE_RATE,
    MAX_AUDIO_BYTES,
    MAX_CLIP_SECONDS,
    MIN_SPEECH_SECONDS,
    ClipPreparer,
    audio_digest,
)
from .catalog import VoiceCatalog, VoiceEntry, VoiceInfo, check_voice_id, db_entry, row_info
from .conditioning import ConditioningCache
from .connection import VoiceDatabase, database_errors
from .directory import default_voices_dir, scan_directory
from .errors import DatabaseUnavailableError, VoiceExistsError
from .preload import PreloadReport, preload
from .store import VoiceStore
from .sync import ChangeFeed


class VoiceLibrary:
    def __init__(
        self,
        *,
        database_url: str | None = None,
        voices_dir: Path | None = None,
        data_dir: Path | None = None,
        use_database: bool = True,
        connect_attempts: int = 5,
        connect_backoff: float = 0.5,
        connect_timeout: float = 5.0,
        max_audio_bytes: int = MAX_AUDIO_BYTES,
        min_speech_seconds: float = MIN_SPEECH_SECONDS,
        max_clip_seconds: float = MAX_CLIP_SECONDS,
        sample_rate: int = LIBRARY_SAMPLE_RATE,
        condition_concurrency: int | None = None,
    ) -> None:
        """`database_url=None` starts an embedded PostgreSQL under `data_dir` (unless
        `use_database=False`: directory voices only). An unreachable database is retried
        `connect_attempts` times with exponential backoff from `connect_backoff` seconds."""
        self._voices_dir = Path(voices_dir) if voices_dir is not None else None
        self._use_database = use_database
        # where the embedded PostgreSQL would live (None: DATABASE_URL is used instead)
        self._embedded_dir = Path(data_dir) if database_url is None and data_dir else None
        self._database = VoiceDatabase(
            url=database_url,
            data_dir=Path(data_dir) if data_dir is not None else None,
            attempts=connect_attempts,
            backoff=connect_backoff,
            timeout=connect_timeout,
        )
        self._prepare = ClipPreparer(
            concurrency=max(2, os.cpu_count() or 1),
            sample_rate=sample_rate,
            max_bytes=max_audio_bytes,
            min_speech_seconds=min_speech_seconds,
            max_seconds=max_clip_seconds,
        )
        self._catalog = VoiceCatalog(on_changed=self._voice_changed)
        self._cache = ConditioningCache(
            catalog=self._catalog,
            store=lambda: self._store,
            source_audio=self._source_audio,
            prepare=self._prepare,
            spawn=self._spawn,
            concurrency=condition_concurrency,
        )
        self._feed: ChangeFeed | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._status = "degraded"
        self._detail = "not started"
        self.problems: dict[str, str] = {}  # directory files that could not be used
        self._started = False

    @classmethod
    def from_settings(cls, settings: VoiceLibrarySettings) -> VoiceLibrary:
        return cls(
            database_url=settings.database_url,
            voices_dir=settings.voices_dir or default_voices_dir(),
            data_dir=settings.data_dir,
        )

    # ---------------------------------------------------------------- lifecycle

    @property
    def status(self) -> str:
        """Either "ok" or "degraded"; true within a few seconds of the database going away or
        coming back (`VoiceDatabase.watch`)."""
        return "degraded" if self._database.outage else self._status

    @property
    def status_detail(self) -> str:
        outage = self._database.outage
        if outage:
            return f"{outage}; directory voices still speak, adding and removing voices fail"
        return self._detail

    @property
    def connect_attempts_made(self) -> int:
        return self._database.attempts_made

    @property
    def _store(self) -> VoiceStore | None:
        return self._database.store

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._catalog.dir, self.problems = await scan_directory(self._voices_dir, self._prepare)
        if not self._use_database:
            self._status, self._detail = "ok", self._describe("no database (disabled)")
            return
        try:
            if (problem := unwritable_dir_problem(self._embedded_dir)) is not None:
                raise DatabaseUnavailableError(problem)  # no retries: waiting will not help
            await self._database.open(
                self._on_connected, directory_voices=len(self._catalog.dir)
            )
        except DatabaseUnavailableError as e:
            self._status, self._detail = "degraded", str(e)
            logger.error("voice library degraded: %s", e)
            return
        assert self._feed is not None
        self._feed.start()
        self._spawn(self._database.watch(on_back=self._feed.reconnect_now))
        self._status, self._detail = "ok", self._describe("postgresql")
        logger.info("voice library ready: %s", self.status_detail)

    async def _on_connected(self, store: VoiceStore) -> None:
        self._catalog.db = {row.voice_id: db_entry(row) for row in await store.voices()}
        self._feed = ChangeFeed(
            store, self._catalog, backoff=self._database.backoff, spawn=self._spawn
        )
        await self._feed.listen()

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self._cache.aclose()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._feed is not None:
            feed, self._feed = self._feed, None
            await feed.close()
        await self._database.close()
        self._status, self._detail = "degraded", "closed"
        self._started = False

    def _describe(self, backend: str) -> str:
        n_db, n_dir = len(self._catalog.db), self._catalog.directory_only()
        return f"{backend}: {n_db} database voice(s), {n_dir} directory voice(s)"

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run in the background until done or `aclose`."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:  # said, not lost
            logger.error("voice library background task failed", exc_info=task.exception())

    # ---------------------------------------------------------------- conditioning

    async def conditioning(self, voice_id: str, engine: Engine) -> VoiceConditioning:
        """The conditioning of `voice_id` for `engine`: from memory, else the database,
        else computed once (concurrent callers share the computation) and persisted."""
        entry = self._require(voice_id)
        if not engine.supports_cloning:
            raise UnsupportedVoiceError(
                f"the {engine.name} engine cannot clone voices, so it cannot speak as "
                f"{voice_id!r}; use the xtts or chatterbox engine (LOCALTTS_ENGINE), or "
                "no voice for the engine's own"
            )
        return await self._cache.get(entry, engine)

    async def preload(self, engine: Engine) -> PreloadReport:
        """Validate every voice and make its conditioning ready for `engine`: from the
        database when computed before for this model revision, else computed and stored.
        A bad voice is reported in `failed` and never blocks the others."""
        return await preload(engine, catalog=self._catalog, store=self._store, cache=self._cache)

    def _voice_changed(self, voice_id: str, now: VoiceEntry | None) -> None:
        self._cache.forget(voice_id)
        if now is not None:
            self._cache.refresh(voice_id)

    def _require(self, voice_id: str) -> VoiceEntry:
        note = "" if self._store else f" (database unavailable: {self.status_detail})"
        return self._catalog.require(voice_id, note=note)

    async def _source_audio(self, entry: VoiceEntry) -> bytes:
        if entry.path is not None:
            return await asyncio.to_thread(entry.path.read_bytes)
        data = await self._require_store().audio(entry.info.voice_id)
        if data is None:
            raise UnknownVoiceError(f"voice {entry.info.voice_id!r} was removed meanwhile")
        return data

    def _require_store(self) -> VoiceStore:
        if self._store is None:
            raise DatabaseUnavailableError(
                f"the voice database is unavailable ({self.status_detail}); voices can be "
                "added or removed once it is reachable"
                + (f"; meanwhile put <id>.wav in {self._voices_dir}" if self._voices_dir else "")
            )
        return self._store

    # ---------------------------------------------------------------- queries

    async def get(self, voice_id: str) -> VoiceInfo:
        return self._require(voice_id).info

    def ready_voices(self, engine: Engine) -> list[str]:
        """The voices `engine` can speak with at once now (conditioning in memory)."""
        return self._cache.ready(engine)

    async def list(self) -> list[VoiceInfo]:
        return [self._require(v).info for v in self._catalog.ids()]

    # ---------------------------------------------------------------- changes

    async def add(
        self,
        voice_id: str,
        audio: bytes,
        *,
        name: str | None = None,
        language: str | None = None,
        replace: bool = False,
    ) -> VoiceInfo:
        """Validate `audio` and store it as voice `voice_id` (VoiceError says what is wrong);
        the id is stored normalized (`check_voice_id`)."""
        voice_id = check_voice_id(voice_id)
        store = self._require_store()
        catalog = self._catalog
        if not replace and voice_id in catalog.dir and voice_id not in catalog.db:
            raise VoiceExistsError(
                f"voice {voice_id!r} already exists as the directory file "
                f"{catalog.dir[voice_id].path}; replace it explicitly to override it with a "
                "database copy"
            )
        prepared = await self._prepare(voice_id, audio, language=language)
        wav = await asyncio.to_thread(prepared.wav_bytes)
        async with database_errors(f"store voice {voice_id!r}"):
            row = await store.insert_voice(
                voice_id=voice_id,
                name=name,
                language=language,
                audio=wav,
                sample_rate=prepared.clip.sample_rate,
                duration=prepared.clip.duration,
                audio_digest=audio_digest(wav),
                replace=replace,
            )
        if row is None:
            raise VoiceExistsError(
                f"voice {voice_id!r} already exists; remove it first or replace it explicitly"
            )
        catalog.set_db_voice(db_entry(row))
        logger.info(
            "voice %r stored: %.1f s (%.1f s speech, from %d Hz, %d channel(s))",
            voice_id, prepared.clip.duration, prepared.speech_seconds,
            prepared.source_sample_rate, prepared.source_channels,
        )  # fmt: skip
        return row_info(row)

    async def remove(self, voice_id: str) -> None:
        store = self._require_store()
        if (entry := self._catalog.entry(voice_id)) is not None:
            voice_id = entry.info.voice_id  # as stored: exact, or the normalized form
        async with database_errors(f"remove voice {voice_id!r}"):
            deleted = await store.delete_voice(voice_id)
        if not deleted:
            if voice_id in self._catalog.dir:
                raise VoiceError(
                    f"voice {voice_id!r} comes from the voices directory "
                    f"({self._catalog.dir[voice_id].path}); delete that file to remove it"
                )
            raise UnknownVoiceError(f"unknown voice {voice_id!r}: nothing to remove")
        self._catalog.drop_db_voice(voice_id)
        logger.info("voice %r removed", voice_id)


def unwritable_dir_problem(data_dir: Path | None) -> str | None:
    """Why the embedded PostgreSQL cannot live under `data_dir` (None: it can, or no
    embedded server is wanted): a directory that cannot be created or written to."""
    if data_dir is None:
        return None
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=data_dir):
            pass
    except OSError as e:
        return (
            f"LOCALTTS_DATA_DIR={str(data_dir)!r} is not writable ({e.strerror or e}): the "
            "embedded PostgreSQL keeps the voices there; set LOCALTTS_DATA_DIR to a writable "
            "directory, or DATABASE_URL to a PostgreSQL server"
        )
    return None
