"""NVIDIA device state through NVML (the ``pynvml`` module of ``nvidia-ml-py``).

Optional: without the package or without a driver every function returns ``None`` (recorded
as such; never an error, since CPU runs have no NVML). Clocks and throttle reasons are read
after a case so a report can flag a measurement taken on a throttled GPU.
"""

from __future__ import annotations

import os

from attnbench.units import MB


def _nvml():
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver, no GPU: NVML is simply absent
        return None
    return pynvml


def devices() -> list[dict] | None:
    """Name, driver, memory, power limit and clocks of every GPU; None without NVML."""
    nv = _nvml()
    if nv is None:
        return None
    out = []
    for i in range(nv.nvmlDeviceGetCount()):
        h = nv.nvmlDeviceGetHandleByIndex(i)
        out.append({
            "index": i,
            "name": _text(nv.nvmlDeviceGetName(h)),
            "uuid": _text(nv.nvmlDeviceGetUUID(h)),
            "driver": _text(nv.nvmlSystemGetDriverVersion()),
            "memory_total_mb": nv.nvmlDeviceGetMemoryInfo(h).total / MB,
            "power_limit_w": _try(lambda h=h: nv.nvmlDeviceGetPowerManagementLimit(h) / 1000),
            "sm_clock_max_mhz": _try(lambda h=h: nv.nvmlDeviceGetMaxClockInfo(
                h, nv.NVML_CLOCK_SM)),
        })
    return out


def sample(index: int = 0) -> dict:
    """``nvml_*`` metrics for device ``index`` now: memory used, this process's usage, clocks,
    temperature and throttle reasons. Empty without NVML."""
    nv = _nvml()
    if nv is None:
        return {}
    h = nv.nvmlDeviceGetHandleByIndex(index)
    pid = os.getpid()

    def process_mb():
        procs = nv.nvmlDeviceGetComputeRunningProcesses(h)
        used = [p.usedGpuMemory for p in procs if p.pid == pid and p.usedGpuMemory]
        return used[0] / MB if used else None

    return {
        "nvml_device_used_mb": nv.nvmlDeviceGetMemoryInfo(h).used / MB,
        "nvml_process_used_mb": _try(process_mb),
        "nvml_sm_clock_mhz": _try(lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
        "nvml_mem_clock_mhz": _try(lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM)),
        "nvml_temperature_c": _try(lambda: nv.nvmlDeviceGetTemperature(
            h, nv.NVML_TEMPERATURE_GPU)),
        "nvml_throttle_reasons": _try(
            lambda: int(nv.nvmlDeviceGetCurrentClocksEventReasons(h))),
    }


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _try(fn):
    try:
        return fn()
    except Exception:  # noqa: BLE001 - a field this GPU or driver does not report
        return None
