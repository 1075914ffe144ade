"""A/B comparison of two runs: ``attnbench compare BASE HEAD``, a CI regression gate.

Cases are paired by ``case_id`` (the hash of what was measured, so the same point in two runs
or two suites pairs up). For each pair:

* time: the ratio of medians head / base, and a two-sided Mann-Whitney U test on the stored
  per-repeat samples (``time_samples_s``). A slowdown is a regression only when the ratio
  exceeds ``--max-time-ratio`` (the minimum effect size), the head is slower by at least
  ``--min-time-delta-s``, *and* the test rejects equality at ``--alpha``. When the samples
  cannot decide (missing, or so few that even complete separation gives p > alpha: 3 against 3
  repeats give at best p = 0.1) the ratio alone decides, and the row says so.
* memory: ``mem_peak_mb`` is one number per case and close to deterministic; the ratio must
  exceed ``--max-mem-ratio`` and the difference ``--min-mem-delta-mb``.
* status: a case that was ``ok`` in the base and is anything else in the head (``oom``,
  ``timeout``, ``error``, ``skipped``) is a regression.
* noise: when either side's case is marked ``unstable`` (its spread stayed above target, or
  the machine was busy while it ran: :mod:`attnbench.measure.machine`), a time change is
  ``inconclusive``, never a regression or an improvement, and the row says which side and why.
  Memory and status are judged as usual (neither depends on the machine's load).

A case present on one side only is listed as such (a failure with ``--fail-on-missing``).
Exit status: 0 no regression, 1 a regression, a missing case with ``--fail-on-missing``, or
no pair at all (nothing compared is not a pass), 2 an input that is not a run. Either side
may be a run directory or a pytest-benchmark JSON file (attnbench's fixture records each
benchmark's case_id, so its rows pair with a run's).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from attnbench.runs import (
    latest_per_case,
    load_source,
    row_label,
    row_metrics,
    unreadable_summary,
)
from attnbench.units import format_seconds

REGRESSION, IMPROVEMENT, UNCHANGED = "regression", "improvement", "unchanged"
INCONCLUSIVE = "inconclusive"  # a timing change where either side was marked unstable
ONLY_BASE, ONLY_HEAD = "only in base", "only in head"


@dataclass(frozen=True)
class Thresholds:
    max_time_ratio: float = 1.10
    max_mem_ratio: float = 1.05
    alpha: float = 0.05
    min_time_delta_s: float = 0.0
    min_mem_delta_mb: float = 1.0


@dataclass
class CaseComparison:
    case_id: str
    label: str
    verdict: str            # regression | improvement | inconclusive | unchanged | only in ...
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


def _ranks(values: Sequence[float]) -> list[float]:
    """Ranks from 1, ties given their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
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
    """(U of x, two-sided p). Exact without ties for small samples, else normal approximation
    with tie and continuity corrections (scipy's ``method="auto"``)."""
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        raise ValueError("mann_whitney_u needs two non-empty samples")
    ranks = _ranks(list(x) + list(y))
    u1 = sum(ranks[:n1]) - n1 * (n1 + 1) / 2
    has_ties = len(set(x) | set(y)) < n1 + n2
    if not has_ties and min(n1, n2) <= 8 and max(n1, n2) <= 50:
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
    return float(mannwhitneyu(head, base, alternative="two-sided").pvalue)


def smallest_p(n1: int, n2: int) -> float:
    """The smallest two-sided p the exact test can give for these sample sizes."""
    return min(1.0, 2 / math.comb(n1 + n2, n1))


# --------------------------------------------------------------------------------------------
# Comparing two runs
# --------------------------------------------------------------------------------------------


def _number(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def _samples(metrics: dict[str, Any]) -> list[float]:
    samples = metrics.get("time_samples_s")
    if not isinstance(samples, list):
        return []
    return [float(s) for s in samples if isinstance(s, int | float) and not isinstance(s, bool)]


def _compare_time(c: CaseComparison, base: dict, head: dict, t: Thresholds) -> str:
    c.base_time_s, c.head_time_s = _number(base, "time_median_s"), _number(head, "time_median_s")
    if not c.base_time_s or c.head_time_s is None:
        return UNCHANGED
    c.time_ratio = c.head_time_s / c.base_time_s
    base_samples, head_samples = _samples(base), _samples(head)
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


def _compare_memory(c: CaseComparison, base: dict, head: dict, t: Thresholds) -> str:
    c.base_mem_mb, c.head_mem_mb = _number(base, "mem_peak_mb"), _number(head, "mem_peak_mb")
    if c.base_mem_mb is None or c.head_mem_mb is None:
        return UNCHANGED
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


def compare_rows(base_rows: list[dict[str, Any]], head_rows: list[dict[str, Any]],
                 thresholds: Thresholds = Thresholds()) -> list[CaseComparison]:
    """One comparison per case present in either run, regressions first."""
    base = {r.get("case_id"): r for r in latest_per_case(base_rows)}
    head = {r.get("case_id"): r for r in latest_per_case(head_rows)}
    results = []
    for case_id in list(base) + [k for k in head if k not in base]:
        b, h = base.get(case_id), head.get(case_id)
        label = row_label(h if b is None else b)
        c = CaseComparison(case_id=str(case_id), label=label, verdict=UNCHANGED,
                           base_status=b and b.get("status"), head_status=h and h.get("status"))
        if b is None or h is None:
            c.verdict = ONLY_HEAD if b is None else ONLY_BASE
            results.append(c)
            continue
        if c.base_status == "ok" and c.head_status != "ok":
            c.reasons.append(f"status ok -> {c.head_status}")
            c.verdict = REGRESSION
        elif c.base_status != "ok" and c.head_status == "ok":
            c.reasons.append(f"status {c.base_status} -> ok")
            c.verdict = IMPROVEMENT
        if c.base_status == "ok" and c.head_status == "ok":
            time_verdict = _compare_time(c, row_metrics(b), row_metrics(h), thresholds)
            unstable = [side for side, row in (("base", b), ("head", h))
                        if row_metrics(row).get("unstable")]
            if unstable and time_verdict != UNCHANGED:
                c.reasons[-1] += (f": inconclusive, {' and '.join(unstable)} marked unstable ("
                                  + "; ".join(_why_unstable(r) for r in (b, h)
                                              if row_metrics(r).get("unstable")) + ")")
                time_verdict = INCONCLUSIVE
            verdicts = {time_verdict,
                        _compare_memory(c, row_metrics(b), row_metrics(h), thresholds)}
            c.verdict = (REGRESSION if REGRESSION in verdicts else
                         IMPROVEMENT if IMPROVEMENT in verdicts else
                         INCONCLUSIVE if INCONCLUSIVE in verdicts else UNCHANGED)
        results.append(c)
    order = {REGRESSION: 0, IMPROVEMENT: 1, INCONCLUSIVE: 2, ONLY_BASE: 3, ONLY_HEAD: 4,
             UNCHANGED: 5}
    return sorted(results, key=lambda c: order[c.verdict])


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
            return "| " + " | ".join(str(x).replace("|", "\\|") for x in cells) + " |"
        return "\n".join([line(COLUMNS), line(["---"] * len(COLUMNS))] + [line(r) for r in rows])
    widths = [max(len(str(x)) for x in col) for col in zip(COLUMNS, *rows, strict=False)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(cells, widths, strict=True))
                     .rstrip() for cells in [COLUMNS, ["-" * w for w in widths], *rows])


def summary_line(comparisons: list[CaseComparison]) -> str:
    counts = {v: sum(c.verdict == v for c in comparisons)
              for v in (REGRESSION, IMPROVEMENT, INCONCLUSIVE, UNCHANGED, ONLY_BASE, ONLY_HEAD)}
    plural = (REGRESSION, IMPROVEMENT)  # "unchanged" and "only in ..." do not take an s
    return ", ".join(f"{n} {v}" + ("s" if n != 1 and v in plural else "")
                     for v, n in counts.items())


# --------------------------------------------------------------------------------------------
# attnbench compare BASE HEAD
# --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Compare two runs case by case (paired by case_id); exit 1 when a "
                          "case regresses beyond the thresholds.")
    parser.add_argument("base", help="run directory or pytest-benchmark JSON (the reference)")
    parser.add_argument("head", help="run directory or pytest-benchmark JSON (the candidate)")
    d = Thresholds()
    parser.add_argument("--max-time-ratio", type=float, default=d.max_time_ratio,
                        help="head/base median time above this is a slowdown "
                             "(default %(default)s)")
    parser.add_argument("--max-mem-ratio", type=float, default=d.max_mem_ratio,
                        help="head/base peak memory above this is a regression "
                             "(default %(default)s)")
    parser.add_argument("--alpha", type=float, default=d.alpha,
                        help="significance level of the Mann-Whitney U test on the time "
                             "samples (default %(default)s)")
    parser.add_argument("--min-time-delta-s", type=float, default=d.min_time_delta_s,
                        help="ignore time changes smaller than this, in seconds "
                             "(default %(default)s)")
    parser.add_argument("--min-mem-delta-mb", type=float, default=d.min_mem_delta_mb,
                        help="ignore memory changes smaller than this, in MiB "
                             "(default %(default)s)")
    parser.add_argument("--fail-on-missing", action="store_true",
                        help="a case present in only one run fails the comparison")
    parser.add_argument("--fail-on-inconclusive", action="store_true",
                        help="a time change that cannot be judged (a side marked unstable) "
                             "fails the comparison")
    parser.add_argument("--format", choices=("text", "markdown"), default="text",
                        help="table format (markdown for a pull-request comment)")
    parser.add_argument("--output", "-o", help="also write the table to this file")
    parser.add_argument("--changes-only", action="store_true",
                        help="leave unchanged cases out of the table")


def run(args: argparse.Namespace) -> int:
    try:
        base, head = load_source(args.base), load_source(args.head)
    except ValueError as exc:
        print(f"attnbench compare: error: {exc}", file=sys.stderr)
        return 2
    unreadable = unreadable_summary([base, head])
    if unreadable:  # a row left out could be the regression
        for line in unreadable:
            print(f"attnbench compare: error: {line}", file=sys.stderr)
        return 2
    thresholds = Thresholds(max_time_ratio=args.max_time_ratio, max_mem_ratio=args.max_mem_ratio,
                            alpha=args.alpha, min_time_delta_s=args.min_time_delta_s,
                            min_mem_delta_mb=args.min_mem_delta_mb)
    comparisons = compare_rows(base.rows, head.rows, thresholds)
    shown = [c for c in comparisons if not (args.changes_only and c.verdict == UNCHANGED)]
    text = (f"{base.run_id} -> {head.run_id}\n\n" + format_table(shown, args.format)
            + "\n\n" + summary_line(comparisons) + "\n")
    print(text, end="")
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            print(f"attnbench compare: error: cannot write -o {args.output}: "
                  f"{exc.strerror or exc} (the table is above)", file=sys.stderr)
            return 2
    regressed = any(c.verdict == REGRESSION for c in comparisons)
    missing = any(c.verdict in (ONLY_BASE, ONLY_HEAD) for c in comparisons)
    if not any(c.verdict not in (ONLY_BASE, ONLY_HEAD) for c in comparisons):
        print(f"attnbench compare: error: nothing was compared: no case of {args.head} pairs "
              f"with one of {args.base} (cases pair by case_id)", file=sys.stderr)
        return 1
    inconclusive = sum(c.verdict == INCONCLUSIVE for c in comparisons)
    if inconclusive:
        print(f"attnbench compare: {inconclusive} time change(s) inconclusive: a side was "
              "marked unstable (see 'why'); measure again on a quiet machine", file=sys.stderr)
    return 1 if (regressed or (missing and args.fail_on_missing)
                 or (inconclusive and args.fail_on_inconclusive)) else 0
