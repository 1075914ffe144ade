"""The history database: one SQLite file (``reports/history.sqlite`` by default).

``attnbench history add`` reads run directories and pytest-benchmark files (the source of
truth; :func:`rebuild` makes the file again from them at any time) and writes:

- ``machines``: one row per fingerprint of what decides speed (``Environment.machine()``:
  CPU model and count, memory, GPUs, framework versions), its parts kept as JSON so that a
  change of any one shows. A run's machine holds the versions of the frameworks its cases
  ran in; a series' machine only its case's framework's, so upgrading jax does not move a
  torch case's series to a new machine;
- ``runs``: one row per run, keyed by ``kind:run_id:machine`` (adding a run again changes
  nothing; a run resumed since, whose rows differ, has its points replaced), with its commit
  (sha, dirty, ``committed_at``), start, suite and path;
- ``series``: (machine, case, metric) with the metric's direction and the case itself (so a
  step can be measured again); a contract's same-run ratio is a series with no machine;
- ``points``: one per run and series: the status, and for an ok case the value with its
  band (time: the quartiles of the repeats), sample count and unstable mark with reasons;
  a failed case is its status (oom, timeout, error, skipped), never a number; a contract
  ratio's point holds the contract's bounds as that run's suite had them;
- ``steps``: what ``history steps`` found, with the verdict ``history confirm`` stored.

Schema-versioned (``PRAGMA user_version``; another version is refused, naming both).
Concurrent writers are safe: WAL journal, a busy timeout, and each add in one ``BEGIN
IMMEDIATE`` transaction.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import sqlite3
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from attnbench.history.model import (
    HIGHER,
    LOWER,
    METRICS,
    RATIO,
    History,
    Machine,
    Point,
    Run,
    Series,
    Step,
)
from attnbench.runner.case import distinct_labels
from attnbench.runs import Source, frameworks_of, latest_per_case, row_case

# 2: a series' machine holds only its case's framework version (1 held every framework's),
# and a ratio's point holds its contract's bounds
SCHEMA_VERSION = 2
DEFAULT_DB = Path("reports") / "history.sqlite"
# Which metrics a case of each mode yields: a failed case gets a failure point in each.
MODE_METRICS = {"forward": ("time_median_s", "mem_peak_mb"),
                "forward-backward": ("time_median_s", "mem_peak_mb"),
                "train-step": ("time_median_s", "mem_peak_mb"),
                "approx": ("approx_out_rel_err", "approx_grad_rel_err", "approx_recall"),
                "task": ("task_accuracy",)}

_SCHEMA = """
CREATE TABLE machines (
    id INTEGER PRIMARY KEY,
    fingerprint TEXT NOT NULL UNIQUE,
    parts TEXT NOT NULL
);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    source_key TEXT NOT NULL UNIQUE,
    digest TEXT NOT NULL,
    run_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    sha TEXT,
    dirty INTEGER,
    committed_at TEXT,
    started_at TEXT,
    machine_id INTEGER REFERENCES machines(id),
    suite TEXT NOT NULL,
    added_at TEXT NOT NULL
);
CREATE TABLE series (
    id INTEGER PRIMARY KEY,
    machine_id INTEGER REFERENCES machines(id),
    case_id TEXT NOT NULL,
    label TEXT NOT NULL,
    metric TEXT NOT NULL,
    direction TEXT NOT NULL CHECK (direction IN ('lower', 'higher')),
    case_json TEXT
);
CREATE UNIQUE INDEX series_key ON series (ifnull(machine_id, 0), case_id, metric);
CREATE TABLE points (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    series_id INTEGER NOT NULL REFERENCES series(id),
    status TEXT NOT NULL,
    value REAL,
    lo REAL,
    hi REAL,
    samples INTEGER,
    unstable INTEGER NOT NULL DEFAULT 0,
    unstable_reasons TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    bound_lo REAL,
    bound_hi REAL,
    PRIMARY KEY (run_id, series_id),
    CHECK ((status = 'ok') = (value IS NOT NULL))
);
CREATE TABLE steps (
    id INTEGER PRIMARY KEY,
    series_id INTEGER NOT NULL REFERENCES series(id),
    before_sha TEXT,
    after_sha TEXT,
    before_value REAL NOT NULL,
    after_value REAL NOT NULL,
    ratio REAL NOT NULL,
    kind TEXT NOT NULL,
    evidence TEXT NOT NULL,
    detected_at TEXT NOT NULL,
    verdict TEXT,
    verdict_detail TEXT NOT NULL DEFAULT '{}',
    UNIQUE (series_id, before_sha, after_sha)
);
"""


class HistoryError(RuntimeError):
    """A database that cannot be used (another schema version, not SQLite, not writable)."""


def connect(path: str | os.PathLike = DEFAULT_DB) -> sqlite3.Connection:
    """The database at ``path``, created with the schema when new; refuses another version."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(path, timeout=120, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 120000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA foreign_keys = ON")
        with _transaction(conn):
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if version == 0 and tables == 0:  # statement by statement: executescript commits
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise HistoryError(f"{path}: history schema {version}, this attnbench reads "
                                   f"schema {SCHEMA_VERSION}; rebuild it from the run "
                                   "directories (attnbench history rebuild)")
    except sqlite3.DatabaseError as exc:
        raise HistoryError(f"{path}: not a usable history database ({exc})") from None
    return conn


class _transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on an error): one writer at a time."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, kind, exc, tb) -> None:
        self.conn.execute("ROLLBACK" if kind else "COMMIT")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Adding runs
# --------------------------------------------------------------------------------------------


def machine_parts(source: Source, frameworks: Iterable[str] | None) -> dict[str, Any]:
    """The run's machine as it decides the speed of cases in ``frameworks`` (None: all)."""
    environment = source.environment
    return environment.machine(frameworks) if environment is not None else {}


def add_source(conn: sqlite3.Connection, source: Source) -> str:
    """Add one run; returns ``added``, ``unchanged`` (already there with the same rows) or
    ``updated`` (there with other rows: a run resumed since; its points are replaced)."""
    parts = machine_parts(source, frameworks_of(source.rows))
    fingerprint = _digest(parts)[:16]
    digest = _digest([source.meta.to_dict(), source.rows])
    key = f"{source.kind}:{source.run_id}:{fingerprint}"
    git = source.environment.git if source.environment is not None else None
    with _transaction(conn):
        old = conn.execute("SELECT id, digest FROM runs WHERE source_key = ?", (key,)).fetchone()
        if old is not None and old[1] == digest:
            return "unchanged"
        machine_id = _machine_id(conn, fingerprint, parts)
        fields = (digest, source.run_id, source.kind, str(Path(source.path).resolve()),
                  git.sha if git else None, None if not git or git.dirty is None else
                  int(git.dirty), _text(git.committed_at if git else None),
                  _text(source.meta.started_at), machine_id, source.suite.name, _now())
        if old is None:
            run = conn.execute(
                "INSERT INTO runs (digest, run_id, kind, path, sha, dirty, committed_at, "
                "started_at, machine_id, suite, added_at, source_key) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (*fields, key)).lastrowid
        else:
            run = old[0]
            conn.execute("DELETE FROM points WHERE run_id = ?", (run,))
            conn.execute("UPDATE runs SET digest = ?, run_id = ?, kind = ?, path = ?, sha = ?, "
                         "dirty = ?, committed_at = ?, started_at = ?, machine_id = ?, "
                         "suite = ?, added_at = ? WHERE id = ?", (*fields, run))
        # A series is a case's on the machine as its own framework sees it (a torch case
        # stays on one machine when only jax is upgraded); the run keeps the whole machine.
        machines: dict[str | None, int] = {None: machine_id}  # a ratio: the run's machine
        for series_key, framework, point in _points(source):
            if framework not in machines:
                own = machine_parts(source, None if framework is None else [framework])
                machines[framework] = _machine_id(conn, _digest(own)[:16], own)
            series = _series_id(conn, machines[framework], *series_key)
            conn.execute("INSERT INTO points (run_id, series_id, status, value, lo, hi, "
                         "samples, unstable, unstable_reasons, error, bound_lo, bound_hi) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (run, series, *point))
    return "added" if old is None else "updated"


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _machine_id(conn, fingerprint: str, parts: dict) -> int:
    row = conn.execute("SELECT id FROM machines WHERE fingerprint = ?", (fingerprint,)).fetchone()
    if row:
        return row[0]
    return conn.execute("INSERT INTO machines (fingerprint, parts) VALUES (?, ?)",
                        (fingerprint, json.dumps(parts, sort_keys=True))).lastrowid


def _series_id(conn, machine_id: int | None, case_id: str, label: str, metric: str,
               direction: str, case_json: str | None, shared: bool) -> int:
    machine = None if shared else machine_id
    row = conn.execute("SELECT id FROM series WHERE ifnull(machine_id, 0) = ifnull(?, 0) "
                       "AND case_id = ? AND metric = ?", (machine, case_id, metric)).fetchone()
    if row:
        return row[0]
    return conn.execute("INSERT INTO series (machine_id, case_id, label, metric, direction, "
                        "case_json) VALUES (?, ?, ?, ?, ?, ?)",
                        (machine, case_id, label, metric, direction, case_json)).lastrowid


def _points(source: Source) -> Iterable[tuple[tuple, str | None, tuple]]:
    """((series key), the case's framework, (point fields)) for every metric of every case,
    then every contract (no framework: a ratio series has no machine)."""
    rows = latest_per_case(source.rows)
    labels = distinct_labels({row["case_id"]: row_case(row) for row in rows})
    for row in rows:
        case = row.get("case") if isinstance(row.get("case"), dict) else {}
        metrics = row.get("metrics") or {}
        names = [m for m in METRICS if m in metrics] if row["status"] == "ok" else \
            list(MODE_METRICS.get(case.get("mode"), ("time_median_s",)))
        case_json = json.dumps(case, sort_keys=True)
        for metric in names:
            key = (row["case_id"], labels[row["case_id"]], metric, METRICS[metric], case_json,
                   False)
            framework = case.get("framework")
            yield key, framework if isinstance(framework, str) else None, \
                _point(row, metrics, metric)
    for key, point in _ratio_points(source):
        yield key, None, point


def _point(row: dict, metrics: dict, metric: str) -> tuple:
    reasons = metrics.get("unstable_reasons")
    reasons = json.dumps([str(r) for r in reasons] if isinstance(reasons, list) else [])
    unstable = int(bool(metrics.get("unstable")))
    value = metrics.get(metric) if row["status"] == "ok" else None
    if not isinstance(value, int | float) or isinstance(value, bool):
        status = row["status"] if row["status"] != "ok" else "error"
        error = row.get("error") if row["status"] != "ok" else f"no {metric} recorded"
        return status, None, None, None, None, unstable, reasons, error, None, None
    lo = hi = samples = None
    if metric == "time_median_s":
        lo, hi, samples = _quartiles(metrics.get("time_samples_s"), metrics)
    return "ok", float(value), lo, hi, samples, unstable, reasons, None, None, None


def _quartiles(samples: Any, metrics: dict) -> tuple[float | None, float | None, int | None]:
    """The band of a time: the quartiles of its repeats (or median -+ IQR/2)."""
    if isinstance(samples, list) and len(samples) >= 2:
        values = sorted(float(s) for s in samples)
        n = len(values)

        def at(q: float) -> float:
            k = (n - 1) * q
            i = int(k)
            return values[i] + (values[min(i + 1, n - 1)] - values[i]) * (k - i)

        return at(0.25), at(0.75), n
    median, iqr = metrics.get("time_median_s"), metrics.get("time_iqr_s")
    if isinstance(iqr, int | float) and isinstance(median, int | float):
        return median - iqr / 2, median + iqr / 2, metrics.get("time_repeats")
    return None, None, metrics.get("time_repeats") if isinstance(
        metrics.get("time_repeats"), int) else None


def _ratio_points(source: Source) -> Iterable[tuple[tuple, tuple]]:
    """A suite's same-run contract ratios: series shared by every machine."""
    from attnbench.ratios import evaluate_contracts

    contracts = source.contracts
    if not contracts:
        return
    for contract, result in zip(contracts, evaluate_contracts(source.rows, contracts),
                                strict=True):
        direction = LOWER if contract.get("max_ratio") is not None else HIGHER
        key = (f"contract:{source.suite.name}:{result.name}", f"{source.suite.name}: "
               f"{result.name}", RATIO, direction, json.dumps(contract, sort_keys=True,
                                                             default=str), True)
        bounds = (_bound(contract.get("min_ratio")), _bound(contract.get("max_ratio")))
        if result.ratio is None:
            yield key, ("error", None, None, None, None, 0, "[]", result.message, *bounds)
        else:
            yield key, ("ok", float(result.ratio), None, None, None, 0, "[]", None, *bounds)


def _bound(value: Any) -> float | None:
    """A contract's bound as stored (a run's meta.json may hold anything: only a number)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        and math.isfinite(value) else None


def rebuild(path: str | os.PathLike, sources: Sequence[Source]) -> dict[str, int]:
    """Make the database again from ``sources`` (written beside, then renamed over, so a
    reader never sees half of it); steps and their verdicts are kept when the old file
    holds them. Returns counts by outcome."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.rebuild")
    for stale in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        stale.unlink(missing_ok=True)
    conn = connect(tmp)
    counts: dict[str, int] = {}
    try:
        for source in sources:
            outcome = add_source(conn, source)
            counts[outcome] = counts.get(outcome, 0) + 1
        if path.exists():
            _copy_steps(connect(path), conn)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    os.replace(tmp, path)
    for stale in (Path(f"{path}-wal"), Path(f"{path}-shm")):
        stale.unlink(missing_ok=True)
    return counts


def _copy_steps(old: sqlite3.Connection, new: sqlite3.Connection) -> None:
    rows = old.execute("SELECT m.fingerprint, s.case_id, s.metric, st.before_sha, st.after_sha, "
                       "st.before_value, st.after_value, st.ratio, st.kind, st.evidence, "
                       "st.detected_at, st.verdict, st.verdict_detail FROM steps st "
                       "JOIN series s ON s.id = st.series_id "
                       "LEFT JOIN machines m ON m.id = s.machine_id").fetchall()
    old.close()
    with _transaction(new):
        for fingerprint, case_id, metric, *step in rows:
            series = new.execute(
                "SELECT s.id FROM series s LEFT JOIN machines m ON m.id = s.machine_id "
                "WHERE ifnull(m.fingerprint, '') = ifnull(?, '') AND s.case_id = ? AND "
                "s.metric = ?", (fingerprint, case_id, metric)).fetchone()
            if series:
                new.execute("INSERT OR IGNORE INTO steps (series_id, before_sha, after_sha, "
                            "before_value, after_value, ratio, kind, evidence, detected_at, "
                            "verdict, verdict_detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (series[0], *step))


# --------------------------------------------------------------------------------------------
# Reading it back, in timeline order
# --------------------------------------------------------------------------------------------


def git_order(repo: str | os.PathLike | None) -> list[str]:
    """Every commit of ``repo`` reachable from any ref, oldest first in topological order
    (``git log``'s order reversed); [] when there is no repository at hand."""
    if repo is None:
        return []
    try:
        out = subprocess.run(["git", "rev-list", "--topo-order", "--reverse", "--all"],
                             cwd=repo, capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return out.stdout.split()


def order_runs(runs: Sequence[Run], commits: Sequence[str] = ()) -> dict[int, float]:
    """Run.id -> position. Runs of one commit share a position. The order: the commit's
    place in ``commits`` (``git log``) when it is there, else the commit's date, else the
    run's start; a run whose commit the log lacks goes by its date among the dated ones."""
    place = {sha: i for i, sha in enumerate(commits)}

    def key(run: Run) -> tuple:
        date = run.committed_at or run.started_at or ""
        in_log = place.get(run.sha or "")
        return (0, in_log, date) if in_log is not None else (1, date, run.started_at or "")

    in_log = sorted((r for r in runs if place.get(r.sha or "") is not None), key=key)
    others = sorted((r for r in runs if place.get(r.sha or "") is None), key=key)
    merged = _merge_by_date(in_log, others)
    positions: dict[int, float] = {}
    group: dict[str, float] = {}
    for run in merged:
        ident = run.sha if run.sha else f"run:{run.id}"
        if ident not in group:
            group[ident] = float(len(group))
        positions[run.id] = group[ident]
    return positions


def _merge_by_date(ordered: list[Run], dated: list[Run]) -> list[Run]:
    """Put the runs without a place in the log among the ordered ones by date."""
    out, i = [], 0
    for run in ordered:
        date = run.committed_at or run.started_at or ""
        while i < len(dated) and (dated[i].committed_at or dated[i].started_at or "") < date:
            out.append(dated[i])
            i += 1
        out.append(run)
    return out + dated[i:]


def load_history(conn: sqlite3.Connection, repo: str | os.PathLike | None = None) -> History:
    """Everything, with each run's position on the timeline (see :func:`order_runs`)."""
    history = History()
    for id_, fingerprint, parts in conn.execute("SELECT id, fingerprint, parts FROM machines"):
        history.machines[id_] = Machine(id_, fingerprint, json.loads(parts))
    runs = [Run(id_, run_id, kind, path, sha, None if dirty is None else bool(dirty),
                committed_at, started_at, machine_id, suite)
            for id_, run_id, kind, path, sha, dirty, committed_at, started_at, machine_id, suite
            in conn.execute("SELECT id, run_id, kind, path, sha, dirty, committed_at, "
                            "started_at, machine_id, suite FROM runs")]
    positions = order_runs(runs, git_order(repo))
    for run in runs:
        history.runs[run.id] = Run(**{**run.__dict__, "position": positions[run.id]})
    for id_, machine_id, case_id, label, metric, direction in conn.execute(
            "SELECT id, machine_id, case_id, label, metric, direction FROM series"):
        history.series[id_] = Series(id_, machine_id, case_id, label, metric, direction)
        history.points[id_] = []
    for (run_id, series_id, status, value, lo, hi, samples, unstable, reasons, error,
         bound_lo, bound_hi) in conn.execute(
            "SELECT run_id, series_id, status, value, lo, hi, samples, unstable, "
            "unstable_reasons, error, bound_lo, bound_hi FROM points"):
        run = history.runs[run_id]
        history.points[series_id].append(Point(
            series_id, run_id, run.position, run.sha, status, value, lo, hi, samples,
            bool(unstable), tuple(json.loads(reasons)), error, bound_lo, bound_hi))
    for points in history.points.values():
        points.sort(key=lambda p: (p.position, history.runs[p.run_id].started_at or ""))
    history.steps = [
        Step(series_id, before, after, bv, av, ratio, kind, json.loads(evidence), id_, verdict,
             json.loads(detail))
        for id_, series_id, before, after, bv, av, ratio, kind, evidence, verdict, detail
        in conn.execute("SELECT id, series_id, before_sha, after_sha, before_value, "
                        "after_value, ratio, kind, evidence, verdict, verdict_detail FROM steps "
                        "ORDER BY id")]
    return history


def store_steps(conn: sqlite3.Connection, steps: Sequence[Step]) -> list[Step]:
    """Replace the detected steps with ``steps``, keeping the verdict of a step found again
    (same series and commits) and every step that has a verdict; returns them with ids."""
    with _transaction(conn):
        kept = {(s, b, a) for s, b, a in conn.execute(
            "SELECT series_id, before_sha, after_sha FROM steps WHERE verdict IS NOT NULL")}
        found = {(s.series_id, s.before_sha, s.after_sha) for s in steps}
        for series_id, before, after in conn.execute(
                "SELECT series_id, before_sha, after_sha FROM steps").fetchall():
            if (series_id, before, after) not in kept | found:
                conn.execute("DELETE FROM steps WHERE series_id = ? AND before_sha IS ? AND "
                             "after_sha IS ?", (series_id, before, after))
        for step in steps:
            conn.execute(
                "INSERT INTO steps (series_id, before_sha, after_sha, before_value, "
                "after_value, ratio, kind, evidence, detected_at) VALUES (?, ?, ?, ?, ?, ?, ?, "
                "?, ?) ON CONFLICT (series_id, before_sha, after_sha) DO UPDATE SET "
                "before_value = excluded.before_value, after_value = excluded.after_value, "
                "ratio = excluded.ratio, kind = excluded.kind, evidence = excluded.evidence",
                (step.series_id, step.before_sha, step.after_sha, step.before_value,
                 step.after_value, step.ratio, step.kind, json.dumps(step.evidence,
                                                                    default=str), _now()))
    return load_history(conn).steps


def store_verdict(conn: sqlite3.Connection, step_id: int, verdict: str,
                  detail: dict[str, Any]) -> None:
    with _transaction(conn):
        conn.execute("UPDATE steps SET verdict = ?, verdict_detail = ? WHERE id = ?",
                     (verdict, json.dumps(detail, default=str, allow_nan=False), step_id))


def series_case(conn: sqlite3.Connection, series_id: int) -> dict[str, Any] | None:
    row = conn.execute("SELECT case_json FROM series WHERE id = ?", (series_id,)).fetchone()
    return json.loads(row[0]) if row and row[0] else None
