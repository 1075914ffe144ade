"""What the machine was doing while a case was timed, and whether its number can be trusted.

On a shared machine, competing processes make a CPU case several times slower, and can do so
evenly enough that the spread stays small (one run measured 1576 ms instead of 51 ms with a
relative IQR of 2%). So the spread alone cannot flag it. Around the timed repeats the worker
takes two :class:`Snapshot` s and records:

* ``machine_other_cpu_s`` / ``machine_other_cpu_frac``: CPU time spent on this worker's CPUs
  by anything but this worker (``/proc/stat`` busy time of those CPUs minus the worker's own
  ``getrusage`` time), and that as a fraction of the CPU time the window offered;
* ``machine_steal_s`` / ``machine_steal_frac``: time the hypervisor gave those CPUs to
  someone else;
* ``machine_load_avg``: the 1-minute load average at the end (it lags; recorded, not judged);
* ``worker_invol_ctx_switches`` (and per second): how often the worker was preempted.

:func:`unstable_reasons` turns these and the achieved spread into the ``unstable`` mark: a field
beside the number, never a new status and never a silent average. ``/proc/stat`` counts whole
clock ticks (10 ms) while the worker's own time is exact, so a short window reads one stray
tick of a kernel thread as several percent of "other" use (a 120 ms window: 7% per tick): busy
and steal are judged only beyond ``RESOLUTION_TICKS`` ticks as well as beyond their share.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

# Other processes using more than this share of the worker's CPUs make a case unstable: on two
# cores, one busy process takes half of what torch's two threads need.
BUSY_OTHER_CPU_FRAC = 0.10
STEAL_FRAC = 0.05
RESOLUTION_TICKS = 3  # below this much CPU time, busy or steal is the counters' rounding
_PROC_STAT = Path("/proc/stat")


@dataclass(frozen=True)
class Snapshot:
    wall_s: float
    busy_s: float | None     # busy CPU time of ``cpus`` since boot; None without /proc/stat
    steal_s: float | None
    own_cpu_s: float         # this process, all its threads
    own_invol: int
    own_vol: int


def worker_cpus() -> list[int]:
    """The CPUs this process may run on (its pinned set once the worker has pinned itself)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _cpu_times(cpus: list[int]) -> tuple[float | None, float | None]:
    """(busy, steal) seconds of ``cpus`` from /proc/stat: user+nice+system+irq+softirq."""
    try:
        lines = _PROC_STAT.read_text().splitlines()
    except OSError:
        return None, None
    hz = os.sysconf("SC_CLK_TCK")
    wanted = {f"cpu{c}" for c in cpus}
    busy = steal = 0
    found = 0
    for line in lines:
        fields = line.split()
        if fields and fields[0] in wanted:
            user, nice, system, _idle, _iowait, irq, softirq, st = map(int, fields[1:9])
            busy += user + nice + system + irq + softirq
            steal += st
            found += 1
    if found != len(wanted):
        return None, None
    return busy / hz, steal / hz


def snapshot(cpus: list[int]) -> Snapshot:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    busy, steal = _cpu_times(cpus)
    return Snapshot(wall_s=time.perf_counter(), busy_s=busy, steal_s=steal,
                    own_cpu_s=usage.ru_utime + usage.ru_stime, own_invol=usage.ru_nivcsw,
                    own_vol=usage.ru_nvcsw)


def machine_metrics(before: Snapshot, after: Snapshot, cpus: list[int]) -> dict:
    """What happened on ``cpus`` between two snapshots, as row metrics."""
    wall = max(after.wall_s - before.wall_s, 1e-9)
    offered = wall * len(cpus)
    own = after.own_cpu_s - before.own_cpu_s
    metrics: dict = {"cpus": list(cpus), "machine_window_s": wall,
                     "machine_load_avg": os.getloadavg()[0] if hasattr(os, "getloadavg")
                     else None,
                     "worker_cpu_s": own,
                     "worker_invol_ctx_switches": after.own_invol - before.own_invol,
                     "worker_invol_ctx_per_s": (after.own_invol - before.own_invol) / wall,
                     "worker_vol_ctx_switches": after.own_vol - before.own_vol}
    if before.busy_s is None or after.busy_s is None:
        metrics.update(machine_other_cpu_s=None, machine_other_cpu_frac=None,
                       machine_steal_s=None, machine_steal_frac=None)
        return metrics
    # /proc/stat counts in clock ticks (10 ms): never report less than nothing.
    other = max(0.0, (after.busy_s - before.busy_s) - own)
    steal = after.steal_s - before.steal_s
    metrics.update(machine_other_cpu_s=other, machine_other_cpu_frac=other / offered,
                   machine_steal_s=steal, machine_steal_frac=steal / offered)
    return metrics


def _resolved(seconds: float | None) -> bool:
    """Whether a CPU time read from /proc/stat is beyond its tick rounding (unknown: judged)."""
    return not isinstance(seconds, float | int) or \
        seconds > RESOLUTION_TICKS / os.sysconf("SC_CLK_TCK")


def unstable_reasons(metrics: dict, target_rel_iqr: float) -> list[str]:
    """Why a timed case's number should not be trusted; empty when nothing says so."""
    reasons = []
    spread = metrics.get("time_rel_iqr")
    if isinstance(spread, float) and spread > target_rel_iqr:
        reasons.append(f"spread {spread:.1%} stayed above the target {target_rel_iqr:.0%} "
                       f"after {metrics.get('time_repeats')} repeats")
    other = metrics.get("machine_other_cpu_frac")
    if isinstance(other, float) and other > BUSY_OTHER_CPU_FRAC \
            and _resolved(metrics.get("machine_other_cpu_s")):
        reasons.append(f"machine busy: other processes used {other:.0%} of the case's CPUs "
                       f"{metrics.get('cpus')} (over {BUSY_OTHER_CPU_FRAC:.0%})")
    steal = metrics.get("machine_steal_frac")
    if isinstance(steal, float) and steal > STEAL_FRAC \
            and _resolved(metrics.get("machine_steal_s")):
        reasons.append(f"CPU steal {steal:.0%} (over {STEAL_FRAC:.0%})")
    return reasons
