"""A newcomer's path (issue 13): one meaning per setting across the plugin, the CLI and the
service; errors that name where a choice came from and what to do, in one line, with a
non-zero exit; a service without its engine that stays up and says why."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from livekit.agents import APIError, APIStatusError
from livekit.plugins import localtts
from livekit.plugins.localtts.settings import get_settings
from livekit.plugins.localtts.voices import VoiceLibrary
from typer.testing import CliRunner

from localtts_agent.cli.app import app
from localtts_agent.settings import ServiceSettings

from .service_fixtures import running_app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture
def fresh_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """The process's settings read anew from this test's environment (and no stray `.env`):
    the CLI reads them through the cached `get_settings`."""
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("LOCALTTS_") or n == "DATABASE_URL"]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("LOCALTTS_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# ---------------------------------------------------------------------------- 1, 2: the engine


def test_the_constructor_default_defers_to_the_environment_and_dotenv(
    fresh_settings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (fresh_settings / ".env").write_text("LOCALTTS_ENGINE=piper\n")
    tts = localtts.TTS()
    assert tts.selection is not None and tts.selection.engine == "piper"
    assert tts.selection.reason == "asked for by LOCALTTS_ENGINE"  # not the Piper fallback

    missing = fresh_settings / "no-weights"
    monkeypatch.setenv("LOCALTTS_ENGINE", "xtts")
    monkeypatch.setenv("LOCALTTS_XTTS_MODEL", str(missing))
    get_settings.cache_clear()
    with pytest.raises(APIError) as refused:
        localtts.TTS()
    assert not isinstance(refused.value, APIStatusError) and not refused.value.retryable
    assert "engine 'xtts' was asked for by LOCALTTS_ENGINE" in refused.value.message
    assert str(missing) in refused.value.message


def test_an_engine_argument_is_named_as_such_and_bad_arguments_are_400(tmp_path: Path) -> None:
    settings = localtts.Settings(_env_file=None, xtts_model=str(tmp_path / "none"))  # type: ignore[call-arg]
    with pytest.raises(APIError) as refused:
        localtts.TTS(engine="xtts", settings=settings)
    assert "engine 'xtts' was asked for by engine='xtts'" in refused.value.message
    assert "LOCALTTS_ENGINE" not in refused.value.message

    for bad in ({"speed": 0.0}, {"speed": 9.0}):
        with pytest.raises(APIStatusError, match="speed must be within") as info:
            localtts.TTS(engine="piper", settings=settings, **bad)  # type: ignore[arg-type]
        assert info.value.status_code == 400
    tts = localtts.TTS(engine="piper", settings=settings)
    with pytest.raises(APIStatusError, match="speed must be within"):
        tts.update_options(speed=0)


def test_say_follows_localtts_engine_and_names_the_flag(fresh_settings: Path) -> None:
    spoken = runner.invoke(app, ["say", "Hi."], env={"LOCALTTS_ENGINE": "piper"})
    assert spoken.exit_code == 0, spoken.output
    assert '"engine": "piper"' in spoken.output

    get_settings.cache_clear()
    env = {"LOCALTTS_ENGINE": "xtts", "LOCALTTS_XTTS_MODEL": str(fresh_settings / "none")}
    by_setting = runner.invoke(app, ["say", "Hi."], env=env)
    assert by_setting.exit_code == 1  # never quietly Piper
    assert lines(by_setting.output)[0].startswith(
        "error: engine 'xtts' was asked for by LOCALTTS_ENGINE but cannot run"
    )

    get_settings.cache_clear()
    env = {"LOCALTTS_XTTS_MODEL": str(fresh_settings / "none")}
    by_flag = runner.invoke(app, ["say", "Hi.", "--engine", "xtts"], env=env)
    assert by_flag.exit_code == 1
    assert len(lines(by_flag.output)) == 1
    assert "asked for by --engine xtts but cannot run" in by_flag.output
    assert "status_code=" not in by_flag.output and "message=" not in by_flag.output


# ---------------------------------------------------------------------------- 5: bad settings


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("LOCALTTS_ENGINE", "bogus", "'auto', 'chatterbox', 'xtts' or 'piper'"),
        ("LOCALTTS_DEVICE", "mps", "XTTS on Apple Silicon runs on the CPU"),
        ("LOCALTTS_THREADS", "0", "greater than or equal to 1"),
    ],
)
@pytest.mark.parametrize("command", [["doctor"], ["voices", "list"], ["serve"], ["say", "Hi."]])
def test_an_invalid_setting_is_one_line_naming_the_variable(
    fresh_settings: Path, command: list[str], variable: str, value: str, says: str
) -> None:
    result = runner.invoke(app, command, env={variable: value})
    assert result.exit_code == 2, result.output
    assert lines(result.output) == [lines(result.output)[0]], result.output  # one line
    assert result.output.startswith(f"error: {variable}={value!r} is not valid: ")
    assert says in result.output


# ---------------------------------------------------------------------------- 6: serve, no engine


async def test_a_service_without_its_engine_stays_up_and_says_why(
    tmp_path: Path, library: VoiceLibrary
) -> None:
    settings = localtts.Settings(  # type: ignore[call-arg]
        _env_file=None, engine="xtts", xtts_model=str(tmp_path / "none")
    )
    from localtts_agent.service.app import create_app

    app_ = create_app(
        settings,
        service_settings=ServiceSettings(_env_file=None, api_key=None),  # type: ignore[call-arg]
        voice_library=library,
    )
    async with app_.router.lifespan_context(app_):
        await app_.state.service.wait_started()
        transport = httpx.ASGITransport(app=app_)
        async with httpx.AsyncClient(transport=transport, base_url="http://s") as client:
            health = await client.get("/health")
            speech = await client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hi."})
            room = await client.post("/api/tts/synthesize", json={"text": "Hi.", "room_name": "r"})
            voices = await client.get("/api/voices")
    assert health.status_code == 503
    body = health.json()
    assert body["engine"] is None
    assert "engine 'xtts' was asked for by LOCALTTS_ENGINE" in body["problems"][0]
    for refused in (speech, room):
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "engine_unavailable"
        assert str(tmp_path / "none") in refused.json()["error"]["message"]
    assert voices.status_code == 200  # the rest of the service works


def test_strict_serve_exits_with_one_clear_line(fresh_settings: Path) -> None:
    env = {"LOCALTTS_STRICT": "1", "LOCALTTS_XTTS_MODEL": str(fresh_settings / "none"),
           "LOCALTTS_CHATTERBOX_MODEL": str(fresh_settings / "none")}  # fmt: skip
    result = runner.invoke(app, ["serve", "--port", "1"], env=env)
    assert result.exit_code == 1
    assert len(lines(result.output)) == 1, result.output
    assert "LOCALTTS_STRICT forbids falling back to Piper" in result.output


# ---------------------------------------------------------------------------- 7: the data dir


async def test_an_unwritable_data_dir_is_named_at_once(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    library = VoiceLibrary(database_url=None, voices_dir=None, data_dir=blocker / "data")
    started = time.monotonic()
    await library.start()
    try:
        assert time.monotonic() - started < 2.0  # no retries: waiting would not help
        assert library.status == "degraded"
        assert library.status_detail.startswith(f"LOCALTTS_DATA_DIR={str(blocker / 'data')!r}")
        assert "set LOCALTTS_DATA_DIR to a writable directory" in library.status_detail
    finally:
        await library.aclose()


def test_voices_list_fails_when_the_library_cannot_start(fresh_settings: Path) -> None:
    blocker = fresh_settings / "a-file"
    blocker.write_text("not a directory")
    result = runner.invoke(app, ["voices", "list"], env={"LOCALTTS_DATA_DIR": str(blocker)})
    assert result.exit_code == 1
    assert "error: LOCALTTS_DATA_DIR=" in result.output


# ---------------------------------------------------------------------------- 9: LOCALTTS_VOICE


def test_say_with_an_unusable_default_voice_speaks_and_says_why(
    fresh_settings: Path, database_url: str
) -> None:
    env = {"LOCALTTS_VOICE": "narrator", "LOCALTTS_ENGINE": "piper", "DATABASE_URL": database_url}
    result = runner.invoke(app, ["say", "Hi."], env=env)
    assert result.exit_code == 0, result.output
    assert "warning: LOCALTTS_VOICE='narrator' is ignored: unknown voice 'narrator'" in (
        result.output
    )
    assert '"voice": null' in result.output

    get_settings.cache_clear()
    out = fresh_settings / "out" / "hello.wav"
    explicit = runner.invoke(app, ["say", "Hi.", "--voice", "ghost", "--out", str(out)], env=env)
    assert explicit.exit_code == 2  # asked for by name: an error, in one plain line
    assert lines(explicit.output) == [lines(explicit.output)[0]]
    assert explicit.output.startswith("error: unknown voice 'ghost'")
    assert "status_code=" not in explicit.output
    # a failed --out leaves nothing behind (it used to leave a 44-byte header)
    assert not out.exists() and list(out.parent.iterdir()) == []


async def test_the_service_with_an_unusable_default_voice_speaks_and_says_why(
    piper_tts: localtts.TTS, library: VoiceLibrary
) -> None:
    settings = localtts.Settings(_env_file=None, engine="piper", voice="narrator")  # type: ignore[call-arg]
    async with running_app(settings, piper_tts, library) as (_, client):
        speech = await client.post(
            "/v1/audio/speech", json={"model": "tts-1", "input": "Hi.", "response_format": "pcm"}
        )
        health = (await client.get("/health")).json()
    assert speech.status_code == 200 and len(speech.content) > 10_000
    assert any(p.startswith("LOCALTTS_VOICE='narrator' is ignored") for p in health["problems"])


def test_pipers_refusal_to_clone_points_to_doctor() -> None:
    import numpy as np
    from livekit.plugins.localtts.engines import UnsupportedVoiceError, VoiceClip

    clip = VoiceClip(voice_id="n", audio=np.zeros(24_000, np.float32), sample_rate=24_000)
    tts = localtts.TTS(engine="piper")
    with pytest.raises(UnsupportedVoiceError, match="their weights are missing") as info:
        tts.engine.condition(clip)
    assert "`localtts doctor`" in str(info.value)


# ---------------------------------------------------------------------------- 4: doctor, offline


def test_allow_download_without_network_doctor_is_truthful_and_say_falls_back(
    tmp_path: Path,
) -> None:
    """A real process with downloads allowed and the hub on a closed loopback port (nothing
    leaves the machine): XTTS and Chatterbox are not usable, `auto` falls back to Piper at
    once."""
    closed = "http://127.0.0.1:9"  # discard port: nothing listens, the connect is refused
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LOCALTTS_", "HF_", "TRANSFORMERS_"))
    }
    env |= {"LOCALTTS_ALLOW_DOWNLOAD": "1", "HF_ENDPOINT": closed, "HF_HOME": str(tmp_path),
            "LOCALTTS_DATA_DIR": str(tmp_path / "data")}  # fmt: skip
    cli = [sys.executable, "-m", "localtts_agent.cli.app"]
    doctor = subprocess.run(
        [*cli, "doctor"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert doctor.returncode == 0, doctor.stderr
    for engine in ("chatterbox", "xtts"):
        line = next(li for li in doctor.stdout.splitlines() if li.strip().startswith(engine))
        assert "not usable" in line and f"the hub {closed} cannot be reached" in line, line
        # the command the hint names exists in this environment
        command = line.split("`")[1].split()[0]
        assert command == "hf" and (Path(sys.executable).parent / command).exists(), line
    assert "auto picks: piper" in doctor.stdout

    started = time.monotonic()
    say = subprocess.run(
        [*cli, "say", "Hi."], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert say.returncode == 0, say.stderr
    assert '"engine": "piper"' in say.stdout
    assert time.monotonic() - started < 30  # was ~25 s of hub retries, then a failure


# ---------------------------------------------------------------------------- 12: /health counts


async def test_health_counts_the_voices_as_they_are_now(
    library: VoiceLibrary, piper_tts: localtts.TTS
) -> None:
    """A cloning engine (tiny random-weight XTTS): a voice added after startup is counted
    known, then loaded once its conditioning is ready; removed, it is counted no more."""
    import asyncio

    from .test_service import CLIP_TEXT, piper_clip
    from .tiny_xtts import make_tiny_xtts_engine

    clip = await piper_clip(piper_tts, CLIP_TEXT)
    engine = make_tiny_xtts_engine()
    settings = localtts.Settings(_env_file=None, voice=None)  # type: ignore[call-arg]
    tts = localtts.TTS(engine=engine, settings=settings)
    async with running_app(settings, tts, library) as (_, client):
        assert (await client.get("/health")).json()["voices"]["known"] == 0
        added = await client.post(
            "/api/voices", data={"voice_id": "narrator"}, files={"file": ("n.wav", clip)}
        )
        assert added.status_code == 201, added.text
        for _ in range(200):  # prepared in the background for the running engine
            voices = (await client.get("/health")).json()["voices"]
            if voices["loaded"]:
                break
            await asyncio.sleep(0.05)
        assert voices["known"] == 1 and voices["loaded"] == 1, voices
        assert (await client.delete("/api/voices/narrator")).status_code == 204
        voices = (await client.get("/health")).json()["voices"]
        assert voices["known"] == 0 and voices["loaded"] == 0, voices


# ---------------------------------------------------------------------------- 14: the worker CLI


def _worker(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "LOCALTTS_"))}
    env |= settings
    return subprocess.run(
        [sys.executable, "-m", "localtts_agent", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_the_worker_help_explains_start_and_connect() -> None:
    result = _worker("--help")
    assert result.returncode == 0, result.stderr
    commands = result.stdout[result.stdout.index("Commands") :]
    assert "register with the LiveKit" in commands  # start
    assert "Join one room now" in commands  # connect


def test_console_without_portaudio_is_one_line() -> None:
    try:
        import sounddevice  # noqa: F401

        pytest.skip("PortAudio is installed here: the console would open the audio devices")
    except OSError:
        pass
    result = _worker("console")
    assert result.returncode == 1
    assert len(lines(result.stderr)) == 1, result.stderr
    assert "needs the PortAudio library" in result.stderr and "console --text" in result.stderr


async def test_serve_logs_one_line_per_startup_phase_with_its_time(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import re

    from localtts_agent.service.app import create_app

    settings = localtts.Settings(  # type: ignore[call-arg]
        _env_file=None, engine="piper", database_url=database_url, voices_dir=None,
        data_dir=tmp_path,
    )  # fmt: skip
    app_ = create_app(
        settings,
        service_settings=ServiceSettings(_env_file=None, api_key=None),  # type: ignore[call-arg]
    )
    with caplog.at_level(logging.INFO, logger="localtts.service"):
        async with app_.router.lifespan_context(app_):
            await app_.state.service.wait_started()
    phases = [r.getMessage() for r in caplog.records if r.getMessage().startswith("startup: ")]
    expected = [
        "engine piper chosen (asked for by LOCALTTS_ENGINE)",
        "piper engine loaded and warm",
        "voice library ok: postgresql",
        "voices prepared: piper",
        "service ready",
    ]
    for what in expected:
        line = next((p for p in phases if p.startswith(f"startup: {what}")), None)
        assert line is not None and re.search(r", after \d+\.\d\d s$", line), (what, phases)


def test_the_worker_names_an_invalid_setting_in_one_line() -> None:
    result = _worker("console", LOCALTTS_DEVICE="mps")
    assert result.returncode == 1
    assert lines(result.stderr) == [
        "python -m localtts_agent: LOCALTTS_DEVICE='mps' is not valid: MPS is not used: XTTS "
        "on Apple Silicon runs on the CPU (slower and it hangs on MPS); set LOCALTTS_DEVICE="
        "auto or cpu"
    ]
