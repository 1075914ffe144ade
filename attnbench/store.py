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
import dataclasses
import json
import math
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from attnbench.meta import SCHEMA_VERSION, MetaError, RunMeta
from attnbench.runner.case import Case
from attnbench.safeio import (
    UnsafePathError,
    is_temp_name,
    open_append,
    open_lock,
    open_regular,
    read_text,
    run_dir_above,
    write_atomic,
)

STATUSES = ("ok", "oom", "timeout", "error", "skipped")
META_FILE = "meta.json"
RESULTS_FILE = "results.jsonl"
LOCK_FILE = ".lock"
# What attnbench itself writes into a run directory; anything else means it belongs to
# something else (the report's files and checkpoints included, a run may hold these).
RUN_FILES = {META_FILE, RESULTS_FILE, LOCK_FILE, "results.csv", "index.html", "checkpoints",
             f"{META_FILE}.tmp"}
META_LIMIT = 16 * 2**20   # bytes of meta.json (the suite as parsed is its largest part)
ROW_LIMIT = 16 * 2**20    # bytes of one results.jsonl row


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
        """Whether the directory holds a ``meta.json`` (of any kind: reading it says what is
        wrong with one that is not a regular file)."""
        return self.meta_path.exists()

    def check_usable(self) -> None:
        """Refuse a directory that is not ours to write: one holding files of something else,
        rows whose ``meta.json`` is gone (a new meta would claim them for another run), or a
        run file that is a symbolic link (a write would land where it points)."""
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"{self.path}: exists and is not a directory; choose another --out")
        outer = run_dir_above(self.path.resolve().parent)
        if outer is not None:
            raise StoreError(f"{self.path}: is inside {outer}, another run's directory; "
                             "choose an --out outside it")
        if not self.path.is_dir():
            return
        linked = sorted(name for name in RUN_FILES if (self.path / name).is_file()
                        and not (self.path / name).is_symlink()
                        and os.stat(self.path / name).st_nlink > 1)
        if linked:  # a hard link: a write would change the same file elsewhere
            raise StoreError(f"{self.path}: {', '.join(linked)} has other hard links (it is "
                             "also a file elsewhere); attnbench never writes a file linked "
                             "outside its directory: replace it with a copy, or choose "
                             "another --out")
        links = sorted(name for name in RUN_FILES if (self.path / name).is_symlink())
        if links:  # a run writes each of these; none may lead it outside its directory
            raise StoreError(f"{self.path}: {', '.join(links)} "
                             f"{'is a symbolic link' if len(links) == 1 else 'are symbolic links'}"
                             f" (to {os.readlink(self.path / links[0])}); attnbench never "
                             "writes through a link: replace it with the file, or choose "
                             "another --out")
        if self.exists():
            return
        if self.results_path.exists():
            raise StoreError(f"{self.path}: holds {RESULTS_FILE} but no {META_FILE}, so whose "
                             "rows they are is lost; move the directory aside (or --fresh does) "
                             "or choose another --out")
        foreign = sorted(p.name for p in self.path.iterdir()
                         if p.name not in RUN_FILES and not is_temp_name(p.name))
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
        try:
            f = open_lock(self.path / LOCK_FILE)
        except UnsafePathError as exc:
            raise StoreError(str(exc)) from None
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
        try:
            open_append(self.results_path).close()
            write_atomic(self.meta_path, json.dumps(meta.to_dict(), indent=2, sort_keys=True,
                                                    default=str, allow_nan=False) + "\n")
        except UnsafePathError as exc:
            raise StoreError(str(exc)) from None

    def read_meta(self) -> RunMeta:
        try:
            data = json.loads(read_text(self.meta_path, META_LIMIT, META_FILE))
        except (FileNotFoundError, NotADirectoryError):
            raise StoreError(f"{self.path}: not a run directory (no {META_FILE})") from None
        except (ValueError, RecursionError) as exc:  # JSON, UTF-8, a 5,000-digit number
            raise StoreError(f"{self.meta_path}: not valid JSON ({_short(exc)})") from None
        except UnsafePathError as exc:
            raise StoreError(str(exc)) from None
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
        row = {"schema": SCHEMA_VERSION, **row}
        wrong = row_problem(row)
        if wrong:  # the writer keeps the schema its readers check
            raise ValueError(f"row of case {row.get('case_id')!r}: {wrong}")
        line = json.dumps(row, default=str, allow_nan=False)
        try:
            f = open_append(self.results_path)
        except UnsafePathError as exc:
            raise StoreError(str(exc)) from None
        with f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def scan(self, latest: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
        """(every valid row, what could not be read: ``file:line: why`` each); with ``latest``
        only the last row of each case, kept while reading, so memory follows the cases, not
        the file. A last line without its newline counts when it parses (the write finished,
        the newline did not); one cut off mid-row is a kill's, not a problem: that case runs
        again on resume. A line longer than :data:`ROW_LIMIT` is not read."""
        rows: dict[Any, dict[str, Any]] | list[dict[str, Any]] = {} if latest else []
        problems: list[str] = []
        try:
            f = open_regular(self.results_path)
        except FileNotFoundError:
            return [], problems
        except UnsafePathError as exc:
            raise StoreError(str(exc)) from None
        with f:
            for number, raw in enumerate(iter(lambda: f.readline(ROW_LIMIT + 1), b""), 1):
                where = f"{self.results_path}:{number}"
                if len(raw) > ROW_LIMIT:
                    problems.append(f"{where}: a row longer than {ROW_LIMIT // 2**20} MiB, "
                                    "not read")
                    while raw and not raw.endswith(b"\n"):  # skip the rest of the line
                        raw = f.readline(ROW_LIMIT + 1)
                    continue
                if not raw.strip():
                    continue  # a blank line (a hand edit, cat a b >): nothing to read
                if not raw.endswith(b"\n") and _torn(raw.decode("utf-8", errors="replace")):
                    break
                try:
                    row = json.loads(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
                except (ValueError, RecursionError) as exc:  # JSON, UTF-8, nesting, digits
                    problems.append(f"{where}: not a JSON row ({_short(exc)})")
                    continue
                wrong = row_problem(row)
                if wrong:
                    problems.append(f"{where}: {wrong}")
                    continue
                if isinstance(rows, dict):
                    rows.pop(row["case_id"], None)  # file order of the last occurrence
                    rows[row["case_id"]] = row
                else:
                    rows.append(row)
        return list(rows.values()) if isinstance(rows, dict) else rows, problems

    def rows(self) -> Iterator[dict[str, Any]]:
        """Every valid row (:meth:`scan` says what else the file holds)."""
        yield from self.scan()[0]

    def repair(self) -> None:
        """Make the file end on a fresh line before the next append: a last row that parses
        gets its newline; one cut off mid-write is dropped (the file rewritten atomically)."""
        try:
            f = open_regular(self.results_path)
        except FileNotFoundError:
            return
        except UnsafePathError as exc:
            raise StoreError(str(exc)) from None
        with f:
            size = f.seek(0, os.SEEK_END)
            tail, start = b"", size
            while start > 0 and b"\n" not in tail:  # the last line, read from the end
                step = min(start, 1 << 16)
                start -= step
                f.seek(start)
                tail = f.read(step) + tail
            if not tail or tail.endswith(b"\n"):
                return
            cut = start + tail.rfind(b"\n") + 1
            last = tail[tail.rfind(b"\n") + 1:]
            if _torn(last.decode("utf-8", errors="replace")):
                f.seek(0)
                kept = f.read(cut)
            else:
                kept = None
        try:
            if kept is not None:
                write_atomic(self.results_path, kept)
            else:
                with open_append(self.results_path, binary=True) as out:
                    out.write(b"\n")
                    out.flush()
                    os.fsync(out.fileno())
        except UnsafePathError as exc:
            raise StoreError(str(exc)) from None

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
    wrong = case_problem(row["case"]) or case_id_problem(row["case_id"], row["case"])
    if wrong:
        return wrong
    wall = row.get("wall_s")
    if wall is not None and (isinstance(wall, bool) or not isinstance(wall, int | float)
                             or _bad_number("wall_s", wall)):
        return f"wall_s = {wall!r}: must be a finite number >= 0 (or null)"
    if row.get("status") not in STATUSES:
        return f"status {row.get('status')!r} is not one of {', '.join(STATUSES)}"
    if not isinstance(row.get("metrics"), dict):
        return "metrics must be an object"
    for name, value in row["metrics"].items():
        wrong = metric_problem(name, value)
        if wrong:
            return wrong
    return None


# Metric names ending so carry a unit (seconds, MiB, a rate, a fraction): a number, never
# negative. Every number a row holds, unit or not, is finite: JSON has no NaN or infinity,
# and a gate that read one would judge nonsense.
UNIT_SUFFIXES = ("_s", "_mb", "_per_s", "_frac")


# Case fields a row's ``case`` must type as the runner writes them (when present: a
# pytest-benchmark row holds a partial case); the rest are free.
_CASE_TEXT = ("variant", "framework", "mode", "device", "dtype", "kernel",
              "attention")
# A case holding every field Case.to_dict() writes is checked against its id; attention is
# not required (rows written before it existed lack it, and their ids hold without it).
_CASE_FIELDS = frozenset(f.name for f in dataclasses.fields(Case)) - {"attention"}
_CASE_COUNTS = ("length", "batch", "d_model", "n_heads", "d_ff", "depth", "vocab_size",
                "n_hashes", "n_buckets", "chunk_len", "ff_chunk_len", "threads")
# Metrics with a kind beyond their unit: a mark, its reasons, and shares of one.
_FLAGS = ("unstable",)
_FRACTIONS = ("task_accuracy", "approx_recall")


def case_problem(case: dict) -> str | None:
    """What is wrong with a row's case fields (their types); None when nothing is."""
    for name in _CASE_TEXT:
        if name in case and case[name] is not None and not isinstance(case[name], str):
            return f"case.{name} = {case[name]!r}: must be text"
    for name in _CASE_COUNTS:
        value = case.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not 1 <= value < 2**63):
            return f"case.{name} = {value!r}: must be a positive integer"
    if "causal" in case and not isinstance(case["causal"], bool | None):
        return f"case.causal = {case['causal']!r}: must be true or false"
    return None


def case_id_problem(case_id: str, case: dict) -> str | None:
    """Whether a row's ``case_id`` is its case's (:attr:`Case.case_id`, the hash of what it
    measures): ``compare``, ``check`` and the history pair and keep rows by id, so a row
    whose id names another case (a hand edit, two files spliced) would stand for it, and two
    cases under one id would lose one silently. Checked where the case is whole, as the
    runner and the fixture write it; a bare pytest-benchmark row holds a partial case."""
    if not _CASE_FIELDS <= set(case):
        return None
    try:
        expected = Case.from_dict(case).case_id
    except (TypeError, ValueError) as exc:
        return f"case does not describe a case ({exc})"
    if case_id != expected:
        return f"case_id {case_id!r} is not its case's ({expected!r}): edited or spliced?"
    return None


def metric_problem(name: str, value: Any) -> str | None:
    """What is wrong with one metric's value, against the schema; None when nothing is."""
    if name in _FLAGS:
        return None if isinstance(value, bool) or value is None else \
            f"metric {name} = {value!r}: must be true or false"
    if name == "unstable_reasons":
        return None if isinstance(value, list) and all(isinstance(r, str) for r in value) \
            else f"metric {name} must be a list of text"
    if name in _FRACTIONS and value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float)
            or _bad_number(name, value) or not 0 <= value <= 1):
        return f"metric {name} = {value!r}: must be a number in [0, 1]"
    if isinstance(value, list):
        wrong = [v for v in value if isinstance(v, int | float) and not isinstance(v, bool)
                 and _bad_number(name, v)]
        if wrong:
            return f"metric {name} holds {wrong[0]!r}: {_bad_number(name, wrong[0])}"
        if name.endswith(UNIT_SUFFIXES) and not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            return f"metric {name} must hold numbers only"
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        wrong = _bad_number(name, value)
        return f"metric {name} = {value!r}: {wrong}" if wrong else None
    if name.endswith(UNIT_SUFFIXES) and value is not None:
        return f"metric {name} must be a number (or null), not {value!r}"
    return None


def _bad_number(name: str, value: float) -> str | None:
    try:
        if not math.isfinite(value):
            return "must be finite"
    except OverflowError:  # an integer beyond float's range
        return "must be finite"
    if value < 0 and name.endswith(UNIT_SUFFIXES):
        return "must not be negative (it carries a unit)"
    return None


def _torn(line: str) -> bool:
    """A last line that is not a whole JSON object: a write cut off by a kill."""
    try:
        return not isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):
        return True


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."
