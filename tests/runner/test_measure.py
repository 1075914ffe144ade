"""Timing policy, statistics, and the work formulas, against hand-computed values."""

from __future__ import annotations

import itertools

import pytest

from attnbench.measure import work
from attnbench.measure.memory import is_oom
from attnbench.measure.timing import TimingPolicy, iqr, time_repeats
from attnbench.runner.case import Case


def test_iqr_hand_computed():
    assert iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == 2.0  # inclusive quartiles 2 and 4
    assert iqr([7.0]) == 0.0


def fake_clock(monkeypatch, durations):
    """Make perf_counter advance by the next duration on every second call."""
    ticks = itertools.accumulate(itertools.chain.from_iterable((0.0, d) for d in durations))
    monkeypatch.setattr("attnbench.measure.timing.time.perf_counter", lambda: next(ticks))


def test_repeats_stop_when_spread_is_stable(monkeypatch):
    fake_clock(monkeypatch, [1.0] * 100)
    out = time_repeats(lambda: None, TimingPolicy(min_repeats=3, max_repeats=20))
    assert out["time_repeats"] == 3 and out["time_median_s"] == 1.0
    assert out["time_samples_s"] == [1.0, 1.0, 1.0]


def test_repeats_go_on_while_noisy_until_budget(monkeypatch):
    fake_clock(monkeypatch, [1.0, 2.0] * 50)
    out = time_repeats(lambda: None, TimingPolicy(min_repeats=3, max_repeats=20,
                                                  time_budget_s=7.5))
    # IQR/median stays above 5%; after five repeats 7 s < 7.5 s are spent, after six 9 s.
    assert out["time_repeats"] == 6
    assert out["time_samples_s"] == [1.0, 2.0, 1.0, 2.0, 1.0, 2.0]


def test_repeats_capped(monkeypatch):
    fake_clock(monkeypatch, [1.0, 3.0] * 50)
    out = time_repeats(lambda: None, TimingPolicy(min_repeats=2, max_repeats=4,
                                                  time_budget_s=1e9))
    assert out["time_repeats"] == 4


def test_flops_of_full_attention_layer():
    case = Case(variant="full-naive", framework="torch", mode="forward", length=8, batch=2,
                d_model=4, n_heads=2)
    value, formula = work.flops(case, "full", model=False, reversible=False)
    assert value == 8 * 2 * 8 * 4 * 4 + 4 * 2 * 8 * 8 * 4
    assert formula == "8bld^2 + 4bl^2d"
    fb = Case(**{**case.to_dict(), "mode": "forward-backward"})
    assert work.flops(fb, "full", False, False)[0] == 3 * value


def test_flops_of_lsh_layer():
    case = Case(variant="lsh", framework="torch", mode="forward", length=128, batch=1,
                d_model=8, n_heads=2, n_hashes=2, n_buckets=4, chunk_len=16)
    value, formula = work.flops(case, "lsh", model=False, reversible=False)
    projections = 6 * 128 * 8 * 8
    hashing = 2 * 128 * 8 * (4 // 2) * 2
    attend = 4 * 128 * 2 * 16 * 2 * 8  # each query sees 2 chunks of 16 keys per round
    assert value == projections + hashing + attend
    assert formula == "6bld^2 + 2bld(n_buckets/2)r + 4blr(c*2)d"


def test_analytic_memory_terms():
    case = Case(variant="full-naive", framework="torch", mode="forward", length=1024,
                n_heads=4, d_model=256)
    assert work.analytic_memory_mb(case, "full", False, False, False) == 4 * 1024**2 * 4 / 2**20
    lsh = Case(variant="lsh", framework="torch", mode="forward", length=1024, n_heads=4,
               d_model=256, n_hashes=2, chunk_len=64, n_buckets=32)
    assert work.analytic_memory_mb(lsh, "lsh", False, False, False) == \
        4 * 2 * 1024 * 64 * 2 * 4 / 2**20


@pytest.mark.parametrize("text, oom", [
    ("CUDA out of memory. Tried to allocate 2.00 GiB", True),
    ("RESOURCE_EXHAUSTED: Out of memory while trying to allocate", True),
    ("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes", True),
    ("shape mismatch", False),
])
def test_is_oom(text, oom):
    assert is_oom(RuntimeError(text)) is oom


def _snapshots(window_s, busy_s, own_s, steal_s=0.0):
    from attnbench.measure.machine import Snapshot

    before = Snapshot(wall_s=10.0, busy_s=500.0, steal_s=7.0, own_cpu_s=3.0, own_invol=100,
                      own_vol=50)
    after = Snapshot(wall_s=10.0 + window_s, busy_s=500.0 + busy_s, steal_s=7.0 + steal_s,
                     own_cpu_s=3.0 + own_s, own_invol=160, own_vol=55)
    return before, after


def test_machine_metrics_subtract_the_workers_own_cpu_time():
    from attnbench.measure.machine import machine_metrics

    # 2 s on 2 CPUs offers 4 CPU-seconds; the CPUs were busy 3.5 s, the worker used 1.5 s
    m = machine_metrics(*_snapshots(2.0, 3.5, 1.5, steal_s=0.4), cpus=[0, 1])
    assert m["machine_other_cpu_s"] == pytest.approx(2.0)
    assert m["machine_other_cpu_frac"] == pytest.approx(0.5)
    assert m["machine_steal_frac"] == pytest.approx(0.1)
    assert m["worker_invol_ctx_switches"] == 60 and m["worker_invol_ctx_per_s"] == 30
    assert m["cpus"] == [0, 1]
    # clock ticks can make the busy time fall short of the worker's own: never below zero
    assert machine_metrics(*_snapshots(1.0, 0.9, 1.0), cpus=[0])["machine_other_cpu_s"] == 0


@pytest.mark.parametrize("metrics, target, reasons", [
    ({"time_rel_iqr": 0.04, "machine_other_cpu_frac": 0.02, "machine_steal_frac": 0.0}, 0.05,
     []),
    ({"time_rel_iqr": 0.12, "time_repeats": 20, "machine_other_cpu_frac": 0.0}, 0.05,
     ["spread 12.0% stayed above the target 5% after 20 repeats"]),
    ({"time_rel_iqr": 0.01, "machine_other_cpu_frac": 0.5, "cpus": [0, 1]}, 0.05,
     ["machine busy: other processes used 50% of the case's CPUs [0, 1] (over 10%)"]),
    ({"time_rel_iqr": 0.01, "machine_other_cpu_frac": 0.0, "machine_steal_frac": 0.07}, 0.05,
     ["CPU steal 7% (over 5%)"]),
    ({"time_rel_iqr": None, "machine_other_cpu_frac": None}, 0.05, []),  # nothing to judge
])
def test_unstable_reasons(metrics, target, reasons):
    from attnbench.measure.machine import unstable_reasons

    assert unstable_reasons(metrics, target) == reasons


@pytest.mark.parametrize("busy_s, steal_s, reasons", [
    # a sleeping case's 120 ms window on one CPU: two stray ticks are 17%, yet rounding
    (0.02, 0.0, []),
    (0.0, 0.02, []),
    # beyond the counters' rounding, the same shares are judged
    (0.06, 0.0, ["machine busy: other processes used 50% of the case's CPUs [0] (over 10%)"]),
    (0.0, 0.04, ["CPU steal 33% (over 5%)"]),
])
def test_busy_and_steal_are_judged_beyond_the_clock_ticks_rounding(busy_s, steal_s, reasons):
    import os

    from attnbench.measure.machine import machine_metrics, unstable_reasons

    assert os.sysconf("SC_CLK_TCK") == 100  # the 10 ms tick the cases above are written for
    metrics = machine_metrics(*_snapshots(0.12, busy_s, 0.0, steal_s=steal_s), cpus=[0])
    assert unstable_reasons({**metrics, "time_rel_iqr": 0.01}, 0.05) == reasons
