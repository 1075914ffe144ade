"""What the history holds, as plain dataclasses shared by the database, the detector, the
confirmation and the site (none of them imports another to know a shape).

A **series** is (machine, case, metric): one number per run of one case on one machine, with
the metric's direction. A **ratio series** (a suite's same-run contract ratio) has no machine
(``machine_id`` None): same-run ratios travel across machines, so every machine's runs share
its timeline. A **point** is one run's value in a series, or its failure: ``status`` other
than ``ok`` carries no value, never a zero. Points are ordered by ``position`` (the commit's
place in ``git log`` when the repository is at hand, else by commit date, else by the run's
start; :func:`attnbench.history.db.order_points`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LOWER, HIGHER = "lower", "higher"   # which direction is better
# Every metric the history keeps, with its direction. Time and memory are the case's own;
# accuracy and approximation error come from the accuracy modes.
METRICS: dict[str, str] = {
    "time_median_s": LOWER,
    "mem_peak_mb": LOWER,
    "task_accuracy": HIGHER,
    "approx_out_rel_err": LOWER,
    "approx_grad_rel_err": LOWER,
    "approx_recall": HIGHER,
}
RATIO = "ratio"   # the metric of a ratio series; its direction comes from its contract
                  # (lower is better under a max_ratio, higher under a min_ratio only)
REGRESSION, IMPROVEMENT = "regression", "improvement"
VERDICTS = ("confirmed", "not reproduced", "inconclusive")


@dataclass(frozen=True)
class Machine:
    id: int
    fingerprint: str            # a short hash of ``parts``
    parts: dict[str, Any]       # Environment.machine(): cpu, cpu_count, memory, gpus, versions


@dataclass(frozen=True)
class Run:
    id: int
    run_id: str
    kind: str                   # "run" or "pytest-benchmark"
    path: str                   # where it was added from (the report link points there)
    sha: str | None
    dirty: bool | None
    committed_at: str | None    # ISO 8601, the commit's date
    started_at: str | None
    machine_id: int | None
    suite: str
    position: float | None = None   # the order key (see the module docstring)


@dataclass(frozen=True)
class Series:
    id: int
    machine_id: int | None      # None: a ratio series, shared by every machine
    case_id: str                # a case's id, or "contract:<suite>:<name>" for a ratio
    label: str                  # what a person reads (the case label, or the contract name)
    metric: str
    direction: str              # LOWER or HIGHER


@dataclass(frozen=True)
class Point:
    series_id: int
    run_id: int                 # Run.id
    position: float             # order on the timeline (smaller is earlier)
    sha: str | None
    status: str                 # ok | oom | timeout | error | skipped
    value: float | None         # None unless status is ok
    lo: float | None = None     # the uncertainty band (e.g. the quartiles); None: unknown
    hi: float | None = None
    samples: int | None = None
    unstable: bool = False
    unstable_reasons: tuple[str, ...] = ()
    error: str | None = None
    bound_lo: float | None = None   # a ratio's contract: min_ratio (None: none, or no ratio)
    bound_hi: float | None = None   # ... and max_ratio, as the run's suite had them


@dataclass
class Step:
    series_id: int
    before_sha: str | None      # the last commit before the change
    after_sha: str | None       # the first commit after it
    before_value: float
    after_value: float
    ratio: float                # after / before
    kind: str                   # REGRESSION or IMPROVEMENT, by the series' direction
    evidence: dict[str, Any] = field(default_factory=dict)
    id: int | None = None
    verdict: str | None = None  # one of VERDICTS once confirmed; None: not yet measured
    verdict_detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class History:
    """Everything the history holds, as read back from the database
    (:func:`attnbench.history.db.load_history`)."""

    machines: dict[int, Machine] = field(default_factory=dict)
    runs: dict[int, Run] = field(default_factory=dict)        # by Run.id
    series: dict[int, Series] = field(default_factory=dict)   # by Series.id
    points: dict[int, list[Point]] = field(default_factory=dict)  # series id -> timeline order
    steps: list[Step] = field(default_factory=list)
