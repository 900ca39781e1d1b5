"""PostgreSQL access for the voice library (asyncpg): schema, migrations, queries, LISTEN.

Every query is parameterized: voice ids are user input (quotes, unicode). Changes to
`tts_voices` are announced by a trigger on the `tts_voices` channel, so a change made by
any client (this library, the CLI, plain SQL) reaches every running worker.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from ..log import logger

NOTIFY_CHANNEL = "tts_voices"
# any constant shared by every localtts process: serializes concurrent migrations
_MIGRATION_LOCK_KEY = 0x6C74_7473_766F_6963 & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sql: str


# Append only: a released migration is never edited (databases already ran it).
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "voice clips and their per-engine conditioning",
        """
        CREATE TABLE IF NOT EXISTS tts_voices (
            voice_id     text PRIMARY KEY CHECK (char_length(voice_id) BETWEEN 1 AND 128),
            name         text,
            language     text,
            audio        bytea NOT NULL,
            sample_rate  integer NOT NULL CHECK (sample_rate > 0),
            duration     double precision NOT NULL CHECK (duration >= 0),
            created_at   timestamptz NOT NULL DEFAULT now(),
            updated_at   timestamptz NOT NULL DEFAULT now(),
            -- identifies the clip without reading it; kept right even for rows written by hand
            audio_sha256 bytea GENERATED ALWAYS AS (sha256(audio)) STORED
        );
        -- no foreign key: directory voices are conditioned and cached here too
        CREATE TABLE IF NOT EXISTS tts_voice_conditioning (
            voice_id       text NOT NULL,
            engine         text NOT NULL,
            model_revision text NOT NULL,
            audio_digest   text NOT NULL,  -- the clip it was computed from
            data           bytea NOT NULL,
            created_at     timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (voice_id, engine, model_revision)
        );
        CREATE INDEX IF NOT EXISTS tts_voice_conditioning_engine
            ON tts_voice_conditioning (engine, model_revision);
        """,
    ),
    Migration(
        2,
        "announce voice changes on the tts_voices channel",
        """
        CREATE OR REPLACE FUNCTION tts_voices_notify() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'TRUNCATE' THEN
                PERFORM pg_notify('tts_voices', json_build_object('op', 'resync')::text);
                RETURN NULL;
            END IF;
            IF TG_OP IN ('DELETE', 'UPDATE') AND (TG_OP = 'DELETE'
                    OR OLD.voice_id IS DISTINCT FROM NEW.voice_id) THEN
                PERFORM pg_notify('tts_voices',
                    json_build_object('op', 'delete', 'voice_id', OLD.voice_id)::text);
            END IF;
            IF TG_OP IN ('INSERT', 'UPDATE') THEN
                PERFORM pg_notify('tts_voices',
                    json_build_object('op', 'upsert', 'voice_id', NEW.voice_id)::text);
            END IF;
            RETURN NULL;
        END $$;
        DROP TRIGGER IF EXISTS tts_voices_notify_row ON tts_voices;
        CREATE TRIGGER tts_voices_notify_row AFTER INSERT OR UPDATE OR DELETE ON tts_voices
            FOR EACH ROW EXECUTE FUNCTION tts_voices_notify();
        DROP TRIGGER IF EXISTS tts_voices_notify_truncate ON tts_voices;
        CREATE TRIGGER tts_voices_notify_truncate AFTER TRUNCATE ON tts_voices
            FOR EACH STATEMENT EXECUTE FUNCTION tts_voices_notify();
        """,
    ),
)


@dataclass(frozen=True)
class VoiceRow:
    """A row of `tts_voices` without its audio."""

    voice_id: str
    name: str | None
    language: str | None
    sample_rate: int
    duration: float
    created_at: datetime
    updated_at: datetime
    audio_sha256: str


@dataclass(frozen=True)
class ConditioningRow:
    audio_digest: str
    data: bytes


_ROW_COLUMNS = (
    "voice_id, name, language, sample_rate, duration, created_at, updated_at, "
    "encode(audio_sha256, 'hex') AS audio_sha256"
)


def _voice_row(record: asyncpg.Record) -> VoiceRow:
    return VoiceRow(**dict(record))


class VoiceStore:
    """The voice tables behind one asyncpg pool."""

    def __init__(self, *, pool: asyncpg.Pool, url: str) -> None:
        self._pool = pool
        self._url = url

    @classmethod
    async def connect(cls, url: str, *, timeout: float = 5.0, max_size: int = 4) -> VoiceStore:
        pool = await asyncpg.create_pool(
            url, min_size=1, max_size=max_size, timeout=timeout, command_timeout=60
        )
        return cls(pool=pool, url=url)

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), timeout=5)
        except (asyncio.TimeoutError, OSError, asyncpg.PostgresError):
            self._pool.terminate()

    async def migrate(self) -> list[int]:
        """Apply the migrations this database lacks, under a lock; returns those applied."""
        applied: list[int] = []
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK_KEY)
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS tts_schema_migrations (
                    version     integer PRIMARY KEY,
                    description text NOT NULL,
                    applied_at  timestamptz NOT NULL DEFAULT now())"""
            )
            done = {
                r["version"] for r in await conn.fetch("SELECT version FROM tts_schema_migrations")
            }
            for migration in MIGRATIONS:
                if migration.version in done:
                    continue
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO tts_schema_migrations (version, description) VALUES ($1, $2)",
                    migration.version,
                    migration.description,
                )
                applied.append(migration.version)
            newer = sorted(v for v in done if v > MIGRATIONS[-1].version)
        if newer:
            logger.warning(
                "the voice database has schema versions %s, newer than this localtts knows; "
                "upgrade localtts on every worker",
                newer,
            )
        if applied:
            logger.info("voice database migrated to schema versions %s", applied)
        return applied

    async def schema_versions(self) -> list[int]:
        rows = await self._pool.fetch("SELECT version FROM tts_schema_migrations ORDER BY 1")
        return [r["version"] for r in rows]

    async def voices(self) -> list[VoiceRow]:
        rows = await self._pool.fetch(f"SELECT {_ROW_COLUMNS} FROM tts_voices ORDER BY voice_id")
        return [_voice_row(r) for r in rows]

    async def voice(self, voice_id: str) -> VoiceRow | None:
        row = await self._pool.fetchrow(
            f"SELECT {_ROW_COLUMNS} FROM tts_voices WHERE voice_id = $1", voice_id
        )
        return _voice_row(row) if row is not None else None

    async def audio(self, voice_id: str) -> bytes | None:
        return await self._pool.fetchval(
            "SELECT audio FROM tts_voices WHERE voice_id = $1", voice_id
        )

    async def iter_audio(self, *, prefetch: int = 16) -> AsyncIterator[tuple[str, str, bytes]]:
        """(voice_id, audio_sha256, audio) of every voice, streamed: 200 clips are ~60 MB."""
        async with self._pool.acquire() as conn, conn.transaction(readonly=True):
            cursor = conn.cursor(
                "SELECT voice_id, encode(audio_sha256, 'hex'), audio FROM tts_voices",
                prefetch=prefetch,
            )
            async for voice_id, sha, audio in cursor:
                yield voice_id, sha, audio

    async def insert_voice(
        self,
        *,
        voice_id: str,
        name: str | None,
        language: str | None,
        audio: bytes,
        sample_rate: int,
        duration: float,
        audio_digest: str,
        replace: bool,
    ) -> VoiceRow | None:
        """The new row, or None when the id exists and `replace` is False."""
        values = (voice_id, name, language, audio, sample_rate, duration)
        async with self._pool.acquire() as conn, conn.transaction():
            if replace:
                row = await conn.fetchrow(
                    f"""INSERT INTO tts_voices
                        (voice_id, name, language, audio, sample_rate, duration)
                    VALUES ($1, $2, $3, $4, $5, $6)
                    ON CONFLICT (voice_id) DO UPDATE SET
                        name = EXCLUDED.name, language = EXCLUDED.language,
                        audio = EXCLUDED.audio, sample_rate = EXCLUDED.sample_rate,
                        duration = EXCLUDED.duration, updated_at = now()
                    RETURNING {_ROW_COLUMNS}""",
                    *values,
                )
                # conditioning of a replaced clip is stale; a renamed one keeps its own
                await conn.execute(
                    "DELETE FROM tts_voice_conditioning WHERE voice_id = $1 AND audio_digest <> $2",
                    voice_id,
                    audio_digest,
                )
            else:
                row = await conn.fetchrow(
                    f"""INSERT INTO tts_voices
                        (voice_id, name, language, audio, sample_rate, duration)
                    VALUES ($1, $2, $3, $4, $5, $6)
                    ON CONFLICT (voice_id) DO NOTHING
                    RETURNING {_ROW_COLUMNS}""",
                    *values,
                )
        return _voice_row(row) if row is not None else None

    async def delete_voice(self, voice_id: str) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            deleted = await conn.fetchval(
                "DELETE FROM tts_voices WHERE voice_id = $1 RETURNING voice_id", voice_id
            )
            await conn.execute("DELETE FROM tts_voice_conditioning WHERE voice_id = $1", voice_id)
        return deleted is not None

    async def conditioning_rows(
        self, engine: str, model_revision: str
    ) -> dict[str, ConditioningRow]:
        rows = await self._pool.fetch(
            """SELECT voice_id, audio_digest, data FROM tts_voice_conditioning
            WHERE engine = $1 AND model_revision = $2""",
            engine,
            model_revision,
        )
        return {r["voice_id"]: ConditioningRow(r["audio_digest"], r["data"]) for r in rows}

    async def conditioning_row(
        self, voice_id: str, engine: str, model_revision: str
    ) -> ConditioningRow | None:
        row = await self._pool.fetchrow(
            """SELECT audio_digest, data FROM tts_voice_conditioning
            WHERE voice_id = $1 AND engine = $2 AND model_revision = $3""",
            voice_id,
            engine,
            model_revision,
        )
        return ConditioningRow(row["audio_digest"], row["data"]) if row is not None else None

    async def put_conditioning(
        self, *, voice_id: str, engine: str, model_revision: str, audio_digest: str, data: bytes
    ) -> None:
        await self._pool.execute(
            """INSERT INTO tts_voice_conditioning
                (voice_id, engine, model_revision, audio_digest, data)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (voice_id, engine, model_revision) DO UPDATE SET
                audio_digest = EXCLUDED.audio_digest, data = EXCLUDED.data, created_at = now()""",
            voice_id,
            engine,
            model_revision,
            audio_digest,
            data,
        )

    async def listen(
        self, on_change: Callable[[dict[str, Any]], None], on_lost: Callable[[], None]
    ) -> asyncpg.Connection:
        """A dedicated connection LISTENing on the change channel; close it to stop."""
        conn = await asyncpg.connect(self._url, timeout=5)

        def deliver(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            try:
                message = json.loads(payload)
            except ValueError:
                logger.warning("ignoring a malformed voice change notice: %r", payload)
                return
            on_change(message)

        conn.add_termination_listener(lambda _conn: on_lost())
        await conn.add_listener(NOTIFY_CHANNEL, deliver)
        return conn
