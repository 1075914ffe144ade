"""Adaptive repeat timing: warm-up apart, then timed calls until the spread is stable.

``step`` must synchronise before returning (CUDA synchronize for torch,
``jax.block_until_ready`` on the whole output for JAX), so the wall time of one call is the
time of the work it launched.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TimingPolicy:
    warmup: int = 1
    min_repeats: int = 3
    max_repeats: int = 20
    target_rel_iqr: float = 0.05
    time_budget_s: float = 10.0


def iqr(values: Sequence[float]) -> float:
    """Interquartile range (inclusive quantiles; 0 for fewer than two values)."""
    if len(values) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q3 - q1


def time_warmup(step: Callable[[], None], count: int) -> float:
    """Run ``count`` untimed calls (compile, autotune, caches) and return their total time."""
    t0 = time.perf_counter()
    for _ in range(count):
        step()
    return time.perf_counter() - t0


def time_repeats(step: Callable[[], None], policy: TimingPolicy) -> dict:
    """Timed calls: at least ``min_repeats``; stop once IQR/median <= ``target_rel_iqr`` or
    the repeats have used ``time_budget_s``, and never more than ``max_repeats``."""
    samples: list[float] = []
    spent = 0.0
    while len(samples) < policy.max_repeats:
        t0 = time.perf_counter()
        step()
        samples.append(time.perf_counter() - t0)
        spent += samples[-1]
        if len(samples) >= policy.min_repeats:
            median = statistics.median(samples)
            if median > 0 and iqr(samples) / median <= policy.target_rel_iqr:
                break
            if spent >= policy.time_budget_s:
                break
    median = statistics.median(samples)
    spread = iqr(samples)
    return {
        "time_median_s": median,
        "time_iqr_s": spread,
        "time_rel_iqr": spread / median if median > 0 else None,
        "time_samples_s": samples,
        "time_repeats": len(samples),
    }
