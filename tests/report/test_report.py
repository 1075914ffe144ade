"""`attnbench report` on the golden runs: every case appears, the CSV's columns, escaping,
figures or notes for what is missing, and the command line."""

import argparse
import csv
import json
import re
import shutil
import subprocess
import sys

import pytest

from attnbench.report import command, figures
from attnbench.runs import LEADING_COLUMNS, load_source, load_sources
from tests.report.conftest import DATA, GOLDEN_INPUTS, require_report_extra
from tests.runs import create_run

require_report_extra()


def golden_rows():
    return [(s.run_id, row) for s in load_sources([DATA / n for n in GOLDEN_INPUTS])
            for row in s.rows]


def test_every_case_appears_in_the_page(golden_report):
    page = golden_report.read_text()
    rows = golden_rows()
    assert len(rows) == 96  # 78 torch + 10 jax (a line cut off by a kill is dropped) + 2 + 6
    for _, row in rows:
        assert row["case_id"] in page, row["case"]


def test_results_csv_has_one_row_per_case_and_the_tidy_columns(golden_report):
    with open(golden_report.parent / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        records = list(reader)
        header = reader.fieldnames
    assert header[:len(LEADING_COLUMNS)] == LEADING_COLUMNS
    assert {"time_samples_s", "task_eval", "task_loss_curve", "xla_temp_mb"} <= set(header)
    assert sorted((r["run_id"], r["case_id"]) for r in records) == \
        sorted((run, row["case_id"]) for run, row in golden_rows())
    by_label = {(r["run_id"], r["label"]): r for r in records}
    oom = by_label[("golden-torch-cpu", "full-fused/torch fb L=8192")]
    assert oom["status"] == "oom" and "not enough memory" in oom["error"]
    assert oom["time_median_s"] == ""  # missing, not 0
    ok = by_label[("golden-torch-cpu", "lsh/torch fb L=1024 h=2")]
    assert float(ok["time_median_s"]) > 0 and len(json.loads(ok["time_samples_s"])) == 7
    task = by_label[("golden-torch-cpu", "lsh/torch task L=256 h=4 train=lsh-4")]
    assert json.loads(task["task_eval"])["lsh-8"] == pytest.approx(0.998)
    assert task["train_attention"] == "lsh-4" and task["task"] == "duplication"


def test_text_from_suites_and_results_is_escaped(golden_report):
    page = golden_report.read_text()
    for raw in ("<script>alert(1)</script>", "<img src=x onerror=alert(2)>",
                "<script>alert(3)</script>", "<b onmouseover=alert(4)>", "<svg onload=alert(5)>",
                "<i>ratio</i>", "</td></table>"):
        assert raw not in page
        assert raw.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in page
    assert "<script" not in page.lower()  # the report itself needs no script


def test_page_is_self_contained(golden_report):
    page = golden_report.read_text()
    targets = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert targets and all(t.startswith(("data:", "#")) for t in targets), targets
    assert "@import" not in page and "url(" not in page


def test_every_figure_is_drawn_from_the_golden_runs(golden_report):
    page = golden_report.read_text()
    assert "could not be drawn" not in page
    assert "Nothing to draw" not in page
    for key, title, _, _ in figures.FIGURES:
        assert f'id="{key}"' in page and title in page
    assert page.count('<img class="figure"') == len(figures.FIGURES) + 1  # + attention pattern


def test_tables_show_failures_contracts_and_environment(golden_report):
    page = golden_report.read_text()
    assert "timed out after 300 s" in page and "RESOURCE_EXHAUSTED" in page
    assert "LSH-1 fwd+bwd at 4096 &lt;= 0.5x full" in page
    assert "2bec1f8" in page and "torch 2.13.0" in page and "jax 0.7.2" in page
    assert "Run golden-empty has no results" in page
    assert "<td>oom at 8192</td>" in page and "<td>timeout at 4096</td>" in page  # summary
    assert re.search(r"<td>full-naive</td><td>torch \[golden-torch-cpu\]</td><td>2048</td>"
                     r"<td>4096</td><td>timeout</td>", page)


def test_empty_and_failed_runs_render_notes_instead_of_figures(tmp_path):
    store = create_run(tmp_path / "all-failed", suite="x")
    for length, status in ((1024, "oom"), (2048, "timeout"), (4096, "error")):
        store.append({"run_id": "all-failed", "case_id": f"c{length}", "status": status,
                      "error": f"{status} at {length}", "metrics": {},
                      "case": {"variant": "full-naive", "framework": "torch",
                               "mode": "forward", "length": length}})
    path = command.build_report([tmp_path / "all-failed", DATA / "empty"], tmp_path / "out",
                                attention_pattern=False)
    page = path.read_text()
    assert '<img class="figure"' not in page
    # every figure has nothing to draw: one line lists them, no box each
    assert "Nothing to draw" not in page and page.count('<p class="note">') == 0
    [absent] = re.findall(r'<section id="not-in-these-runs">.*?</section>', page)
    for key, title, _, _ in figures.FIGURES:
        assert f"<b>{title}</b> (" in absent and f'id="{key}"' not in page
    assert "oom at 1024" in page and "error at 4096" in page
    with open(tmp_path / "out" / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert len(list(reader)) == 3 and reader.fieldnames[:3] == ["run_id", "case_id", "label"]


def test_a_pytest_benchmark_file_is_recognised_by_its_content(tmp_path):
    renamed = tmp_path / "benchmark-output.txt"
    shutil.copy(DATA / "pytest_benchmark.json", renamed)
    source = load_source(renamed)
    assert source.kind == "pytest-benchmark" and len(source.rows) == 6
    lsh = [r for r in source.rows if r["case"]["variant"] == "lsh"]
    assert {r["case"]["length"] for r in lsh} == {512, 1024, 2048}
    assert all(len(r["metrics"]["time_samples_s"]) == 9 and r["metrics"]["mem_peak_mb"] > 0
               for r in lsh)
    page = command.build_report([renamed], tmp_path / "out", attention_pattern=False).read_text()
    assert "lsh/torch fb L=2048" in page and "2bec1f8aa" in page
    assert page.count('<img class="figure"') >= 3  # time, memory, scaling at least
    not_a_benchmark = tmp_path / "other.json"
    not_a_benchmark.write_text('{"benchmarks": 3}')
    with pytest.raises(ValueError, match="not pytest-benchmark"):
        load_source(not_a_benchmark)


def report_command(*argv):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return command.run(parser.parse_args([str(a) for a in argv]))


def test_command_writes_beside_a_single_run_and_rejects_bad_input(tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(DATA / "evil", run)
    assert report_command(run, "--no-attention-pattern", "--title", "<t>") == 0
    assert (run / "index.html").is_file() and (run / "results.csv").is_file()
    assert "<title>&lt;t&gt;</title>" in (run / "index.html").read_text()
    assert "wrote" in capsys.readouterr().out
    assert report_command(tmp_path / "missing") == 2
    assert "no such run directory" in capsys.readouterr().err


def test_importing_the_commands_stays_light():
    code = ("import sys, attnbench.compare, attnbench.contracts, attnbench.report.command; "
            "heavy = {'pandas', 'seaborn', 'matplotlib', 'torch', 'jax'} & set(sys.modules); "
            "print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_environment_table_shows_commit_and_threads_under_their_headers():
    """Read from the schema capture() writes: the commit and the threads the cases used."""
    from attnbench.report.tables import runs_table

    sources = load_sources([DATA / "torch-cpu", DATA / "pytest_benchmark.json"])
    table = runs_table(sources)
    run, bench = (dict(zip(table.columns, row, strict=True)) for row in table.rows)
    assert run["commit"] == "2bec1f8aa0" and run["threads"] == "2"
    assert run["device"] == "CPU: AMD EPYC 7B13" and run["python"] == "3.11.2"
    assert bench["commit"] == "2bec1f8aa" and bench["host"] == "bench-1"


def test_every_table_has_one_cell_per_header(golden_report):
    from attnbench.report import tables
    from attnbench.report.frame import tidy_frame

    sources = load_sources([DATA / n for n in GOLDEN_INPUTS])
    frame = tidy_frame(sources)
    for table in (tables.runs_table(sources), tables.run_details_table(sources),
                  tables.summary_table(frame), tables.contracts_table(sources),
                  tables.failures_table(frame), tables.cases_table(frame),
                  tables.largest_fit_table(frame), tables.exponents_table(frame)):
        assert table.rows, table.key
        assert {len(row) for row in table.rows} == {len(table.columns)}, table.key


def test_run_export_and_report_write_the_same_results_csv(tmp_path, capsys):
    from attnbench.cli import main

    assert main(["export", str(DATA / "torch-cpu"), "--csv", str(tmp_path / "export.csv")]) == 0
    command.build_report([DATA / "torch-cpu"], tmp_path / "report", attention_pattern=False)
    assert (tmp_path / "export.csv").read_text() == (tmp_path / "report" / "results.csv") \
        .read_text()


def test_an_unstable_case_is_marked_beside_its_number_and_counted(golden_report):
    from attnbench.report import tables
    from attnbench.report.frame import tidy_frame

    frame = tidy_frame(load_sources([DATA / "jax-cpu"]))
    assert tables.unstable_count(frame) == 1
    cases = tables.cases_table(frame)
    shown = [dict(zip(cases.columns, row, strict=True)) for row in cases.rows]
    [marked] = [c for c in shown if c["median time"].endswith("(unstable)")]
    assert marked["case"] == "lsh/jax fb L=1024 h=2"
    assert marked["noise"].startswith("UNSTABLE: machine busy: other processes used 60%")
    assert all(c["noise"] == "others 1% CPU" for c in shown if c is not marked
               and c["status"] == "ok")
    summary = tables.summary_table(frame)
    column = summary.columns.index("unstable")
    assert sorted(row[column] for row in summary.rows) == [0, 1]
    page = golden_report.read_text()
    assert "; 1 marked unstable)" in page and 'class="unstable"' in page
    assert "1 case(s) are marked unstable" in page


def test_every_drawn_figure_keeps_its_caption(golden_report):
    page = golden_report.read_text()
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    assert len(captions) == page.count('<img class="figure"')
    assert all(len(c) > 40 for c in captions), captions


def test_the_report_groups_and_filters_by_node(tmp_path):
    from attnbench.report import tables
    from attnbench.report.frame import tidy_frame

    both = [DATA / "torch-cpu", DATA / "jax-cpu"]
    summary = tables.summary_table(tidy_frame(load_sources(both)))
    column = summary.columns.index("nodes")
    assert {row[column] for row in summary.rows} == {"bench-1", "bench-2"}
    assert main_report([*map(str, both), "-o", str(tmp_path / "r"), "--node", "bench-2",
                        "--no-attention-pattern"]) == 0
    with open(tmp_path / "r" / "results.csv", newline="") as f:
        records = list(csv.DictReader(f))
    assert records and {r["node_host"] for r in records} == {"bench-2"}
    assert {r["framework"] for r in records} == {"jax"}


def test_a_variant_named_like_tex_is_drawn_as_its_name(tmp_path):
    """matplotlib reads text between dollars as TeX: a plugin named ``full$\\frac$`` made
    every figure with the name in it fail ("could not be drawn: ValueError")."""
    from attnbench.runner.case import Case

    run = tmp_path / "tex"
    shutil.copytree(DATA / "torch-cpu", run)
    rows = []
    for line in (run / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["case"]["variant"] == "full-fused":  # the author computes the case's id too
            row["case"]["variant"] = "full$\\frac$"
            row["case_id"] = Case.from_dict(row["case"]).case_id
        rows.append(json.dumps(row) + "\n")
    (run / "results.jsonl").write_text("".join(rows))
    page = command.build_report([run], tmp_path / "out", attention_pattern=False).read_text()
    assert "could not be drawn" not in page
    assert page.count("full$\\frac$") >= 3  # in the figures' legends and in the tables


def main_report(argv):
    from attnbench.cli import main

    return main(["report", *argv])
