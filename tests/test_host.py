"""The host table (host.py), row by row: a pure function of host facts, settings and which
engines can run."""

from __future__ import annotations

import pytest
from livekit.plugins.localtts.host import (
    EngineSelection,
    HostInfo,
    HostPolicyError,
    select_engine,
)
from livekit.plugins.localtts.settings import Settings

H100 = HostInfo(
    os="Linux", arch="x86_64", cuda=True, cuda_device="NVIDIA H100 80GB HBM3", bf16=True,
    performance_cores=16, memory_gb=128.0,
)  # fmt: skip
T4 = HostInfo(
    os="Linux", arch="x86_64", cuda=True, cuda_device="Tesla T4", bf16=False,
    performance_cores=4, memory_gb=16.0,
)  # fmt: skip
M2 = HostInfo(os="Darwin", arch="arm64", performance_cores=8, memory_gb=24.0)
INTEL_MAC = HostInfo(os="Darwin", arch="x86_64", performance_cores=6, memory_gb=16.0)
LINUX_CPU = HostInfo(os="Linux", arch="x86_64", performance_cores=2, memory_gb=24.0)
GRAVITON = HostInfo(os="Linux", arch="aarch64", performance_cores=64, memory_gb=128.0)

ALL_USABLE: dict[str, str | None] = {"chatterbox": None, "xtts": None, "piper": None}
NO_WEIGHTS: dict[str, str | None] = {
    "chatterbox": "no Chatterbox weights in the Hugging Face cache",
    "xtts": "no XTTS-v2 weights in the Hugging Face cache",
    "piper": None,
}


def settings(**overrides: object) -> Settings:
    # _env_file=None: a developer's .env must not change what the table says
    return Settings(_env_file=None, **overrides)  # type: ignore[call-arg]


def test_cuda_with_bf16_gets_chatterbox_bf16_compiled() -> None:
    sel = select_engine(H100, settings(), ALL_USABLE)
    assert (sel.engine, sel.device, sel.dtype, sel.compile) == (
        "chatterbox", "cuda", "bfloat16", True,
    )  # fmt: skip
    assert "H100" in sel.reason
    assert sel.warnings == []
    assert sel.threads == 16


def test_cuda_without_bf16_gets_float16() -> None:
    sel = select_engine(T4, settings(), ALL_USABLE)
    assert (sel.engine, sel.device, sel.dtype, sel.compile) == (
        "chatterbox", "cuda", "float16", True,
    )  # fmt: skip


def test_apple_arm64_gets_xtts_on_cpu_never_mps() -> None:
    sel = select_engine(M2, settings(), ALL_USABLE)
    assert (sel.engine, sel.device, sel.dtype, sel.compile) == ("xtts", "cpu", "float32", False)
    assert "Apple Silicon" in sel.reason and "MPS" in sel.reason
    assert sel.threads == 8  # the performance cores, not every core


@pytest.mark.parametrize("host", [LINUX_CPU, INTEL_MAC, GRAVITON], ids=lambda h: h.arch)
def test_other_cpu_hosts_get_xtts_on_cpu(host: HostInfo) -> None:
    sel = select_engine(host, settings(), ALL_USABLE)
    assert (sel.engine, sel.device, sel.dtype, sel.compile) == ("xtts", "cpu", "float32", False)
    assert sel.threads == host.performance_cores
    assert "no CUDA device" in sel.reason


@pytest.mark.parametrize("host", [H100, M2, LINUX_CPU], ids=["cuda", "apple", "cpu"])
def test_no_weights_falls_back_to_piper_with_a_loud_warning(host: HostInfo) -> None:
    sel = select_engine(host, settings(), NO_WEIGHTS)
    assert (sel.engine, sel.device, sel.dtype, sel.compile) == ("piper", "cpu", "float32", False)
    assert len(sel.warnings) == 1
    warning = sel.warnings[0]
    assert warning.startswith("FALLING BACK TO PIPER")
    assert "xtts: no XTTS-v2 weights" in warning  # says what is missing
    assert "LOCALTTS_STRICT" in warning  # and how to turn it into an error


def test_cuda_without_chatterbox_weights_uses_xtts_on_the_gpu() -> None:
    unavailable = {**ALL_USABLE, "chatterbox": "no Chatterbox weights"}
    sel = select_engine(H100, settings(), unavailable)
    assert (sel.engine, sel.device, sel.dtype) == ("xtts", "cuda", "float32")
    assert "chatterbox: no Chatterbox weights" in sel.reason
    assert sel.warnings == []


def test_strict_turns_the_fallback_into_an_error() -> None:
    with pytest.raises(HostPolicyError, match="LOCALTTS_STRICT"):
        select_engine(LINUX_CPU, settings(strict=True), NO_WEIGHTS)
    # strict changes nothing while a real model can run
    assert select_engine(LINUX_CPU, settings(strict=True), ALL_USABLE).engine == "xtts"


def test_nothing_can_run_is_an_error_naming_every_cause() -> None:
    nothing = {**NO_WEIGHTS, "piper": "piper-tts is not installed"}
    with pytest.raises(HostPolicyError, match="piper-tts is not installed") as err:
        select_engine(LINUX_CPU, settings(), nothing)
    assert "XTTS-v2 weights" in str(err.value)


def test_an_engine_not_checked_counts_as_unavailable() -> None:
    sel = select_engine(LINUX_CPU, settings(), {"piper": None})
    assert sel.engine == "piper" and "xtts: not checked" in sel.warnings[0]


# --- overrides ---------------------------------------------------------------------------


def test_engine_override_beats_the_table() -> None:
    sel = select_engine(H100, settings(engine="xtts"), ALL_USABLE)
    assert (sel.engine, sel.device, sel.dtype) == ("xtts", "cuda", "float32")
    assert sel.reason == "asked for by LOCALTTS_ENGINE"
    sel = select_engine(M2, settings(engine="chatterbox"), ALL_USABLE)
    assert (sel.engine, sel.device, sel.dtype) == ("chatterbox", "cpu", "float32")
    sel = select_engine(H100, settings(engine="piper"), ALL_USABLE)
    assert (sel.engine, sel.device) == ("piper", "cpu")


def test_an_engine_asked_for_that_cannot_run_is_an_error_not_a_fallback() -> None:
    with pytest.raises(HostPolicyError, match=r"'xtts' was asked for.*XTTS-v2 weights"):
        select_engine(LINUX_CPU, settings(engine="xtts"), NO_WEIGHTS)


def test_device_cpu_override_on_a_cuda_host() -> None:
    sel = select_engine(H100, settings(device="cpu"), ALL_USABLE)
    assert (sel.engine, sel.device, sel.dtype, sel.compile) == ("xtts", "cpu", "float32", False)
    assert "LOCALTTS_DEVICE=cpu" in sel.reason


def test_device_cuda_without_cuda_is_an_error() -> None:
    with pytest.raises(HostPolicyError, match="no CUDA device"):
        select_engine(M2, settings(device="cuda"), ALL_USABLE)


def test_dtype_override() -> None:
    sel = select_engine(H100, settings(dtype="float16"), ALL_USABLE)
    assert sel.dtype == "float16"
    sel = select_engine(H100, settings(dtype="float32"), ALL_USABLE)
    assert sel.dtype == "float32"
    with pytest.raises(HostPolicyError, match="lacks bfloat16"):
        select_engine(T4, settings(dtype="bfloat16"), ALL_USABLE)
    sel = select_engine(LINUX_CPU, settings(dtype="bfloat16"), ALL_USABLE)
    assert sel.dtype == "bfloat16" and "slower" in sel.warnings[0]


def test_compile_override() -> None:
    assert select_engine(H100, settings(compile=False), ALL_USABLE).compile is False
    sel = select_engine(LINUX_CPU, settings(compile=True), ALL_USABLE)
    assert sel.compile is True and "LOCALTTS_COMPILE" in sel.warnings[0]


def test_threads_override() -> None:
    assert select_engine(M2, settings(threads=3), ALL_USABLE).threads == 3


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALTTS_ENGINE", "xtts")
    monkeypatch.setenv("LOCALTTS_DEVICE", "cpu")
    monkeypatch.setenv("LOCALTTS_DTYPE", "float32")
    monkeypatch.setenv("LOCALTTS_COMPILE", "false")
    monkeypatch.setenv("LOCALTTS_THREADS", "5")
    sel = select_engine(H100, settings(), ALL_USABLE)
    assert (sel.engine, sel.device, sel.dtype, sel.compile, sel.threads) == (
        "xtts", "cpu", "float32", False, 5,
    )  # fmt: skip


def test_apply_hands_the_engine_concrete_settings() -> None:
    sel = select_engine(H100, settings(), ALL_USABLE)
    applied = sel.apply(settings())
    assert (applied.engine, applied.device, applied.dtype, applied.compile, applied.threads) == (
        "chatterbox", "cuda", "bfloat16", True, 16,
    )  # fmt: skip


def test_selection_is_pure() -> None:
    first = select_engine(M2, settings(), ALL_USABLE)
    assert select_engine(M2, settings(), ALL_USABLE) == first
    assert isinstance(first, EngineSelection)


def test_detect_reads_this_machine() -> None:
    host = HostInfo.detect()
    assert host.os and host.arch
    assert host.performance_cores >= 1
    assert host.memory_gb > 0
    assert host.cuda is False or host.cuda_device  # a CUDA host names its device
