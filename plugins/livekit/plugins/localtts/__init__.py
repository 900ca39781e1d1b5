"""localtts: a LiveKit Agents TTS plugin speaking with self-hosted models.

from livekit.plugins import localtts
session = AgentSession(tts=localtts.TTS(), ...)
"""

from livekit.agents import Plugin

from .engines import (
    Engine,
    EngineBusyError,
    EngineError,
    EngineInfo,
    EngineUnavailableError,
    InvalidRequestError,
    KVCacheOverflowError,
    SynthesisParams,
    TimedChunk,
    UnknownVoiceError,
    UnsupportedVoiceError,
    VoiceClip,
    VoiceConditioning,
    VoiceError,
    VoiceSource,
    WordTiming,
)
from .host import EngineSelection, HostInfo, select_engine
from .log import logger
from .settings import EngineSettings, Settings, SettingsError, get_settings
from .tts import TTS, ChunkedStream, SynthesizeStream
from .vad import VAD
from .version import __version__

__all__ = [
    "TTS",
    "VAD",
    "ChunkedStream",
    "Engine",
    "EngineBusyError",
    "EngineError",
    "EngineInfo",
    "EngineSelection",
    "EngineSettings",
    "EngineUnavailableError",
    "HostInfo",
    "InvalidRequestError",
    "KVCacheOverflowError",
    "Settings",
    "SettingsError",
    "SynthesisParams",
    "SynthesizeStream",
    "TimedChunk",
    "UnknownVoiceError",
    "UnsupportedVoiceError",
    "VoiceClip",
    "VoiceConditioning",
    "VoiceError",
    "VoiceSource",
    "WordTiming",
    "__version__",
    "get_settings",
    "select_engine",
]


class LocalTTSPlugin(Plugin):
    def __init__(self) -> None:
        super().__init__(__name__, __version__, __package__, logger)

    def download_files(self) -> None:
        """`python -m livekit.agents download-files`: nothing to fetch for the bundled
        Piper voice; model weights are provided by the host (see README)."""


Plugin.register_plugin(LocalTTSPlugin())

# Cleanup docs of unexported modules
_module = dir()
NOT_IN_ALL = [m for m in _module if m not in __all__]

__pdoc__ = {}

for n in NOT_IN_ALL:
    __pdoc__[n] = False
