"""The Table-2 Markdown summary: one matrix per task and framework, train attention taken from
the runner's task_train_attention metric, the paper's matrix beside it."""

from __future__ import annotations

from tests.report.conftest import require_report_extra

require_report_extra()

from attnbench.report.frame import tidy_frame  # noqa: E402
from attnbench.report.table2 import table2_markdown  # noqa: E402
from attnbench.runs import load_sources  # noqa: E402
from tests.runs import create_run  # noqa: E402


def task_row(case_id, framework, variant, n_hashes, train, evals):
    return {"run_id": "r", "case_id": case_id, "status": "ok", "error": None,
            "started_at": "t", "wall_s": 1.0,
            "case": {"variant": variant, "framework": framework, "mode": "task", "length": 64,
                     "n_hashes": n_hashes, "options": {"steps": 10}},
            "metrics": {"task_eval": evals, "task_accuracy": evals["full"],
                        "task_train_attention": train, "task_name": "duplication"}}


def test_matrix_per_framework_with_the_paper(tmp_path):
    store = create_run(tmp_path, "r")
    store.append(task_row("a", "torch", "transformer-shared-qk", None, "full",
                          {"full": 1.0, "lsh-1": 0.5}))
    store.append(task_row("b", "torch", "lsh-transformer", 1, "lsh-1",
                          {"full": 0.25, "lsh-1": 0.75}))
    store.append(task_row("c", "jax", "lsh-transformer", 1, "lsh-1",
                          {"full": 0.125, "lsh-1": 0.875}))
    text = table2_markdown(tidy_frame(load_sources([str(tmp_path)])), "attnbench report X")
    torch_part = text.split("## This run: duplication, torch")[1].split("##")[0]
    jax_part = text.split("## This run: duplication, jax")[1].split("##")[0]
    assert "| full | 100.0 | 50.0 |" in torch_part
    assert "| lsh-1 | 25.0 | 75.0 |" in torch_part
    assert "| lsh-1 | 12.5 | 87.5 |" in jax_part and "| full |" not in jax_part
    assert "| lsh-4 | 0.8 | 100.0 | 99.9 | 99.4 | 91.9 |" in text  # the paper's row
    assert "attnbench report X" in text
