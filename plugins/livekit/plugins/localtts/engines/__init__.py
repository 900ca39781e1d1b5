"""Speech engines, each knowing nothing of LiveKit, and the one place they are built.

`shared_engine` keeps one instance per (engine, engine settings) in the process, so every
TTS object, room and stream of a worker uses the same loaded model.
"""

from __future__ import annotations

import importlib
import threading

from ..host import HostPolicyError, concrete_settings, set_torch_threads
from ..models import ENGINE_NAMES, EngineName
from ..settings import EngineSettings
from .base import (
    Engine,
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
from .scheduler import EngineBusyError, EngineScheduler

__all__ = [
    "Engine",
    "EngineBusyError",
    "EngineError",
    "EngineInfo",
    "EngineScheduler",
    "EngineUnavailableError",
    "InvalidRequestError",
    "KVCacheOverflowError",
    "SynthesisParams",
    "TimedChunk",
    "UnknownVoiceError",
    "UnsupportedVoiceError",
    "VoiceClip",
    "VoiceConditioning",
    "VoiceError",
    "VoiceSource",
    "WordTiming",
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

_shared: dict[tuple[str, str], Engine] = {}
_shared_lock = threading.Lock()


def _check_name(name: str) -> EngineName:
    if name not in ENGINE_NAMES:
        raise ValueError(f"unknown engine {name!r}: choose one of {', '.join(ENGINE_NAMES)}")
    return name  # type: ignore[return-value]


def engine_class(name: str) -> type[Engine]:
    module_name, class_name = _ENGINE_CLASSES[_check_name(name)]
    try:
        module = importlib.import_module(module_name, __name__)
    except ImportError as e:
        raise EngineUnavailableError(
            f"the {name} engine needs extra packages: pip install 'localtts[{name}]' ({e})"
        ) from e
    return getattr(module, class_name)


def availability(name: str, settings: EngineSettings) -> str | None:
    """None when `name` can run here with these settings, else why not (cheap: no load)."""
    try:
        cls = engine_class(name)
    except EngineUnavailableError as e:
        return str(e)
    return cls.availability(settings)


def create_engine(name: str, settings: EngineSettings) -> Engine:
    """A new, not yet loaded engine; what the settings leave on "auto" is decided by the host
    table, and a torch engine on the CPU gets its thread count here."""
    cls = engine_class(name)
    if name != "piper":  # Piper (ONNX on the CPU) has no device, dtype or torch threads
        try:
            settings = concrete_settings(_check_name(name), settings)
        except HostPolicyError as e:
            raise EngineUnavailableError(str(e)) from e
        if settings.device == "cpu" and settings.threads:
            set_torch_threads(settings.threads)
    return cls.from_settings(settings)


def shared_engine(name: str, settings: EngineSettings) -> Engine:
    """The process-wide engine for `name` and these settings (created once, not loaded).

    Keyed by every engine setting (`EngineSettings.engine_key`), and by nothing else."""
    key = (_check_name(name), settings.engine_key)
    with _shared_lock:
        engine = _shared.get(key)
        if engine is None:
            engine = _shared[key] = create_engine(name, settings)
        return engine
