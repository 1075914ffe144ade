"""The results store: one directory per run, append-only and schema-versioned.

Layout of a run directory (``reports/runs/<run>/`` by default)::

    meta.json       written once when the run starts: a :class:`attnbench.meta.RunMeta`
                    (schema version, run id, the suite as parsed, so the run says what it
                    asked for, the environment, the command line), the one schema its
                    writer and every reader use.
    results.jsonl   one JSON object per finished case, appended (flushed and fsynced) the
                    moment the case ends. A run that is killed keeps every line written;
                    a line cut off by the kill is ignored on reading and the case re-runs.

A result row (one line of ``results.jsonl``)::

    {
      "schema": 1,
      "run_id": "quickstart-20261128-011900",
      "case_id": "3f2a9c01d4e7",        # stable hash of the case's measured fields
      "case": {...},                   # the whole case (attnbench.runner.case.Case), so a
                                       # row read on its own says what was measured
      "status": "ok",                  # ok | oom | timeout | error | skipped
      "error": null,                   # the error text for every other status
      "metrics": {...},                # see below; {} when nothing was measured
      "started_at": "2026-11-28T01:19:00+00:00",
      "wall_s": 3.2                    # the case's wall time in the runner, process start
                                       # to result (harness overhead included)
    }

Metric names carry their unit: ``_s`` seconds, ``_mb`` MiB (2**20 bytes), ``_per_s`` rates.
Time (modes forward / forward-backward / train-step): ``time_median_s``, ``time_iqr_s``,
``time_rel_iqr``, ``time_samples_s`` (every timed repeat), ``time_repeats``, ``warmup_s``
(the first, untimed calls: compile and autotune included), ``compile_s`` and ``lower_s`` (JAX
ahead-of-time compile, timed apart). Work: ``tokens_per_s``, ``flops`` (per step, from the
variant's stated formula, ``flop_formula``), ``flop_per_s``. Memory: ``mem_peak_mb`` (peak
above the baseline just before the first step), ``mem_baseline_mb``, ``mem_method``,
``mem_analytic_mb`` (the paper's complexity-table estimate), ``xla_temp_mb`` /
``xla_argument_mb`` / ``xla_output_mb`` (JAX's compiled memory analysis), ``nvml_*`` (GPU
device state). Worker facts: ``platform``, ``device_name``, ``threads_used`` (the threads
the framework ran with). Accuracy modes add
their own metrics (``approx_*``, ``task_*``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from attnbench.meta import SCHEMA_VERSION, MetaError, RunMeta

STATUSES = ("ok", "oom", "timeout", "error", "skipped")
META_FILE = "meta.json"
RESULTS_FILE = "results.jsonl"
LOCK_FILE = ".lock"
# What attnbench itself writes into a run directory; anything else means it belongs to
# something else (the report's files and checkpoints included, a run may hold these).
RUN_FILES = {META_FILE, RESULTS_FILE, LOCK_FILE, "results.csv", "index.html", "checkpoints",
             f"{META_FILE}.tmp"}


class StoreError(RuntimeError):
    """A run directory that cannot be read or resumed."""


class RunStore:
    """One run directory: ``meta.json`` plus the append-only ``results.jsonl``."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @property
    def meta_path(self) -> Path:
        return self.path / META_FILE

    @property
    def results_path(self) -> Path:
        return self.path / RESULTS_FILE

    def exists(self) -> bool:
        return self.meta_path.is_file()

    def check_usable(self) -> None:
        """Refuse a directory that is not ours to write: one holding files of something else,
        or rows whose ``meta.json`` is gone (a new meta would claim them for another run)."""
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"{self.path}: exists and is not a directory; choose another --out")
        if not self.path.is_dir() or self.exists():
            return
        if self.results_path.exists():
            raise StoreError(f"{self.path}: holds {RESULTS_FILE} but no {META_FILE}, so whose "
                             "rows they are is lost; move the directory aside (or --fresh does) "
                             "or choose another --out")
        foreign = sorted(p.name for p in self.path.iterdir() if p.name not in RUN_FILES)
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more"
                                              if len(foreign) > 5 else "")
            raise StoreError(f"{self.path}: not empty and not a run (it holds {shown}); "
                             "choose another --out")

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold this run directory for one runner: an OS lock (``flock``) on ``.lock``, which
        the kernel releases when the holder dies, so a killed run never blocks its resume."""
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        f = open(self.path / LOCK_FILE, "a+", encoding="utf-8")
        try:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                raise StoreError(f"{self.path} is in use by another attnbench run ({holder}); "
                                 "wait for it to finish, or use --out for another directory") \
                    from None
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            f.flush()
            yield
        finally:
            f.close()  # closing releases the lock

    def create(self, meta: RunMeta) -> None:
        """Start a run: write ``meta.json`` (atomically) and an empty ``results.jsonl``."""
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.meta_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta.to_dict(), indent=2, sort_keys=True, default=str,
                                  allow_nan=False) + "\n")
        os.replace(tmp, self.meta_path)
        self.results_path.touch()

    def read_meta(self) -> RunMeta:
        try:
            data = json.loads(self.meta_path.read_text())
        except (FileNotFoundError, NotADirectoryError):
            raise StoreError(f"{self.path}: not a run directory (no {META_FILE})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StoreError(f"{self.meta_path}: not valid JSON ({exc})") from None
        if isinstance(data, dict) and data.get("schema") != SCHEMA_VERSION:
            raise StoreError(
                f"{self.meta_path}: schema {data.get('schema')!r}, this attnbench reads "
                f"schema {SCHEMA_VERSION}")
        try:
            return RunMeta.from_dict(data, str(self.meta_path))
        except (MetaError, TypeError) as exc:
            raise StoreError(str(exc)) from None

    def append(self, row: dict[str, Any]) -> None:
        """Append one result row and make it durable before returning."""
        if row.get("status") not in STATUSES:
            raise ValueError(f"status={row.get('status')!r}: must be one of {STATUSES}")
        line = json.dumps({"schema": SCHEMA_VERSION, **row}, default=str, allow_nan=False)
        with open(self.results_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def scan(self) -> tuple[list[dict[str, Any]], list[str]]:
        """(every valid row, what could not be read: ``file:line: why`` each). A last line
        without its newline counts when it parses (the write finished, the newline did not);
        one cut off mid-row is a kill's, not a problem: that case runs again on resume."""
        rows: list[dict[str, Any]] = []
        problems: list[str] = []
        if not self.results_path.is_file():
            return rows, problems
        with open(self.results_path, "rb") as f:
            for number, raw in enumerate(f, 1):
                if not raw.endswith(b"\n") and _torn(raw.decode("utf-8", errors="replace")):
                    break
                where = f"{self.results_path}:{number}"
                try:
                    row = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                    problems.append(f"{where}: not a JSON row ({exc})")
                    continue
                wrong = row_problem(row)
                if wrong:
                    problems.append(f"{where}: {wrong}")
                    continue
                rows.append(row)
        return rows, problems

    def rows(self) -> Iterator[dict[str, Any]]:
        """Every valid row (:meth:`scan` says what else the file holds)."""
        yield from self.scan()[0]

    def repair(self) -> None:
        """Make the file end on a fresh line before the next append: a last row that parses
        gets its newline; one cut off mid-write is dropped."""
        if not self.results_path.is_file():
            return
        data = self.results_path.read_bytes()
        if not data or data.endswith(b"\n"):
            return
        start = data.rfind(b"\n") + 1
        if _torn(data[start:].decode("utf-8", errors="replace")):
            with open(self.results_path, "wb") as f:
                f.write(data[:start])
                f.flush()
                os.fsync(f.fileno())
        else:
            with open(self.results_path, "ab") as f:
                f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())

    def done_ids(self) -> set[str]:
        return {row["case_id"] for row in self.rows()}


def row_problem(row: Any) -> str | None:
    """What is wrong with a stored row, against the schema above; None when nothing is."""
    if not isinstance(row, dict):
        return f"a row must be a JSON object, not {type(row).__name__}"
    if row.get("schema") != SCHEMA_VERSION:
        return f"schema {row.get('schema')!r}, this attnbench reads schema {SCHEMA_VERSION}"
    if not isinstance(row.get("case_id"), str) or not row["case_id"]:
        return f"case_id must be a non-empty string, not {row.get('case_id')!r}"
    if not isinstance(row.get("case"), dict):
        return "case must be an object"
    if row.get("status") not in STATUSES:
        return f"status {row.get('status')!r} is not one of {', '.join(STATUSES)}"
    if not isinstance(row.get("metrics"), dict):
        return "metrics must be an object"
    for name, value in row["metrics"].items():
        if name.endswith(("_s", "_mb", "_per_s", "_frac")) and not (
                value is None or isinstance(value, int | float | list) and
                not isinstance(value, bool)):
            return f"metric {name} must be a number (or null), not {value!r}"
    return None


def _torn(line: str) -> bool:
    """A last line that is not a whole JSON object: a write cut off by a kill."""
    try:
        return not isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return True
