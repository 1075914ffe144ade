"""The run store: durable appends, a cut-off last line, schema checks, tidy rows."""

from __future__ import annotations

import json

import pytest

from attnbench.runs import flatten, load_source, write_results_csv
from attnbench.store import SCHEMA_VERSION, RunStore, StoreError
from tests.runs import create_run


def row(case_id, status="ok", **metrics):
    return {"run_id": "r", "case_id": case_id, "case": {"variant": "lsh", "length": 64},
            "status": status, "error": None if status == "ok" else "boom",
            "metrics": metrics, "started_at": "t", "wall_s": 1.0}


def test_append_and_read_back(tmp_path):
    store = create_run(tmp_path / "run", "r", suite="s")
    store.append(row("a", time_median_s=0.5, time_samples_s=[0.4, 0.5, 0.6]))
    store.append(row("b", status="oom"))
    rows = list(store.rows())
    assert [r["case_id"] for r in rows] == ["a", "b"]
    assert all(r["schema"] == SCHEMA_VERSION for r in rows)
    assert store.read_meta().suite.name == "s"
    assert store.done_ids() == {"a", "b"}


def test_cut_off_last_line_is_ignored_and_repaired(tmp_path):
    store = create_run(tmp_path, "r")
    store.append(row("a"))
    with open(store.results_path, "a") as f:
        f.write('{"case_id": "b", "sta')  # the process died mid-write
    assert store.done_ids() == {"a"}
    store.repair()
    store.append(row("c"))
    assert [r["case_id"] for r in store.rows()] == ["a", "c"]


def test_bad_status_and_wrong_schema_are_refused(tmp_path):
    store = create_run(tmp_path, "r")
    with pytest.raises(ValueError, match="status 'fine' is not one of"):
        store.append(row("a", status="fine"))
    store.meta_path.write_text(json.dumps({"schema": 99}))
    with pytest.raises(StoreError, match="schema 99"):
        store.read_meta()
    with pytest.raises(StoreError, match="not a run directory"):
        RunStore(tmp_path / "nothing").read_meta()


def test_flatten_and_csv(tmp_path):
    store = create_run(tmp_path, "r")
    store.append(row("a", time_median_s=0.5, time_samples_s=[0.4, 0.5]))
    store.append(row("b", status="timeout"))
    flat = flatten(next(store.rows()))
    assert flat["variant"] == "lsh" and flat["time_median_s"] == 0.5 and flat["status"] == "ok"
    assert write_results_csv([load_source(tmp_path)], tmp_path / "out.csv") == 2
    header, first, second = (tmp_path / "out.csv").read_text().splitlines()
    assert header.split(",")[:4] == ["run_id", "case_id", "label", "variant"]
    assert '"[0.4, 0.5]"' in first and "timeout" in second


def test_a_valid_last_row_without_its_newline_is_kept(tmp_path):
    """Only a row that does not parse is torn: a complete one is read, and repair adds the
    newline instead of deleting it."""
    store = create_run(tmp_path, "r")
    store.append(row("a"))
    with open(store.results_path, "a") as f:
        f.write(json.dumps({"schema": SCHEMA_VERSION, **row("b")}))  # no newline
    assert store.done_ids() == {"a", "b"}
    store.repair()
    store.append(row("c"))
    assert [r["case_id"] for r in store.rows()] == ["a", "b", "c"]


@pytest.mark.parametrize("line, why", [
    (b"\xff\xfe not text", "not a JSON row"),
    (b'{"case_id": "x", "sta', "not a JSON row"),
    (b"[1, 2]", "must be a JSON object, not list"),
    (b'{"schema": 7}', "schema 7"),
    (json.dumps({**row("x"), "schema": SCHEMA_VERSION, "case_id": None}).encode(),
     "case_id must be a non-empty string"),
    (json.dumps({**row("x"), "schema": SCHEMA_VERSION, "status": "fine"}).encode(),
     "status 'fine' is not one of"),
    (json.dumps({**row("x", time_median_s="fast"), "schema": SCHEMA_VERSION}).encode(),
     "metric time_median_s must be a number"),
])
def test_a_bad_row_in_the_middle_is_named_with_file_and_line(tmp_path, line, why):
    store = create_run(tmp_path, "r")
    store.append(row("a"))
    with open(store.results_path, "ab") as f:
        f.write(line + b"\n")
    store.append(row("b"))
    rows, problems = store.scan()
    assert [r["case_id"] for r in rows] == ["a", "b"]
    [problem] = problems
    assert problem.startswith(f"{store.results_path}:2: ") and why in problem, problem


@pytest.mark.parametrize("change, why", [
    ({"run_id": 5}, "run_id must be a non-empty string"),
    ({"argv": "attnbench run"}, "argv must be a list of strings"),
    ({"suite": {"name": "s", "contracts": 5}}, "contracts must be a list of objects"),
    ({"suite": {"name": "s", "contracts": [5]}}, "contracts must be a list of objects"),
    ({"suite": {"name": 3}}, "name must be a string"),
    ({"suite": {"nmae": "s"}}, "unknown key(s) ['nmae']"),
    ({"environment": {"git_commit": "abc"}}, "unknown key(s) ['git_commit']"),
])
def test_a_bad_meta_is_a_named_error(tmp_path, change, why):
    store = create_run(tmp_path, "r")
    meta = {**json.loads(store.meta_path.read_text()), **change}
    store.meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError) as raised:
        store.read_meta()
    assert str(store.meta_path) in str(raised.value) and why in str(raised.value)


def test_csv_text_cells_never_start_a_formula(tmp_path):
    import csv

    store = create_run(tmp_path, "r")
    store.append({**row("a", time_median_s=0.5, score=-0.25), "case": {
        "variant": "@SUM(A1)", "length": 64}})
    store.append({**row("b", status="error"), "error": '=HYPERLINK("http://x","y")'})
    write_results_csv([load_source(tmp_path)], tmp_path / "out.csv")
    with open(tmp_path / "out.csv", newline="") as f:
        first, second = csv.DictReader(f)
    assert first["variant"] == "'@SUM(A1)" and first["score"] == "-0.25"  # numbers as they are
    assert second["error"] == "'=HYPERLINK(\"http://x\",\"y\")"
