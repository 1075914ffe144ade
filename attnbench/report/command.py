"""``attnbench report RUN [RUN ...]``: index.html and results.csv for one or several runs.

Each RUN is a run directory (``reports/runs/<run>``) or a pytest-benchmark JSON file
(recognised by its content). Several runs are shown together (torch vs JAX, CPU vs GPU,
before vs after), each series labelled with its run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from attnbench.runs import (
    Source,
    SourceError,
    load_sources,
    unreadable_summary,
    write_results_csv,
)
from attnbench.safeio import UnsafePathError, check_output_dir, check_outputs, write_atomic
from attnbench.text import plain_text

SECTIONS_ORDER = ("summary", "contracts", "largest-fit", "figures", "exponents", "failures",
                  "cases", "environment", "run-details")


def build_report(inputs: list[str | Path], out_dir: str | Path, title: str | None = None,
                 attention_pattern: bool = True, nodes: list[str] | None = None,
                 sources: list[Source] | None = None) -> Path:
    """Write ``index.html`` and ``results.csv`` into ``out_dir``; returns the HTML path.
    ``nodes``: only the rows measured on these hosts (``node_host``); ``sources``: the
    inputs already loaded (reading 20,000 rows again costs seconds)."""
    try:
        from attnbench.report import figures, html, pattern, tables
        from attnbench.report.frame import tidy_frame
    except ImportError as exc:
        raise ImportError(f"attnbench report needs pandas and seaborn ({exc.name} is "
                          "missing): pip install 'attnbench[report]'") from None
    if sources is None:
        sources = load_sources(list(inputs))
    if nodes:
        sources = [only_nodes(s, nodes) for s in sources]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = tidy_frame(sources)

    figure_results = figures.render_all(frame)
    if attention_pattern:
        figure_results.append(_pattern_figure(figures, pattern))
    table = {t.key: t for t in (tables.summary_table(frame), tables.contracts_table(sources),
                                tables.largest_fit_table(frame), tables.exponents_table(frame),
                                tables.failures_table(frame), tables.cases_table(frame),
                                tables.runs_table(sources),
                                tables.run_details_table(sources))}
    sections, nav, absent = [], [], []
    for key in SECTIONS_ORDER:
        if key == "figures":
            for f in figure_results:
                if f.empty:  # nothing to draw: one line for all of them, not a box each
                    absent.append((f.title, f.note.removeprefix("Nothing to draw: ")))
                    continue
                sections.append(html.render_figure(f))
                nav.append((f.key, f.title))
        elif not table[key].rows:
            absent.append((table[key].title, table[key].empty_note))
        else:
            sections.append(html.render_table(table[key]))
            nav.append((key, table[key].title))
    if absent:
        sections.append(html.render_absent(absent))
        nav.append(("not-in-these-runs", "Not in these runs"))
    title = title or "attnbench report: " + ", ".join(s.run_id for s in sources)
    statuses = frame["status"].value_counts().to_dict() if len(frame) else {}
    unstable = tables.unstable_count(frame)
    subtitle = (f"{len(sources)} run(s), {len(frame)} case(s) "
                f"({', '.join(f'{n} {s}' for s, n in statuses.items()) or 'none finished'}"
                f"{f'; {unstable} marked unstable' if unstable else ''}); "
                f"generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')}. "
                "Data: results.csv beside this file.")
    page = html.render_page(title, subtitle, tables.data_notes(sources, frame), sections, nav)
    # both files at the end, once everything is built: a failure or a kill while building
    # leaves the previous pair as it was
    write_results_csv(sources, out_dir / "results.csv")
    return write_atomic(out_dir / "index.html", page)


def only_nodes(source: Source, hosts: list[str]) -> Source:
    """The source with only the rows measured on ``hosts``."""
    import dataclasses

    rows = [r for r in source.rows if (r.get("metrics") or {}).get("node_host") in hosts]
    return dataclasses.replace(source, rows=rows)


def _pattern_figure(figures, pattern):
    def draw():
        fig, caption = pattern.attention_pattern_figure()
        draw.caption = caption
        return fig

    draw.caption = pattern.CAPTION
    title = "Attention pattern: exact vs LSH (paper Figure 2)"
    result = figures.render_one("attention-pattern", title, "", draw)
    return figures.FigureResult(result.key, result.title, draw.caption, result.svg, result.note,
                                result.empty)


def default_output(sources: list[Source]) -> Path:
    """A single run directory gets its report beside its results; anything else a new folder
    under ``reports/``."""
    if len(sources) == 1 and sources[0].kind == "run":
        return sources[0].path
    base = Path("reports") / f"report-{time.strftime('%Y%m%d-%H%M%S')}"
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):  # claimed by mkdir: two reports in one second get two folders
        path = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"{base}: 999 report folders this second already")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Write index.html (self-contained: figures, tables, environment) and "
                          "results.csv for one or several runs or pytest-benchmark JSON files.")
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="run directory (reports/runs/<run>) or pytest-benchmark JSON file")
    parser.add_argument("-o", "--output", metavar="DIR",
                        help="output directory (default: the run's directory for one run, "
                             "else reports/report-<time>)")
    parser.add_argument("--title", help="page title (default: the run ids)")
    parser.add_argument("--no-attention-pattern", action="store_true",
                        help="leave out the attention-pattern figure (computed, not measured)")
    parser.add_argument("--node", action="append", metavar="HOST",
                        help="only the cases measured on this host (a row's node_host; "
                             "repeatable): a cluster's nodes differ")
    parser.add_argument("--table2-markdown", metavar="FILE",
                        help="also write the task runs' train x eval matrices beside the "
                             "paper's Table 2 as Markdown (and, with two or more lengths, the "
                             "accuracy-vs-length figure as FILE with .svg)")


def _accuracy_over_length_svg(frame, path: Path) -> Path | None:
    """The accuracy-vs-length figure beside the Table-2 Markdown, when there are two or more
    lengths to draw."""
    from attnbench.report import figures

    try:
        fig = figures.accuracy_vs_length(frame)
    except figures.NoData:
        return None
    return write_atomic(path, figures.to_svg(fig))


def _outputs(args, out_dir: Path) -> list[tuple[str, Path]]:
    """Every file this invocation writes, with the option that named it."""
    outputs = [("-o", out_dir / "index.html"), ("-o", out_dir / "results.csv")]
    if args.table2_markdown:
        markdown = Path(args.table2_markdown)
        outputs += [("--table2-markdown", markdown),
                    ("--table2-markdown", markdown.with_suffix(".svg"))]
    return outputs


def distinct_sources(sources: list[Source]) -> None:
    """Refuse a run given twice (by path or by run id): its every case would be counted
    twice, and two series with one label cannot be told apart."""
    seen: dict[str, Source] = {}
    for source in sources:
        for key in (f"path {source.path.resolve()}", f"run id {source.run_id!r}"):
            if key in seen:
                raise SourceError(f"{source.path}: the same run as {seen[key].path} ({key}); "
                                  "give each run once")
            seen[key] = source


def run(args: argparse.Namespace) -> int:
    def error(message: str) -> int:
        print(f"attnbench report: error: {message}", file=sys.stderr)
        return 2

    try:
        sources = load_sources(args.runs)
        distinct_sources(sources)
    except SourceError as exc:
        return error(str(exc))
    if args.node:
        hosts = sorted({str(r["metrics"].get("node_host")) for s in sources for r in s.rows
                        if r["metrics"].get("node_host") is not None})
        if not any(only_nodes(s, args.node).rows for s in sources):
            return error(plain_text(
                f"--node {', '.join(args.node)}: no case was measured on "
                + (f"it; these runs' hosts: {', '.join(hosts)}" if hosts else
                   "it; these runs record no host (node_host)")))
    for line in unreadable_summary(sources):
        print(f"attnbench report: warning: {line} (left out of the report)", file=sys.stderr)
    out_dir = Path(args.output) if args.output else default_output(sources)
    try:
        check_output_dir("-o", out_dir, args.runs)
        check_outputs(_outputs(args, out_dir), args.runs,
                      own_files=("results.csv", "index.html"))
    except UnsafePathError as exc:
        return error(str(exc))
    try:
        path = build_report(args.runs, out_dir, title=args.title,
                            attention_pattern=not args.no_attention_pattern, nodes=args.node,
                            sources=sources)
    except ImportError as exc:
        print(f"attnbench report: {exc}", file=sys.stderr)
        return 2
    except (OSError, UnsafePathError) as exc:
        return error(f"cannot write the report into {out_dir}: {_why(exc)} (files already "
                     "there are unchanged)")
    print(f"wrote {path} and {path.parent / 'results.csv'}")
    if args.table2_markdown:
        import shlex

        from attnbench.report.frame import tidy_frame
        from attnbench.report.table2 import table2_markdown

        parts = ["attnbench", "report", *args.runs, "-o", str(out_dir)]
        if args.title:
            parts += ["--title", args.title]
        if args.no_attention_pattern:
            parts.append("--no-attention-pattern")
        parts += ["--table2-markdown", args.table2_markdown]
        frame = tidy_frame(sources)
        markdown = Path(args.table2_markdown)
        try:
            figure = _accuracy_over_length_svg(frame, markdown.with_suffix(".svg"))
            write_atomic(markdown, table2_markdown(frame, shlex.join(parts), sources,
                                                   figure=figure and figure.name))
        except (OSError, UnsafePathError) as exc:
            return error(f"cannot write --table2-markdown {markdown}: {_why(exc)}")
        print(f"wrote {markdown}" + (f" and {figure}" if figure else ""))
    return 0


def _why(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
