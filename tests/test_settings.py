"""Settings split by owner: the engine's part identifies a shared engine whole; every
variable keeps its name."""

from __future__ import annotations

from pathlib import Path

import pytest
from livekit.plugins.localtts.engines import shared_engine
from livekit.plugins.localtts.settings import EngineSettings, Settings, VoiceLibrarySettings

# a value other than the default for every engine setting (a new field must be added here,
# which is the point: the test below fails until it is)
CHANGED: dict[str, object] = {
    "data_dir": Path("/elsewhere"),
    "device": "cpu",
    "dtype": "float16",
    "compile": True,
    "threads": 3,
    "chatterbox_model": "/models/chatterbox",
    "xtts_model": "/models/xtts",
    "piper_model": Path("/models/voice.onnx"),
    "allow_download": True,
    "first_chunk_tokens": 9,
    "xtts_int8": False,
    "xtts_vocoder_bf16": True,
    "chatterbox_cfm_steps": 4,
    "chatterbox_watermark": False,
    "batching": False,
    "engine_capacity": 3,
    "engine_max_waiting": 7,
    "engine_wait_s": 1.5,
}


def settings(**overrides: object) -> Settings:
    return Settings(_env_file=None, **overrides)  # type: ignore[call-arg]


def test_every_engine_setting_is_part_of_the_engine_key() -> None:
    assert set(CHANGED) == set(EngineSettings.model_fields)
    base = settings()
    for name, value in CHANGED.items():
        assert getattr(base, name) != value, name
        assert settings(**{name: value}).engine_key != base.engine_key, name


def test_other_settings_do_not_change_the_engine_key() -> None:
    base = settings()
    others = {
        "voice": "narrator",
        "agent_greeting": "Hi!",
        "database_url": "postgresql://db/voices",
        "voices_dir": Path("/voices"),
        "max_piece_chars": 120,
        "api_key": "secret",
        "engine": "piper",
    }
    for name, value in others.items():
        assert name not in EngineSettings.model_fields
        assert settings(**{name: value}).engine_key == base.engine_key, name


def test_engine_settings_view_holds_exactly_the_engine_part() -> None:
    full = settings(xtts_model="/models/xtts", voice="narrator", threads=2)
    part = full.engine_settings()
    assert type(part) is EngineSettings
    assert part.xtts_model == "/models/xtts" and part.threads == 2
    assert not hasattr(part, "voice")
    assert part.engine_key == full.engine_key


def test_shared_engine_is_keyed_by_the_engine_settings_alone() -> None:
    a = shared_engine("piper", settings(agent_greeting="Hello"))
    b = shared_engine("piper", settings(agent_greeting="Welcome", voice="narrator"))
    assert a is b
    c = shared_engine("piper", settings(first_chunk_tokens=7))
    assert c is not a


def test_variable_names_are_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "LOCALTTS_DEVICE": ("device", "cpu"),
        "LOCALTTS_DTYPE": ("dtype", "float16"),
        "LOCALTTS_THREADS": ("threads", 3),
        "LOCALTTS_XTTS_MODEL": ("xtts_model", "/models/xtts"),
        "LOCALTTS_CHATTERBOX_CFM_STEPS": ("chatterbox_cfm_steps", 4),
        "LOCALTTS_DATA_DIR": ("data_dir", Path("/data")),
        "LOCALTTS_VOICES_DIR": ("voices_dir", Path("/voices")),
        "DATABASE_URL": ("database_url", "postgresql://db/voices"),
        "LOCALTTS_ENGINE": ("engine", "piper"),
        "LOCALTTS_VOICE": ("voice", "narrator"),
        "LIVEKIT_URL": ("livekit_url", "ws://127.0.0.1:7880"),
        "LOCALTTS_MAX_PIECE_CHARS": ("max_piece_chars", 120),
        "LOCALTTS_VAD_AGGRESSIVENESS": ("vad_aggressiveness", 3),
    }
    for variable, (_, value) in env.items():
        monkeypatch.setenv(variable, str(value))
    full = Settings(_env_file=None)  # type: ignore[call-arg]
    for variable, (name, value) in env.items():
        assert getattr(full, name) == value, variable
    # each part reads its own variables under the same names
    assert EngineSettings(_env_file=None).threads == 3  # type: ignore[call-arg]
    library = VoiceLibrarySettings(_env_file=None)  # type: ignore[call-arg]
    assert (library.database_url, library.voices_dir) == ("postgresql://db/voices", Path("/voices"))
