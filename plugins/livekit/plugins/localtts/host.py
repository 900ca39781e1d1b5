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

This module is the one owner of those decisions: engines take the device, dtype and compile
choice they are given (`concrete_settings` fills in what an engine built from raw settings
left on "auto"), and `set_torch_threads` is the one place torch's thread count is set.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from .models import EngineName
from .settings import EngineSettings, Settings

S = TypeVar("S", bound=EngineSettings)

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


# Where Linux describes the CPUs and this process's cgroup; arguments so tests can feed fakes.
_CPU_SYSFS = Path("/sys/devices/system/cpu")
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_PROC_SELF_CGROUP = Path("/proc/self/cgroup")
# cgroup v1 mounts the CPU controller under one of these names
_CGROUP_V1_CPU_DIRS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


def performance_cores(
    *,
    cpus: Collection[int] | None = None,
    cpu_sysfs: Path = _CPU_SYSFS,
    cgroup_root: Path = _CGROUP_ROOT,
    proc_cgroup: Path = _PROC_SELF_CGROUP,
) -> int:
    """Physical performance cores: macOS `hw.perflevel0.physicalcpu` (efficiency cores slow
    torch down), else physical cores among the CPUs this process may run on (hyperthreads
    only add contention to matmuls), capped by the cgroup CPU quota (`docker --cpus=2` on a
    64-core host must not run 32 threads: they would be throttled).

    `cpus` defaults to this process's CPU affinity; the paths are where Linux keeps the CPU
    topology and this process's cgroup."""
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
    if cpus is None:
        try:
            cpus = os.sched_getaffinity(0)
        except AttributeError:  # not Linux: no topology to read, assume 2 threads a core
            return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for cpu in cpus:
        siblings = cpu_sysfs / f"cpu{cpu}" / "topology" / "thread_siblings_list"
        try:
            cores.add(siblings.read_text().strip())
        except OSError:
            cores.add(str(cpu))
    count = max(1, len(cores))
    quota = cgroup_cpu_limit(cgroup_root=cgroup_root, proc_cgroup=proc_cgroup)
    return count if quota is None else max(1, min(count, quota))


def cgroup_cpu_limit(
    *, cgroup_root: Path = _CGROUP_ROOT, proc_cgroup: Path = _PROC_SELF_CGROUP
) -> int | None:
    """CPUs this process's cgroup quota allows, rounded up, or None without a quota.

    cgroup v2: `cpu.max` holds "quota period" ("max period": no quota); cgroup v1:
    `cpu.cfs_quota_us` (-1: no quota) and `cpu.cfs_period_us`. A quota on any ancestor
    cgroup limits this process too, so the smallest one found on the way up wins. Inside a
    container the cgroup namespace usually makes the container's own cgroup the root.
    """
    limits = [
        limit
        for directory in _cgroup_dirs(cgroup_root, proc_cgroup)
        if (limit := _quota_in(directory)) is not None
    ]
    return min(limits) if limits else None


def _cgroup_dirs(cgroup_root: Path, proc_cgroup: Path) -> list[Path]:
    """This process's CPU cgroup directories and their ancestors, up to the mount root."""
    # /proc/self/cgroup lines: "0::/path" (v2), "4:cpu,cpuacct:/path" (v1)
    relative: dict[str, str] = {}
    try:
        for line in proc_cgroup.read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers == "" or "cpu" in controllers.split(","):
                relative["v2" if controllers == "" else "v1"] = path
    except (OSError, ValueError):
        pass
    mounts = [(cgroup_root, relative.get("v2", "/"))]  # v2: one unified hierarchy
    mounts += [(cgroup_root / name, relative.get("v1", "/")) for name in _CGROUP_V1_CPU_DIRS]
    dirs: list[Path] = []
    for mount, path in mounts:
        if not mount.is_dir():
            continue
        leaf = mount / path.strip("/")
        # a path from the host's view may not exist inside a container's mount: skip it
        for directory in (leaf, *leaf.parents):
            if directory.is_dir() and directory not in dirs:
                dirs.append(directory)
            if directory == mount:
                break
    return dirs


def _quota_in(directory: Path) -> int | None:
    try:
        quota, period = (directory / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (directory / "cpu.cfs_quota_us").read_text().strip()
            period = (directory / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    try:
        quota_us, period_us = int(quota), int(period)  # "max" -> ValueError: no quota
    except ValueError:
        return None
    if quota_us <= 0 or period_us <= 0:  # v1 writes -1 for "no quota"
        return None
    return max(1, math.ceil(quota_us / period_us))


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

    def apply(self, settings: S) -> S:
        """`settings` with this selection's concrete choices filled in, for the engine's
        `from_settings`: the engine then runs exactly as selected, "auto" left nowhere."""
        update: dict[str, object] = {
            "device": self.device,
            "dtype": self.dtype,
            "compile": self.compile,
            "threads": self.threads,
        }
        if "engine" in type(settings).model_fields:  # a whole `Settings`: the choice too
            update["engine"] = self.engine
        return settings.model_copy(update=update)


class HostPolicyError(RuntimeError):
    """The settings ask for something this host cannot do."""


def select_engine(
    host: HostInfo,
    settings: Settings,
    unavailable: dict[str, str | None],
    *,
    source: str = "LOCALTTS_ENGINE",
) -> EngineSelection:
    """Pick engine, device, precision and threads for this host (pure: no I/O).

    `unavailable[name]` is None when the engine can run (weights and packages present),
    else why not (see `engines.availability`); a name missing from the dict counts as
    unavailable. `source` names where `settings.engine` came from (LOCALTTS_ENGINE, a
    constructor argument, a CLI flag), for the reason and the errors. Raises
    `HostPolicyError` (a RuntimeError) when the settings cannot be met.
    """
    use_cuda = _use_cuda(host, settings)
    threads = settings.threads or max(1, host.performance_cores)

    if settings.engine != "auto":
        name = settings.engine
        why = unavailable.get(name, "not checked")
        if why is not None:
            raise HostPolicyError(
                f"engine {name!r} was asked for by {source} but cannot run: {why}"
            )
        reason = f"asked for by {source}"
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


def _use_cuda(host: HostInfo, settings: EngineSettings) -> bool:
    if settings.device == "cuda" and not host.cuda:
        raise HostPolicyError("LOCALTTS_DEVICE=cuda but no CUDA device is visible")
    return host.cuda and settings.device != "cpu"


def configure_engine(
    name: EngineName, host: HostInfo, settings: EngineSettings
) -> EngineSelection:
    """Device, dtype, compile and threads for the named engine on this host, as the host
    table gives them and the settings override them (pure: no I/O)."""
    threads = settings.threads or max(1, host.performance_cores)
    return _configure(name, host, settings, _use_cuda(host, settings), threads, "named engine")


def default_precision(name: EngineName, *, use_cuda: bool, bf16: bool) -> tuple[str, bool]:
    """(dtype, compiled decode step) the host table gives `name` where nothing overrides them:
    half precision and the compiled step are the Chatterbox CUDA path; everything else runs
    float32, eagerly."""
    if use_cuda and name == "chatterbox":
        return ("bfloat16" if bf16 else "float16"), True
    return "float32", False


def detect_host(*, probe_cuda: bool = True) -> HostInfo:
    """This machine's facts; without `probe_cuda` (nothing could use CUDA) torch is not even
    imported: a Piper-only host has none."""
    if not probe_cuda:
        return HostInfo(
            os=platform.system(), arch=platform.machine(),
            performance_cores=performance_cores(), memory_gb=_memory_gb(),
        )  # fmt: skip
    return HostInfo.detect()


def concrete_settings(name: EngineName, settings: S) -> S:
    """`settings` with "auto" device/dtype, compile and threads decided by the host table, for
    an engine built from settings that no `select_engine` went through. HostPolicyError
    (a RuntimeError) when the settings cannot be met here."""
    if settings.device != "auto" and settings.dtype != "auto" and None not in (
        settings.compile, settings.threads
    ):
        return settings
    host = detect_host(probe_cuda=settings.device != "cpu" and name != "piper")
    return configure_engine(name, host, settings).apply(settings)


def set_torch_threads(threads: int) -> None:
    """torch's CPU thread count for this process: the one place it is set (engines never
    set it; see `engines.create_engine`)."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _configure(
    name: EngineName,
    host: HostInfo,
    settings: EngineSettings,
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
    default_dtype, default_compile = default_precision(name, use_cuda=use_cuda, bf16=host.bf16)
    if settings.dtype != "auto":
        dtype = settings.dtype
        if dtype == "bfloat16" and use_cuda and not host.bf16:
            raise HostPolicyError(
                f"LOCALTTS_DTYPE=bfloat16 but {host.cuda_device or 'the GPU'} lacks bfloat16; "
                "use float16"
            )
        if dtype != "float32" and not use_cuda:
            warnings.append(f"LOCALTTS_DTYPE={dtype} on the CPU is usually slower than float32")
    else:
        dtype = default_dtype

    compile_ = settings.compile if settings.compile is not None else default_compile
    if compile_ and not use_cuda:
        warnings.append("LOCALTTS_COMPILE on the CPU: compilation costs more than it saves")
    return EngineSelection(
        engine=name, device=device, dtype=dtype, reason=reason,
        warnings=warnings, compile=compile_, threads=threads,
    )  # fmt: skip
