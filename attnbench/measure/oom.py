"""Whether the kernel's OOM killer struck: the evidence Linux keeps without the kernel log.

A worker killed by SIGKILL may have been the OOM killer's victim or anyone else's (a user, a
scheduler, a container runtime). :func:`oom_kills` reads the counters the kernel bumps on every
OOM kill: ``oom_kill`` in ``/proc/vmstat`` (system-wide) and in the memory cgroup of this
process (cgroup v2 ``memory.events``, v1 ``memory.oom_control``). The runner reads them before
a worker starts and after it dies: a SIGKILL with a counter that moved is ``oom``; without,
it is an ``error`` naming the signal, since nothing says memory ran out.
"""

from __future__ import annotations

from pathlib import Path

_VMSTAT = Path("/proc/vmstat")
_CGROUP_ROOT = Path("/sys/fs/cgroup")


def _counter(path: Path, key: str = "oom_kill") -> int | None:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        return None
    return None


def _cgroup_files() -> list[Path]:
    """memory.events (v2) or memory.oom_control (v1) of this process's memory cgroup."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    files = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2, the unified hierarchy
            files.append(_CGROUP_ROOT / path.lstrip("/") / "memory.events")
        elif "memory" in controllers.split(","):
            files.append(_CGROUP_ROOT / "memory" / path.lstrip("/") / "memory.oom_control")
    return [f for f in files if f.is_file()]


def oom_kills() -> dict[str, int]:
    """Every OOM-kill counter readable here, by source (empty when none is)."""
    counts = {}
    for name, path in [("vmstat", _VMSTAT)] + [(str(f), f) for f in _cgroup_files()]:
        value = _counter(path)
        if value is not None:
            counts[name] = value
    return counts


def oom_killed_between(before: dict[str, int], after: dict[str, int]) -> bool | None:
    """True when a counter moved, False when none did, None when there was none to read."""
    common = set(before) & set(after)
    if not common:
        return None
    return any(after[k] > before[k] for k in common)
