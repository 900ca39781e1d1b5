"""The voice library: reference clips in PostgreSQL and a directory, preloaded with their
conditioning. See `VoiceLibrary`."""

from ..engines.base import UnknownVoiceError, UnsupportedVoiceError, VoiceError
from .audio import LIBRARY_SAMPLE_RATE, MAX_AUDIO_BYTES, MIN_SPEECH_SECONDS, prepare_clip
from .catalog import VoiceInfo, check_voice_id
from .directory import default_voices_dir
from .errors import DatabaseUnavailableError, VoiceExistsError
from .library import VoiceLibrary
from .preload import PreloadReport

__all__ = [
    "LIBRARY_SAMPLE_RATE",
    "MAX_AUDIO_BYTES",
    "MIN_SPEECH_SECONDS",
    "DatabaseUnavailableError",
    "PreloadReport",
    "UnknownVoiceError",
    "UnsupportedVoiceError",
    "VoiceError",
    "VoiceExistsError",
    "VoiceInfo",
    "VoiceLibrary",
    "check_voice_id",
    "default_voices_dir",
    "prepare_clip",
]
