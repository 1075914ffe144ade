"""A/B comparison of two runs: ``attnbench compare BASE HEAD``, a CI regression gate.

Cases are paired by ``case_id`` (the hash of what was measured, so the same point in two runs
or two suites pairs up). For each pair:

* time: the ratio of medians head / base, and a two-sided Mann-Whitney U test on the stored
  per-repeat samples (``time_samples_s``). A slowdown is a regression only when the ratio
  exceeds ``--max-time-ratio`` (the minimum effect size), the head is slower by at least
  ``--min-time-delta-s``, *and* the test rejects equality at ``--alpha``. When the samples
  cannot decide (missing, or so few that even complete separation gives p > alpha: 3 against 3
  repeats give at best p = 0.1) the ratio alone decides, and the row says so. The test's cost
  grows like n log n (exact only for at most 8 against 50 samples; the smallest attainable p
  in log space), so 10^6 samples a side are affordable.
* memory: ``mem_peak_mb`` is one number per case and close to deterministic; the ratio must
  exceed ``--max-mem-ratio`` and the difference ``--min-mem-delta-mb``.
* status: a case that was ``ok`` in the base and is anything else in the head (``oom``,
  ``timeout``, ``error``, ``skipped``) is a regression; the reverse is an improvement.
* not measured: a pair where neither side gives a number to compare (not ok on both sides,
  or ok on both without a time or peak memory on both) is listed as ``not measured`` with its
  statuses or what is missing. It fails nothing by itself (a case failing in both runs is not
  a regression), but a comparison in which no pair was measured fails. A value no measurement
  can have (NaN, infinite, negative, or a zero time) is not compared, and the row says so: a
  second line of defence behind the row schema (``store.row_problem``).
* noise: when either side's case is marked ``unstable`` (its spread stayed above target, or
  the machine was busy while it ran: :mod:`attnbench.measure.machine`), a time change is
  ``inconclusive``, never a regression or an improvement, and the row says which side and why.
  Memory and status are judged as usual (neither depends on the machine's load).

The thresholds are checked before anything is read (:class:`Thresholds`): ratios finite and
>= 1, ``--alpha`` in (0, 1), the minimum deltas finite and >= 0. The two runs' machines
(:meth:`attnbench.meta.Environment.machine`: CPU model and count, memory, GPUs, framework
versions; not the hostname) are compared part by part where both record it: a difference is
refused unless ``--allow-other-machine``, and then said above the table; a side that records
no machine is said (the machines cannot be compared), not refused.

A case present on one side only is listed as such (a failure with ``--fail-on-missing``).
Exit status: 0 no regression; 1 a regression, a missing case with ``--fail-on-missing``, an
inconclusive change with ``--fail-on-inconclusive``, no pair at all, or no pair measured
(nothing compared is not a pass); 2 an input that is not a run or has unreadable rows, a
threshold that breaks its rule, or two different machines without ``--allow-other-machine``.
Either side may be a run directory or a pytest-benchmark JSON file (attnbench's fixture
records each benchmark's case_id, so its rows pair with a run's). ``--format markdown``
escapes ``\\``, ``|``, ``&``, ``<`` and ``>`` in every cell and line it writes, so a case
label from someone else's run is text, never HTML.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from attnbench.meta import Environment
from attnbench.runner.case import distinct_labels
from attnbench.runs import (
    frameworks_of,
    latest_per_case,
    load_source,
    row_case,
    row_metrics,
    unreadable_summary,
)
from attnbench.safeio import check_outputs, write_atomic
from attnbench.text import markdown_text, plain_text
from attnbench.units import format_seconds

REGRESSION, IMPROVEMENT, UNCHANGED = "regression", "improvement", "unchanged"
INCONCLUSIVE = "inconclusive"  # a timing change where either side was marked unstable
NOT_MEASURED = "not measured"  # neither side gives a number to compare
ONLY_BASE, ONLY_HEAD = "only in base", "only in head"
TIME, MEMORY = "time_median_s", "mem_peak_mb"


def _finite_at_least(low: float):
    return lambda v: math.isfinite(v) and v >= low


# Each threshold's rule, checked by Thresholds; the option is "--" + the name, dashed.
THRESHOLD_RULES = {
    "max_time_ratio": (_finite_at_least(1), "must be finite and >= 1 (head/base median time "
                                            "above it is a slowdown)"),
    "max_mem_ratio": (_finite_at_least(1), "must be finite and >= 1 (head/base peak memory "
                                           "above it is a regression)"),
    "alpha": (lambda v: 0 < v < 1, "must be in (0, 1), the open interval (a significance "
                                   "level)"),
    "min_time_delta_s": (_finite_at_least(0), "must be finite and >= 0 (seconds)"),
    "min_mem_delta_mb": (_finite_at_least(0), "must be finite and >= 0 (MiB)"),
}


def threshold_option(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class Thresholds:
    """What counts as a change. Validated when made (:data:`THRESHOLD_RULES`): a
    ``ValueError`` naming the option, the value and the rule."""

    max_time_ratio: float = 1.10
    max_mem_ratio: float = 1.05
    alpha: float = 0.05
    min_time_delta_s: float = 0.0
    min_mem_delta_mb: float = 1.0

    def __post_init__(self) -> None:
        for name, (holds, rule) in THRESHOLD_RULES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{threshold_option(name)} {value!r}: must be a number")
            if not holds(value):
                raise ValueError(f"{threshold_option(name)} {value:g}: {rule}")


@dataclass
class CaseComparison:
    case_id: str
    label: str
    verdict: str            # regression | improvement | inconclusive | not measured |
    #                         unchanged | only in ...
    base_status: str | None = None
    head_status: str | None = None
    base_time_s: float | None = None
    head_time_s: float | None = None
    time_ratio: float | None = None
    time_p: float | None = None                # None: no test was possible
    base_mem_mb: float | None = None
    head_mem_mb: float | None = None
    mem_ratio: float | None = None
    reasons: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Mann-Whitney U (scipy's when installed; the same test written out otherwise)
# --------------------------------------------------------------------------------------------

# The exact null distribution is used for at most EXACT_MIN against EXACT_MAX samples (and no
# ties), by both implementations; beyond, the normal approximation, whose cost is a sort.
EXACT_MIN, EXACT_MAX = 8, 50


def _ranks(values: Sequence[float]) -> list[float]:
    """Ranks from 1, ties given their average rank (one sort: O(n log n))."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


@cache
def _u_count(n1: int, n2: int, u: int) -> int:
    """Arrangements of n1 + n2 distinct values whose U statistic (for the first group) is u."""
    if u < 0 or u > n1 * n2:
        return 0
    if n1 == 0 or n2 == 0:
        return 1 if u == 0 else 0
    # the largest value belongs to group 1 (it beats all n2 others) or to group 2
    return _u_count(n1 - 1, n2, u - n2) + _u_count(n1, n2 - 1, u)


def mann_whitney_u(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(U of x, two-sided p). Exact without ties for small samples (at most EXACT_MIN against
    EXACT_MAX), else normal approximation with tie and continuity corrections (scipy's
    ``method="auto"`` on such samples). O(n log n): one sort."""
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        raise ValueError("mann_whitney_u needs two non-empty samples")
    ranks = _ranks(list(x) + list(y))
    u1 = sum(ranks[:n1]) - n1 * (n1 + 1) / 2
    has_ties = len(set(x) | set(y)) < n1 + n2
    if not has_ties and min(n1, n2) <= EXACT_MIN and max(n1, n2) <= EXACT_MAX:
        total = math.comb(n1 + n2, n1)
        u = int(round(u1))
        low = sum(_u_count(n1, n2, k) for k in range(u + 1)) / total
        high = sum(_u_count(n1, n2, k) for k in range(u, n1 * n2 + 1)) / total
        return u1, min(1.0, 2 * min(low, high))
    n = n1 + n2
    tie_sizes: dict[float, int] = {}
    for r in ranks:
        tie_sizes[r] = tie_sizes.get(r, 0) + 1
    tie_term = sum(t**3 - t for t in tie_sizes.values())
    sigma = math.sqrt(n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1))))
    if sigma == 0:
        return u1, 1.0
    z = (abs(u1 - n1 * n2 / 2) - 0.5) / sigma
    return u1, min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2)))


def significance(base: Sequence[float], head: Sequence[float]) -> float:
    """Two-sided p-value that base and head samples come from one distribution."""
    try:
        from scipy.stats import mannwhitneyu
    except ImportError:
        return mann_whitney_u(head, base)[1]
    # scipy's "auto" takes its exact test whenever one side has <= 8 samples and there are no
    # ties, at a cost that grows like (n1 * n2)^2: 3 against 10^6 samples would not finish.
    method = "auto" if max(len(base), len(head)) <= EXACT_MAX else "asymptotic"
    return float(mannwhitneyu(head, base, alternative="two-sided", method=method).pvalue)


def smallest_p(n1: int, n2: int) -> float:
    """The smallest two-sided p the exact test can give for these sample sizes, 2 / C(n1 + n2,
    n1): exact for small samples (where it meets alpha at its edges: 3 against 3 give 0.1),
    else in log space (the coefficient for 10^6 against 10^6 has 600,000 digits)."""
    if n1 + n2 <= 1000:
        return min(1.0, 2 / math.comb(n1 + n2, n1))
    log_comb = math.lgamma(n1 + n2 + 1) - math.lgamma(n1 + 1) - math.lgamma(n2 + 1)
    return min(1.0, 2 * math.exp(-log_comb))


# --------------------------------------------------------------------------------------------
# Comparing two runs
# --------------------------------------------------------------------------------------------


def _is_measurement(value: Any, positive: bool = False) -> bool:
    """A finite number >= 0 (> 0 with ``positive``); never a bool."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and (value > 0 if positive else value >= 0))


def _value(c: CaseComparison, metrics: dict[str, Any], key: str, side: str,
           positive: bool = False) -> float | None:
    """The metric, or None where absent or not a measurement (a reason says which)."""
    value = metrics.get(key)
    if value is None:
        return None
    if not _is_measurement(value, positive):
        c.reasons.append(f"{side} {key} = {value!r} is not a measurement: not compared")
        return None
    return float(value)


def _pair(c: CaseComparison, base: dict, head: dict, key: str,
          positive: bool = False) -> tuple[float | None, float | None]:
    """Both sides' values of a metric; a side that lacks one the other has is said."""
    b = _value(c, base, key, "base", positive)
    h = _value(c, head, key, "head", positive)
    for side, value, metrics, other in (("base", b, base, h), ("head", h, head, b)):
        if value is None and metrics.get(key) is None and other is not None:
            c.reasons.append(f"{side} has no {key}: not compared")
    return b, h


def _samples(c: CaseComparison, metrics: dict[str, Any], side: str) -> list[float]:
    samples = metrics.get("time_samples_s")
    if not isinstance(samples, list):
        return []
    for s in samples:
        if not _is_measurement(s):
            c.reasons.append(f"{side} time_samples_s holds {s!r}, not a measurement: no test")
            return []
    return [float(s) for s in samples]


def _compare_time(c: CaseComparison, base: dict, head: dict, t: Thresholds) -> str | None:
    """The time verdict, or None when the pair has no time to compare."""
    c.base_time_s, c.head_time_s = _pair(c, base, head, TIME, positive=True)
    if c.base_time_s is None or c.head_time_s is None:
        return None
    c.time_ratio = c.head_time_s / c.base_time_s
    base_samples, head_samples = _samples(c, base, "base"), _samples(c, head, "head")
    testable = (len(base_samples) >= 2 and len(head_samples) >= 2
                and smallest_p(len(base_samples), len(head_samples)) <= t.alpha)
    if testable:
        c.time_p = significance(base_samples, head_samples)
    significant = c.time_p is None or c.time_p < t.alpha
    untested = "" if testable else " (too few samples for a test: ratio alone decides)"
    delta = c.head_time_s - c.base_time_s
    if c.time_ratio > t.max_time_ratio and delta >= t.min_time_delta_s and significant:
        c.reasons.append(f"time x{c.time_ratio:.2f} > {t.max_time_ratio:g}{untested}")
        return REGRESSION
    if c.time_ratio < 1 / t.max_time_ratio and -delta >= t.min_time_delta_s and significant:
        c.reasons.append(f"time x{c.time_ratio:.2f}{untested}")
        return IMPROVEMENT
    return UNCHANGED


def _compare_memory(c: CaseComparison, base: dict, head: dict, t: Thresholds) -> str | None:
    """The memory verdict, or None when the pair has no peak memory to compare."""
    c.base_mem_mb, c.head_mem_mb = _pair(c, base, head, MEMORY)
    if c.base_mem_mb is None or c.head_mem_mb is None:
        return None
    delta = c.head_mem_mb - c.base_mem_mb
    c.mem_ratio = c.head_mem_mb / c.base_mem_mb if c.base_mem_mb > 0 else None
    grew = (c.mem_ratio is None and delta > 0) or (c.mem_ratio or 0) > t.max_mem_ratio
    if grew and delta >= t.min_mem_delta_mb:
        ratio = "" if c.mem_ratio is None else f" x{c.mem_ratio:.2f} > {t.max_mem_ratio:g}"
        c.reasons.append(f"peak memory +{delta:.1f} MiB{ratio}")
        return REGRESSION
    shrank = c.mem_ratio is not None and c.mem_ratio < 1 / t.max_mem_ratio
    if shrank and -delta >= t.min_mem_delta_mb:
        c.reasons.append(f"peak memory {delta:.1f} MiB")
        return IMPROVEMENT
    return UNCHANGED


def _why_unstable(row: dict[str, Any]) -> str:
    reasons = row_metrics(row).get("unstable_reasons")
    return "; ".join(map(str, reasons)) if isinstance(reasons, list) and reasons else "unstable"


def _compare_measurements(c: CaseComparison, b: dict[str, Any], h: dict[str, Any],
                          thresholds: Thresholds) -> str:
    """The verdict of a pair that is ok on both sides."""
    time_verdict = _compare_time(c, row_metrics(b), row_metrics(h), thresholds)
    unstable = [side for side, row in (("base", b), ("head", h))
                if row_metrics(row).get("unstable")]
    if unstable and time_verdict in (REGRESSION, IMPROVEMENT):
        c.reasons[-1] += (f": inconclusive, {' and '.join(unstable)} marked unstable ("
                          + "; ".join(_why_unstable(r) for r in (b, h)
                                      if row_metrics(r).get("unstable")) + ")")
        time_verdict = INCONCLUSIVE
    memory_verdict = _compare_memory(c, row_metrics(b), row_metrics(h), thresholds)
    verdicts = {time_verdict, memory_verdict} - {None}
    if not verdicts:
        if not c.reasons:
            c.reasons.append(f"neither side has {TIME} or {MEMORY} (compare judges these)")
        return NOT_MEASURED
    return (REGRESSION if REGRESSION in verdicts else
            IMPROVEMENT if IMPROVEMENT in verdicts else
            INCONCLUSIVE if INCONCLUSIVE in verdicts else UNCHANGED)


def compare_rows(base_rows: list[dict[str, Any]], head_rows: list[dict[str, Any]],
                 thresholds: Thresholds = Thresholds()) -> list[CaseComparison]:
    """One comparison per case present in either run, regressions first."""
    base = {r.get("case_id"): r for r in latest_per_case(base_rows)}
    head = {r.get("case_id"): r for r in latest_per_case(head_rows)}
    results = []
    ids = list(base) + [k for k in head if k not in base]
    labels = distinct_labels({i: row_case(base[i] if i in base else head[i]) for i in ids})
    for case_id in ids:
        b, h = base.get(case_id), head.get(case_id)
        c = CaseComparison(case_id=str(case_id), label=labels[case_id], verdict=UNCHANGED,
                           base_status=b and b.get("status"), head_status=h and h.get("status"))
        if b is None or h is None:
            c.verdict = ONLY_HEAD if b is None else ONLY_BASE
        elif c.base_status == "ok" and c.head_status != "ok":
            c.reasons.append(f"status ok -> {c.head_status}")
            c.verdict = REGRESSION
        elif c.base_status != "ok" and c.head_status == "ok":
            c.reasons.append(f"status {c.base_status} -> ok")
            c.verdict = IMPROVEMENT
        elif c.base_status != "ok":  # and the head's: failing in both is no regression
            c.reasons.append(f"no measurement on either side: base {c.base_status}, "
                             f"head {c.head_status}")
            c.verdict = NOT_MEASURED
        else:
            c.verdict = _compare_measurements(c, b, h, thresholds)
        results.append(c)
    order = {REGRESSION: 0, IMPROVEMENT: 1, INCONCLUSIVE: 2, NOT_MEASURED: 3, ONLY_BASE: 4,
             ONLY_HEAD: 5, UNCHANGED: 6}
    return sorted(results, key=lambda c: order[c.verdict])


# --------------------------------------------------------------------------------------------
# The machines
# --------------------------------------------------------------------------------------------


def compare_machines(base: Environment | None, head: Environment | None,
                     frameworks: set[str] | None = None) -> tuple[list[str], list[str]]:
    """(differences, notes): each part of :meth:`Environment.machine` both sides record and
    that differs, as ``part BASE vs HEAD``; and what could not be compared. Given the
    ``frameworks`` the compared cases ran in, another framework's version is no difference."""
    b = base.machine(frameworks) if base is not None else {}
    h = head.machine(frameworks) if head is not None else {}
    bare = [side for side, parts in (("base", b), ("head", h)) if not parts]
    if bare:
        return [], [f"the machines cannot be compared: {' and '.join(bare)} "
                    f"record{'s' if len(bare) == 1 else ''} no machine (CPU, memory, GPUs "
                    "or framework versions)"]
    shared = [k for k in b if k in h]
    if not shared:
        return [], [f"the machines cannot be compared: no part is recorded by both (base: "
                    f"{', '.join(b)}; head: {', '.join(h)})"]
    differences = [f"{k} {b[k]!r} vs {h[k]!r}" for k in shared if b[k] != h[k]]
    one_sided = [k for k in b if k not in h] + [k for k in h if k not in b]
    notes = [f"machine parts recorded by one side only, not compared: {', '.join(one_sided)}"
             ] if one_sided else []
    return differences, notes


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


COLUMNS = ("verdict", "case", "status", "time base", "time head", "time ratio", "p",
           "mem base MiB", "mem head MiB", "mem ratio", "why")

def comparison_cells(c: CaseComparison) -> list[str]:
    status = (c.base_status or "-") if c.base_status == c.head_status else \
        f"{c.base_status or '-'} -> {c.head_status or '-'}"
    return [c.verdict, c.label, status, format_seconds(c.base_time_s),
            format_seconds(c.head_time_s), _fmt(c.time_ratio, ".3f"), _fmt(c.time_p, ".3g"),
            _fmt(c.base_mem_mb, ".1f"), _fmt(c.head_mem_mb, ".1f"), _fmt(c.mem_ratio, ".3f"),
            "; ".join(c.reasons)]


def format_table(comparisons: list[CaseComparison], fmt: str = "text") -> str:
    rows = [comparison_cells(c) for c in comparisons]
    if fmt == "markdown":
        def line(cells):
            return "| " + " | ".join(markdown_text(x) for x in cells) + " |"
        return "\n".join([line(COLUMNS), line(["---"] * len(COLUMNS))] + [line(r) for r in rows])
    rows = [[plain_text(x) for x in r] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(COLUMNS, *rows, strict=False)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(cells, widths, strict=True))
                     .rstrip() for cells in [COLUMNS, ["-" * w for w in widths], *rows])


def summary_line(comparisons: list[CaseComparison]) -> str:
    counts = {v: sum(c.verdict == v for c in comparisons)
              for v in (REGRESSION, IMPROVEMENT, INCONCLUSIVE, UNCHANGED, NOT_MEASURED,
                        ONLY_BASE, ONLY_HEAD)}
    plural = (REGRESSION, IMPROVEMENT)  # the others do not take an s
    return ", ".join(f"{n} {v}" + ("s" if n != 1 and v in plural else "")
                     for v, n in counts.items())


# --------------------------------------------------------------------------------------------
# attnbench compare BASE HEAD
# --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Compare two runs case by case (paired by case_id); exit 1 when a "
                          "case regresses beyond the thresholds or nothing was measured.")
    parser.add_argument("base", help="run directory or pytest-benchmark JSON (the reference)")
    parser.add_argument("head", help="run directory or pytest-benchmark JSON (the candidate)")
    d = Thresholds()
    parser.add_argument("--max-time-ratio", type=float, default=d.max_time_ratio,
                        help="head/base median time above this is a slowdown; finite, >= 1 "
                             "(default %(default)s)")
    parser.add_argument("--max-mem-ratio", type=float, default=d.max_mem_ratio,
                        help="head/base peak memory above this is a regression; finite, >= 1 "
                             "(default %(default)s)")
    parser.add_argument("--alpha", type=float, default=d.alpha,
                        help="significance level of the Mann-Whitney U test on the time "
                             "samples, in (0, 1) (default %(default)s)")
    parser.add_argument("--min-time-delta-s", type=float, default=d.min_time_delta_s,
                        help="ignore time changes smaller than this, in seconds; finite, >= 0 "
                             "(default %(default)s)")
    parser.add_argument("--min-mem-delta-mb", type=float, default=d.min_mem_delta_mb,
                        help="ignore memory changes smaller than this, in MiB; finite, >= 0 "
                             "(default %(default)s)")
    parser.add_argument("--fail-on-missing", action="store_true",
                        help="a case present in only one run fails the comparison")
    parser.add_argument("--fail-on-inconclusive", action="store_true",
                        help="a time change that cannot be judged (a side marked unstable) "
                             "fails the comparison")
    parser.add_argument("--allow-other-machine", action="store_true",
                        help="compare runs whose machines differ (CPU model or count, memory, "
                             "GPUs, framework versions); the output says which parts differ")
    parser.add_argument("--format", choices=("text", "markdown"), default="text",
                        help="table format (markdown for a pull-request comment)")
    parser.add_argument("--output", "-o", help="also write the table to this file")
    parser.add_argument("--changes-only", action="store_true",
                        help="leave unchanged cases out of the table")


def _error(message: str) -> None:
    print(f"attnbench compare: error: {message}", file=sys.stderr)


def _same_file(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False  # a missing one is load_source's error, named there


def run(args: argparse.Namespace) -> int:
    try:
        thresholds = Thresholds(**{name: getattr(args, name) for name in THRESHOLD_RULES})
    except ValueError as exc:
        _error(str(exc))
        return 2
    try:
        base, head = load_source(args.base), load_source(args.head)
        if args.output is not None:  # before anything is printed: never a run's file
            check_outputs([("-o", args.output)], [args.base, args.head])
    except ValueError as exc:
        _error(str(exc))
        return 2
    unreadable = unreadable_summary([base, head])
    if unreadable:  # a row left out could be the regression
        for line in unreadable:
            _error(line)
        return 2
    differences, notes = compare_machines(base.environment, head.environment,
                                          frameworks_of([*base.rows, *head.rows]))
    if differences and not args.allow_other_machine:
        _error(f"{args.base} and {args.head} were measured on different machines (base vs "
               f"head): {'; '.join(differences)}; --allow-other-machine compares them anyway")
        return 2
    if differences:
        notes.insert(0, f"different machines (base vs head): {'; '.join(differences)}: a "
                        "change may be the machine's, not the code's")
    comparisons = compare_rows(base.rows, head.rows, thresholds)
    shown = [c for c in comparisons if not (args.changes_only and c.verdict == UNCHANGED)]
    escape = markdown_text if args.format == "markdown" else plain_text
    heading = [escape(f"{base.run_id} -> {head.run_id}")] + [escape(f"note: {n}")
                                                              for n in notes]
    text = (("\n\n" if args.format == "markdown" else "\n").join(heading) + "\n\n"
            + format_table(shown, args.format) + "\n\n" + summary_line(comparisons) + "\n")
    print(text, end="")
    if args.output is not None:
        try:
            write_atomic(args.output, text)
        except OSError as exc:
            _error(f"cannot write -o {args.output}: {exc.strerror or exc} (the table is above)")
            return 2
    if _same_file(args.base, args.head):  # a run against itself would pass every gate
        _error(f"base {args.base} and head {args.head} are the same run: nothing was "
               "compared with another run")
        return 1
    paired = [c for c in comparisons if c.verdict not in (ONLY_BASE, ONLY_HEAD)]
    if not paired:
        _error(f"nothing was compared: no case of {args.head} pairs with one of {args.base} "
               "(cases pair by case_id)")
        return 1
    if all(c.verdict == NOT_MEASURED for c in paired):
        _error(f"nothing was measured: in each of the {len(paired)} pair(s) of cases neither "
               f"side gives a number to compare (not ok on both sides, or no {TIME} or "
               f"{MEMORY} on both); see 'why'")
        return 1
    regressed = any(c.verdict == REGRESSION for c in comparisons)
    missing = any(c.verdict in (ONLY_BASE, ONLY_HEAD) for c in comparisons)
    inconclusive = sum(c.verdict == INCONCLUSIVE for c in comparisons)
    if inconclusive:
        print(f"attnbench compare: {inconclusive} time change(s) inconclusive: a side was "
              "marked unstable (see 'why'); measure again on a quiet machine", file=sys.stderr)
    return 1 if (regressed or (missing and args.fail_on_missing)
                 or (inconclusive and args.fail_on_inconclusive)) else 0
