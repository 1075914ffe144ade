"""The worker: measures one case in this (fresh) process and prints one JSON result.

Started by the runner cold, as ``python -m attnbench.runner.worker`` with the case as JSON on
stdin, or warm, as a child forked by a template process that has already imported the
framework (:mod:`attnbench.runner.warm`); both call :func:`run_and_print`. The last line of
stdout is ``{"status": ..., "error": ..., "metrics": {...}}``;
anything the libraries print comes before it. Every failure the worker can see becomes a
status (``oom`` for CUDA, XLA and CPU allocator out-of-memory errors, ``error`` for the rest);
failures it cannot see (killed by the kernel, a hang) are the runner's to record.

Only the framework the case names is imported (a JAX case never imports torch, and vice
versa). On the CPU the thread count is fixed before the framework starts any thread (a warm
child's template imported it but started none): torch by ``set_num_threads``, JAX (which
sizes its pool from the CPUs it may use when its backend starts) by restricting this
process's CPU affinity.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback

from attnbench.measure.memory import is_oom
from attnbench.runner import compile_cache
from attnbench.runner.case import TIMED_MODES, Case
from attnbench.variants import case_frameworks, get_variant, load_plugin

ERROR_TEXT_LIMIT = 2000


def die_with_parent(parent: int | None) -> None:
    """Ask Linux to SIGKILL this process when its parent (pid ``parent``) dies, so killing a
    run leaves no orphan (set here, after exec or fork, rather than in a pre-exec hook: forking
    a threaded runner safely means running no Python between fork and exec)."""
    if not parent:
        return
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def runner_pid() -> int | None:
    """The runner this process must die with (``ATTNBENCH_RUNNER_PID``), if any."""
    pid = os.environ.get("ATTNBENCH_RUNNER_PID")
    return int(pid) if pid else None


# The CPUs this worker was pinned to, before any framework started threads (an OpenMP runtime
# with OMP_PROC_BIND narrows the main thread's own affinity later, not the process's set).
_PINNED: list[int] | None = None


def _pin_cpus(threads: int | None, framework: str) -> None:
    """Pin this worker to a fixed set of CPUs: the first ``threads`` it may use (all of them
    when the case does not say), so each case runs where the last one did; the row records
    the set (``cpus``). JAX sizes its thread pool from this set when its backend starts; torch
    is told (``set_num_threads``) in every mode: a warm child's torch was imported by its
    template with every CPU allowed, and two OpenMP threads on one pinned CPU made a small
    training step 120x slower (measured: 457 against 3.6 ms)."""
    global _PINNED
    if not hasattr(os, "sched_setaffinity"):
        return
    allowed = sorted(os.sched_getaffinity(0))
    _PINNED = allowed[:threads] if threads else allowed
    os.sched_setaffinity(0, _PINNED)
    if framework == "torch":
        import torch

        torch.set_num_threads(len(_PINNED))


def _threads_used(framework: str) -> int:
    """The CPU threads the framework ran on: torch's own count; JAX's pool is the pinned set."""
    if framework == "torch":
        import torch

        return torch.get_num_threads()
    return len(_PINNED or ())


def measure_timed(case: Case) -> dict:
    """Build (untimed), warm up (timed apart), time adaptively, read memory; the metrics."""
    from attnbench.measure import machine, work
    from attnbench.measure.timing import TimingPolicy, time_repeats, time_warmup

    variant = get_variant(case.variant)
    if case.framework == "jax":
        from attnbench.jax_impl.bench import make_step
    else:
        from attnbench.torch_impl.bench import make_step
    t0 = time.perf_counter()
    step = make_step(case, variant)
    setup_s = time.perf_counter() - t0
    policy = TimingPolicy(case.warmup, case.min_repeats, case.max_repeats, case.target_rel_iqr,
                          case.time_budget_s)
    step.memory.start()
    warmup_s = time_warmup(step.run, case.warmup)
    step.memory.after_warmup()
    cpus = _PINNED or machine.worker_cpus()
    before = machine.snapshot(cpus)
    metrics = time_repeats(step.run, policy)
    metrics.update(machine.machine_metrics(before, machine.snapshot(cpus), cpus))
    reasons = machine.unstable_reasons(metrics, case.target_rel_iqr)
    metrics.update(unstable=bool(reasons), unstable_reasons=reasons)
    metrics.update(step.memory.result())
    metrics.update(step.info)
    metrics["setup_s"] = setup_s
    metrics["warmup_s"] = warmup_s
    metrics.update(work.work_metrics(case, variant, metrics["time_median_s"]))
    if case.device.startswith("cuda"):
        from attnbench.measure import nvml

        metrics.update(nvml.sample(int(case.device.partition(":")[2] or 0)))
    return metrics


def measure(case: Case) -> dict:
    """The metrics of ``case`` (raises on failure)."""
    variant = get_variant(case.variant)
    if case.framework not in case_frameworks(variant, case):
        raise ValueError(f"{case.label()}: no {case.framework} implementation (it has "
                         f"{', '.join(case_frameworks(variant, case))})")
    if case.mode in TIMED_MODES:
        return measure_timed(case)
    from attnbench.runner import accuracy_modes

    return accuracy_modes.measure(case, variant)


def finite_or_none(value):
    """NaN and infinities as None (``null``), recursively: results.jsonl stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value


def run_and_print(case_json: str) -> int:
    """Measure the case (JSON text) and print its result as the last line of stdout."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        case = Case.from_dict(json.loads(case_json))
        for ref in case.plugins:
            load_plugin(ref)
        if case.device == "cpu":
            _pin_cpus(case.threads, case.framework)
        cache = compile_cache.configure(case)
        metrics = measure(case)
        metrics.update(cache.result())
        if _PINNED is not None:  # every mode says how many CPU threads it ran on
            metrics.setdefault("threads_used", _threads_used(case.framework))
        result = {"status": "ok", "error": None, "metrics": finite_or_none(metrics)}
    except BaseException as exc:  # noqa: BLE001 - every failure must become a result
        text = "".join(traceback.format_exception_only(exc)).strip()
        if not isinstance(exc, ValueError | KeyError | MemoryError):
            tb = traceback.format_exc().strip().splitlines()
            text += "\n" + "\n".join(tb[-6:])
        result = {"status": "oom" if is_oom(exc) else "error",
                  "error": text[-ERROR_TEXT_LIMIT:], "metrics": {}}
    sys.stdout.flush()
    print("\n" + json.dumps(result, default=str), flush=True)
    return 0


def main() -> int:
    die_with_parent(runner_pid())
    return run_and_print(sys.stdin.read())


if __name__ == "__main__":
    sys.exit(main())
