"""The report's tables, as plain data (:class:`Table`); :mod:`attnbench.report.html` renders them.

Cells hold raw values (text from suites and results included); nothing here is HTML.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from attnbench.ratios import evaluate_contracts
from attnbench.report import derive
from attnbench.runs import Source, row_metrics, unreadable_summary
from attnbench.store import STATUSES
from attnbench.units import format_seconds


@dataclass
class Table:
    key: str
    title: str
    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""
    empty_note: str = "nothing to show"
    preformatted: set[str] = field(default_factory=set)  # columns shown as <pre> (error text)
    row_classes: list[str] = field(default_factory=list)  # per row: "", "fail", "pass"


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt_number(value, spec=".3g") -> str:
    if _missing(value):
        return "-"
    if isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, float) and value.is_integer() and abs(value) < 1e15 and spec == "d":
            return str(int(value))
        return format(value, spec)
    return str(value)


def fmt_int(value) -> str:
    return "-" if _missing(value) else str(int(value))


def fmt_mb(value) -> str:
    return "-" if _missing(value) else f"{value:.1f}"


def fmt_time(value) -> str:
    return "-" if _missing(value) else format_seconds(float(value))


def _device(source: Source) -> str:
    env = source.environment
    if env is None:
        return "-"
    if env.gpu:
        names = [str(g.get("name", "?")) if isinstance(g, dict) else str(g) for g in env.gpu]
        return ", ".join(names)
    return f"CPU: {env.cpu or '?'}"


def threads_cell(source: Source) -> str:
    """The threads the cases ran with (``threads_used`` of the rows), else the framework's
    default recorded in the environment."""
    used = sorted({m["threads_used"] for m in map(row_metrics, source.rows)
                   if isinstance(m.get("threads_used"), int)})
    if used:
        return ", ".join(map(str, used))
    env = source.environment
    if env is not None and env.threads is not None:
        return f"{env.threads} (default)"
    return "-"


def runs_table(sources: list[Source]) -> Table:
    """One short line per run; what does not fit a cell is in :func:`run_details_table`."""
    rows = []
    for s in sources:
        env = s.environment
        rows.append([s.run_id, s.suite.name or "-", s.kind, _device(s), threads_cell(s),
                     (env.git.short if env else None) or "-", (env.python if env else None)
                     or "-", (env.hostname if env else None) or "-", s.meta.started_at or "-",
                     len(s.rows)])
    return Table("environment", "Runs and their environment",
                 ["run", "suite", "source", "device", "threads", "commit", "python", "host",
                  "started", "cases"], rows,
                 caption="What each run measured on. threads: what the cases ran with "
                         "(threads_used), else the framework's default; commit: the attnbench "
                         "checkout (+dirty: with uncommitted changes). Descriptions, versions "
                         "and the command are in the next table.",
                 empty_note="no runs given")


def run_details_table(sources: list[Source]) -> Table:
    """The long facts of each run, one per line, so the runs table stays narrow."""
    rows = []
    for s in sources:
        env = s.environment
        packages = ", ".join(f"{k} {v}" for k, v in (env.packages if env else {}).items()
                             if v) or "-"
        settings = ", ".join(f"{k}={v}" for k, v in (env.env_vars if env else {}).items()) \
            or "-"
        facts = [("description", s.suite.description or "-"),
                 ("command", " ".join(map(str, s.meta.argv)) or "-"),
                 ("path", str(s.path)),
                 ("platform", (env.platform if env else None) or "-"),
                 ("packages", packages),
                 ("settings", settings)]
        rows.extend([s.run_id, key, value] for key, value in facts)
    return Table("run-details", "Run details",
                 ["run", "what", "value"], rows,
                 caption="Per run: the suite's description, the command that made it, where "
                         "it is, the platform, package versions and the environment variables "
                         "that change what a measurement means (threads, allocators, XLA).",
                 empty_note="no runs given", preformatted={"value"})


def summary_table(frame) -> Table:
    rows = []
    if len(frame):
        fits = derive.largest_fit(frame)
        keys = ["run_id", "variant", "framework", "mode", "device"]
        for key, group in frame.groupby(keys, dropna=False, sort=False):
            counts = group["status"].value_counts()
            ok = group[group["status"] == "ok"]
            longest = ok["length"].max() if len(ok) and ok["length"].notna().any() else None
            at_longest = ok[ok["length"] == longest] if longest is not None else ok.iloc[:0]
            time = at_longest["time_median_s"].min() if "time_median_s" in frame.columns \
                and len(at_longest) else None
            mem = at_longest["mem_peak_mb"].min() if "mem_peak_mb" in frame.columns \
                and len(at_longest) else None
            lengths = sorted({int(n) for n in group["length"].dropna()})
            cut = fits[(fits["run_id"] == key[0]) & (fits["variant"] == key[1])
                       & (fits["framework"] == key[2]) & (fits["mode"] == key[3])
                       & fits["failure status"].notna()] if len(fits) else fits
            first_failure = ", ".join(f"{s} at {int(n)}" for s, n in
                                      zip(cut["failure status"], cut["first failure"],
                                          strict=True)) if len(cut) else "-"
            rows.append([*(("-" if _missing(k) else k) for k in key), len(group),
                         *(int(counts.get(s, 0)) for s in STATUSES), unstable_count(group),
                         _nodes(group),
                         _range(lengths), fmt_int(longest), fmt_time(time), fmt_mb(mem),
                         first_failure])
    return Table("summary", "Summary per variant",
                 ["run", "variant", "framework", "mode", "device", "cases", *STATUSES,
                  "unstable", "nodes", "lengths", "largest ok length", "time at largest",
                  "peak MiB at largest", "cut short by"], rows,
                 caption="Time and memory are the best over the variant's settings "
                         "(n_hashes, buckets) at its largest ok length; unstable: ok cases "
                         "whose time is marked unstable (see Every case); nodes: the hosts "
                         "they ran on (attnbench report --node HOST keeps one).",
                 empty_note="no results in these runs yet")


def _nodes(group) -> str:
    """The hosts a group's cases ran on (a cluster's nodes differ)."""
    if "node_host" not in group.columns:
        return "-"
    hosts = sorted({str(h) for h in group["node_host"].dropna()})
    return ", ".join(hosts) or "-"


def _range(values) -> str:
    if not values:
        return "-"
    return str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]} ({len(values)})"


def failures_table(frame) -> Table:
    rows, classes = [], []
    failed = frame[frame["status"] != "ok"] if len(frame) else frame
    for _, r in failed.iterrows():
        rows.append([r["run_id"], r["label"], r["case_id"], r["status"],
                     "" if _missing(r["error"]) else str(r["error"])])
        classes.append("fail")
    return Table("failures", "Every case that did not finish ok",
                 ["run", "case", "case id", "status", "error"], rows,
                 caption="OOM, timeout, error and skipped cases, with the error text recorded.",
                 empty_note="every case finished ok", preformatted={"error"},
                 row_classes=classes)


def largest_fit_table(frame) -> Table:
    fits = derive.largest_fit(frame)
    rows = [[r["mode"], r["series"], r["setup"], fmt_int(r["largest ok length"]),
             fmt_int(r["first failure"]),
             "-" if _missing(r["failure status"]) else r["failure status"]]
            for _, r in fits.iterrows()]
    return Table("largest-fit", "Largest length that fits",
                 ["mode", "series", "setup", "largest ok length", "first failing length",
                  "status"], rows,
                 caption="Per series (every field but the length equal): the longest sequence "
                         "measured ok and what stopped it.",
                 empty_note="no series measured at two or more lengths")


def exponents_table(frame) -> Table:
    fits = derive.scaling_exponents(frame)
    rows = [[r["metric"], r["mode"], r["series"], r["setup"], f"{r['exponent']:.2f}",
             r["lengths"], r["points"], f"{r['rms residual']:.3f}"]
            for _, r in fits.iterrows()]
    return Table("exponents", "Fitted scaling exponents in length",
                 ["metric", "mode", "series", "setup", "exponent", "lengths", "points",
                  "rms residual (log)"], rows,
                 caption="metric ~ length^exponent, least squares on log-log over ok points; "
                         "a large residual means a power law fits poorly (e.g. fixed costs "
                         "dominate at short lengths).",
                 empty_note="no series has ok results at three or more lengths")


def contracts_table(sources: list[Source]) -> Table:
    rows, classes = [], []
    for s in sources:
        for result in evaluate_contracts(s.rows, s.contracts):
            rows.append([s.run_id, "pass" if result.passed else "FAIL", result.name,
                         result.metric or "-", fmt_number(result.ratio), result.bound,
                         result.message])
            classes.append("pass" if result.passed else "fail")
    return Table("contracts", "Contracts (same-run ratios)",
                 ["run", "result", "contract", "metric", "ratio", "bound", "measured"], rows,
                 caption="The suite's own claims, checked on this run (attnbench check).",
                 empty_note="the suites state no contracts", row_classes=classes)


def is_unstable(value) -> bool:
    """The row's ``unstable`` mark (absent, None or NaN in rows that were not judged)."""
    return value is True or (isinstance(value, int | float) and not _missing(value)
                             and bool(value))


def unstable_count(frame) -> int:
    if "unstable" not in frame.columns or not len(frame):
        return 0
    return int(sum(is_unstable(v) for v in frame["unstable"]))


def _noise_cell(get, r) -> str:
    """What the machine did while the case was timed, and the reasons for an unstable mark."""
    parts = []
    other = get(r, "machine_other_cpu_frac")
    if not _missing(other):
        parts.append(f"others {other:.0%} CPU")
    if is_unstable(get(r, "unstable")):
        reasons = get(r, "unstable_reasons")
        parts.insert(0, "UNSTABLE: " + ("; ".join(reasons) if isinstance(reasons, list)
                                        and reasons else "marked by the worker"))
    return ", ".join(parts) or "-"


def cases_table(frame) -> Table:
    rows, classes = [], []
    metric = _metric_getter(frame)
    for _, r in frame.iterrows():
        accuracy = metric(r, "task_accuracy")
        if _missing(accuracy):
            accuracy = metric(r, "approx_recall")
        unstable = is_unstable(metric(r, "unstable"))
        time = fmt_time(metric(r, "time_median_s"))
        converged = metric(r, "task_converged")  # False: used its step budget, loss not flat
        late = not _missing(converged) and not bool(converged)
        cache = metric(r, "compile_cache")
        compiled = fmt_time(metric(r, "compile_s")) + (
            f" ({cache} cache)" if cache in ("hit", "miss", "partial") else "")
        rows.append([r["run_id"], r["label"], r["case_id"], r["status"],
                     time + (" (unstable)" if unstable else ""),
                     fmt_number(metric(r, "time_rel_iqr"), ".1%"), _noise_cell(metric, r),
                     compiled,
                     fmt_mb(metric(r, "mem_peak_mb")), fmt_mb(metric(r, "mem_analytic_mb")),
                     fmt_number(metric(r, "approx_out_rel_err")),
                     fmt_number(accuracy) + (" (not converged)" if late else ""),
                     fmt_number(r.get("wall_s"), ".3g")])
        classes.append("fail" if r["status"] != "ok" else "unstable" if unstable else "")
    return Table("cases", "Every case",
                 ["run", "case", "case id", "status", "median time", "rel. IQR", "noise",
                  "compile", "peak MiB", "analytic MiB", "approx. error", "recall / accuracy",
                  "wall s"],
                 rows, caption="One line per case and run, as in results.csv ('-': not "
                               "measured or not recorded). noise: the CPU share other "
                               "processes took while the case was timed; a case is marked "
                               "unstable (its time shown, not to be trusted) when its spread "
                               "stayed above its target or the machine was busy. compile: "
                               "with whether the compiled code came from the persistent "
                               "cache; accuracy: 'not converged' when the model used its "
                               "step budget without its loss plateauing.",
                 empty_note="no results in these runs yet", row_classes=classes)


def _metric_getter(frame):
    def get(row, name):
        return row[name] if name in frame.columns else None
    return get


def data_notes(sources: list[Source], frame) -> list[str]:
    """What is missing: empty runs, ok cases without the metric their mode should have."""
    notes = []
    notes.extend(unreadable_summary(sources))
    for s in sources:
        if not s.rows:
            notes.append(f"Run {s.run_id} has no results (started, nothing finished yet).")
        if s.environment is None and s.kind == "run":
            notes.append(f"Run {s.run_id} records no environment.")
    if unstable_count(frame):
        notes.append(f"{unstable_count(frame)} case(s) are marked unstable: their spread stayed "
                     "above target or the machine was busy while they were timed; their times "
                     "are shown but should not be trusted (Every case, noise column).")
    if len(frame):
        ok = frame[frame["status"] == "ok"]
        timed = ok[ok["mode"].isin(derive.TIMED_MODES)]
        for metric in ("time_median_s", "mem_peak_mb"):
            if metric in frame.columns:
                missing = timed[timed[metric].isna()]
            else:
                missing = timed
            if len(missing):
                labels = ", ".join(missing["label"].head(5))
                more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
                notes.append(f"{len(missing)} ok timed case(s) have no {metric}: "
                             f"{labels}{more}.")
    return notes
