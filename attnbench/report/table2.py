"""The train x eval accuracy matrices of task runs as Markdown, beside the paper's Table 2.

``attnbench report RUN --table2-markdown FILE`` writes it; the checked-in summaries
(``reports/paper-table2-cpu.md``, ``reports/paper-table2-length.md``) are made this way. One
matrix per suite, task, framework and length (two suites never share a matrix: their models
differ in more than length); a row whose model used its whole step budget without its loss
plateauing (``task_converged`` false) is marked as not converged. Where a suite ran a task and
framework at two or more lengths, a table of each cell against length follows, with the
paper's and the fastai reproduction's length-1024 values beside it.
"""

from __future__ import annotations

import math

from attnbench.report import paper
from attnbench.text import longest_backticks, markdown_code, markdown_text, plain_text

NOT_CONVERGED = "†"


def _cell(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def attention_order(name: str) -> tuple[int, str]:
    """The sort key of an attention name in matrices and figures: the paper's order, then
    other attentions (registered ones) by name."""
    order = {n: i for i, n in enumerate(paper.TABLE2_EVAL)}
    return order.get(name, len(order)), name


def _number(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def task_cells(frame) -> list[dict]:
    """One record per ok task row and evaluation: suite, task, framework, length, train, eval,
    accuracy, and how the training ended (stop, steps, budget, converged)."""
    if "task_eval" not in frame.columns:
        return []
    rows = frame[(frame["mode"] == "task") & (frame["status"] == "ok")]
    records = []
    for _, row in rows.iterrows():
        if not isinstance(row["task_eval"], dict):
            continue
        converged = _number(row.get("task_converged"))
        common = {"suite": str(row.get("suite") or ""), "task": str(row.get("task") or "task"),
                  "framework": str(row.get("framework")), "length": int(row["length"]),
                  "train": str(row.get("train_attention") or row.get("variant")),
                  "stop": _number(row.get("task_stop")), "steps": _number(row.get("task_steps")),
                  "budget": _number(row.get("task_step_budget")),
                  "converged": None if converged is None else bool(converged)}
        for evaluated, accuracy in row["task_eval"].items():
            if isinstance(accuracy, int | float):  # a NaN accuracy was stored as null
                records.append({**common, "eval": str(evaluated), "accuracy": float(accuracy)})
    return records


Setup = tuple[str, str, str, int]  # suite, task, framework, length


def setup_of(cell: dict) -> Setup:
    return cell["suite"], cell["task"], cell["framework"], cell["length"]


def setup_title(setup: Setup, several_suites: bool) -> str:
    suite, task, framework, length = (markdown_text(part) for part in setup)
    return f"{suite + ': ' if several_suites else ''}{task}, {framework}, L={length}"


def matrices(frame) -> dict[Setup, dict[str, dict[str, float]]]:
    """{(suite, task, framework, length): {trained with: {evaluated with: accuracy}}} (the
    mean where several seeds ran)."""
    sums: dict = {}
    for c in task_cells(frame):
        cell = sums.setdefault(setup_of(c), {}).setdefault(
            c["train"], {}).setdefault(c["eval"], [])
        cell.append(c["accuracy"])
    return {k: {t: {e: sum(v) / len(v) for e, v in evals.items()} for t, evals in grid.items()}
            for k, grid in sums.items()}


def trainings(frame) -> dict[tuple[str, str, str, int, str], str]:
    """How each model's training ended, as text; ``NOT_CONVERGED`` leads when a model (any
    seed) used its whole budget without plateauing."""
    seen: dict = {}
    for c in task_cells(frame):
        seen.setdefault((*setup_of(c), c["train"]), {})[
            (c["stop"], c["steps"], c["budget"], c["converged"])] = None
    out = {}
    for key, ends in seen.items():
        texts = []
        for stop, steps, budget, converged in ends:
            if converged is False:
                texts.append(f"{NOT_CONVERGED} not converged: used its budget of "
                             f"{int(budget)} steps without the loss plateauing")
            elif stop == "plateau":
                texts.append(f"plateaued at step {int(steps)} (budget {int(budget)})")
            elif steps is not None:
                texts.append(f"{int(steps)} steps (fixed)")
        out[key] = "; ".join(sorted(texts, key=lambda t: not t.startswith(NOT_CONVERGED)))
    return out


def provenance(sources) -> list[str]:
    """For each run with task results: the command that made it, its environment and the
    wall time of its task cases."""
    lines = []
    for source in sources:
        task_rows = [r for r in source.rows if (r.get("case") or {}).get("mode") == "task"]
        if not task_rows:
            continue
        argv = source.meta.argv
        command = "attnbench " + " ".join(argv[1:]) if argv else "(not recorded)"
        env = source.environment
        wall = sum(float(r.get("wall_s") or 0) for r in task_rows)
        lines.append(f"- run {markdown_code(source.run_id)}: {markdown_code(command)}; "
                     f"{len(task_rows)} task case(s), {wall / 60:.1f} min of wall time; CPU "
                     f"{markdown_text((env and env.cpu) or '?')}, "
                     f"{markdown_text((env and (env.cpu_affinity or env.cpu_count)) or '?')} "
                     f"core(s); commit {markdown_text((env and env.git.short) or '?')}")
    return lines


def _matrix_lines(title: str, grid, ends: dict[str, str]) -> list[str]:
    evals = sorted({e for row in grid.values() for e in row}, key=attention_order)
    lines = [f"## {title}", "",
             "| trained with | " + " | ".join(f"eval {markdown_text(e)}" for e in evals)
             + " | training |",
             "|---|" + "---|" * (len(evals) + 1)]
    for train in sorted(grid, key=attention_order):
        mark = f" {NOT_CONVERGED}" if ends.get(train, "").startswith(NOT_CONVERGED) else ""
        lines.append(f"| {markdown_text(train)} | " + " | ".join(
            _cell(grid[train].get(e)) + (mark if e in grid[train] else "") for e in evals)
            + f" | {ends.get(train, '')} |")
    return lines + [""]


def _over_length_lines(series: tuple[str, str, str], found, ends, several_suites: bool
                       ) -> list[str]:
    lengths = sorted(setup[3] for setup in found if setup[:3] == series)
    suite, task, framework = (markdown_text(part) for part in series)
    if len(lengths) < 2:
        return []
    lines = [f"## {suite + ': ' if several_suites else ''}{task}, {framework}: each cell "
             "against length", "",
             "| trained -> evaluated | " + " | ".join(f"L={n}" for n in lengths)
             + f" | paper, L={paper.TABLE2_LENGTH} | fastai repro, L={paper.TABLE2_LENGTH} |",
             "|---|" + "---|" * (len(lengths) + 2)]
    trains = sorted({t for n in lengths for t in found[(*series, n)]}, key=attention_order)
    for train in trains:
        evals = sorted({e for n in lengths for e in found[(*series, n)].get(train, {})},
                       key=attention_order)
        for evaluated in evals:
            cells = []
            for n in lengths:
                value = found[(*series, n)].get(train, {}).get(evaluated)
                late = ends.get((*series, n, train), "").startswith(NOT_CONVERGED)
                cells.append(_cell(value) + (f" {NOT_CONVERGED}" if late and value is not None
                                             else ""))
            refs = [_reference(table, train, evaluated) for table in
                    (paper.TABLE2_ACCURACY, paper.TABLE2_REPRO_ACCURACY)]
            lines.append(f"| {markdown_text(train)} -> {markdown_text(evaluated)} | "
                         + " | ".join(cells) + " | "
                         + " | ".join(refs) + " |")
    return lines + [""]


def _reference(table, train: str, evaluated: str) -> str:
    if train not in table or evaluated not in paper.TABLE2_EVAL:
        return "-"
    return _cell(table[train][paper.TABLE2_EVAL.index(evaluated)])


def table2_markdown(frame, command: str = "", sources=(), figure: str | None = None) -> str:
    """Our matrices (one per suite, task, framework and length), each cell against length where
    there are several (with ``figure``, the accuracy-vs-length SVG beside the file, linked),
    and the paper's and the reproduction's matrices, in percent."""
    lines = ["# Duplication task: train x eval accuracy (%)", ""]
    runs = provenance(sources)
    if runs:
        lines += ["Runs:", "", *runs, ""]
    if command:
        fence = "`" * max(3, longest_backticks(command) + 1)
        lines += ["Summary made by:", "", fence + "bash", plain_text(command), fence, ""]
    found = matrices(frame)
    ends = trainings(frame)
    if not found:
        lines.append("No finished task results in this run.")
    if any(e.startswith(NOT_CONVERGED) for e in ends.values()):
        lines += [f"{NOT_CONVERGED}: the model did not reach the stopping criterion (its loss "
                  "had not plateaued when its step budget ran out), so its cells may understate "
                  "what the attention can do.", ""]
    if figure:
        lines += [f"![Accuracy against length per train x eval cell; stars: the paper, rings: "
                  f"the fastai reproduction, both at length {paper.TABLE2_LENGTH}]({figure})",
                  ""]
    several = len({setup[0] for setup in found}) > 1
    for series in sorted({setup[:3] for setup in found}):
        lines += _over_length_lines(series, found, ends, several)
    for setup, grid in sorted(found.items()):
        rows = {train: ends.get((*setup, train), "") for train in grid}
        title = setup_title(setup, several)
        lines += _matrix_lines(title if several else f"This run: {title}", grid, rows)
    for title, table in ((paper.TABLE2_SOURCE, paper.TABLE2_ACCURACY),
                         (paper.TABLE2_REPRO_SOURCE, paper.TABLE2_REPRO_ACCURACY)):
        lines += [f"## {title}", "",
                  "| trained with | " + " | ".join(f"eval {e}" for e in paper.TABLE2_EVAL)
                  + " |", "|---|" + "---|" * len(paper.TABLE2_EVAL)]
        for train in paper.TABLE2_TRAIN:
            lines.append(f"| {train} | " + " | ".join(_cell(v) for v in table[train]) + " |")
        lines.append("")
    return "\n".join(lines)
