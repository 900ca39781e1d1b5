"""Settings split by owner: the engine's part identifies a shared engine whole; the plugin,
the service and the agent each read their own; every variable keeps its name."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from livekit.plugins.localtts.engines import shared_engine
from livekit.plugins.localtts.settings import EngineSettings, Settings, VoiceLibrarySettings
from pydantic_settings import BaseSettings

from localtts_agent.settings import AgentSettings, ServiceSettings

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
    "xtts_vocoder_channels_last": False,
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
        "database_url": "postgresql://db/voices",
        "voices_dir": Path("/voices"),
        "max_piece_chars": 120,
        "read_ahead_s": 3.0,
        "first_clause_min_chars": 30,
        "first_piece_min_words": 6,
        "first_piece_wait_s": 0.5,
        "engine": "piper",
        "strict": True,
    }
    # every other setting of the plugin: a new one must be added here
    assert set(others) == set(Settings.model_fields) - set(EngineSettings.model_fields)
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
    a = shared_engine("piper", settings(read_ahead_s=5.0))
    b = shared_engine("piper", settings(read_ahead_s=8.0, voice="narrator"))
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
        "LOCALTTS_MAX_PIECE_CHARS": ("max_piece_chars", 120),
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


# ----------------------------------------------------------- every documented variable

DOCUMENTED_IN = ("README.md", "docs/agent.md", "docs/service.md")
# documented variables no settings model reads
READ_ELSEWHERE = {
    "LIVEKIT_AGENT_NAME",  # livekit-agents (the worker's dispatch name)
    "OPENAI_API_KEY",  # the openai plugin (STT, LLM)
    "OPENAI_BASE_URL",  # the openai plugin, and worker.session for a key-less local server
    "LOCALTTS_TORCH_INDEX_URL",  # agent/install.sh
}
OWNERS = (Settings, ServiceSettings, AgentSettings)
# variable -> (its value in the environment, the setting it must reach, the value there)
READS: dict[str, tuple[str, type[BaseSettings], str, object]] = {
    "LOCALTTS_ENGINE": ("piper", Settings, "engine", "piper"),
    "LOCALTTS_DEVICE": ("cpu", Settings, "device", "cpu"),
    "LOCALTTS_STRICT": ("true", Settings, "strict", True),
    "LOCALTTS_CHATTERBOX_MODEL": ("/m/cb", Settings, "chatterbox_model", "/m/cb"),
    "LOCALTTS_XTTS_MODEL": ("/m/xtts", Settings, "xtts_model", "/m/xtts"),
    "LOCALTTS_PIPER_MODEL": ("/m/v.onnx", Settings, "piper_model", Path("/m/v.onnx")),
    "LOCALTTS_ALLOW_DOWNLOAD": ("1", Settings, "allow_download", True),
    "LOCALTTS_DTYPE": ("float16", Settings, "dtype", "float16"),
    "LOCALTTS_COMPILE": ("false", Settings, "compile", False),
    "LOCALTTS_THREADS": ("3", Settings, "threads", 3),
    "LOCALTTS_FIRST_CHUNK_TOKENS": ("9", Settings, "first_chunk_tokens", 9),
    "LOCALTTS_XTTS_INT8": ("false", Settings, "xtts_int8", False),
    "LOCALTTS_XTTS_VOCODER_BF16": ("true", Settings, "xtts_vocoder_bf16", True),
    "LOCALTTS_XTTS_VOCODER_CHANNELS_LAST": ("false", Settings, "xtts_vocoder_channels_last", False),
    "LOCALTTS_CHATTERBOX_CFM_STEPS": ("4", Settings, "chatterbox_cfm_steps", 4),
    "LOCALTTS_CHATTERBOX_WATERMARK": ("false", Settings, "chatterbox_watermark", False),
    "LOCALTTS_BATCHING": ("false", Settings, "batching", False),
    "LOCALTTS_ENGINE_CAPACITY": ("3", Settings, "engine_capacity", 3),
    "LOCALTTS_ENGINE_MAX_WAITING": ("2", Settings, "engine_max_waiting", 2),
    "LOCALTTS_ENGINE_WAIT_S": ("1.5", Settings, "engine_wait_s", 1.5),
    "LOCALTTS_VOICE": ("narrator", Settings, "voice", "narrator"),
    "LOCALTTS_VOICES_DIR": ("/voices", Settings, "voices_dir", Path("/voices")),
    "LOCALTTS_DATA_DIR": ("/data", Settings, "data_dir", Path("/data")),
    "DATABASE_URL": ("postgresql://db/v", Settings, "database_url", "postgresql://db/v"),
    "LOCALTTS_FIRST_CLAUSE_MIN_CHARS": ("30", Settings, "first_clause_min_chars", 30),
    "LOCALTTS_FIRST_PIECE_MIN_WORDS": ("6", Settings, "first_piece_min_words", 6),
    "LOCALTTS_FIRST_PIECE_WAIT_S": ("0.5", Settings, "first_piece_wait_s", 0.5),
    "LOCALTTS_MAX_PIECE_CHARS": ("120", Settings, "max_piece_chars", 120),
    "LOCALTTS_READ_AHEAD_S": ("2.5", Settings, "read_ahead_s", 2.5),
    "LOCALTTS_API_KEY": ("s3cret", ServiceSettings, "api_key", "s3cret"),
    "LOCALTTS_SHUTDOWN_GRACE_S": ("2.5", ServiceSettings, "shutdown_grace_s", 2.5),
    "LOCALTTS_HEADER_TIMEOUT_S": ("3", ServiceSettings, "header_timeout_s", 3.0),
    "LOCALTTS_BODY_TIMEOUT_S": ("4", ServiceSettings, "body_timeout_s", 4.0),
    "LOCALTTS_KEEP_ALIVE_S": ("2", ServiceSettings, "keep_alive_s", 2.0),
    "LOCALTTS_MAX_CONNECTIONS": ("64", ServiceSettings, "max_connections", 64),
    "LIVEKIT_URL": ("ws://lk:7880", ServiceSettings, "livekit_url", "ws://lk:7880"),
    "LIVEKIT_API_KEY": ("devkey", ServiceSettings, "livekit_api_key", "devkey"),
    "LIVEKIT_API_SECRET": ("shh", ServiceSettings, "livekit_api_secret", "shh"),
    "LOCALTTS_LLM_MODEL": ("llama3.1:8b", AgentSettings, "llm_model", "llama3.1:8b"),
    "LOCALTTS_LLM_BASE_URL": ("http://llm/v1", AgentSettings, "llm_base_url", "http://llm/v1"),
    "LOCALTTS_STT_MODEL": ("whisper", AgentSettings, "stt_model", "whisper"),
    "LOCALTTS_STT_BASE_URL": ("http://stt/v1", AgentSettings, "stt_base_url", "http://stt/v1"),
    "LOCALTTS_STT_LANGUAGE": ("de", AgentSettings, "stt_language", "de"),
    "LOCALTTS_AGENT_INSTRUCTIONS": ("Be a pirate.", AgentSettings, "agent_instructions",
                                    "Be a pirate."),
    "LOCALTTS_AGENT_GREETING": ("Ahoy!", AgentSettings, "agent_greeting", "Ahoy!"),
    "LOCALTTS_AGENT_MAX_SESSIONS": ("7", AgentSettings, "agent_max_sessions", 7),
    "LOCALTTS_VAD": ("silero", AgentSettings, "vad", "silero"),
    "LOCALTTS_VAD_AGGRESSIVENESS": ("3", AgentSettings, "vad_aggressiveness", 3),
    "LOCALTTS_AGENT_MIN_INTERRUPTION_S": ("0.3", AgentSettings, "agent_min_interruption_s",
                                          0.3),
    "LOCALTTS_AGENT_HTTP_HOST": ("127.0.0.1", AgentSettings, "agent_http_host", "127.0.0.1"),
    "LOCALTTS_AGENT_HTTP_PORT": ("9123", AgentSettings, "agent_http_port", 9123),
}  # fmt: skip


def _documented_variables() -> set[str]:
    root = Path(__file__).resolve().parent.parent
    text = "".join((root / name).read_text() for name in DOCUMENTED_IN)
    return set(re.findall(r"\b(?:(?:LOCALTTS|LIVEKIT|OPENAI)_[A-Z0-9_]+|DATABASE_URL)\b", text))


def test_every_documented_variable_reaches_one_setting_of_its_owner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The plugin's, the service's and the agent's settings read the variables the docs
    name, each variable exactly one setting, under the names they always had."""
    assert set(READS) == _documented_variables() - READ_ELSEWHERE
    for variable in [*os.environ]:
        if variable.startswith(("LOCALTTS_", "LIVEKIT_", "OPENAI_")) or variable == "DATABASE_URL":
            monkeypatch.delenv(variable)
    defaults = {owner: owner(_env_file=None).model_dump() for owner in OWNERS}  # type: ignore[call-arg]
    for variable, (raw, owner, name, value) in READS.items():
        assert defaults[owner][name] != value, variable
        with monkeypatch.context() as env:
            env.setenv(variable, raw)
            changed = [
                (other, field)
                for other in OWNERS
                for field, now in other(_env_file=None).model_dump().items()  # type: ignore[call-arg]
                if now != defaults[other][field]
            ]
        assert changed == [(owner, name)], variable
        assert getattr(owner(_env_file=None, **{name: value}), name) == value  # type: ignore[call-arg]
