"""Peak memory of the measured steps, above the baseline just before the first step.

Every meter has the same three calls: ``start()`` before the warm-up (the baseline),
``after_warmup()`` (reset the peak where the platform allows it) and ``result()`` after the
timed steps, which returns ``mem_peak_mb``, ``mem_baseline_mb`` and ``mem_method`` (what was
read, and any caveat).

CPU: the resident-set high-water mark (``VmHWM``), reset after the warm-up by writing ``5``
to ``/proc/self/clear_refs``. Where the reset is refused the peak is ``ru_maxrss``, which may
include earlier peaks, and ``mem_method`` says so. This is the process's real peak, not a
current-RSS reading and not tracemalloc (which misses tensor memory).
CUDA, torch: ``max_memory_allocated`` after ``reset_peak_memory_stats``.
GPU, JAX: ``peak_bytes_in_use`` of the device; JAX cannot reset it, so it also covers the
warm-up and compilation, and ``mem_method`` says when that bound the figure. Workers run with
``XLA_PYTHON_CLIENT_PREALLOCATE=false`` so the pool does not hide the peak.
"""

from __future__ import annotations

from attnbench.units import MB


def _proc_status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(f"{key} not in /proc/self/status")


def current_rss_mb() -> float:
    try:
        return _proc_status_kb("VmRSS") / 1024
    except (OSError, KeyError):
        import psutil

        return psutil.Process().memory_info().rss / MB


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class CpuMemory:
    """Resident-set high-water mark above the resident set before the warm-up."""

    def start(self) -> None:
        self.base = current_rss_mb()

    def after_warmup(self) -> None:
        self.reset = _reset_hwm()

    def result(self) -> dict:
        if self.reset:
            peak, method = _proc_status_kb("VmHWM") / 1024, "cpu VmHWM (reset after warm-up)"
        else:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            method = "cpu ru_maxrss (peak not resettable: may include warm-up and setup)"
        return {"mem_peak_mb": max(0.0, peak - self.base), "mem_baseline_mb": self.base,
                "mem_method": method}


class TorchCudaMemory:
    """``max_memory_allocated`` (reset after the warm-up) above the allocated bytes before it."""

    def __init__(self, torch, device) -> None:
        self.cuda = torch.cuda
        self.device = device

    def start(self) -> None:
        self.cuda.synchronize(self.device)
        self.base = self.cuda.memory_allocated(self.device) / MB

    def after_warmup(self) -> None:
        self.cuda.synchronize(self.device)
        self.cuda.reset_peak_memory_stats(self.device)

    def result(self) -> dict:
        peak = self.cuda.max_memory_allocated(self.device) / MB
        return {"mem_peak_mb": peak - self.base, "mem_baseline_mb": self.base,
                "mem_method": "torch cuda max_memory_allocated (reset after warm-up)",
                "mem_reserved_peak_mb": self.cuda.max_memory_reserved(self.device) / MB}


class JaxDeviceMemory:
    """``peak_bytes_in_use`` after the timed steps above ``bytes_in_use`` before the warm-up."""

    def __init__(self, device) -> None:
        self.device = device

    def _stats(self) -> dict | None:
        stats = self.device.memory_stats()
        return stats if stats and "peak_bytes_in_use" in stats else None

    def start(self) -> None:
        stats = self._stats()
        self.base = None if stats is None else stats["bytes_in_use"] / MB
        self.peak_before = None if stats is None else stats["peak_bytes_in_use"] / MB

    def after_warmup(self) -> None:
        pass  # JAX has no peak reset

    def result(self) -> dict:
        stats = self._stats()
        if stats is None or self.base is None:
            return {"mem_peak_mb": None, "mem_baseline_mb": None,
                    "mem_method": f"none ({self.device.platform} reports no memory_stats)"}
        peak = stats["peak_bytes_in_use"] / MB
        method = "jax peak_bytes_in_use (no reset: covers warm-up)"
        if peak <= self.peak_before:
            method += "; peak reached before the warm-up (compile/autotune): an upper bound"
        return {"mem_peak_mb": peak - self.base, "mem_baseline_mb": self.base,
                "mem_method": method}


def is_oom(exc: BaseException) -> bool:
    """CUDA OOM, XLA RESOURCE_EXHAUSTED, a CPU allocator failure or MemoryError."""
    text = str(exc).lower()
    return (isinstance(exc, MemoryError) or "out of memory" in text
            or "resource_exhausted" in text or "resource exhausted" in text
            or "can't allocate memory" in text or "not enough memory" in text
            or "failed to allocate" in text)
