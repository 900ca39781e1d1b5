"""Speech engines, each knowing nothing of LiveKit, and the one place they are built.

`shared_engine` keeps one instance per (engine, settings) in the process, so every TTS
object, room and stream of a worker uses the same loaded model.
"""

from __future__ import annotations

import importlib
import threading

from ..models import ENGINE_NAMES, EngineName
from ..settings import Settings
from .base import (
    Engine,
    EngineError,
    EngineUnavailableError,
    InvalidRequestError,
    SynthesisParams,
    UnknownVoiceError,
    UnsupportedVoiceError,
    VoiceClip,
    VoiceConditioning,
    VoiceError,
)

__all__ = [
    "Engine",
    "EngineError",
    "EngineUnavailableError",
    "InvalidRequestError",
    "SynthesisParams",
    "UnknownVoiceError",
    "UnsupportedVoiceError",
    "VoiceClip",
    "VoiceConditioning",
    "VoiceError",
    "availability",
    "create_engine",
    "shared_engine",
]

# engine name -> (module, class); modules are imported lazily: torch is heavy
_ENGINE_CLASSES: dict[str, tuple[str, str]] = {
    "chatterbox": (".chatterbox", "ChatterboxEngine"),
    "xtts": (".xtts", "XTTSEngine"),
    "piper": (".piper", "PiperEngine"),
}

# the settings that change what an engine loads or how it runs; anything else (agent
# greeting, database URL...) must not create a second model
ENGINE_SETTINGS = (
    "device",
    "dtype",
    "compile",
    "threads",
    "chatterbox_model",
    "xtts_model",
    "piper_model",
    "allow_download",
    "data_dir",  # the compile cache lives there
    "first_chunk_tokens",
    "chatterbox_cfm_steps",
    "chatterbox_watermark",
    "chatterbox_pipeline",
    "xtts_int8",
    "xtts_vocoder_bf16",
)

_shared: dict[tuple[str, str], Engine] = {}
_shared_lock = threading.Lock()


def _check_name(name: str) -> EngineName:
    if name not in ENGINE_NAMES:
        raise ValueError(f"unknown engine {name!r}: choose one of {', '.join(ENGINE_NAMES)}")
    return name  # type: ignore[return-value]


def engine_class(name: str) -> type:
    module_name, class_name = _ENGINE_CLASSES[_check_name(name)]
    try:
        module = importlib.import_module(module_name, __name__)
    except ImportError as e:
        raise EngineUnavailableError(
            f"the {name} engine needs extra packages: pip install 'localtts[{name}]' ({e})"
        ) from e
    return getattr(module, class_name)


def availability(name: str, settings: Settings) -> str | None:
    """None when `name` can run here with these settings, else why not (cheap: no load)."""
    try:
        cls = engine_class(name)
    except EngineUnavailableError as e:
        return str(e)
    return cls.availability(settings)


def create_engine(name: str, settings: Settings) -> Engine:
    """A new, not yet loaded engine."""
    return engine_class(name).from_settings(settings)


def shared_engine(name: str, settings: Settings) -> Engine:
    """The process-wide engine for `name` and these settings (created once, not loaded)."""
    key = (_check_name(name), settings.model_dump_json(include=set(ENGINE_SETTINGS)))
    with _shared_lock:
        engine = _shared.get(key)
        if engine is None:
            engine = _shared[key] = create_engine(name, settings)
        return engine
