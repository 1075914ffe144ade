"""The history database: what ``history add`` stores, how runs are ordered, and that it is
idempotent, versioned, rebuildable and safe with concurrent writers."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from attnbench.cli import main
from attnbench.history import db
from attnbench.history.model import HIGHER, LOWER, Run, Step
from attnbench.runs import load_source
from tests.report.conftest import DATA

ROOT = Path(__file__).resolve().parents[2]


def copy_run(tmp_path: Path, name: str, source: Path = DATA / "torch-cpu") -> Path:
    run = tmp_path / name
    shutil.copytree(source, run)
    return run


def rewrite_meta(run: Path, change) -> None:
    meta = json.loads((run / "meta.json").read_text())
    change(meta)
    (run / "meta.json").write_text(json.dumps(meta))


def test_add_stores_every_metric_with_its_direction_and_failures_as_status(tmp_path):
    conn = db.connect(tmp_path / "h.sqlite")
    source = load_source(DATA / "torch-cpu")
    assert db.add_source(conn, source) == "added"
    history = db.load_history(conn)
    by_metric = {}
    for series in history.series.values():
        by_metric.setdefault(series.metric, set()).add(series.direction)
    assert by_metric["time_median_s"] == {LOWER} and by_metric["mem_peak_mb"] == {LOWER}
    assert by_metric.get("task_accuracy", {HIGHER}) == {HIGHER}
    points = [p for ps in history.points.values() for p in ps]
    failed = [r for r in source.rows if r["status"] != "ok"]
    assert failed, "the golden run has failed cases"
    for row in failed:
        mine = [p for p in points if history.series[p.series_id].case_id == row["case_id"]]
        assert mine and all(p.status == row["status"] and p.value is None for p in mine)
    timed = [p for p in points if history.series[p.series_id].metric == "time_median_s"
             and p.status == "ok"]
    assert all(p.lo is not None and p.lo <= p.value <= p.hi for p in timed if p.samples)
    unstable = [r for r in source.rows if (r["metrics"] or {}).get("unstable")]
    assert sum(p.unstable for p in timed) == sum(
        1 for r in unstable if "time_median_s" in r["metrics"])


def test_adding_twice_changes_nothing_and_a_resumed_run_replaces_its_points(tmp_path):
    path = tmp_path / "h.sqlite"
    run = copy_run(tmp_path, "run")
    assert main(["history", "add", str(run), "--db", str(path)]) == 0
    before = sqlite3.connect(path).execute("SELECT count(*) FROM points").fetchone()[0]
    conn = db.connect(path)
    assert db.add_source(conn, load_source(run)) == "unchanged"
    lines = (run / "results.jsonl").read_text().splitlines(keepends=True)
    (run / "results.jsonl").write_text("".join(lines[:-1]))  # the same run, one case fewer
    assert db.add_source(conn, load_source(run)) == "updated"
    after = conn.execute("SELECT count(*) FROM points").fetchone()[0]
    assert 0 < after < before
    assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 1


def test_contract_ratios_are_series_shared_by_every_machine(tmp_path):
    conn = db.connect(tmp_path / "h.sqlite")
    a = copy_run(tmp_path, "a")
    b = copy_run(tmp_path, "b")
    rewrite_meta(b, lambda m: (m.update(run_id="other-machine"),
                               m["environment"].update(cpu="Another CPU", cpu_count=64)))
    for run in (a, b):
        db.add_source(conn, load_source(run))
    history = db.load_history(conn)
    assert len(history.machines) == 2
    ratios = [s for s in history.series.values() if s.metric == "ratio"]
    assert ratios and all(s.machine_id is None for s in ratios)
    for series in ratios:  # one timeline, a point from each machine
        machines = {history.runs[p.run_id].machine_id for p in history.points[series.id]}
        assert len(machines) == 2
    timed = [s for s in history.series.values() if s.metric == "time_median_s"]
    assert {s.machine_id for s in timed} == set(history.machines)  # per machine


def _torch_and_jax_run(tmp_path: Path, name: str, jax_version: str) -> Path:
    """The golden torch run with the golden JAX run's cases beside its own, on a machine with
    both frameworks installed, JAX at ``jax_version``."""
    run = copy_run(tmp_path, name)
    jax_rows = (DATA / "jax-cpu" / "results.jsonl").read_text().splitlines()[:-1]  # torn last
    with (run / "results.jsonl").open("a") as out:
        out.write("".join(line + "\n" for line in jax_rows))
    rewrite_meta(run, lambda m: (m.update(run_id=name), m["environment"]["packages"].update(
        jax=jax_version, jaxlib=jax_version)))
    return run


def test_a_ratio_point_holds_its_contracts_bounds(tmp_path):
    conn = db.connect(tmp_path / "h.sqlite")
    source = load_source(DATA / "torch-cpu")
    db.add_source(conn, source)
    history = db.load_history(conn)
    want = {c["name"]: c["max_ratio"] for c in source.contracts}
    ratios = [s for s in history.series.values() if s.metric == "ratio"]
    assert len(ratios) == len(want) == 4
    for series in ratios:
        (point,) = history.points[series.id]
        assert (point.bound_lo, point.bound_hi) == (None, want[series.label.split(": ", 1)[1]])
    timed = next(s for s in history.series.values() if s.metric == "time_median_s")
    assert all(p.bound_lo is None and p.bound_hi is None for p in history.points[timed.id])


def test_upgrading_jax_keeps_torch_series_on_their_machine_and_moves_jax_series(tmp_path):
    conn = db.connect(tmp_path / "h.sqlite")
    for name, version in (("old", "0.4.30"), ("new", "0.5.0")):
        db.add_source(conn, load_source(_torch_and_jax_run(tmp_path, name, version)))
    history = db.load_history(conn)
    timed = [s for s in history.series.values() if s.metric == "time_median_s"]
    rows = [json.loads(r) for r in (tmp_path / "new" / "results.jsonl").read_text().splitlines()]
    case_frameworks = {r["case_id"]: r["case"]["framework"] for r in rows}
    torch_series = [s for s in timed if case_frameworks[s.case_id] == "torch"]
    jax_series = [s for s in timed if case_frameworks[s.case_id] == "jax"]
    assert torch_series and jax_series
    # a torch case: one series through both runs, on a machine without jax's version
    assert all(len(history.points[s.id]) == 2 for s in torch_series)
    (torch_machine,) = {s.machine_id for s in torch_series}
    assert history.machines[torch_machine].parts["torch"] == "2.13.0"
    assert "jax" not in history.machines[torch_machine].parts
    # a jax case: a series per jax version, neither naming torch
    assert all(len(history.points[s.id]) == 1 for s in jax_series)
    jax_machines = {s.machine_id for s in jax_series}
    assert sorted(history.machines[m].parts["jax"] for m in jax_machines) == ["0.4.30", "0.5.0"]
    assert all("torch" not in history.machines[m].parts for m in jax_machines)
    # each run keeps its whole machine: both frameworks' versions
    assert {history.machines[r.machine_id].parts.get("jax") for r in history.runs.values()} \
        == {"0.4.30", "0.5.0"}
    assert all("torch" in history.machines[r.machine_id].parts for r in history.runs.values())


def _run(id_: int, sha: str | None, committed: str | None, started: str) -> Run:
    return Run(id_, f"r{id_}", "run", "p", sha, False, committed, started, 1, "s")


def test_runs_are_ordered_by_the_git_log_then_commit_date_then_start():
    runs = [_run(1, "c3", "2026-01-01T00:00:00", "2026-02-03"),
            _run(2, "c1", "2026-01-05T00:00:00", "2026-02-01"),  # older in the log, later date
            _run(3, "c2", "2026-01-02T00:00:00", "2026-02-02"),
            _run(4, "c1", "2026-01-05T00:00:00", "2026-02-04"),  # the same commit again
            _run(5, None, None, "2026-02-05")]
    positions = db.order_runs(runs, ["c1", "c2", "c3"])
    assert positions[2] == positions[4] < positions[3] < positions[1] < positions[5]
    by_date = db.order_runs(runs)  # no repository: the commit's date decides
    assert by_date[1] < by_date[3] < by_date[2] == by_date[4] < by_date[5]


def test_git_order_reads_the_log(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    shas = []
    for i in range(3):
        (repo / "f").write_text(str(i))
        for args in (["init", "-q"] if i == 0 else [], ["add", "f"],
                     ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", str(i)]):
            if args:
                subprocess.run(["git", *args], cwd=repo, check=True)
        shas.append(subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True,
                                   capture_output=True, text=True).stdout.strip())
    assert db.git_order(repo) == shas
    assert db.git_order(tmp_path / "nowhere") == []


def test_another_schema_version_or_a_file_that_is_not_sqlite_is_refused(tmp_path, capsys):
    path = tmp_path / "h.sqlite"
    db.connect(path).close()
    sqlite3.connect(path).execute("PRAGMA user_version = 7")
    with pytest.raises(db.HistoryError, match="history schema 7, this attnbench reads"):
        db.connect(path)
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database at all " * 100)
    assert main(["history", "add", str(DATA / "torch-cpu"), "--db", str(junk)]) == 2
    assert "not a usable history database" in capsys.readouterr().err


def test_rebuild_makes_the_same_history_and_keeps_verdicts(tmp_path):
    path = tmp_path / "h.sqlite"
    sources = [load_source(DATA / "torch-cpu"), load_source(DATA / "jax-cpu")]
    conn = db.connect(path)
    for source in sources:
        db.add_source(conn, source)
    history = db.load_history(conn)
    series = next(s for s in history.series.values() if s.metric == "time_median_s")
    stored = db.store_steps(conn, [Step(series.id, "a" * 40, "b" * 40, 1.0, 2.0, 2.0,
                                        "regression", {"score": 1})])
    db.store_verdict(conn, stored[0].id, "confirmed", {"rounds": 3})
    conn.close()
    counts = db.rebuild(path, sources)
    assert counts == {"added": 2}
    rebuilt = db.load_history(db.connect(path))
    assert len(rebuilt.series) == len(history.series)
    assert sum(map(len, rebuilt.points.values())) == sum(map(len, history.points.values()))
    (step,) = rebuilt.steps
    assert step.verdict == "confirmed" and step.verdict_detail == {"rounds": 3}
    assert rebuilt.series[step.series_id].case_id == series.case_id


def test_store_steps_keeps_verdicts_and_drops_unconfirmed_steps_no_longer_found(tmp_path):
    conn = db.connect(tmp_path / "h.sqlite")
    db.add_source(conn, load_source(DATA / "torch-cpu"))
    sid = next(iter(db.load_history(conn).series))
    step = Step(sid, "a", "b", 1.0, 2.0, 2.0, "regression")
    first = db.store_steps(conn, [step, dataclasses.replace(step, before_sha="c", after_sha="d")])
    db.store_verdict(conn, first[0].id, "not reproduced", {})
    left = db.store_steps(conn, [])
    assert [(s.before_sha, s.verdict) for s in left] == [("a", "not reproduced")]


ADDER = """
import sys
from attnbench.history import db
from attnbench.runs import load_source
conn = db.connect(sys.argv[1])
for path in sys.argv[2:]:
    db.add_source(conn, load_source(path))
"""


def test_concurrent_writers_lose_nothing(tmp_path):
    runs = []
    for i in range(8):
        run = copy_run(tmp_path, f"run{i}")
        rewrite_meta(run, lambda m, i=i: m.update(run_id=f"run-{i}"))
        runs.append(str(run))
    path = str(tmp_path / "h.sqlite")
    procs = [subprocess.Popen([sys.executable, "-c", ADDER, path, *runs[i::4]], cwd=ROOT)
             for i in range(4)]
    assert [p.wait(timeout=300) for p in procs] == [0] * 4
    conn = db.connect(path)
    assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 8
    per_run = conn.execute("SELECT count(*) FROM points GROUP BY run_id").fetchall()
    assert len(set(per_run)) == 1  # every run complete
