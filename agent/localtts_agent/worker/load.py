"""The worker's load as LiveKit's dispatcher sees it: LiveKit is the balancer.

Each worker computes its load (`WorkerRuntime.load`, the AgentServer's `load_fnc`) every
0.5 s and reports it every 2.5 s: the larger of rooms / max sessions
(LOCALTTS_AGENT_MAX_SESSIONS), the engine's streams (speaking or waiting to) / its capacity
(streams it keeps at real time, measured at warmup or LOCALTTS_ENGINE_CAPACITY), GPU
utilisation and GPU memory in use. At 1.0 the worker
reports itself full and LiveKit sends new rooms to other workers registered under the same
agent name; with none left, a new room gets no agent at all (livekit-server dispatches once,
at room creation). Adding capacity = starting another worker (container) against the same
LiveKit server; nothing else to configure.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

# livekit's own default load monitor averages 5 samples taken every 0.5 s
GPU_UTILISATION_WINDOW = 5


@dataclass(frozen=True)
class GpuLoad:
    memory_used: float  # fraction of the device's memory in use (every process)
    utilisation: float | None  # fraction of time a kernel ran; None without NVML


def gpu_load() -> GpuLoad | None:
    """The GPU's load, or None when this process has not put a model on CUDA."""
    torch = sys.modules.get("torch")  # never import torch here: Piper workers lack it
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    free, total = torch.cuda.mem_get_info()
    try:
        utilisation: float | None = torch.cuda.utilization() / 100.0  # needs nvidia-ml-py
    except Exception:  # NVML missing or refused (MIG): memory still tells something
        utilisation = None
    return GpuLoad(memory_used=1.0 - free / total, utilisation=utilisation)


def worker_load(
    rooms: int,
    max_sessions: int,
    gpu: GpuLoad | None,
    *,
    streams: int = 0,
    capacity: int | None = None,
) -> float:
    """The load LiveKit's dispatcher sees, 0..1: the scarcest resource wins. `streams`
    (speaking or waiting to) against the engine's `capacity` (streams it keeps at real time):
    at 1.0 new rooms go elsewhere before callers here hear gaps."""
    parts = [rooms / max_sessions]
    if capacity:
        parts.append(streams / capacity)
    if gpu is not None:
        parts.append(gpu.memory_used)
        if gpu.utilisation is not None:
            parts.append(gpu.utilisation)
    return min(1.0, max(parts))

