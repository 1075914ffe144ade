"""The report's tables, as plain data (:class:`Table`); :mod:`attnbench.report.html` renders them.

Cells hold raw values (text from suites and results included); nothing here is HTML.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from attnbench.compare import format_seconds
from attnbench.contracts import evaluate_contracts
from attnbench.report import derive
from attnbench.report.sources import Source
from attnbench.store import STATUSES


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


def runs_table(sources: list[Source]) -> Table:
    rows = []
    for s in sources:
        env = s.meta.get("environment") if isinstance(s.meta.get("environment"), dict) else {}
        packages = env.get("packages") if isinstance(env.get("packages"), dict) else {}
        gpu = env.get("gpu")
        device = (gpu.get("name") or json.dumps(gpu)) if isinstance(gpu, dict) else \
            (str(gpu) if gpu else f"CPU: {env.get('cpu') or '?'}")
        versions = ", ".join(f"{k} {v}" for k, v in packages.items()) or "-"
        argv = s.meta.get("argv")
        rows.append([s.run_id, s.suite.get("name", "-"), s.suite.get("description", "-"),
                     s.kind, str(s.path), device,
                     env.get("python") or "-", versions, env.get("threads") or "-",
                     env.get("git_commit") or "-", env.get("hostname") or "-",
                     env.get("platform") or "-", s.meta.get("started_at") or "-",
                     len(s.rows), " ".join(map(str, argv)) if isinstance(argv, list) else "-"])
    return Table("environment", "Runs and their environment",
                 ["run", "suite", "description", "source", "device", "python", "packages",
                  "threads", "commit", "host", "platform", "started", "cases", "command"], rows,
                 caption="What each run measured on: device, versions, threads and commit.",
                 empty_note="no runs given")


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
                         *(int(counts.get(s, 0)) for s in STATUSES),
                         _range(lengths), fmt_int(longest), fmt_time(time), fmt_mb(mem),
                         first_failure])
    return Table("summary", "Summary per variant",
                 ["run", "variant", "framework", "mode", "device", "cases", *STATUSES,
                  "lengths", "largest ok length", "time at largest", "peak MiB at largest",
                  "cut short by"], rows,
                 caption="Time and memory are the best over the variant's settings "
                         "(n_hashes, buckets) at its largest ok length.",
                 empty_note="no results in these runs yet")


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


def cases_table(frame) -> Table:
    rows, classes = [], []
    metric = _metric_getter(frame)
    for _, r in frame.iterrows():
        accuracy = metric(r, "task_accuracy")
        if _missing(accuracy):
            accuracy = metric(r, "approx_recall")
        rows.append([r["run_id"], r["label"], r["case_id"], r["status"],
                     fmt_time(metric(r, "time_median_s")),
                     fmt_number(metric(r, "time_rel_iqr"), ".1%"),
                     fmt_time(metric(r, "compile_s")),
                     fmt_mb(metric(r, "mem_peak_mb")), fmt_mb(metric(r, "mem_analytic_mb")),
                     fmt_number(metric(r, "approx_out_rel_err")), fmt_number(accuracy),
                     fmt_number(r.get("wall_s"), ".3g")])
        classes.append("" if r["status"] == "ok" else "fail")
    return Table("cases", "Every case",
                 ["run", "case", "case id", "status", "median time", "rel. IQR", "compile",
                  "peak MiB", "analytic MiB", "approx. error", "recall / accuracy", "wall s"],
                 rows, caption="One line per case and run, as in results.csv ('-': not "
                               "measured or not recorded).",
                 empty_note="no results in these runs yet", row_classes=classes)


def _metric_getter(frame):
    def get(row, name):
        return row[name] if name in frame.columns else None
    return get


def data_notes(sources: list[Source], frame) -> list[str]:
    """What is missing: empty runs, ok cases without the metric their mode should have."""
    notes = []
    for s in sources:
        if not s.rows:
            notes.append(f"Run {s.run_id} has no results (started, nothing finished yet).")
        if not s.meta.get("environment") and s.kind == "run":
            notes.append(f"Run {s.run_id} records no environment.")
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
