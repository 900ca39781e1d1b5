"""The plugin's settings, read from the environment (`LOCALTTS_*`, `DATABASE_URL`) or a
`.env` file.

Each part owns the settings it reads: `EngineSettings` (what a loaded engine depends on: two
engines built from equal `EngineSettings` are interchangeable, see `engines.shared_engine`)
and `VoiceLibrarySettings`. `Settings` is both plus the plugin's own (engine choice, default
voice, text), flat, so every variable keeps its one `LOCALTTS_*` name. The app's service and
agent settings are the app's (`localtts_agent.settings`), under the same kind of names.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, TypeVar

import platformdirs
from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .models import DeviceChoice, EngineChoice
from .text import FIRST_CLAUSE_MIN_CHARS, FIRST_PIECE_MIN_WORDS

_CONFIG = SettingsConfigDict(
    env_prefix="LOCALTTS_", env_file=".env", extra="ignore", populate_by_name=True
)


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("localtts", appauthor=False))


class _DataDirSettings(BaseSettings):
    model_config = _CONFIG

    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="embedded PostgreSQL (voice library) and the compile cache (engines)",
    )


class EngineSettings(_DataDirSettings):
    """Exactly what an engine reads: a new field here is part of `engine_key` by itself."""

    device: DeviceChoice = "auto"

    @field_validator("device", mode="before")
    @classmethod
    def _no_mps(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == "mps":
            raise ValueError(
                "MPS is not used: XTTS on Apple Silicon runs on the CPU (slower and it hangs "
                "on MPS); set LOCALTTS_DEVICE=auto or cpu"
            )
        return value
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="auto: bfloat16 on CUDA (float16 without bf16), float32 on CPU"
    )
    compile: bool | None = Field(
        None, description="compile/graph the decode step; None: on with CUDA, off on CPU"
    )
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads; None: the host's performance cores"
    )

    # weights: a local directory, else the Hugging Face cache (never downloaded in tests)
    chatterbox_model: str = Field(
        "ResembleAI/chatterbox", description="local directory or Hugging Face repo id"
    )
    xtts_model: str = Field("coqui/XTTS-v2", description="local directory or Hugging Face repo id")
    piper_model: Path | None = Field(
        None, description="Piper .onnx voice; default: the bundled en_US-joe-medium"
    )
    allow_download: bool = Field(
        False, description="let engines download weights from the Hugging Face hub"
    )
    first_chunk_tokens: int | None = Field(
        None, ge=1, description="speech tokens in the first audio chunk; None: engine default"
    )
    xtts_int8: bool | None = Field(
        None, description="int8 dynamic-quantized XTTS GPT; None: on for the CPU"
    )
    xtts_vocoder_bf16: bool | None = Field(
        None, description="bf16 HiFiGAN on the CPU; None: on where the CPU has native bf16"
    )
    xtts_vocoder_channels_last: bool | None = Field(
        None, description="HiFiGAN as channels-last 2-D convolutions; None: on for x86 CPUs"
    )
    chatterbox_cfm_steps: int = Field(
        10, ge=1, le=10, description="S3Gen flow-matching steps (upstream: 10)"
    )
    chatterbox_watermark: bool = Field(True, description="Perth watermark (not on chunk 1)")

    # how streams share the engine (engines/scheduler.py)
    batching: bool = Field(
        True,
        description="decode every active stream's next token as one batch; False: one stream "
        "per step (the serialized path, kept to compare against)",
    )
    engine_capacity: int | None = Field(
        None, ge=1, description="streams the engine keeps at real time; None: measured at warmup"
    )
    engine_max_waiting: int | None = Field(
        None, ge=0, description="callers that may wait past capacity; None: as many as capacity"
    )
    engine_wait_s: float = Field(
        5.0, ge=0, description="how long a caller waits past capacity before 'busy' (503)"
    )

    def engine_settings(self) -> EngineSettings:
        """Only the engine's part of these settings (of a `Settings`, say)."""
        return EngineSettings.model_validate(
            self.model_dump(include=set(EngineSettings.model_fields))
        )

    @property
    def engine_key(self) -> str:
        """Identifies what an engine built from these settings loads and how it runs: every
        `EngineSettings` field, whole; nothing else (a greeting must not load a second model)."""
        return self.engine_settings().model_dump_json()


class VoiceLibrarySettings(_DataDirSettings):
    """What `voices.VoiceLibrary.from_settings` reads."""

    voices_dir: Path | None = Field(None, description="directory of reference clips")
    database_url: str | None = Field(
        None, validation_alias=AliasChoices("DATABASE_URL", "LOCALTTS_DATABASE_URL")
    )


class Settings(EngineSettings, VoiceLibrarySettings):
    """The plugin's settings: the parts' above and the plugin's own."""

    model_config = _CONFIG

    # engine choice (host policy in host.py decides "auto")
    engine: EngineChoice = "auto"
    strict: bool = Field(
        False, description="fail instead of falling back to Piper when weights are missing"
    )

    # the plugin's default voice
    voice: str | None = Field(None, description="default voice id")

    # text
    first_clause_min_chars: int = Field(
        FIRST_CLAUSE_MIN_CHARS,
        description="the first piece of a reply is cut at the first clause end after this",
    )
    first_piece_min_words: int = Field(
        FIRST_PIECE_MIN_WORDS,
        ge=1,
        description="else at a word boundary once this many words are complete",
    )
    first_piece_wait_s: float = Field(
        0.25,
        ge=0,
        description="streamed text: with no boundary this long after the first words, "
        "the first piece is cut at the last complete word",
    )
    read_ahead_s: float = Field(
        10.0, gt=0, description="seconds of audio synthesis may run ahead of its listener"
    )
    max_piece_chars: int = Field(300, description="longest text piece handed to an engine at once")


class SettingsError(ValueError):
    """Settings from the environment or `.env` that cannot be used. The message is one line
    per problem, naming the variable, what it holds and what to set instead."""


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def load_settings(model: type[SettingsT]) -> SettingsT:
    """`model()` from the environment and `.env`, or a `SettingsError` naming the variables."""
    try:
        return model()
    except ValidationError as e:
        raise SettingsError(describe_settings_error(e, model)) from None


def describe_settings_error(error: ValidationError, model: type[BaseSettings]) -> str:
    """One line per invalid setting: `LOCALTTS_DEVICE='mps': <what is wrong and the fix>`."""
    prefix = model.model_config.get("env_prefix", "")
    lines = []
    for problem in error.errors():
        name = str(problem["loc"][0]) if problem["loc"] else ""
        field = model.model_fields.get(name)
        alias = field.validation_alias if field is not None else None
        variable = (
            str(alias.choices[0]) if isinstance(alias, AliasChoices) else f"{prefix}{name}".upper()
        )
        message = str(problem["msg"]).removeprefix("Value error, ")
        lines.append(f"{variable}={problem.get('input')!r} is not valid: {message}")
    return "\n".join(lines)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings (read once); `SettingsError` when a variable is invalid."""
    return load_settings(Settings)
