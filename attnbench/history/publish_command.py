"""``attnbench publish [--db PATH] -o DIR``: the history as a static, self-contained site.

Writes ``index.html`` (every series: latest value, trend, verdict), a page per case (time,
memory and accuracy against commits, uncertainty drawn, unstable points apart, failures as
what they were, steps with their commits and verdicts) and ``regressions.html``. Publishing
again rewrites only the pages whose content changed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from attnbench.history.db import DEFAULT_DB, HistoryError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("--db", default=str(DEFAULT_DB), metavar="PATH",
                        help="the history database (default %(default)s)")
    parser.add_argument("-o", "--output", required=True, metavar="DIR",
                        help="the site's folder (pages written there; nothing else removed)")
    parser.add_argument("--repo", default=".", metavar="DIR",
                        help="the git repository whose log orders the runs (default: the "
                        "current directory)")
    parser.add_argument("--title", default="attnbench history", help="the site's title")


def run(args: argparse.Namespace) -> int:
    from attnbench.history.db import connect, load_history
    from attnbench.history.publish import publish
    from attnbench.safeio import UnsafePathError, check_output_dir

    if not Path(args.db).is_file():
        print(f"attnbench publish: error: --db {args.db}: no such history (attnbench history "
              "add RUN... makes it)", file=sys.stderr)
        return 2
    try:
        check_output_dir("-o", args.output, [])
        conn = connect(args.db)
        history = load_history(conn, args.repo)
        conn.close()
        result = publish(history, args.output, title=args.title)
    except (HistoryError, UnsafePathError) as exc:
        print(f"attnbench publish: error: {exc}", file=sys.stderr)
        return 2
    removed = f", {len(result.removed)} stale removed" if result.removed else ""
    print(f"{args.output}: {len(result.written)} file(s) written, {len(result.unchanged)} "
          f"unchanged{removed}", file=sys.stderr)
    return 0
