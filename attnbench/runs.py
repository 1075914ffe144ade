"""The run model: what the report, ``compare`` and ``check`` read, and ``results.csv``.

A run directory (:mod:`attnbench.store`) or a pytest-benchmark JSON file becomes a
:class:`Source`: its :class:`~attnbench.meta.RunMeta` and its result rows in the store's row
schema, one row per case (the last written), so everything downstream handles one shape. A
pytest-benchmark file (``pytest --benchmark-json=PATH``) is recognised by its content (a
``benchmarks`` list and ``machine_info``), not by its name. Rows written by attnbench's fixture
(:mod:`attnbench.pytest_plugin`) carry the whole case and its ``case_id`` in ``extra_info``, so
they pair with a run's rows of the same case; other benchmarks get their case from ``params``
and ``extra_info`` where those name case fields, and an id hashed from the test name.

``results.csv`` has one writer, :func:`write_results_csv`: ``attnbench run``, ``export`` and
``report`` all write the same columns, :data:`LEADING_COLUMNS` first.

Nothing here needs pandas: ``compare`` and ``check`` use it without the report extra. Layers:
this module sits on :mod:`attnbench.store` and :mod:`attnbench.meta`; the report, ``compare``
and ``contracts`` sit on it and import none of each other.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnbench.meta import SCHEMA_VERSION, Environment, GitInfo, RunMeta, SuiteInfo
from attnbench.runner.case import case_label, distinct_labels
from attnbench.safeio import UnsafePathError, atomic_text, read_text
from attnbench.store import META_FILE, RESULTS_FILE, RunStore, StoreError, row_problem

# Case fields a pytest-benchmark's params / extra_info may carry (see attnbench.runner.case).
CASE_FIELDS = ("variant", "framework", "mode", "length", "device", "dtype", "batch", "d_model",
               "n_heads", "d_ff", "depth", "vocab_size", "causal", "n_hashes", "n_buckets",
               "chunk_len", "ff_chunk_len", "kernel", "seed", "threads")
# extra_info keys of attnbench's fixture that describe the case, not a measurement.
_FIXTURE_CASE_KEYS = ("case", "case_id", "label")
# Timing statistics of pytest-benchmark, in seconds, and the metric each becomes.
PYTEST_BENCHMARK_LIMIT = 64 * 2**20  # bytes of a pytest-benchmark JSON file
PYTEST_BENCHMARK_STATS = {"median": "time_median_s", "iqr": "time_iqr_s", "mean": "time_mean_s",
                          "min": "time_min_s", "max": "time_max_s", "stddev": "time_stddev_s"}


class SourceError(ValueError):
    """A path that is neither a run directory nor a pytest-benchmark JSON file."""


@dataclass
class Source:
    """One run: where it came from, its metadata and its result rows (one per case)."""

    path: Path
    kind: str  # "run" (a run directory) or "pytest-benchmark"
    meta: RunMeta
    rows: list[dict[str, Any]] = field(default_factory=list)
    # rows that could not be read, ``file:line: why`` each: every reader says so, and
    # compare and check refuse to judge a run with any
    problems: list[str] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.meta.run_id

    @property
    def suite(self) -> SuiteInfo:
        return self.meta.suite

    @property
    def contracts(self) -> list[dict[str, Any]]:
        return list(self.meta.suite.contracts)

    @property
    def environment(self) -> Environment | None:
        return self.meta.environment


def load_source(path: str | os.PathLike) -> Source:
    """A run directory (``meta.json`` + ``results.jsonl``) or a pytest-benchmark JSON file;
    anything else is a :class:`SourceError` naming the path."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise SourceError(f"{path}: no such run directory or file") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(mode):
        return _load_run_dir(path)
    if path.name in (META_FILE, RESULTS_FILE):
        return _load_run_dir(path.parent)
    try:
        data = json.loads(read_text(path, PYTEST_BENCHMARK_LIMIT, "pytest-benchmark file"))
    except UnsafePathError as exc:
        raise SourceError(str(exc)) from None
    except (ValueError, RecursionError) as exc:  # JSON, UTF-8, nesting, a 5,000-digit number
        raise SourceError(f"{path}: not a run directory, and not JSON "
                          f"({str(exc)[:200] or type(exc).__name__})") from None
    if is_pytest_benchmark(data):
        return _from_pytest_benchmark(path, data)
    raise SourceError(f"{path}: a JSON file, but not pytest-benchmark output "
                      "(no 'benchmarks' list with 'machine_info')")


def load_sources(paths: list[str | os.PathLike]) -> list[Source]:
    return [load_source(p) for p in paths]


def _load_run_dir(path: Path) -> Source:
    store = RunStore(path)
    if not store.exists():
        raise SourceError(f"{path}: not a run directory (no {META_FILE}; attnbench run "
                          "writes it when a run starts)")
    try:
        meta = store.read_meta()
        rows, problems = store.scan(latest=True)
    except StoreError as exc:
        raise SourceError(str(exc)) from None
    return Source(path=path, kind="run", meta=meta, rows=rows, problems=problems)


def unreadable_summary(sources: list[Source], limit: int = 5) -> list[str]:
    """One line per source with unreadable rows: how many, and where (the first few)."""
    lines = []
    for s in sources:
        if s.problems:
            shown = "; ".join(s.problems[:limit])
            more = f"; and {len(s.problems) - limit} more" if len(s.problems) > limit else ""
            lines.append(f"{s.path}: {len(s.problems)} row(s) could not be read: {shown}{more}")
    return lines


def latest_per_case(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per case_id, the last written (a case re-run after a crash replaces the first)."""
    by_id: dict[Any, dict[str, Any]] = {}
    anonymous = []
    for row in rows:
        case_id = row.get("case_id")
        if case_id is None:
            anonymous.append(row)
        else:
            by_id.pop(case_id, None)  # keep file order of the last occurrence
            by_id[case_id] = row
    return anonymous + list(by_id.values())


def row_case(row: dict[str, Any]) -> dict[str, Any]:
    case = row.get("case")
    return case if isinstance(case, dict) else {}


def row_metrics(row: dict[str, Any]) -> dict[str, Any]:
    metrics = row.get("metrics")
    return metrics if isinstance(metrics, dict) else {}


def row_label(row: dict[str, Any]) -> str:
    return case_label(row_case(row))


def frameworks_of(rows: Iterable[dict[str, Any]]) -> set[str] | None:
    """The frameworks the rows' cases ran in (whose versions decide their speed: see
    :meth:`Environment.machine <attnbench.meta.Environment.machine>`); None when a row does not
    say, so that every framework's version counts."""
    frameworks = set()
    for row in rows:
        framework = row_case(row).get("framework")
        if not isinstance(framework, str):
            return None
        frameworks.add(framework)
    return frameworks


# --------------------------------------------------------------------------------------------
# pytest-benchmark
# --------------------------------------------------------------------------------------------


def is_pytest_benchmark(data: Any) -> bool:
    return (isinstance(data, dict) and isinstance(data.get("benchmarks"), list)
            and "machine_info" in data)


def _from_pytest_benchmark(path: Path, data: dict[str, Any]) -> Source:
    machine = data.get("machine_info") or {}
    commit = data.get("commit_info") or {}
    for name, value in (("machine_info", machine), ("commit_info", commit)):
        if not isinstance(value, dict):
            raise SourceError(f"{path}: {name} must be an object, not {value!r:.80}")
    cpu = machine.get("cpu") or {}
    text = _text_or_none
    count = cpu.get("count") if isinstance(cpu, dict) else None
    environment = Environment(
        python=text(machine.get("python_version")),
        platform=" ".join(str(machine.get(k, "")) for k in ("system", "release")).strip() or None,
        hostname=text(machine.get("node")),
        cpu=text(cpu.get("brand_raw") if isinstance(cpu, dict) else cpu),
        cpu_count=count if isinstance(count, int) and not isinstance(count, bool) else None,
        packages={"pytest-benchmark": text(data.get("version"))},
        git=GitInfo(sha=text(commit.get("id")),
                    dirty=commit.get("dirty") if isinstance(commit.get("dirty"), bool) else None,
                    committed_at=text(commit.get("time"))))
    meta = RunMeta(run_id=path.stem, started_at=text(data.get("datetime")),
                   suite=SuiteInfo(name=f"pytest-benchmark {path.name}",
                                   description="pytest-benchmark JSON output"),
                   environment=environment)
    rows, problems = [], []
    for number, bench in enumerate(data["benchmarks"]):
        where = f"{path}: benchmarks[{number}]"
        if not isinstance(bench, dict):
            problems.append(f"{where}: not an object")
            continue
        row = _pytest_benchmark_row(meta.run_id, bench)
        wrong = row_problem(row)  # the store's schema: a text or NaN metric is unreadable
        if wrong:
            problems.append(f"{where} ({bench.get('name')!r}): {wrong}")
        else:
            rows.append(row)
    return Source(path=path, kind="pytest-benchmark", meta=meta, rows=latest_per_case(rows),
                  problems=problems)


def _text_or_none(value: Any) -> str | None:
    """A pytest-benchmark field read as text only when it is text (a hostile file's number
    or list is left out, never carried into a schema that expects text)."""
    return value if isinstance(value, str) else None


def _pytest_benchmark_row(run_id: str, bench: dict[str, Any]) -> dict[str, Any]:
    params = bench.get("params") if isinstance(bench.get("params"), dict) else {}
    extra = bench.get("extra_info") if isinstance(bench.get("extra_info"), dict) else {}
    stats = bench.get("stats") if isinstance(bench.get("stats"), dict) else {}
    name = str(bench.get("fullname") or bench.get("name"))
    if isinstance(extra.get("case"), dict) and isinstance(extra.get("case_id"), str):
        # attnbench's fixture: the case as the runner would store it, so ids pair.
        case, case_id = dict(extra["case"]), extra["case_id"]
    else:
        case = {}
        for source in (params, extra):
            case.update({k: v for k, v in source.items() if k in CASE_FIELDS})
        case.setdefault("variant", str(bench.get("name", "?")).split("[")[0])
        case.setdefault("framework", "?")
        case.setdefault("mode", str(bench.get("group") or "benchmark"))
        case["options"] = {"benchmark": name}
        case_id = hashlib.sha256(name.encode()).hexdigest()[:12]
    metrics: dict[str, Any] = {}
    for statistic, metric in PYTEST_BENCHMARK_STATS.items():
        if isinstance(stats.get(statistic), int | float):
            metrics[metric] = stats[statistic]
    if isinstance(stats.get("rounds"), int):
        metrics["time_repeats"] = stats["rounds"]
    if isinstance(stats.get("data"), list):
        metrics["time_samples_s"] = stats["data"]
    if metrics.get("time_median_s") and metrics.get("time_iqr_s") is not None:
        try:
            metrics["time_rel_iqr"] = metrics["time_iqr_s"] / metrics["time_median_s"]
        except (OverflowError, ZeroDivisionError):
            metrics["time_rel_iqr"] = float("inf")  # the schema refuses the row, naming it
    metrics.update({k: v for k, v in extra.items()
                    if k not in CASE_FIELDS and k not in ("status", "error", *_FIXTURE_CASE_KEYS)})
    return {
        "schema": SCHEMA_VERSION,
        "run_id": run_id,
        "case_id": case_id,
        "case": case,
        "status": extra.get("status", "ok"),
        "error": extra.get("error"),
        "metrics": metrics,
        "started_at": None,
        "wall_s": None,
    }


# --------------------------------------------------------------------------------------------
# The tidy records and results.csv
# --------------------------------------------------------------------------------------------

CASE_COLUMNS = ["variant", "framework", "mode", "device", "dtype", "length", "batch", "d_model",
                "n_heads", "d_ff", "depth", "vocab_size", "causal", "n_hashes", "n_buckets",
                "chunk_len", "ff_chunk_len", "kernel", "seed", "options", "task",
                "train_attention"]
METRIC_COLUMNS = ["time_median_s", "time_iqr_s", "time_rel_iqr", "time_repeats", "unstable",
                  "warmup_s", "compile_s", "tokens_per_s", "flop_per_s", "mem_peak_mb",
                  "mem_analytic_mb", "mem_method", "approx_out_rel_err", "approx_grad_rel_err",
                  "approx_recall", "task_accuracy"]
# Columns a metric may not take: what says which row and case it is. (``kernel`` may: the
# worker records the LSH kernel that ran, which refines the case's asked ``auto``.)
RESERVED_COLUMNS = frozenset(["run_id", "case_id", "label", "status", "error", "wall_s",
                              "variant", "framework", "mode", "device", "dtype", "length",
                              "batch", "d_model", "n_heads", "depth", "causal", "task",
                              "train_attention"])
# Always present, in this order, so the CSV's header does not depend on which rows a run has.
LEADING_COLUMNS = (["run_id", "case_id", "label", *CASE_COLUMNS, "status", "error", "wall_s",
                    *METRIC_COLUMNS])


def flatten(row: dict[str, Any]) -> dict[str, Any]:
    """One record: case fields, then status/error, then metrics, all top-level (lists kept)."""
    flat: dict[str, Any] = {"run_id": row.get("run_id"), "case_id": row.get("case_id")}
    flat.update(row_case(row))
    flat["status"] = row.get("status")
    flat["error"] = row.get("error")
    flat["wall_s"] = row.get("wall_s")
    # a metric never replaces a row or case field (a metric "status" would turn an oom
    # into ok in the CSV and the report); such a metric is kept under metric_<name>
    for name, value in row_metrics(row).items():
        flat[f"metric_{name}" if name in RESERVED_COLUMNS else name] = value
    return flat


def tidy_records(sources: list[Source]) -> list[dict[str, Any]]:
    """One record per case and run, with its label, task and training attention."""
    records = []
    for source in sources:
        labels = distinct_labels({row["case_id"]: row_case(row) for row in source.rows
                                  if isinstance(row.get("case_id"), str)})
        for row in source.rows:
            case, metrics = row_case(row), row_metrics(row)
            record = flatten(row)
            record["run_id"] = record.get("run_id") or source.run_id
            record["label"] = labels.get(row.get("case_id")) or case_label(case)
            options = case.get("options") if isinstance(case.get("options"), dict) else {}
            record["task"] = options.get("task") or metrics.get("task_name")
            # The runner records the attention a task trained with (from the variant and
            # n_hashes) as a metric; older rows may carry it as an option.
            record["train_attention"] = (options.get("train_attention")
                                         or metrics.get("task_train_attention"))
            records.append(record)
    return records


def column_order(records: list[dict[str, Any]]) -> list[str]:
    columns = list(LEADING_COLUMNS)
    for record in records:
        columns.extend(k for k in record if k not in columns)
    return columns


# A spreadsheet runs a text cell beginning with one of these as a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    if isinstance(value, list | dict):
        return json.dumps(value, sort_keys=True)
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value  # text, never a formula (numbers are written as they are)
    return value


def write_results_csv(sources: list[Source], path: str | os.PathLike) -> int:
    """``results.csv``: one row per case and run; lists and dicts as JSON text; every cell,
    the header's included, guarded against spreadsheet formulas. Written atomically (a kill or
    a full disk leaves the previous file). Returns the row count. The only writer of the
    file."""
    records = tidy_records(sources)
    columns = column_order(records)
    with atomic_text(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow([_cell(column) for column in columns])  # a key is a cell too
        for record in records:
            writer.writerow([_cell(record.get(k)) for k in columns])
    return len(records)
