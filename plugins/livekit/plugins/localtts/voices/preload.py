"""Preloading: every voice validated and its conditioning made ready for an engine at start,
from the database when computed before for this model revision, else computed and stored. A
bad voice is reported and never blocks the others."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from ..engines.base import Engine, VoiceError
from ..log import logger
from .audio import digest_from_sha256
from .catalog import VoiceCatalog, VoiceEntry, db_entry
from .conditioning import ConditioningCache
from .connection import DATABASE_ERRORS
from .errors import brief_error
from .store import ConditioningRow, VoiceStore

_IN_MEMORY = 8  # clips held in memory at once


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


async def preload(
    engine: Engine, *, catalog: VoiceCatalog, store: VoiceStore | None, cache: ConditioningCache
) -> PreloadReport:
    """Every voice of `catalog` ready for `engine` (see the module)."""
    started = time.perf_counter()
    report = PreloadReport(engine=engine.name, model_revision=None)
    if not engine.supports_cloning:
        report.skipped = (
            f"the {engine.name} engine cannot clone voices: nothing to prepare; "
            f"{len(catalog.ids())} voice(s) wait for a cloning engine"
        )
        return report
    report.model_revision = engine.model_revision
    cache.remember_engine(engine)
    cached: dict[str, ConditioningRow] = {}
    if store is not None:
        try:
            cached = await store.conditioning_rows(engine.name, engine.model_revision)
        except DATABASE_ERRORS as e:
            logger.warning("could not read cached conditioning: %s", brief_error(e))

    pending: set[asyncio.Task[None]] = set()
    slots = asyncio.Semaphore(_IN_MEMORY)

    async def one(entry: VoiceEntry, audio: bytes | None) -> None:
        voice_id = entry.info.voice_id
        try:
            await cache.get(
                entry, engine, audio=audio, cached=cached.get(voice_id), report=report
            )
        except VoiceError as e:
            report.failed[voice_id] = str(e)
        except Exception as e:
            logger.exception("voice %r failed to preload", voice_id)
            report.failed[voice_id] = f"{type(e).__name__}: {e}"
        finally:
            slots.release()

    async def spawn(entry: VoiceEntry, audio: bytes | None) -> None:
        await slots.acquire()
        pending.add(asyncio.ensure_future(one(entry, audio)))

    for voice_id, entry in catalog.dir.items():
        if voice_id not in catalog.db:
            await spawn(entry, None)
    if store is not None:
        try:
            async for voice_id, sha, audio in store.iter_audio():
                db_voice = catalog.db.get(voice_id)
                if db_voice is None or db_voice.digest != digest_from_sha256(sha):
                    row = await store.voice(voice_id)  # added or changed since start()
                    if row is None:
                        continue
                    db_voice = catalog.db[voice_id] = db_entry(row)
                await spawn(db_voice, audio)
        except DATABASE_ERRORS as e:
            logger.error("could not read voices from the database: %s", brief_error(e))
            for voice_id in catalog.db:
                report.failed.setdefault(voice_id, f"database read failed: {brief_error(e)}")
    if pending:
        await asyncio.gather(*pending)
    report.seconds = time.perf_counter() - started
    for voice_id, why in report.failed.items():
        logger.warning("voice %r skipped: %s", voice_id, why)
    logger.info("voice preload: %s", report.summary())
    return report
