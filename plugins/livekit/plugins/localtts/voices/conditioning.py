"""Each voice's conditioning per engine: computed once per (voice, engine, model revision,
clip), kept in memory and persisted in `tts_voice_conditioning`, so requests and later starts
never recompute it. Concurrent callers of one voice share one computation."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..engines.base import Engine, VoiceConditioning, VoiceError
from ..log import logger
from .audio import ClipPreparer, PreparedClip, audio_digest, bound_clip
from .catalog import VoiceCatalog, VoiceEntry, still_wanted
from .connection import DATABASE_ERRORS
from .errors import DatabaseUnavailableError, brief_error
from .store import ConditioningRow, VoiceStore
from .sync import Spawn

if TYPE_CHECKING:
    from .preload import PreloadReport

Key = tuple[str, str, str]  # (voice id, engine name, model revision)
Flight = tuple[Key, str]  # (key, clip digest): conditioning under way
NOT_GIVEN: Any = object()  # "look the cached row up" (None: there is none)


def conditioning_key(voice_id: str, engine: Engine) -> Key:
    return (voice_id, engine.name, engine.model_revision)


class ConditioningCache:
    def __init__(
        self,
        *,
        catalog: VoiceCatalog,
        store: Callable[[], VoiceStore | None],
        source_audio: Callable[[VoiceEntry], Awaitable[bytes]],
        prepare: ClipPreparer,
        spawn: Spawn,
        concurrency: int | None = None,
    ) -> None:
        self._catalog = catalog
        self._store = store
        self._source_audio = source_audio
        self._prepare = prepare
        self._spawn = spawn
        # engines hold their own intra-op threads: a couple of clips at a time is plenty
        self._slots = asyncio.Semaphore(concurrency or min(2, os.cpu_count() or 1))
        self._memory: dict[Key, tuple[str, VoiceConditioning]] = {}  # key -> (clip digest, ...)
        # keyed by the clip's digest too: work begun on a voice's old clip is never handed
        # to a caller asking after the voice changed
        self.inflight: dict[Flight, asyncio.Task[VoiceConditioning]] = {}
        self._engines: dict[tuple[str, str], Engine] = {}  # preloaded: refreshed on changes

    async def get(
        self,
        entry: VoiceEntry,
        engine: Engine,
        *,
        audio: bytes | None = None,
        cached: ConditioningRow | None = NOT_GIVEN,
        report: PreloadReport | None = None,
    ) -> VoiceConditioning:
        """From memory, else the database (`cached`: its row, when the caller read it), else
        computed (from `audio` when given) and persisted; one computation per clip at once."""
        key = conditioning_key(entry.info.voice_id, engine)
        hit = self._memory.get(key)
        if hit is not None and hit[0] == entry.digest:
            if report is not None:
                report.from_cache.append(entry.info.voice_id)
            return hit[1]
        flight = (key, entry.digest)
        task = self.inflight.get(flight)
        if task is None:
            task = asyncio.ensure_future(
                self._load_or_compute(entry, engine, audio, cached, report)
            )
            self.inflight[flight] = task
            task.add_done_callback(functools.partial(self._landed, flight))
            return await asyncio.shield(task)
        conditioning = await asyncio.shield(task)  # someone else is already on it
        if report is not None:
            report.from_cache.append(entry.info.voice_id)
        return conditioning

    def _landed(self, flight: Flight, task: asyncio.Task[VoiceConditioning]) -> None:
        if self.inflight.get(flight) is task:
            del self.inflight[flight]

    def ready(self, engine: Engine) -> list[str]:
        """The voices whose conditioning for `engine` is in memory now, for their current
        clip (what /health counts: it changes as voices are added, replaced, removed)."""
        ready = []
        for (voice_id, name, revision), (digest, _) in self._memory.items():
            entry = self._catalog.entry(voice_id)
            if (name, revision) == (engine.name, engine.model_revision) and (
                entry is not None and entry.digest == digest
            ):
                ready.append(voice_id)
        return sorted(ready)

    def forget(self, voice_id: str) -> None:
        for key in [k for k in self._memory if k[0] == voice_id]:
            del self._memory[key]

    def remember_engine(self, engine: Engine) -> None:
        """Changed voices are prepared for `engine` from now on (see `refresh`)."""
        self._engines[(engine.name, engine.model_revision)] = engine

    def refresh(self, voice_id: str) -> None:
        """Prepare a changed voice for every preloaded engine, in the background."""
        for engine in self._engines.values():
            self._spawn(self._refresh_one(voice_id, engine))

    async def _refresh_one(self, voice_id: str, engine: Engine) -> None:
        try:
            await self.get(self._catalog.require(voice_id), engine)
        except (VoiceError, DatabaseUnavailableError) as e:
            logger.warning("voice %r not ready for %s: %s", voice_id, engine.name, e)
        except Exception:
            logger.exception("voice %r not ready for %s", voice_id, engine.name)

    async def aclose(self) -> None:
        tasks = list(self.inflight.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.inflight.clear()

    async def _load_or_compute(
        self,
        entry: VoiceEntry,
        engine: Engine,
        audio: bytes | None,
        cached: ConditioningRow | None,
        report: PreloadReport | None,
    ) -> VoiceConditioning:
        voice_id, revision = entry.info.voice_id, engine.model_revision
        store = self._store()
        if cached is NOT_GIVEN:
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
                               voice_id, engine.name, brief_error(e))  # fmt: skip
        if conditioning is not None:
            if report is not None:
                report.from_cache.append(voice_id)
        else:
            digest, conditioning = await self._compute(entry, engine, prepared)
            if report is not None:
                report.computed.append(voice_id)
        current = self._catalog.entry(voice_id)
        if current is not None and still_wanted(current, entry, digest):
            self._memory[conditioning_key(voice_id, engine)] = (current.digest, conditioning)
        return conditioning

    async def _compute(
        self, entry: VoiceEntry, engine: Engine, prepared: PreparedClip | None
    ) -> tuple[str, VoiceConditioning]:
        """(digest of the clip used, its conditioning): the clip read now may be newer
        than `entry` when the voice changed meanwhile, and is labelled as what it is."""
        voice_id, digest = entry.info.voice_id, entry.digest
        if prepared is None:
            audio = await self._source_audio(entry)
            digest = audio_digest(audio)
            prepared = await self._prepare(voice_id, audio, language=entry.info.language)
        await asyncio.to_thread(engine.load)  # idempotent; waits for a warmup in progress
        # no engine is handed more of the clip than it reads (known once it is loaded)
        clip = bound_clip(prepared.clip, engine.max_reference_seconds)
        async with self._slots:
            started = time.perf_counter()
            conditioning = await asyncio.to_thread(engine.condition, clip)
            logger.info("conditioned voice %r for %s in %.2f s", voice_id, engine.name,
                        time.perf_counter() - started)  # fmt: skip
        store, current = self._store(), self._catalog.entry(voice_id)
        # a clip replaced meanwhile is not stored: it would overwrite the newer clip's row
        if store is not None and current is not None and still_wanted(current, entry, digest):
            try:
                data = await asyncio.to_thread(engine.dump_conditioning, conditioning)
                await store.put_conditioning(
                    voice_id=voice_id,
                    engine=engine.name,
                    model_revision=engine.model_revision,
                    audio_digest=digest,
                    data=data,
                )
            except DATABASE_ERRORS as e:
                # the voice works from memory; the next start recomputes it
                logger.warning("could not persist conditioning of %r: %s", voice_id,
                               brief_error(e))  # fmt: skip
        return digest, conditioning

