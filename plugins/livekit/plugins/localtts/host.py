"""Host facts -> engine choice.

`HostInfo.detect()` reads the machine; `select_engine(host, settings, unavailable)` is a pure
function of its inputs (unit-tested row by row) implementing the host table:

| host                | engine     | device / precision                                        |
|---------------------|------------|-----------------------------------------------------------|
| CUDA GPU            | chatterbox | cuda, bfloat16 (float16 without bf16), compiled decode    |
| macOS arm64         | xtts       | cpu (never MPS: slower and hangs), float32, threads = P-cores |
| other CPU           | xtts       | cpu, float32, threads = performance cores                 |
| no weights anywhere | piper      | cpu; loud warning, or an error when `strict`              |

Every choice can be overridden: LOCALTTS_ENGINE, LOCALTTS_DEVICE, LOCALTTS_DTYPE,
LOCALTTS_COMPILE, LOCALTTS_THREADS; LOCALTTS_STRICT forbids the Piper fallback.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field, replace
from pathlib import Path

from .models import EngineName
from .settings import Settings

# The engine the host table prefers, in order, when LOCALTTS_ENGINE=auto.
_CUDA_PREFERENCE: tuple[EngineName, ...] = ("chatterbox", "xtts")
_CPU_PREFERENCE: tuple[EngineName, ...] = ("xtts",)


@dataclass(frozen=True)
class HostInfo:
    os: str  # platform.system(): "Linux", "Darwin", "Windows"
    arch: str  # platform.machine(): "x86_64", "arm64", "aarch64", ...
    cuda: bool = False
    cuda_device: str | None = None
    bf16: bool = False
    performance_cores: int = 1
    memory_gb: float = 0.0

    @property
    def apple_silicon(self) -> bool:
        return self.os == "Darwin" and self.arch == "arm64"

    @classmethod
    def detect(cls) -> HostInfo:
        cuda, name, bf16 = False, None, False
        try:
            import torch

            if torch.cuda.is_available():
                cuda, name = True, torch.cuda.get_device_name(0)
                bf16 = bool(torch.cuda.is_bf16_supported())
        except ImportError:  # a Piper-only install has no torch: a CPU host
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
    """Physical performance cores: macOS `hw.perflevel0.physicalcpu` (efficiency cores slow
    torch down), else physical cores among the CPUs this process may run on (hyperthreads
    only add contention to matmuls)."""
    if platform.system() == "Darwin":
        import subprocess

        for key in ("hw.perflevel0.physicalcpu", "hw.physicalcpu"):
            try:
                out = subprocess.run(
                    ["sysctl", "-n", key], capture_output=True, text=True, timeout=2, check=True
                )
                return max(1, int(out.stdout.strip()))
            except (OSError, ValueError, subprocess.SubprocessError):
                continue
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for cpu in allowed:
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(siblings.read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


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
    compile: bool = False  # compiled / CUDA-graphed decode step
    threads: int = 1  # torch CPU threads

    def apply(self, settings: Settings) -> Settings:
        """`settings` with this selection's concrete choices filled in, for the engine's
        `from_settings`: the engine then runs exactly as selected, "auto" left nowhere."""
        return settings.model_copy(
            update={
                "engine": self.engine,
                "device": self.device,
                "dtype": self.dtype,
                "compile": self.compile,
                "threads": self.threads,
            }
        )


class HostPolicyError(RuntimeError):
    """The settings ask for something this host cannot do."""


def select_engine(
    host: HostInfo, settings: Settings, unavailable: dict[str, str | None]
) -> EngineSelection:
    """Pick engine, device, precision and threads for this host (pure: no I/O).

    `unavailable[name]` is None when the engine can run (weights and packages present),
    else why not (see `engines.availability`); a name missing from the dict counts as
    unavailable. Raises `HostPolicyError` (a RuntimeError) when the settings cannot be met.
    """
    if settings.device == "cuda" and not host.cuda:
        raise HostPolicyError("LOCALTTS_DEVICE=cuda but no CUDA device is visible")
    use_cuda = host.cuda and settings.device != "cpu"
    threads = settings.threads or max(1, host.performance_cores)

    if settings.engine != "auto":
        name = settings.engine
        why = unavailable.get(name, "not checked")
        if why is not None:
            raise HostPolicyError(
                f"engine {name!r} was asked for by LOCALTTS_ENGINE but cannot run: {why}"
            )
        reason = "asked for by LOCALTTS_ENGINE"
        return _configure(name, host, settings, use_cuda, threads, reason)

    if use_cuda:
        preferred = _CUDA_PREFERENCE
        reason = f"CUDA device {host.cuda_device or '0'}"
    elif host.apple_silicon:
        preferred = _CPU_PREFERENCE
        reason = "Apple Silicon: XTTS on the CPU (never MPS: slower, and it hangs)"
    else:
        preferred = _CPU_PREFERENCE
        reason = (
            "LOCALTTS_DEVICE=cpu: XTTS on the CPU"
            if host.cuda
            else "no CUDA device: XTTS on the CPU"
        )

    missing: list[str] = []
    for name in preferred:
        why = unavailable.get(name, "not checked")
        if why is None:
            if missing:
                reason += f" ({'; '.join(missing)})"
            return _configure(name, host, settings, use_cuda, threads, reason)
        missing.append(f"{name}: {why}")

    problem = "no model weights are available (" + "; ".join(missing) + ")"
    if settings.strict:
        raise HostPolicyError(f"{problem}, and LOCALTTS_STRICT forbids falling back to Piper")
    piper_why = unavailable.get("piper", "not checked")
    if piper_why is not None:
        raise HostPolicyError(f"{problem}, and the Piper fallback cannot run either: {piper_why}")
    warning = (
        f"FALLING BACK TO PIPER: {problem}. Speech will use Piper's bundled voice and cloned "
        "voices are unavailable. Provide the weights (see `localtts doctor`) or set "
        "LOCALTTS_STRICT=1 to fail instead."
    )
    selection = _configure("piper", host, settings, False, threads, "fallback: no weights")
    return replace(selection, warnings=[*selection.warnings, warning])


def _configure(
    name: EngineName,
    host: HostInfo,
    settings: Settings,
    use_cuda: bool,
    threads: int,
    reason: str,
) -> EngineSelection:
    """Device, dtype and compile for `name` on this host, overrides applied."""
    warnings: list[str] = []
    # Piper is ONNX on the CPU; it has no CUDA path, no dtype choice, nothing to compile
    if name == "piper":
        if settings.device == "cuda":
            warnings.append("LOCALTTS_DEVICE=cuda is ignored: Piper runs on the CPU")
        return EngineSelection(
            engine=name, device="cpu", dtype="float32", reason=reason,
            warnings=warnings, compile=False, threads=threads,
        )  # fmt: skip

    device = "cuda" if use_cuda else "cpu"
    if settings.dtype != "auto":
        dtype = settings.dtype
        if dtype == "bfloat16" and use_cuda and not host.bf16:
            raise HostPolicyError(
                f"LOCALTTS_DTYPE=bfloat16 but {host.cuda_device or 'the GPU'} lacks bfloat16; "
                "use float16"
            )
        if dtype != "float32" and not use_cuda:
            warnings.append(f"LOCALTTS_DTYPE={dtype} on the CPU is usually slower than float32")
    elif use_cuda and name == "chatterbox":
        dtype = "bfloat16" if host.bf16 else "float16"
    else:
        # half precision is the Chatterbox CUDA path; XTTS and every CPU path run float32
        dtype = "float32"

    # the compiled / graphed decode step is the Chatterbox CUDA optimisation
    default_compile = use_cuda and name == "chatterbox"
    compile_ = settings.compile if settings.compile is not None else default_compile
    if compile_ and not use_cuda:
        warnings.append("LOCALTTS_COMPILE on the CPU: compilation costs more than it saves")
    return EngineSelection(
        engine=name, device=device, dtype=dtype, reason=reason,
        warnings=warnings, compile=compile_, threads=threads,
    )  # fmt: skip
