"""``attnbench history add | rebuild | steps | confirm``: the performance history's command line
(``attnbench publish`` is :mod:`attnbench.history.publish_command`).

  add PATH...      add run directories and pytest-benchmark files (a folder of run
                   directories adds each); adding a run again changes nothing
  rebuild PATH...  make the database again from the runs (steps and verdicts kept)
  steps            find the steps in every series; store and list them (--json)
  confirm STEP     measure a step's case at its two commits on this machine, interleaved,
                   and store the verdict (confirmed, not reproduced, inconclusive)

Exit status: 0 done, 1 ``steps`` found a regression (``--fail-on-regression``) or ``confirm``
confirmed one (``--fail-on-confirmed``), 2 a bad input (each named; the good ones are added).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from attnbench.history.db import DEFAULT_DB, HistoryError


def _error(message: str) -> None:
    print(f"attnbench history: error: {message}", file=sys.stderr)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[1] if __doc__ else None
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="history_command", required=True, metavar="ACTION")

    def db_option(p):
        p.add_argument("--db", default=str(DEFAULT_DB), metavar="PATH",
                       help="the history database (default %(default)s)")

    def repo_option(p):
        p.add_argument("--repo", default=".", metavar="DIR",
                       help="the git repository whose log orders the runs (default: the "
                       "current directory; without one, commit dates order them)")

    add = sub.add_parser("add", help="add runs to the history")
    add.add_argument("paths", nargs="+", metavar="PATH",
                     help="run directory, folder of run directories, or pytest-benchmark JSON")
    db_option(add)
    rebuild = sub.add_parser("rebuild", help="make the database again from the runs")
    rebuild.add_argument("paths", nargs="+", metavar="PATH")
    db_option(rebuild)
    steps = sub.add_parser("steps", help="find and list the steps in every series")
    db_option(steps)
    repo_option(steps)
    steps.add_argument("--threshold", type=float, metavar="FRACTION",
                       help="smallest relative step reported (default: the detector's, "
                       "chosen from its measured recall and false-alarm rate)")
    steps.add_argument("--json", action="store_true", help="the steps as JSON")
    steps.add_argument("--fail-on-regression", action="store_true",
                       help="exit 1 when a regression is found")
    confirm = sub.add_parser("confirm", help="measure a step again at its two commits")
    confirm.add_argument("step", type=int, metavar="STEP", help="a step id (history steps)")
    db_option(confirm)
    repo_option(confirm)
    confirm.add_argument("--rounds", type=int, default=3,
                         help="rounds of before/after runs, alternating (default %(default)s)")
    confirm.add_argument("--fail-on-confirmed", action="store_true",
                         help="exit 1 when the step is a regression and it is confirmed")


def expand(paths: list[str]) -> list[Path]:
    """Each path, or for a folder that is not a run, the run directories inside it."""
    out = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and not (path / "meta.json").exists():
            found = sorted(p.parent for p in path.glob("*/meta.json"))
            out.extend(found or [path])
        else:
            out.append(path)
    return out


def _sources(paths: list[str]) -> tuple[list, int]:
    from attnbench.runs import SourceError, load_source, unreadable_summary

    sources, bad = [], 0
    for path in expand(paths):
        try:
            source = load_source(path)
        except SourceError as exc:
            _error(str(exc))
            bad += 1
            continue
        for line in unreadable_summary([source]):
            print(f"attnbench history: warning: {line} (left out)", file=sys.stderr)
        sources.append(source)
    return sources, bad


def run(args: argparse.Namespace) -> int:
    try:
        return {"add": _add, "rebuild": _rebuild, "steps": _steps,
                "confirm": _confirm}[args.history_command](args)
    except HistoryError as exc:
        _error(str(exc))
        return 2


def _add(args) -> int:
    from attnbench.history.db import add_source, connect

    conn = connect(args.db)
    counts: dict[str, int] = {}
    sources, bad = _sources(args.paths)
    for source in sources:
        outcome = add_source(conn, source)
        counts[outcome] = counts.get(outcome, 0) + 1
    conn.close()
    print(f"{args.db}: " + (", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
                            or "nothing added"), file=sys.stderr)
    return 2 if bad else 0


def _rebuild(args) -> int:
    from attnbench.history.db import rebuild

    sources, bad = _sources(args.paths)
    if bad:
        _error(f"{bad} path(s) are not runs: nothing rebuilt (the database is unchanged)")
        return 2
    counts = rebuild(args.db, sources)
    print(f"{args.db}: rebuilt from {sum(counts.values())} run(s)", file=sys.stderr)
    return 0


def detect_all(history, threshold: float | None) -> list:
    """The steps of every series (the detector's default threshold unless given)."""
    from attnbench.history import steps as detector

    kwargs = {} if threshold is None else {"threshold": threshold}
    found = []
    for series_id, points in history.points.items():
        found += detector.detect_steps(points, history.series[series_id].direction, **kwargs)
    return found


def _steps(args) -> int:
    from attnbench.history.db import connect, load_history, store_steps

    if args.threshold is not None and not 0 < args.threshold < 10:
        _error(f"--threshold {args.threshold!r}: must be a fraction > 0 (0.05 is 5%)")
        return 2
    conn = connect(args.db)
    history = load_history(conn, args.repo)
    steps = store_steps(conn, detect_all(history, args.threshold))
    history = load_history(conn, args.repo)
    conn.close()
    rows = [step_record(history, s) for s in steps]
    if args.json:
        print(json.dumps(rows, indent=1, allow_nan=False))
    else:
        print(format_steps(rows))
    regressions = [r for r in rows if r["kind"] == "regression"]
    return 1 if regressions and args.fail_on_regression else 0


def step_record(history, step) -> dict:
    series = history.series[step.series_id]
    machine = history.machines.get(series.machine_id) if series.machine_id else None
    return {"id": step.id, "series": series.label, "metric": series.metric,
            "direction": series.direction, "machine": machine.fingerprint if machine else None,
            "before": step.before_sha, "after": step.after_sha,
            "before_value": step.before_value, "after_value": step.after_value,
            "ratio": step.ratio, "kind": step.kind, "verdict": step.verdict,
            "evidence": step.evidence}


def format_steps(rows: list[dict]) -> str:
    if not rows:
        return "no step found"
    lines = []
    for r in sorted(rows, key=lambda r: (r["kind"] != "regression", r["id"])):
        short = "..".join((sha or "?")[:10] for sha in (r["before"], r["after"]))
        lines.append(f"{r['id']:>4}  {r['kind']:<11}  x{r['ratio']:.3f}  {short}  "
                     f"{r['metric']} of {r['series']}"
                     f"{'  [' + r['machine'] + ']' if r['machine'] else ''}"
                     f"  {r['verdict'] or 'not yet confirmed'}")
    return "\n".join(lines)


def _confirm(args) -> int:
    from attnbench.history import confirm as confirming
    from attnbench.history.db import connect, load_history, series_case, store_verdict

    conn = connect(args.db)
    history = load_history(conn)
    step = next((s for s in history.steps if s.id == args.step), None)
    if step is None:
        _error(f"STEP {args.step}: no such step (attnbench history steps lists them)")
        return 2
    series = history.series[step.series_id]
    case = series_case(conn, series.id)
    if not case or series.case_id.startswith("contract:"):
        _error(f"STEP {args.step}: {series.label} is a contract ratio; confirm measures one "
               "case: confirm the steps of its numerator or denominator")
        return 2
    repo = Path(args.repo)
    try:
        verdict, detail = confirming.confirm(
            step, series, case, repo, rounds=args.rounds,
            log=lambda text: print(text, file=sys.stderr))
    except confirming.ConfirmError as exc:
        _error(str(exc))
        return 2
    store_verdict(conn, step.id, verdict, detail)
    conn.close()
    print(f"step {step.id} ({step.kind} x{step.ratio:.3f} in {series.metric} of "
          f"{series.label}): {verdict}" + (f": {detail.get('why')}" if detail.get("why")
                                            else ""))
    return 1 if (verdict == confirming.CONFIRMED and step.kind == "regression"
                 and args.fail_on_confirmed) else 0
