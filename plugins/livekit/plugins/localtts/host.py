"""Host facts -> engine choice. `select_engine` is a pure function of its inputs."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field

from .models import EngineName
from .settings import Settings


@dataclass(frozen=True)
class HostInfo:
    os: str  # platform.system(): "Linux", "Darwin", "Windows"
    arch: str  # platform.machine(): "x86_64", "arm64", ...
    cuda: bool = False
    cuda_device: str | None = None
    bf16: bool = False
    performance_cores: int = 1
    memory_gb: float = 0.0

    @classmethod
    def detect(cls) -> HostInfo:
        cuda, name, bf16 = False, None, False
        try:
            import torch

            if torch.cuda.is_available():
                cuda, name = True, torch.cuda.get_device_name(0)
                bf16 = bool(torch.cuda.is_bf16_supported())
        except ImportError:
            pass
        return cls(
            os=platform.system(),
            arch=platform.machine(),
            cuda=cuda,
            cuda_device=name,
            bf16=bf16,
            performance_cores=performance_cores(),
            memory_gb=_memory_gb(),
        )


def performance_cores() -> int:
    """Physical performance cores: torch threads beyond them only add contention."""
    if platform.system() == "Darwin":
        import subprocess

        for key in ("hw.perflevel0.physicalcpu", "hw.physicalcpu"):
            try:
                out = subprocess.run(
                    ["sysctl", "-n", key], capture_output=True, text=True, timeout=2
                )
                if out.returncode == 0 and out.stdout.strip().isdigit():
                    return int(out.stdout.strip())
            except (OSError, subprocess.SubprocessError):
                continue
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
        if n:
            return n
    except ImportError:
        pass
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def _memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return 0.0


@dataclass(frozen=True)
class EngineSelection:
    engine: EngineName
    device: str  # "cuda" | "cpu"
    dtype: str  # "bfloat16" | "float16" | "float32"
    reason: str
    warnings: list[str] = field(default_factory=list)


def select_engine(
    host: HostInfo, settings: Settings, unavailable: dict[str, str | None]
) -> EngineSelection:
    """Pick the engine for this host.

    `unavailable[name]` is None when the engine can run (weights and packages present),
    else why not (see `engines.availability`).
    """
    if settings.device == "cuda" and not host.cuda:
        raise RuntimeError("LOCALTTS_DEVICE=cuda but no CUDA device is visible")
    use_cuda = host.cuda and settings.device != "cpu"
    device = "cuda" if use_cuda else "cpu"
    dtype = ("bfloat16" if host.bf16 else "float16") if use_cuda else "float32"

    if settings.engine != "auto":
        name = settings.engine
        why = unavailable.get(name)
        if why is not None:
            raise RuntimeError(f"engine {name!r} was asked for but cannot run: {why}")
        if name == "xtts":
            # XTTS runs on the CPU off CUDA, never on MPS (slower and hangs)
            return EngineSelection(name, device, "float32", "asked for by LOCALTTS_ENGINE")
        if name == "piper":
            return EngineSelection(name, "cpu", "float32", "asked for by LOCALTTS_ENGINE")
        return EngineSelection(name, device, dtype, "asked for by LOCALTTS_ENGINE")

    if use_cuda:
        preferred: list[EngineName] = ["chatterbox", "xtts"]
        reason = f"CUDA device {host.cuda_device}"
    else:
        preferred = ["xtts"]
        reason = (
            "Apple Silicon: XTTS on the CPU (never MPS)"
            if host.os == "Darwin" and host.arch == "arm64"
            else "no CUDA device: XTTS on the CPU"
        )
    missing: list[str] = []
    for name in preferred:
        why = unavailable.get(name)
        if why is None:
            return EngineSelection(
                name, device, dtype if name == "chatterbox" else "float32", reason
            )
        missing.append(f"{name}: {why}")
    warning = (
        "no engine weights are available ("
        + "; ".join(missing)
        + "); falling back to Piper's bundled voice"
    )
    if settings.strict:
        raise RuntimeError(warning.replace("falling back", "and LOCALTTS_STRICT forbids falling back"))
    return EngineSelection("piper", "cpu", "float32", "fallback: no weights", [warning])
