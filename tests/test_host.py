"""The host table (host.py), row by row: a pure function of host facts, settings and which
engines can run."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import pytest
from livekit.plugins.localtts.host import (
    EngineSelection,
    HostInfo,
    HostPolicyError,
    cgroup_cpu_limit,
    concrete_settings,
    configure_engine,
    detect_host,
    performance_cores,
    select_engine,
    set_torch_threads,
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


def test_a_named_engine_gets_the_same_decisions_as_the_table() -> None:
    """What an engine built straight from settings leaves on "auto" is decided by the same
    rules as the host table, here in host.py, never in the engine."""
    for host in (H100, T4, M2, LINUX_CPU):
        for name in ("chatterbox", "xtts"):
            named = configure_engine(name, host, settings())
            table = select_engine(host, settings(engine=name), ALL_USABLE)
            assert (named.device, named.dtype, named.compile, named.threads) == (
                table.device, table.dtype, table.compile, table.threads,
            ), (host, name)  # fmt: skip
    with pytest.raises(HostPolicyError, match="no CUDA"):
        configure_engine("xtts", LINUX_CPU, settings(device="cuda"))


def test_concrete_settings_fill_in_only_what_is_auto() -> None:
    given = settings(device="cpu", dtype="float32", compile=False, threads=1)
    assert concrete_settings("xtts", given) is given
    filled = concrete_settings("xtts", settings(device="cpu"))
    assert (filled.device, filled.dtype, filled.compile) == ("cpu", "float32", False)
    assert filled.threads == performance_cores()
    assert filled.xtts_model == settings().xtts_model  # nothing else changes


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


# --- performance cores: CPU topology and cgroup quota, read from fake /sys and /proc -----


def _fake_topology(root: Path, cores: int, threads_per_core: int) -> Path:
    """A /sys/devices/system/cpu with `cores` physical cores of `threads_per_core` CPUs."""
    sysfs = root / "cpu"
    cpus = cores * threads_per_core
    for cpu in range(cpus):
        siblings = ",".join(str(cpu % cores + k * cores) for k in range(threads_per_core))
        (sysfs / f"cpu{cpu}" / "topology").mkdir(parents=True)
        (sysfs / f"cpu{cpu}" / "topology" / "thread_siblings_list").write_text(siblings + "\n")
    return sysfs


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


linux_only = pytest.mark.skipif(
    platform.system() == "Darwin", reason="macOS reads sysctl, not /sys"
)


@linux_only
@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("200000 100000\n", 2),  # docker --cpus=2
        ("150000 100000\n", 2),  # --cpus=1.5: rounded up
        ("50000 100000\n", 1),  # --cpus=0.5: never 0
        ("max 100000\n", 32),  # no quota: the physical cores
    ],
)
def test_cgroup_v2_quota_caps_the_cores(tmp_path: Path, cpu_max: str, expected: int) -> None:
    sysfs = _fake_topology(tmp_path, cores=32, threads_per_core=2)  # a 64-CPU host
    cgroup = tmp_path / "cgroup"
    _write(cgroup / "cpu.max", cpu_max)
    proc = _write(tmp_path / "proc_self_cgroup", "0::/\n")  # a container's namespace
    cores = performance_cores(cpus=range(64), cpu_sysfs=sysfs, cgroup_root=cgroup, proc_cgroup=proc)
    assert cores == expected


@linux_only
def test_cgroup_v2_quota_of_the_processs_own_cgroup_and_its_parents(tmp_path: Path) -> None:
    sysfs = _fake_topology(tmp_path, cores=16, threads_per_core=1)
    cgroup = tmp_path / "cgroup"
    proc = _write(tmp_path / "proc_self_cgroup", "0::/system.slice/tts.service\n")
    _write(cgroup / "system.slice" / "cpu.max", "400000 100000\n")  # the slice: 4 CPUs
    _write(cgroup / "system.slice" / "tts.service" / "cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(cgroup_root=cgroup, proc_cgroup=proc) == 4
    assert (
        performance_cores(cpus=range(16), cpu_sysfs=sysfs, cgroup_root=cgroup, proc_cgroup=proc)
        == 4
    )
    # a tighter quota on the service itself wins
    _write(cgroup / "system.slice" / "tts.service" / "cpu.max", "300000 100000\n")
    assert cgroup_cpu_limit(cgroup_root=cgroup, proc_cgroup=proc) == 3


@linux_only
@pytest.mark.parametrize(
    ("quota_us", "expected"), [("300000", 3), ("250000", 3), ("-1", 8)], ids=str
)
def test_cgroup_v1_quota_caps_the_cores(tmp_path: Path, quota_us: str, expected: int) -> None:
    sysfs = _fake_topology(tmp_path, cores=8, threads_per_core=2)
    cgroup = tmp_path / "cgroup"
    proc = _write(tmp_path / "proc_self_cgroup", "4:memory:/x\n2:cpu,cpuacct:/\n")
    _write(cgroup / "cpu,cpuacct" / "cpu.cfs_quota_us", quota_us + "\n")
    _write(cgroup / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    cores = performance_cores(cpus=range(16), cpu_sysfs=sysfs, cgroup_root=cgroup, proc_cgroup=proc)
    assert cores == expected


@linux_only
def test_no_cgroup_files_means_no_cap(tmp_path: Path) -> None:
    sysfs = _fake_topology(tmp_path, cores=4, threads_per_core=2)
    missing = tmp_path / "nothing"
    assert cgroup_cpu_limit(cgroup_root=missing, proc_cgroup=missing) is None
    # hyperthreads of one core count once; CPUs outside the affinity do not count
    assert (
        performance_cores(cpus=range(8), cpu_sysfs=sysfs, cgroup_root=missing, proc_cgroup=missing)
        == 4
    )
    assert (
        performance_cores(cpus={0, 4, 1}, cpu_sysfs=sysfs, cgroup_root=missing, proc_cgroup=missing)
        == 2
    )


# --- what the table says, word for word: /health, the logs and `localtts doctor` show it ---

ONE_CORE = HostInfo(os="Linux", arch="x86_64", performance_cores=1, memory_gb=4.0)
UNNAMED_GPU = HostInfo(os="Linux", arch="x86_64", cuda=True, performance_cores=4)


def test_reasons_name_the_row_that_decided() -> None:
    assert select_engine(H100, settings(), ALL_USABLE).reason == "CUDA device NVIDIA H100 80GB HBM3"
    assert select_engine(UNNAMED_GPU, settings(), ALL_USABLE).reason == "CUDA device 0"
    assert select_engine(M2, settings(), ALL_USABLE).reason == (
        "Apple Silicon: XTTS on the CPU (never MPS: slower, and it hangs)"
    )
    assert select_engine(LINUX_CPU, settings(), ALL_USABLE).reason == (
        "no CUDA device: XTTS on the CPU"
    )
    assert select_engine(H100, settings(device="cpu"), ALL_USABLE).reason == (
        "LOCALTTS_DEVICE=cpu: XTTS on the CPU"
    )
    no_chatterbox = {**ALL_USABLE, "chatterbox": "no Chatterbox weights", "xtts": None}
    assert select_engine(H100, settings(), no_chatterbox).reason == (
        "CUDA device NVIDIA H100 80GB HBM3 (chatterbox: no Chatterbox weights)"
    )
    assert configure_engine("xtts", LINUX_CPU, settings()).reason == "named engine"


def test_the_piper_fallback_in_full() -> None:
    sel = select_engine(H100, settings(), NO_WEIGHTS)
    assert sel == EngineSelection(
        engine="piper", device="cpu", dtype="float32", reason="fallback: no weights",
        warnings=[
            "FALLING BACK TO PIPER: no model weights are available (chatterbox: no Chatterbox "
            "weights in the Hugging Face cache; xtts: no XTTS-v2 weights in the Hugging Face "
            "cache). Speech will use Piper's bundled voice and cloned voices are unavailable. "
            "Provide the weights (see `localtts doctor`) or set LOCALTTS_STRICT=1 to fail "
            "instead."
        ],
        compile=False, threads=16,
    )  # fmt: skip


def test_errors_say_exactly_what_cannot_be_met() -> None:
    cases = [
        (LINUX_CPU, settings(engine="xtts"), {},
         "engine 'xtts' was asked for by LOCALTTS_ENGINE but cannot run: not checked"),
        (LINUX_CPU, settings(), {"xtts": "no weights"},
         "no model weights are available (xtts: no weights), and the Piper fallback cannot "
         "run either: not checked"),
        (LINUX_CPU, settings(strict=True), {"xtts": "no weights", "piper": None},
         "no model weights are available (xtts: no weights), and LOCALTTS_STRICT forbids "
         "falling back to Piper"),
        (M2, settings(device="cuda"), ALL_USABLE,
         "LOCALTTS_DEVICE=cuda but no CUDA device is visible"),
        (T4, settings(dtype="bfloat16"), ALL_USABLE,
         "LOCALTTS_DTYPE=bfloat16 but Tesla T4 lacks bfloat16; use float16"),
        (UNNAMED_GPU, settings(dtype="bfloat16"), ALL_USABLE,
         "LOCALTTS_DTYPE=bfloat16 but the GPU lacks bfloat16; use float16"),
    ]  # fmt: skip
    for host, given, unavailable, message in cases:
        with pytest.raises(HostPolicyError) as err:
            select_engine(host, given, unavailable)
        assert str(err.value) == message


def test_override_warnings_word_for_word() -> None:
    piper = select_engine(H100, settings(engine="piper", device="cuda"), ALL_USABLE)
    assert (piper.device, piper.reason, piper.threads) == (
        "cpu", "asked for by LOCALTTS_ENGINE", 16,
    )  # fmt: skip
    assert piper.warnings == ["LOCALTTS_DEVICE=cuda is ignored: Piper runs on the CPU"]
    assert select_engine(H100, settings(engine="piper"), ALL_USABLE).warnings == []
    sel = select_engine(LINUX_CPU, settings(dtype="bfloat16"), ALL_USABLE)
    assert sel.warnings == ["LOCALTTS_DTYPE=bfloat16 on the CPU is usually slower than float32"]
    # what the host runs best says nothing: float32 on the CPU, half precision on the GPU
    assert select_engine(LINUX_CPU, settings(dtype="float32"), ALL_USABLE).warnings == []
    assert select_engine(H100, settings(dtype="float16"), ALL_USABLE).warnings == []
    sel = select_engine(LINUX_CPU, settings(compile=True), ALL_USABLE)
    assert sel.warnings == ["LOCALTTS_COMPILE on the CPU: compilation costs more than it saves"]


def test_a_one_core_host_runs_one_thread() -> None:
    assert select_engine(ONE_CORE, settings(), ALL_USABLE).threads == 1
    assert configure_engine("xtts", ONE_CORE, settings()).threads == 1


def test_concrete_settings_decide_each_auto_field() -> None:
    # only the device left on "auto"
    given = settings(device="auto", dtype="float32", compile=False, threads=1)
    assert concrete_settings("xtts", given).device == "cpu"
    # only the dtype
    given = settings(device="cpu", dtype="auto", compile=False, threads=1)
    assert concrete_settings("xtts", given).dtype == "float32"
    # Piper ignores a dtype asked for: ONNX on the CPU runs float32
    filled = concrete_settings("piper", settings(dtype="float16"))
    assert (filled.device, filled.dtype, filled.compile) == ("cpu", "float32", False)


def test_a_host_that_needs_no_cuda_is_not_probed_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA probe imports torch: a Piper-only install has none, and a CPU host must not
    pay for importing it. `HostInfo.detect` is that probe; here it records its calls."""
    probes: list[str] = []
    real_detect = HostInfo.detect.__func__  # type: ignore[attr-defined]

    def detect(cls: type[HostInfo]) -> HostInfo:
        probes.append("cuda")
        return real_detect(cls)

    monkeypatch.setattr(HostInfo, "detect", classmethod(detect))
    concrete_settings("piper", settings())
    concrete_settings("xtts", settings(device="cpu"))
    detect_host(probe_cuda=False)
    assert probes == []
    concrete_settings("xtts", settings())
    detect_host()
    assert probes == ["cuda", "cuda"]


def test_detect_host_without_cuda_probe_reads_this_machine() -> None:
    import psutil

    host = detect_host(probe_cuda=False)
    assert host == HostInfo(
        os=platform.system(), arch=platform.machine(), performance_cores=performance_cores(),
        memory_gb=host.memory_gb,
    )  # fmt: skip
    assert host.memory_gb == pytest.approx(psutil.virtual_memory().total / 2**30, rel=1e-3)


def test_detect_reads_the_cuda_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here: torch.cuda's three answers stand in for one (device 0 is the one used)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: f"GPU {index}")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    host = HostInfo.detect()
    assert (host.cuda, host.cuda_device, host.bf16) == (True, "GPU 0", True)
    assert host.performance_cores == performance_cores() and host.memory_gb > 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert (HostInfo.detect().cuda, HostInfo.detect().bf16) == (False, False)


# --- performance cores: the other ways a machine describes itself ------------------------


def test_macos_asks_sysctl_for_the_performance_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `sysctl` on PATH answering like macOS's (unknown keys: exit 1, nothing on stdout)."""
    answers = tmp_path / "answers"
    sysctl = tmp_path / "bin" / "sysctl"
    sysctl.parent.mkdir()
    sysctl.write_text(
        '#!/bin/sh\n[ "$1" = -n ] || exit 2\n'
        f'v=$(sed -n "s/^$2=//p" {answers}); [ -n "$v" ] || exit 1\necho "$v"\n'
    )
    sysctl.chmod(0o755)
    monkeypatch.setenv("PATH", f"{sysctl.parent}:{os.environ['PATH']}")
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    nothing = tmp_path / "nothing"
    cores = lambda: performance_cores(  # noqa: E731
        cpus=range(2), cpu_sysfs=nothing, cgroup_root=nothing, proc_cgroup=nothing
    )
    answers.write_text("hw.perflevel0.physicalcpu=4\nhw.physicalcpu=10\n")
    assert cores() == 4  # M-series: the performance cores only
    answers.write_text("hw.physicalcpu=6\n")
    assert cores() == 6  # an Intel Mac has one kind of core
    answers.write_text("hw.physicalcpu=0\n")
    assert cores() == 1
    answers.write_text("")
    assert cores() == 2  # no answer at all: counted as on Linux


def test_without_cpu_affinity_half_the_cpus_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows has no sched_getaffinity and no topology to read: 2 threads a core."""
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    for cpus, expected in ((8, 4), (1, 1), (None, 1)):
        monkeypatch.setattr(os, "cpu_count", lambda cpus=cpus: cpus)
        cores = performance_cores()
        assert cores == expected and isinstance(cores, int)


@linux_only
def test_cpus_without_topology_count_one_core_each(tmp_path: Path) -> None:
    missing = tmp_path / "nothing"
    count = lambda cpus: performance_cores(  # noqa: E731
        cpus=cpus, cpu_sysfs=missing, cgroup_root=missing, proc_cgroup=missing
    )
    assert (count(range(4)), count({3})) == (4, 1)


@linux_only
def test_cgroup_v1_cpu_controller_is_found_among_the_others(tmp_path: Path) -> None:
    """/proc/self/cgroup names many controllers; only the CPU one's path counts."""
    cgroup = tmp_path / "cgroup"
    proc = _write(
        tmp_path / "proc_self_cgroup",
        "5:memory:/elsewhere\n3:cpuset:/elsewhere\n2:cpuacct,cpu:/docker/abc\n",
    )
    _write(cgroup / "cpuacct,cpu" / "docker" / "abc" / "cpu.cfs_quota_us", "300000\n")
    _write(cgroup / "cpuacct,cpu" / "docker" / "abc" / "cpu.cfs_period_us", "100000\n")
    (cgroup / "cpuacct,cpu" / "elsewhere").mkdir()
    assert cgroup_cpu_limit(cgroup_root=cgroup, proc_cgroup=proc) == 3


@linux_only
def test_cgroup_paths_may_hold_colons_and_proc_may_be_unreadable(tmp_path: Path) -> None:
    cgroup = tmp_path / "cgroup"
    proc = _write(tmp_path / "proc_self_cgroup", "0::/user.slice/app:1.scope\n")
    _write(cgroup / "user.slice" / "app:1.scope" / "cpu.max", "200000 100000\n")
    assert cgroup_cpu_limit(cgroup_root=cgroup, proc_cgroup=proc) == 2
    # no /proc/self/cgroup: the v1 mount's own quota still counts
    v1 = tmp_path / "v1"
    _write(v1 / "cpu" / "cpu.cfs_quota_us", "100000\n")
    _write(v1 / "cpu" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(cgroup_root=v1, proc_cgroup=tmp_path / "missing") == 1


@linux_only
@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("0 100000\n", None), ("1 100000\n", 1), ("100000 0\n", None), ("50000 1\n", 50000)],
    ids=["zero-quota", "tiny-quota", "zero-period", "tiny-period"],
)
def test_cgroup_quota_edges(tmp_path: Path, cpu_max: str, expected: int | None) -> None:
    cgroup = tmp_path / "cgroup"
    _write(cgroup / "cpu.max", cpu_max)
    proc = _write(tmp_path / "proc_self_cgroup", "0::/\n")
    assert cgroup_cpu_limit(cgroup_root=cgroup, proc_cgroup=proc) == expected


def test_set_torch_threads_sets_the_process_count() -> None:
    import torch

    before = torch.get_num_threads()
    try:
        set_torch_threads(1)
        assert torch.get_num_threads() == 1
        set_torch_threads(2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
