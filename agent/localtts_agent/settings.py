"""The app's own settings, read from the environment or a `.env` file like the plugin's
(`livekit.plugins.localtts.Settings`: engine, voices, text), under the same variable names
they always had.

- `ServiceSettings`: what the synthesis service reads besides the plugin's settings.
- `AgentSettings`: the voice agent's (worker's) own: its prompt, STT/LLM, turn taking,
  capacity and health endpoint. STT and LLM also read `OPENAI_API_KEY`/`OPENAI_BASE_URL`
  (see `worker.session`); livekit-agents reads `LIVEKIT_*` itself for the worker.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

_CONFIG = SettingsConfigDict(
    env_prefix="LOCALTTS_", env_file=".env", extra="ignore", populate_by_name=True
)


class ServiceSettings(BaseSettings):
    """The synthesis service's own settings (`localtts serve`)."""

    model_config = _CONFIG

    api_key: str | None = Field(
        None, description="bearer token required by the service's synthesis and voice endpoints"
    )
    # the LiveKit server the room publisher joins rooms on
    livekit_url: str | None = Field(None, validation_alias=AliasChoices("LIVEKIT_URL"))
    livekit_api_key: str | None = Field(None, validation_alias=AliasChoices("LIVEKIT_API_KEY"))
    livekit_api_secret: str | None = Field(
        None, validation_alias=AliasChoices("LIVEKIT_API_SECRET")
    )
    # the HTTP server's limits (`localtts serve`)
    shutdown_grace_s: float = Field(
        5.0,
        ge=0.0,
        description="after SIGTERM, seconds open streams may take to finish before they are "
        "ended and the service exits",
    )
    header_timeout_s: float = Field(
        10.0, gt=0.0, description="seconds a client has to send a request's headers"
    )
    body_timeout_s: float = Field(
        10.0, gt=0.0, description="seconds a request's body may stall before the request fails"
    )
    keep_alive_s: float = Field(
        5.0, gt=0.0, description="seconds an idle keep-alive connection stays open"
    )
    max_connections: int = Field(
        256, ge=1, description="open connections at most; past it new ones get 503 at once"
    )

    def missing_livekit(self) -> list[str]:
        """The LIVEKIT_* variables rooms need but lack (none: rooms can be joined)."""
        values = {
            "LIVEKIT_URL": self.livekit_url,
            "LIVEKIT_API_KEY": self.livekit_api_key,
            "LIVEKIT_API_SECRET": self.livekit_api_secret,
        }
        return [name for name, value in values.items() if not value]


class AgentSettings(BaseSettings):
    """The voice agent's own settings (`python -m localtts_agent dev|start|console`)."""

    model_config = _CONFIG

    agent_instructions: str = Field(
        "You are a helpful voice assistant. Answer briefly, in plain spoken sentences.",
        description="the LLM's system prompt",
    )
    agent_greeting: str | None = Field(
        "Hello! How can I help you?", description="said when a participant joins; empty: none"
    )
    llm_model: str = Field("gpt-4o-mini", description="LLM model name (OpenAI-compatible API)")
    llm_base_url: str | None = Field(
        None, description="OpenAI-compatible LLM server; default OPENAI_BASE_URL"
    )
    stt_model: str = Field(
        "gpt-4o-mini-transcribe", description="STT model name (OpenAI-compatible API)"
    )
    stt_base_url: str | None = Field(
        None, description="OpenAI-compatible STT server; default OPENAI_BASE_URL"
    )
    stt_language: str = Field("en", description="language spoken to the agent")
    agent_max_sessions: int = Field(
        4, ge=1, description="rooms one worker process serves at full load (load = rooms / this)"
    )
    vad: Literal["webrtc", "silero"] = Field(
        "webrtc",
        description="turn-taking VAD: webrtc (localtts.VAD) or silero (pip install "
        "'localtts[silero]')",
    )
    vad_aggressiveness: int = Field(
        2, ge=0, le=3, description="webrtcvad aggressiveness, 0 (least) to 3 (most)"
    )
    agent_min_interruption_s: float = Field(
        0.2,
        ge=0.0,
        description="voiced speech (s) over the agent's voice that interrupts it; sounds "
        "with less voice (a click, a short 'uh') do not",
    )
    agent_http_host: str = Field(
        "", description="address of the worker's health endpoint; empty: every interface"
    )
    agent_http_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="port of the worker's health endpoint; None: 8081 for `start`, any free "
        "port for `dev`; 0: any free port",
    )
