"""The Table-2 summary and figure over length, from a real sweep of tiny task cases: one matrix
per suite, task, framework and length, each cell against length beside the paper's and the fastai
reproduction's length-1024 values, models that used their budget marked as not converged."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.report.conftest import require_report_extra

require_report_extra()

from attnbench.report import figures  # noqa: E402
from attnbench.report.frame import tidy_frame  # noqa: E402
from attnbench.report.table2 import NOT_CONVERGED, table2_markdown  # noqa: E402
from attnbench.runner.run import run_cases  # noqa: E402
from attnbench.runner.suite import load_suite  # noqa: E402
from attnbench.runs import load_sources  # noqa: E402
from tests.runs import create_run  # noqa: E402

OPTIONS = ('task = "duplication", lr = 3e-3, eval_batches = 2, log_every = 10, '
           'plateau_steps = 50, plateau_delta = 0.02, eval_attentions = ["full", "lsh-2"]')
SUITE = f"""
name = "tiny-table2"
[defaults]
mode = "task"
vocab_size = 8
d_model = 32
d_ff = 32
n_heads = 2
depth = 1
batch = 32
causal = true
threads = 1
variant = ["transformer-shared-qk", "lsh-transformer"]
n_hashes = 2

[[sweep]]
framework = ["torch", "jax"]
length = 16
chunk_len = 4
options = {{steps = 600, {OPTIONS}}}

[[sweep]]
framework = "torch"
length = 32
chunk_len = 4
options = {{steps = 20, {OPTIONS}}}  # too short to learn: used its budget
"""


OTHER_SUITE = f"""
name = "tiny-other"
[defaults]
mode = "task"
framework = "torch"
length = 16
chunk_len = 4
vocab_size = 6
d_model = 16
d_ff = 16
n_heads = 2
depth = 1
batch = 16
causal = true
threads = 1

[[sweep]]
variant = "transformer-shared-qk"
options = {{steps = 20, {OPTIONS}}}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _real_run(tmp_path_factory.mktemp("table2"), SUITE, 6)


@pytest.fixture(scope="module")
def frame(run):
    return tidy_frame(load_sources([str(run)]))


@pytest.fixture(scope="module")
def two_suites(run, tmp_path_factory):
    """The run above and one of another suite at one of its lengths: a smaller model."""
    other = _real_run(tmp_path_factory.mktemp("other"), OTHER_SUITE, 1)
    return tidy_frame(load_sources([str(run), str(other)]))


def _real_run(tmp, suite: str, cases: int):
    (tmp / "suite.toml").write_text(suite)
    store = create_run(tmp / "run", "r")
    counts = run_cases(load_suite(tmp / "suite.toml").cases, store, "r", progress=False)
    assert counts == {"ok": cases}, [r["error"] for r in store.rows()]
    return tmp / "run"


def test_a_matrix_per_task_framework_and_length_with_how_training_ended(frame):
    text = table2_markdown(frame, "attnbench report X")
    assert "attnbench report X" in text
    short = text.split("## This run: duplication, torch, L=16")[1].split("##")[0]
    long = text.split("## This run: duplication, torch, L=32")[1].split("##")[0]
    assert "## This run: duplication, jax, L=16" in text
    assert short.count("plateaued at step") == 2 and NOT_CONVERGED not in short
    assert long.count(f"{NOT_CONVERGED} not converged: used its budget of 20 steps") == 2
    full_row = next(line for line in long.splitlines() if line.startswith("| full |"))
    assert full_row.count(NOT_CONVERGED) == 3  # both cells and the training column
    assert "| lsh-4 | 0.8 | 100.0 | 99.9 | 99.4 | 91.9 |" in text  # the paper's row
    assert "| lsh-4 | 46.5 | 99.7 | 99.8 | 93.0 | 77.6 |" in text  # the reproduction's


def test_each_cell_against_length_beside_the_papers_and_the_reproductions(frame):
    text = table2_markdown(frame)
    part = text.split("## duplication, torch: each cell against length")[1].split("##")[0]
    assert "| trained -> evaluated | L=16 | L=32 | paper, L=1024 | fastai repro, L=1024 |" \
        in part
    row = next(line for line in part.splitlines() if line.startswith("| full -> lsh-2 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[-2:] == ["76.9", "3.0"]  # paper, reproduction
    assert NOT_CONVERGED in cells[2] and NOT_CONVERGED not in cells[1]
    assert "## duplication, jax: each cell against length" not in text  # one length only


def test_the_accuracy_over_length_figure_draws_a_panel_per_training_attention(frame):
    fig = figures.accuracy_vs_length(frame)
    titles = sorted(ax.get_title() for ax in fig.axes if ax.get_visible())
    assert titles == ["trained with full", "trained with lsh-2"]
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert {"eval", "framework", "torch"} <= set(legend), legend  # one suite: not named
    assert "jax" not in legend  # JAX ran one length: no line over length
    result = figures.render_one("accuracy-vs-length", "t", "c", figures.accuracy_vs_length,
                                frame)
    assert result.svg and "not converged" in result.svg
    one_length = frame[frame["length"] == 16]
    with pytest.raises(figures.NoData, match="two or more lengths"):
        figures.accuracy_vs_length(one_length)


def test_the_report_command_writes_the_summary_and_its_figure(run, tmp_path):
    summary = tmp_path / "table2.md"
    done = subprocess.run([sys.executable, "-m", "attnbench.cli", "report", str(run), "-o",
                           str(tmp_path / "report"), "--no-attention-pattern",
                           "--table2-markdown", str(summary)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    text = summary.read_text()
    assert "](table2.svg)" in text and (tmp_path / "table2.svg").read_text().startswith("<svg")
    assert f"attnbench report {run} -o {tmp_path / 'report'}" in text  # the command, to rerun


def test_two_suites_at_one_length_never_share_a_matrix(two_suites):
    text = table2_markdown(two_suites)
    ours = text.split("## tiny-table2: duplication, torch, L=16")[1].split("##")[0]
    other = text.split("## tiny-other: duplication, torch, L=16")[1].split("##")[0]
    assert "| lsh-2 |" in ours and "| lsh-2 |" not in other  # the other trained full only
    assert "plateaued" in ours and f"{NOT_CONVERGED} not converged" in other
    assert "## tiny-table2: duplication, torch: each cell against length" in text
    assert "tiny-other: duplication, torch: each cell" not in text  # one length only
    titles = [ax.get_title() for ax in figures.accuracy_matrix(two_suites).axes]
    assert "ours: tiny-other: duplication, torch, L=16 (mean over seeds)" in titles
    assert "ours: tiny-table2: duplication, torch, L=16 (mean over seeds)" in titles
    legend = [t.get_text() for ax in figures.accuracy_vs_length(two_suites).axes
              if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert "torch" in legend and not any("tiny-other" in t for t in legend)  # one length


def test_training_curves_get_a_panel_per_suite_and_length(frame, two_suites):
    titles = [ax.get_title() for ax in figures.training_curves(frame).axes if ax.get_visible()]
    assert titles == ["duplication, L=16", "duplication, L=32"]
    titles = [ax.get_title() for ax in figures.training_curves(two_suites).axes
              if ax.get_visible()]
    assert sorted(titles) == ["tiny-other: duplication, L=16", "tiny-table2: duplication, L=16",
                              "tiny-table2: duplication, L=32"]
