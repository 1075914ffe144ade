"""The train x eval accuracy matrix of task runs as Markdown, beside the paper's Table 2.

``attnbench report RUN --table2-markdown FILE`` writes it; the checked-in summary of the CPU
reproduction (``reports/paper-table2-cpu.md``) is made this way.
"""

from __future__ import annotations

from attnbench.report import paper


def _cell(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _sort_key(name: str) -> int:
    order = {n: i for i, n in enumerate(paper.TABLE2_EVAL)}
    return order.get(name, len(order))


def matrices(frame) -> dict[tuple[str, str], dict[str, dict[str, float]]]:
    """{(task, framework): {trained with: {evaluated with: accuracy}}} of the ok task rows
    (the mean where several seeds ran)."""
    out: dict[tuple[str, str], dict[str, dict[str, list[float]]]] = {}
    if "task_eval" not in frame.columns:
        return {}
    rows = frame[(frame["mode"] == "task") & (frame["status"] == "ok")]
    for _, row in rows.iterrows():
        if not isinstance(row["task_eval"], dict):
            continue
        key = (str(row.get("task") or "task"), str(row.get("framework")))
        train = str(row.get("train_attention") or row.get("variant"))
        for evaluated, accuracy in row["task_eval"].items():
            out.setdefault(key, {}).setdefault(train, {}).setdefault(evaluated, []).append(
                float(accuracy))
    return {k: {t: {e: sum(v) / len(v) for e, v in evals.items()} for t, evals in grid.items()}
            for k, grid in out.items()}


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
        lines.append(f"- run `{source.run_id}`: `{command}`; {len(task_rows)} task case(s), "
                     f"{wall / 60:.1f} min of wall time; CPU {(env and env.cpu) or '?'}, "
                     f"{(env and (env.cpu_affinity or env.cpu_count)) or '?'} core(s); "
                     f"commit {(env and env.git.short) or '?'}")
    return lines


def table2_markdown(frame, command: str = "", sources=()) -> str:
    """Our matrices (one per task and framework) and the paper's, in percent."""
    lines = ["# Duplication task: train x eval accuracy (%)", ""]
    runs = provenance(sources)
    if runs:
        lines += ["Runs:", "", *runs, ""]
    if command:
        lines += ["Summary made by:", "", "```bash", command, "```", ""]
    found = matrices(frame)
    if not found:
        lines.append("No finished task results in this run.")
    for (task, framework), grid in sorted(found.items()):
        evals = sorted({e for row in grid.values() for e in row}, key=_sort_key)
        lines += [f"## This run: {task}, {framework}", "",
                  "| trained with | " + " | ".join(f"eval {e}" for e in evals) + " |",
                  "|---|" + "---|" * len(evals)]
        for train in sorted(grid, key=_sort_key):
            lines.append(f"| {train} | " + " | ".join(_cell(grid[train].get(e)) for e in evals)
                         + " |")
        lines.append("")
    lines += [f"## Paper ({paper.TABLE2_SOURCE})", "",
              "| trained with | " + " | ".join(f"eval {e}" for e in paper.TABLE2_EVAL) + " |",
              "|---|" + "---|" * len(paper.TABLE2_EVAL)]
    for train in paper.TABLE2_TRAIN:
        lines.append(f"| {train} | " + " | ".join(_cell(v) for v in paper.TABLE2_ACCURACY[train])
                     + " |")
    return "\n".join(lines) + "\n"
